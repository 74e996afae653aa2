"""``leyolo bench``: rows, counts, report files, mAP with data, INT8 fallbacks and input errors.

Tiny sizes (64/96 px) and 3 timed runs keep it to a few seconds per combination; the timing
processes run with one thread so the shared machine does not skew them. The mAP columns are checked
on the shapes model trained by the session fixture: equal to its own ``val`` figures, and INT8
within a stated distance of fp32.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest

from leyolo import cli
from leyolo.tools import bench
from leyolo.api import Detector
from leyolo.tools.bench import COLUMNS, Unavailable, quantize_int8, run_benchmark
from leyolo.models.flops import count_gflops
from leyolo.models.registry import create_model

PNG = b"\x89PNG\r\n\x1a\n"
HAVE_QUANTIZE = importlib.util.find_spec("leyolo.tools.quantize") is not None
# static INT8 (percentile, all 96 train images, no float layers) against fp32 on 16 val images: measured 0.003
# on one VM and 0.021 on another (onnxruntime's INT8 kernels differ by CPU; one box moves mAP50 by ~0.02 here)
INT8_MAP_TOLERANCE = 0.04
TIMED = ("latency_ms", "p95_ms", "p99_ms", "throughput_ips")


def _assert_timed(row: dict) -> None:
    for key in TIMED:
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, (key, row[key])
    assert row["latency_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert row["latency_ms"] < 60_000  # a tiny model at a tiny size: milliseconds, not minutes


@pytest.fixture
def plugin_cli(monkeypatch):
    """The CLI with this module registered, as the lead will register it."""
    monkeypatch.setattr(cli, "PLUGIN_MODULES", ("leyolo.tools.bench", "leyolo.tools.ablate"))
    return cli.main


def test_rows_counts_and_report_files(tmp_path):
    rows = run_benchmark(["leyolo-n"], ["torch", "onnxruntime"], [64, 96], runs=3, warmup=1, threads=1, out=tmp_path)
    assert [(r["backend"], r["imgsz"]) for r in rows] == [("torch", 64), ("torch", 96), ("onnxruntime", 64),
                                                          ("onnxruntime", 96)]
    model = create_model("leyolo-n")
    for r in rows:
        assert list(r) == list(COLUMNS)
        assert r["model"] == "leyolo-n" and r["batch"] == 1 and r["note"] == ""
        assert r["params"] == 1_120_480
        assert r["gflops"] == pytest.approx(count_gflops(model, r["imgsz"]), rel=1e-12)
        _assert_timed(r)
        assert r["throughput_ips"] == pytest.approx(1e3 / r["latency_ms"])
        assert r["file_mb"] > 1.0  # 1.1 M fp32 parameters
        assert r["mem_mb"] is not None and r["mem_mb"] >= 0
        if Path("/proc/self/clear_refs").exists():
            assert r["mem_mb"] > 1.0  # loading 4.5 MB of weights at least
        assert r["mAP50-95"] is None and r["e2e_ms"] is None
    sizes = {r["backend"]: r["file_mb"] for r in rows}
    assert sizes["torch"] != sizes["onnxruntime"]  # each backend's own artefact was measured
    assert rows[1]["gflops"] > rows[0]["gflops"]
    with open(tmp_path / "bench.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4 and list(table[0]) == list(COLUMNS)
    assert float(table[2]["latency_ms"]) == pytest.approx(rows[2]["latency_ms"])
    markdown = (tmp_path / "bench.md").read_text()
    assert "| leyolo-n | onnxruntime | 96 | 1 | 1,120,480 |" in markdown and "machine:" in markdown
    assert (tmp_path / "latency_vs_gflops.png").read_bytes()[:8] == PNG
    assert not (tmp_path / "map_vs_gflops.png").exists()  # no mAP without --data


def test_data_adds_map_end_to_end_and_plots(tmp_path, trained_shapes):
    weights = trained_shapes.weights
    size = trained_shapes.imgsz
    rows = run_benchmark([str(weights)], ["torch", "onnxruntime", "onnxruntime-int8"], [size], runs=2, warmup=1,
                         data=trained_shapes.data, compare=True, isolate=False, out=tmp_path / "out",
                         int8_options={"float_layers": 0})  # no sensitivity scan: seconds, not a minute
    assert [r["backend"] for r in rows] == ["torch", "onnxruntime", "onnxruntime-int8"]
    reference = trained_shapes.metrics  # Detector.val on the torch backend, same data and size
    assert reference["mAP50-95"] > 0.2
    for r in rows:
        assert r["model"] == Path(weights).stem and r["params"] < 1_120_480  # 3 classes, not 80
        if r["backend"] == "onnxruntime-int8" and not HAVE_QUANTIZE:
            assert "unavailable" in r["note"], r["note"]
            continue
        assert r["note"] == ""
        _assert_timed(r)
        assert math.isfinite(r["e2e_ms"]) and r["e2e_ms"] > 0
        assert r["mem_mb"] is None  # in-process timing reports no memory figure
        if r["backend"] == "onnxruntime-int8":
            assert abs(r["mAP50-95"] - rows[1]["mAP50-95"]) < INT8_MAP_TOLERANCE, (r, rows[1])
            assert abs(r["mAP50"] - rows[1]["mAP50"]) < INT8_MAP_TOLERANCE
        else:  # the benchmark scores exactly what val scores
            assert r["mAP50-95"] == pytest.approx(reference["mAP50-95"], abs=1e-4), r["backend"]
            assert r["mAP50"] == pytest.approx(reference["mAP50"], abs=1e-4), r["backend"]
    if HAVE_QUANTIZE:  # INT8 weights: well under half the fp32 file
        assert rows[2]["file_mb"] < 0.5 * rows[1]["file_mb"]
    for name in ("map_vs_latency.png", "map_vs_gflops.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG
    # a registered name is built (untrained) for the data's classes, so that it can be scored: ~0
    row = run_benchmark(["leyolo-n"], ["torch"], [size], runs=1, warmup=0, data=trained_shapes.data,
                        isolate=False)[0]
    assert row["params"] == rows[0]["params"] and row["note"] == "untrained"
    assert row["mAP50"] is not None and row["mAP50-95"] < 0.01 < reference["mAP50-95"]


def test_int8_without_data_or_quantize_module(monkeypatch, tmp_path):
    detector = Detector(create_model("leyolo-n"))
    with pytest.raises(Unavailable, match="needs --data"):
        quantize_int8(detector, None, 64, tmp_path / "q.onnx", 0)
    monkeypatch.setitem(sys.modules, "leyolo.tools.quantize", None)  # import fails as if not written yet
    with pytest.raises(Unavailable, match="unavailable"):
        quantize_int8(detector, tmp_path / "data.yaml", 64, tmp_path / "q.onnx", 8)
    rows = run_benchmark(["leyolo-n"], ["onnxruntime-int8"], [64], runs=1, warmup=0, isolate=False)
    assert rows[0]["latency_ms"] is None and rows[0]["note"].startswith("skipped")


def test_merge_keeps_fastest_pass_and_largest_memory():
    row = {**dict.fromkeys(COLUMNS), "batch": 2, "note": ""}
    bench._merge(row, {"times": [0.010, 0.012, 0.011], "mem_mb": 30.0})
    bench._merge(row, {"times": [0.020, 0.021, 0.022], "mem_mb": 40.0})
    assert row["latency_ms"] == pytest.approx(11.0) and row["throughput_ips"] == pytest.approx(2 / 0.011)
    assert row["mem_mb"] == 40.0
    bench._merge(row, {"error": "boom"})
    assert row["note"] == ""  # a failed later pass does not hide a measured one


@pytest.mark.parametrize("argv, message", [
    (["--models", "leyolo-x"], "unknown model 'leyolo-x'"),
    (["--models", "leyolo-n", "--backends", "tensorrt"], "unknown backend 'tensorrt'"),
    (["--models", "leyolo-n", "--imgsz", "100"], "multiple of 32, got 100 (try 96 or 128)"),
    (["--models", "leyolo-n", "--imgsz", "64,abc"], "comma-separated integers"),
    (["--models", "leyolo-n", "--batch", "0"], "--batch"),
    (["--models", "leyolo-n", "--compare"], "--compare needs"),
])
def test_bad_input_is_one_line_exit_1(plugin_cli, capsys, tmp_path, argv, message):
    assert plugin_cli(["bench", *argv, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_cli_prints_table(plugin_cli, capsys, tmp_path):
    argv = ["bench", "-q", "--models", "leyolo-n", "--backends", "torch", "--imgsz", "64", "--batch", "1,2",
            "--runs", "2", "--warmup", "1", "--no-isolate", "--out", str(tmp_path)]
    assert plugin_cli(argv) == 0
    out = capsys.readouterr().out
    assert "| leyolo-n | torch | 64 | 2 |" in out and "mAP50" not in out  # empty columns left out
    assert (tmp_path / "bench.md").exists()


def test_model_labels_are_short_and_unique():
    from leyolo.tools.bench import model_labels

    assert model_labels(["leyolo-n", "runs/a/weights/best.safetensors", "runs/b/weights/best.safetensors"]) == [
        "leyolo-n", "a/weights/best", "b/weights/best"]
    assert model_labels(["x.onnx", "sub/x.pt", "y.pt", "y.pt"]) == ["x", "sub/x", "y-2", "y-3"]
