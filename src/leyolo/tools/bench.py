"""``leyolo bench``: size, speed, memory and accuracy of models x backends x image sizes x batch sizes.

Why it is built this way:

* Each combination is timed in a fresh process (``python -m leyolo.tools.bench --worker``): nothing
  leaks between combinations and its peak resident set means something. ``mem_mb`` is the peak
  minus the RSS right after importing torch/onnxruntime, where the kernel's peak mark is reset
  (/proc/self/clear_refs): what loading the artefact, building the backend and the timed loop
  added, native buffers (oneDNN, MLAS) included, which ``tracemalloc`` cannot see. Empty
  in-process (``isolate=False``) and off Linux (``ru_maxrss`` cannot be reset).
* Machines like this drift in speed by +-30%: ``passes`` > 1 runs all combinations round-robin
  that many times and keeps each one's fastest pass (lowest median), as benchmarks/ does.
* What is timed is what is sized and scored: the safetensors weights (``torch``), a dynamic
  ONNX export (``onnxruntime``), its static QDQ INT8 quantization by ``leyolo.tools.quantize``
  calibrated on the data's train split (``onnxruntime-int8``). A combination that cannot run
  is a row with a ``note``, never a lost run; bad arguments fail fast with one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import LeyoloError
from ..fileio import atomic_write
from ..ops import check_imgsz
from .measure import latency_stats, random_batch, time_calls
from .tables import markdown_table, write_table

ENGINES = {"torch": "torch", "onnxruntime": "onnxruntime", "onnxruntime-int8": "onnxruntime",
           "ncnn": "ncnn"}  # name -> runtime
BACKEND_NAMES = tuple(ENGINES)
MODEL_SUFFIXES = (".pt", ".pth", ".safetensors", ".onnx")
COLUMNS = ("model", "backend", "imgsz", "batch", "params", "gflops", "file_mb", "latency_ms", "p95_ms", "p99_ms",
           "throughput_ips", "mem_mb", "mAP50-95", "mAP50", "e2e_ms", "note")
DIGITS = {"gflops": 3, "file_mb": 2, "latency_ms": 2, "p95_ms": 2, "p99_ms": 2, "throughput_ips": 1, "mem_mb": 1,
          "mAP50-95": 4, "mAP50": 4, "e2e_ms": 2}
# LeYOLO paper, COCO val2017: (family, imgsz, GFLOPs, mAP50-95 in %)
PAPER_POINTS = (("nano", 320, 0.668, 25.2), ("nano", 480, 1.502, 31.3), ("nano", 640, 2.671, 34.3),
                ("small", 480, 2.551, 35.2), ("small", 640, 4.535, 38.2), ("medium", 640, 5.847, 39.3),
                ("large", 768, 8.420, 41.0))


class Unavailable(Exception):
    """A backend that cannot run for this model (its message goes to the row's ``note``)."""


def _rss_mb(key: str = "VmRSS") -> float | None:
    """Resident set (``VmRSS``) or its peak (``VmHWM``) in MiB; None without Linux's /proc."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024  # kB


def _reset_peak() -> float | None:
    """Reset the kernel's peak-RSS mark to the current RSS (``clear_refs`` 5); return that RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _rss_mb()


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one artefact on random ``[batch, 3, imgsz, imgsz]`` input; memory = peak RSS growth after imports."""
    import onnxruntime  # noqa: F401  (imported before the baseline: libraries are not the model's cost)
    import torch

    from ..api import load
    from ..inference.backends import OnnxRuntimeBackend

    if spec["backend"] == "ncnn":
        import ncnn  # noqa: F401  (its library is not the model's cost either)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    base = _reset_peak()
    if spec["backend"] == "torch":
        engine = load(spec["path"]).backend("torch")
    elif spec["backend"] == "ncnn":
        engine = load(spec["path"]).backend("ncnn", threads=spec.get("threads"))
    else:
        engine = OnnxRuntimeBackend(spec["path"], spec.get("threads"))
    images = random_batch(spec["imgsz"], spec["batch"])
    times = time_calls(engine, images, int(spec["runs"]), int(spec["warmup"]))
    peak = _rss_mb("VmHWM") if base is not None else None
    return {"times": times, "mem_mb": None if peak is None else peak - base}


def _measure_isolated(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "leyolo.tools.bench", "--worker", json.dumps(spec)],
                          capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        errors = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": errors[-1][:200] if errors else f"worker exited with {proc.returncode}"}
    return json.loads(lines[-1])


@dataclass
class _Model:
    """One model of the benchmark: its detector, counts, and the file each (backend, size) runs."""

    label: str
    detector: Any
    params: int | None = None
    gflops: dict[int, float] = field(default_factory=dict)
    artefacts: dict[tuple[str, int], Path] = field(default_factory=dict)
    notes: dict[tuple[str, int], str] = field(default_factory=dict)  # why a (backend, size) has no artefact
    note: str = ""

    def detector_for(self, backend: str, imgsz: int) -> Any:
        """The detector that runs ``backend`` on the benchmarked artefact (for val and predict)."""
        from ..api import Detector, load

        path = self.artefacts[backend, imgsz]
        if backend == "ncnn":
            return load(path)
        return self.detector if backend == "torch" else Detector(onnx_path=path, meta=self.detector.meta)


def quantize_int8(detector: Any, data: Any, imgsz: int, dest: Path, calib_images: int, **options: Any) -> Path:
    """Static QDQ INT8 ONNX (fixed 1x3xSxS) by ``leyolo.tools.quantize``, calibrated on train
    images only (the val split is what gets scored); ``options`` go to ``quantize`` (``float_layers=0``: no scan)."""
    if data is None:
        raise Unavailable("skipped: INT8 needs --data (calibrated on its train split)")
    try:
        from .quantize import quantize
    except ImportError:
        raise Unavailable("unavailable: leyolo.tools.quantize is missing or cannot be imported") from None
    try:
        return Path(quantize(detector, data, method="static", calib_images=calib_images, imgsz=imgsz, out=dest,
                             runs=1, evaluate=False, **options)["out"])
    except LeyoloError as exc:
        raise Unavailable(f"quantization failed: {exc}") from None


def _prepare_model(spec: str, label: str, backends: Sequence[str], sizes: Sequence[int], workdir: Path,
                   data: Any, data_spec: Any, int8_options: dict[str, Any]) -> _Model:
    from ..api import Detector, load
    from ..data.datasets import split_images
    from ..deploy.onnx_export import export_onnx
    from ..models.flops import count_gflops, count_params
    from ..models.registry import create_model, list_models

    names = list(data_spec.names) if data_spec is not None else None
    registered = spec in list_models()  # untrained: built for the data's classes so that it can be scored
    detector = Detector(create_model(spec, nc=len(names) if names else 80, names=names)) if registered else load(spec)
    if data_spec is not None and len(detector.names) != data_spec.nc:
        raise LeyoloError(f"{spec}: {len(detector.names)} classes, {data_spec.yaml_path} has {data_spec.nc}")
    model = _Model(label, detector, note="untrained" if registered and data_spec is not None else "")
    stem = label.replace("/", "_")  # labels may name parent folders; files stay flat in workdir
    torch_model = detector.model
    if torch_model is not None:
        model.params = count_params(torch_model)
        model.gflops = {s: count_gflops(torch_model, s) for s in sizes}
    if "torch" in backends and torch_model is None:
        model.notes.update({("torch", s): "unavailable: an ONNX file runs only on onnxruntime" for s in sizes})
    elif "torch" in backends:
        weights = detector.save(workdir / f"{stem}.safetensors")
        model.artefacts.update({("torch", s): weights for s in sizes})
    if "onnxruntime" in backends:
        onnx = detector.onnx_path or export_onnx(torch_model, workdir / f"{stem}.onnx", max(sizes), dynamic=True)
        model.artefacts.update({("onnxruntime", s): onnx for s in sizes})
    if "ncnn" in backends and torch_model is None:
        model.notes.update({("ncnn", s): "unavailable: NCNN is converted from PyTorch weights" for s in sizes})
    elif "ncnn" in backends:
        try:  # one dynamic-shape conversion serves every size, like the ONNX file
            folder = detector.export(workdir / f"{stem}_ncnn_model", format="ncnn", imgsz=max(sizes))
            model.artefacts.update({("ncnn", s): folder for s in sizes})
        except LeyoloError as exc:  # e.g. the ncnn extra is not installed
            model.notes.update({("ncnn", s): f"unavailable: {exc}" for s in sizes})
    for s in sizes if "onnxruntime-int8" in backends else ():
        try:
            n = min(len(split_images(data_spec, "train")), 200) if data_spec is not None else 0
            dest = workdir / f"{stem}-{s}-int8.onnx"
            model.artefacts["onnxruntime-int8", s] = quantize_int8(detector, data, s, dest, n, **int8_options)
        except (Unavailable, LeyoloError) as exc:  # e.g. a data.yaml without a train split
            model.notes["onnxruntime-int8", s] = str(exc) if isinstance(exc, Unavailable) else f"skipped: {exc}"
    return model


def _end_to_end_ms(detector: Any, backend: str, imgsz: int, batch: int, files: list[Path], passes: int,
                   threads: int | None) -> float:
    """ms per image of the whole ``predict`` path (decode, letterbox, network, NMS), best of ``passes``."""
    from ..inference.sources import iter_frames

    # as many threads as the network-only timing had
    predictor = detector.predictor(ENGINES[backend], imgsz=imgsz, batch=batch, threads=threads)
    sum(1 for _ in predictor.stream(iter_frames(files[:2])))  # warm-up
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        n = sum(1 for _ in predictor.stream(iter_frames(files)))
        best = min(best, (time.perf_counter() - start) / max(n, 1))
    return best * 1e3


def _check_inputs(models: Sequence[str], backends: Sequence[str], sizes: Sequence[int], batches: Sequence[int],
                  runs: int, warmup: int, passes: int) -> None:
    from ..models.registry import list_models

    known = list_models()
    for spec in models or [""]:
        if spec not in known and not (Path(spec).is_file() and Path(spec).suffix.lower() in MODEL_SUFFIXES):
            raise LeyoloError(f"unknown model {spec!r}: not a registered name ({', '.join(known)}) "
                              f"nor an existing {'/'.join(MODEL_SUFFIXES)} file")
    for b in [b for b in backends if b not in ENGINES] or ([] if backends else [""]):
        raise LeyoloError(f"unknown backend {b!r}; choose from {', '.join(BACKEND_NAMES)}")
    if not sizes:
        raise LeyoloError("--imgsz needs at least one size")
    for s in sizes:
        check_imgsz(s)
    if not batches or any(not isinstance(b, int) or b < 1 for b in batches):
        raise LeyoloError(f"--batch must be positive integers, got {list(batches)}")
    if runs < 1 or warmup < 0 or passes < 1:
        raise LeyoloError("--runs and --passes must be >= 1, --warmup >= 0")


def run_benchmark(models: Sequence[str], backends: Sequence[str] = ("torch", "onnxruntime"),
                  sizes: Sequence[int] = (640,), *, batches: Sequence[int] = (1,), runs: int = 100, warmup: int = 10,
                  data: str | Path | None = None, source: str | Path | None = None, compare: bool = False,
                  passes: int = 1, threads: int | None = None, isolate: bool = True, out: str | Path | None = None,
                  progress: bool = False, int8_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per (model, backend, imgsz, batch), keys ``COLUMNS``; with ``out``, also the report files.

    ``models`` are registered names (untrained; built for ``data``'s classes when given) or
    .pt/.safetensors/.onnx files. ``gflops`` is per image (2 x MACs at 1x3xSxS, as published),
    latencies are per call of a whole batch, ``throughput_ips`` is batch / median latency.
    ``compare`` adds ``e2e_ms``: ms per image of ``predict`` over ``source`` (default: the data's
    val images). ``threads`` sets torch and onnxruntime threads for everything timed;
    ``int8_options`` go to ``leyolo.tools.quantize.quantize``.
    """
    from tqdm import tqdm

    from ..data.datasets import load_data_yaml, split_images
    from ..inference.sources import resolve_source

    models, backends = list(dict.fromkeys(models)), list(dict.fromkeys(backends))
    sizes, batches = list(dict.fromkeys(sizes)), list(dict.fromkeys(batches))
    _check_inputs(models, backends, sizes, batches, runs, warmup, passes)
    data_spec = load_data_yaml(data) if data is not None else None
    if compare and source is None and data_spec is None:
        raise LeyoloError("--compare needs --data (its val images) or --source")
    files = (resolve_source(source) if source is not None else split_images(data_spec, "val")) if compare else []
    labels = model_labels(models)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="leyolo-bench-") as tmp, _torch_threads(threads):
        prepared = [_prepare_model(spec, label, backends, sizes, Path(tmp), data, data_spec, int8_options or {})
                    for spec, label in zip(models, labels)]
        combos = [(m, b, s, n) for m in prepared for b in backends for s in sizes for n in batches]
        for m, b, s, n in combos:
            path = m.artefacts.get((b, s))
            rows.append({**dict.fromkeys(COLUMNS), "model": m.label, "backend": b, "imgsz": s, "batch": n,
                         "params": m.params, "gflops": m.gflops.get(s),
                         "file_mb": _size_mb(path) if path else None,
                         "note": "; ".join(x for x in (m.note, m.notes.get((b, s), "")) if x)})
            if b == "onnxruntime-int8" and n > 1 and path:
                _add_note(rows[-1], "fixed-batch export: run image by image")
        todo = [i for i, (m, b, s, _) in enumerate(combos) if (b, s) in m.artefacts]
        groups = {(combos[i][0].label, combos[i][1], combos[i][2]) for i in todo}
        total = len(todo) * passes + len(groups) * (data_spec is not None) + len(todo) * bool(files)
        bar = tqdm(total=total, desc="bench", unit="step", disable=not progress or None)
        for _ in range(passes):  # round-robin: every combination sees the machine in each of its moods
            for i in todo:
                m, b, s, n = combos[i]
                bar.set_postfix_str(f"{m.label} {b} {s}px b{n}")
                spec = {"backend": ENGINES[b], "path": str(m.artefacts[b, s]),
                        "imgsz": s, "batch": n, "runs": runs, "warmup": warmup, "threads": threads}
                result = _measure_isolated(spec) if isolate else {**measure(spec), "mem_mb": None}
                _merge(rows[i], result)
                bar.update(1)
        scores: dict[tuple[str, str, int], dict[str, Any] | None] = {}
        for i in todo:  # accuracy and end-to-end time, after every timing pass
            m, b, s, n = combos[i]
            if data_spec is not None and (m.label, b, s) not in scores:
                bar.set_postfix_str(f"val {m.label} {b} {s}px")
                scores[m.label, b, s] = _attempt(rows[i], "val", lambda: m.detector_for(b, s).val(
                    data, imgsz=s, backend=ENGINES[b]))
                bar.update(1)
            metrics = scores.get((m.label, b, s)) or {}
            rows[i]["mAP50-95"], rows[i]["mAP50"] = metrics.get("mAP50-95"), metrics.get("mAP50")
            if files:
                bar.set_postfix_str(f"predict {m.label} {b} {s}px b{n}")
                rows[i]["e2e_ms"] = _attempt(rows[i], "predict", lambda: _end_to_end_ms(
                    m.detector_for(b, s), b, s, n, files, passes, threads))
                bar.update(1)
        bar.close()
    if out is not None:
        write_reports(rows, Path(out), data=str(data) if data else None, threads=threads)
    return rows


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """``threads`` torch threads in this process for the block (its default pool spin-waits on a busy machine)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _size_mb(path: Path) -> float:
    """A file's size, or the files of an export folder (NCNN) together, in MB."""
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files) / 1e6


