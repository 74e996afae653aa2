"""Where the milliseconds go: a Chrome trace and a per-operator table for one model on one backend.

The runtimes' own profilers do the measuring: ``torch.profiler`` for the torch backend and
onnxruntime's session profiler for ONNX. Both traces are written as a Chrome trace-event JSON
object (``{"traceEvents": [...]}``, what ``chrome://tracing`` and Perfetto open); onnxruntime
writes a bare event list, which is wrapped. The table sums each operator type's own time.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import LeyoloError
from ..fileio import atomic_write
from .measure import random_batch

BACKENDS = ("torch", "onnxruntime")


def _torch_profile(model: Any, x: Any, runs: int, trace: Path) -> list[dict[str, Any]]:
    import torch

    from ..inference.backends import TorchBackend

    backend = TorchBackend(model)
    backend(x)  # warm-up outside the trace
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            backend(x)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        data = raw.read_bytes()
    atomic_write(trace, lambda t: Path(t).write_bytes(data))
    rows = [{"op": e.key, "calls": e.count // runs, "ms": e.self_cpu_time_total / 1e3 / runs}
            for e in prof.key_averages() if e.self_cpu_time_total > 0]
    return rows


def _onnxruntime_profile(onnx_path: Path, x: Any, runs: int, threads: int | None, trace: Path) -> list[dict[str, Any]]:
    from ..inference.backends import onnxruntime_session

    with tempfile.TemporaryDirectory() as tmp:
        session = onnxruntime_session(onnx_path, threads, profile_prefix=Path(tmp) / "ort")
        feed = {session.get_inputs()[0].name: x}
        session.run(None, feed)  # the first call is session set-up: profiled, but not counted below
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    atomic_write(trace, lambda t: Path(t).write_text(json.dumps({"traceEvents": events})))
    runs_seen = sorted((e["ts"], e["ts"] + e.get("dur", 0)) for e in events
                       if e.get("cat") == "Session" and e.get("name") == "model_run")
    first_end = runs_seen[0][1] if runs_seen else -1  # the set-up run: in the trace, not in the table
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or e["ts"] <= first_end:
            continue
        op = (e.get("args") or {}).get("op_name", "?")
        totals[op][0] += 1
        totals[op][1] += float(e.get("dur", 0)) / 1e3
    return [{"op": op, "calls": round(n / runs), "ms": ms / runs} for op, (n, ms) in totals.items()]


def profile(detector: Any, backend: str, imgsz: int, out: str | Path, *, runs: int = 20, batch: int = 1,
            threads: int | None = None) -> dict[str, Any]:
    """Profile ``runs`` calls on a random ``[batch, 3, imgsz, imgsz]`` input; write the trace, return the table.

    Returns ``trace`` (the JSON path) and ``rows``: per operator type, calls per run and ms per
    run, slowest first, with each one's share of the total.
    """
    if backend not in BACKENDS:
        raise LeyoloError(f"--profile supports {', '.join(BACKENDS)}, not {backend}")
    out = Path(out)
    x = random_batch(imgsz, batch)
    trace = out / f"{detector.meta.arch}-{backend}-{imgsz}-trace.json"
    if backend == "torch":
        rows = _torch_profile(detector._require_model("profiling on torch"), x, runs, trace)
    else:
        rows = _onnxruntime_profile(detector.onnx_file(imgsz), x, runs, threads, trace)
    total = sum(r["ms"] for r in rows) or 1.0
    rows = sorted(rows, key=lambda r: -r["ms"])
    for r in rows:
        r["share"] = r["ms"] / total
    return {"trace": str(trace), "rows": rows, "total_ms": total}
