"""Timing for the tools and benchmark scripts: one loop, one set of statistics, one latency per runtime.

Every speed figure the tools print goes through ``time_calls`` (warm-up, then wall time per
call), so their numbers compare.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np


def time_calls(fn: Callable[[Any], Any], arg: Any, runs: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn(arg)`` over ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn(arg)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - start)
    return times


def latency_stats(times: Sequence[float]) -> dict[str, float]:
    """Median / p95 / p99 in ms (with fewer than 100 runs p99 is close to the maximum)."""
    ms = np.asarray(times, dtype=np.float64) * 1e3
    return {"latency_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99))}


def median_latency_ms(run: Callable[[], Any], runs: int = 50, warmup: int = 5) -> float:
    """Median wall time of ``run()`` in milliseconds, after ``warmup`` untimed calls."""
    return 1000 * statistics.median(time_calls(lambda _: run(), None, max(runs, 1), warmup))


def random_batch(imgsz: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    """A ``[batch, 3, imgsz, imgsz]`` float32 input in [0, 1] (network-only timings)."""
    return np.random.default_rng(seed).random((batch, 3, imgsz, imgsz), dtype=np.float32)


def onnx_latency_ms(path: str | Path, imgsz: int, runs: int = 50) -> float:
    """Network-only latency of an ONNX file on one ``imgsz`` image (onnxruntime CPU, all optimisations)."""
    from ..inference.backends import onnxruntime_session

    session = onnxruntime_session(path)
    feed = {session.get_inputs()[0].name: random_batch(imgsz)}
    return median_latency_ms(lambda: session.run(None, feed), runs)


def torch_latency_ms(model: Any, imgsz: int, runs: int = 20) -> float:
    """Eager PyTorch (BatchNorm folded, decode included, no pre/post-processing), one image."""
    from ..inference.backends import TorchBackend

    backend = TorchBackend(model)
    x = random_batch(imgsz)
    return median_latency_ms(lambda: backend(x), runs, warmup=3)