def _add_note(row: dict[str, Any], text: str) -> None:
    if text not in row["note"]:
        row["note"] = "; ".join(x for x in (row["note"], text) if x)


def _attempt(row: dict[str, Any], what: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, or None with the one-line reason in the row's note: one bad combination never ends the run."""
    try:
        return fn()
    except LeyoloError as exc:
        _add_note(row, f"{what} failed: {exc}")
        return None


def _merge(row: dict[str, Any], result: dict[str, Any]) -> None:
    """Keep the fastest pass's latencies and the largest memory peak seen."""
    if "error" in result:
        if row["latency_ms"] is None:
            _add_note(row, f"timing failed: {result['error']}")
        return
    stats = latency_stats(result["times"])
    if row["latency_ms"] is None or stats["latency_ms"] < row["latency_ms"]:
        row.update(stats, throughput_ips=row["batch"] / (stats["latency_ms"] / 1e3))
    if result.get("mem_mb") is not None:
        row["mem_mb"] = max(row["mem_mb"] or 0.0, result["mem_mb"])


def machine_summary(threads: int | None = None) -> str:
    """CPU, cores and library versions: a timing means nothing without them."""
    import onnxruntime
    import torch

    from ..inference.cpus import usable_cpus

    try:
        cpu = next(x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                   if x.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return (f"{cpu}, {usable_cpus()} usable of {os.cpu_count()} cores, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
            f"threads {threads or 'default'}, Python {platform.python_version()}")


def model_labels(models: Sequence[str]) -> list[str]:
    """Short unique names: registry names as given, files by their stem, lengthened by parent folders
    until unique (``runs/a/weights/best.pt`` and ``runs/b/weights/best.pt`` -> ``a/weights/best``, ...)."""
    def name(spec: str, depth: int) -> str:
        path = Path(spec)
        if path.suffix.lower() not in MODEL_SUFFIXES:
            return spec
        return "/".join([*path.parent.parts[-(depth - 1):], path.stem] if depth > 1 else [path.stem])

    deepest = max((len(Path(m).parts) for m in models), default=1)
    labels = []
    for spec in models:
        others = [m for m in models if m != spec]
        depth = next((d for d in range(1, deepest + 1)
                      if all(name(spec, d) != name(m, d) for m in others)), deepest)
        labels.append(name(spec, depth))
    return [f"{label}-{i}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def write_reports(rows: Sequence[dict[str, Any]], out: Path, *, data: str | None = None,
                  threads: int | None = None) -> list[Path]:
    """``bench.csv``, ``bench.md`` and the PNG plots (when matplotlib is installed)."""
    header = (f"# leyolo bench\n\nmachine: {machine_summary(threads)}  \n"
              f"mAP on: {data or 'n/a (no --data)'}; latency = network only on random input, per batch call; "
              "gflops per image; mem_mb = peak RSS growth of the timing process after imports")
    return [*write_table(rows, COLUMNS, out, "bench", header, DIGITS), *plot_reports(rows, out, data)]


def plot_reports(rows: Sequence[dict[str, Any]], out: Path, data: str | None = None) -> list[Path]:
    """mAP vs latency and vs GFLOPs (paper points for reference), or latency vs GFLOPs without mAP."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    batch = min((r["batch"] for r in rows), default=1)
    timed = [r for r in rows if r["batch"] == batch and r["latency_ms"] is not None and r["gflops"] is not None]
    scored = [r for r in timed if r["mAP50-95"] is not None]
    lat = f"latency (ms, batch {batch})"
    plots = ([("map_vs_latency.png", "latency_ms", lat), ("map_vs_gflops.png", "gflops", "GFLOPs")] if scored
             else [("latency_vs_gflops.png", "gflops", "GFLOPs")])
    ykey, ylabel = ("mAP50-95", "mAP50-95 (%)") if scored else ("latency_ms", lat)
    scale = 100.0 if scored else 1.0
    written = []
    for name, xkey, xlabel in plots:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        labelled: set[tuple[str, int, float]] = set()
        for backend, marker in zip(BACKEND_NAMES, "os^D"):
            pts = [r for r in (scored or timed) if r["backend"] == backend]
            if not pts:
                continue
            ax.scatter([r[xkey] for r in pts], [r[ykey] * scale for r in pts], marker=marker,
                       label=f"{backend}, on {Path(data).parent.name}" if scored and data else backend)
            for r in pts:
                if (r["model"], r["imgsz"], r[xkey]) in labelled:  # one label where backends share a point
                    continue
                labelled.add((r["model"], r["imgsz"], r[xkey]))
                ax.annotate(f"{r['model']}@{r['imgsz']}", (r[xkey], r[ykey] * scale), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        for family in dict.fromkeys(p[0] for p in PAPER_POINTS) if scored and xkey == "gflops" else ():
            pts = [p for p in PAPER_POINTS if p[0] == family]
            ax.plot([p[2] for p in pts], [p[3] for p in pts], "--x", alpha=0.6, label=f"LeYOLO-{family}, paper "
                    "(COCO val2017)")
        for family, size, _, value in (p for p in PAPER_POINTS if scored and xkey != "gflops"
                                       and p[1] in {r["imgsz"] for r in scored}):
            ax.axhline(value, ls=":", lw=0.8, color="grey")
            ax.annotate(f"paper {family}@{size} (COCO val2017)", (0, value), xycoords=("axes fraction", "data"),
                        fontsize=6, color="grey", xytext=(2, 1), textcoords="offset points")
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(atomic_write(out / name, lambda tmp: fig.savefig(tmp, dpi=110, format="png")))
        plt.close(fig)
    return written


def _split(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def parse_ints(text: str, option: str) -> list[int]:
    """``"320,480"`` -> ``[320, 480]``; anything else is a one-line ``LeyoloError``."""
    try:
        return [int(t) for t in _split(text)]
    except ValueError:
        raise LeyoloError(f"{option} takes comma-separated integers, got {text!r}") from None


def add_cli(subparsers: Any) -> None:
    """Register ``leyolo bench``."""
    p = subparsers.add_parser("bench", help="speed, size, memory (and mAP) of models x backends x sizes",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, help="comma list of registered names and/or .pt/.safetensors/.onnx")
    p.add_argument("--backends", default="torch,onnxruntime", help=f"comma list of {', '.join(BACKEND_NAMES)}")
    p.add_argument("--imgsz", default="640", help="comma list of square input sizes (multiples of 32)")
    p.add_argument("--batch", default="1", help="comma list of batch sizes (throughput = batch / latency)")
    p.add_argument("--runs", type=int, default=100, help="timed calls per combination (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls first (default 10)")
    p.add_argument("--passes", type=int, default=1, help="interleaved passes, fastest kept (default 1)")
    p.add_argument("--threads", type=int, help="torch/onnxruntime threads (default: theirs; 1 is steadiest when busy)")
    p.add_argument("--data", type=Path, help="data.yaml: adds mAP (val split) and INT8 calibration (train split)")
    p.add_argument("--compare", action="store_true", help="also time end-to-end predict per image")
    p.add_argument("--source", help="images for --compare (default: the data's val images)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="report folder (default runs/bench)")
    p.add_argument("--no-isolate", action="store_true", help="time in this process (faster; no memory figure)")
    p.add_argument("--profile", action="store_true",
                   help="instead of the table: profile each model x backend (torch, onnxruntime) x size with the "
                        "runtime's profiler, write a Chrome trace JSON to --out and print the top operators")
    p.set_defaults(handler=cmd_bench)


def run_profiles(models: Sequence[str], backends: Sequence[str], sizes: Sequence[int], out: Path, runs: int,
                 batch: int = 1, threads: int | None = None, top: int = 15) -> list[str]:
    """``leyolo bench --profile``: a trace and an operator table per (model, backend, size); returns the lines."""
    from ..api import Detector, load
    from ..models.registry import create_model, list_models
    from .profile import BACKENDS as PROFILED
    from .profile import profile

    _check_inputs(models, [b for b in backends if b in ENGINES], sizes, [batch], runs, 0, 1)
    lines = []
    for spec, label in zip(models, model_labels(models)):
        detector = Detector(create_model(spec)) if spec in list_models() else load(spec)
        for backend in [b for b in backends if b in PROFILED]:
            for size in sizes:
                result = profile(detector, backend, size, out, runs=runs, batch=batch, threads=threads)
                lines.append(f"\n{label} on {backend} at {size} px: {result['total_ms']:.2f} ms per call in "
                             f"operators; trace {result['trace']}")
                rows = [{**r, "share": 100 * r["share"]} for r in result["rows"][:top]]
                lines.append(markdown_table(rows, [("op", "operator", ""), ("calls", "calls/run", ""),
                                                   ("ms", "ms/run", ".3f"), ("share", "%", ".1f")]))
    if not lines:
        raise LeyoloError(f"--profile supports the backends {', '.join(PROFILED)}")
    return lines


def cmd_bench(args: argparse.Namespace) -> int:
    if args.profile:
        for line in run_profiles(_split(args.models), _split(args.backends), parse_ints(args.imgsz, "--imgsz"),
                                 args.out, min(args.runs, 50), parse_ints(args.batch, "--batch")[0], args.threads):
            print(line)
        return 0
    rows = run_benchmark(
        _split(args.models), _split(args.backends), parse_ints(args.imgsz, "--imgsz"),
        batches=parse_ints(args.batch, "--batch"), runs=args.runs, warmup=args.warmup, data=args.data,
        source=args.source, compare=args.compare, passes=args.passes, threads=args.threads,
        isolate=not args.no_isolate, out=args.out, progress=not getattr(args, "quiet", False))
    print(markdown_table(rows, [c for c in COLUMNS if any(r.get(c) not in (None, "") for r in rows)], DIGITS))
    print(f"report: {args.out / 'bench.md'}, {args.out / 'bench.csv'}")
    return 0


if __name__ == "__main__":  # the timing subprocess: one JSON line with per-call seconds and memory
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        sys.exit("usage: leyolo bench ... (python -m leyolo.tools.bench --worker SPEC is internal)")
    print(json.dumps(measure(json.loads(sys.argv[2]))))
