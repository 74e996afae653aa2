"""``leyolo bench --profile``: Chrome traces from the runtimes' profilers and a per-operator table."""

from __future__ import annotations

import json

import pytest

import leyolo
from leyolo.cli import main
from leyolo.errors import LeyoloError
from leyolo.tools.profile import profile


@pytest.mark.parametrize("backend, op", [("torch", "aten::"), ("onnxruntime", "Conv")])
def test_profile_writes_a_chrome_trace_and_ranks_operators(tmp_path, backend, op):
    result = profile(leyolo.load("leyolo-n"), backend, 64, tmp_path, runs=2)
    trace = json.loads((tmp_path / f"leyolo-n-{backend}-64-trace.json").read_text())
    assert isinstance(trace["traceEvents"], list) and len(trace["traceEvents"]) > 50
    assert all("ph" in e and "name" in e for e in trace["traceEvents"][:50])  # trace-event records
    rows = result["rows"]
    assert rows and any(r["op"].startswith(op) for r in rows[:5])
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert all(a["ms"] >= b["ms"] for a, b in zip(rows, rows[1:]))
    assert max(r["calls"] for r in rows if "conv" in r["op"].lower()) >= 90  # leyolo-n: 101 convolutions a call


def test_bench_profile_cli(tmp_path, capsys):
    assert main(["bench", "--models", "leyolo-n", "--backends", "onnxruntime", "--imgsz", "64", "--profile",
                 "--runs", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| operator | calls/run | ms/run | % |" in out and "trace" in out
    with pytest.raises(LeyoloError, match="--profile supports"):
        profile(leyolo.load("leyolo-n"), "openvino", 64, tmp_path)
