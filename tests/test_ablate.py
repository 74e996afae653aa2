"""``leyolo ablate``: one-at-a-time planning, value parsing, a real two-variant run, errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from leyolo import cli
from leyolo.data.synthetic import generate_shapes_dataset
from leyolo.tools.ablate import load_base, parse_vary, plan_variants, run_ablation
from leyolo.errors import LeyoloError


@pytest.fixture
def plugin_cli(monkeypatch):
    monkeypatch.setattr(cli, "PLUGIN_MODULES", ("leyolo.tools.bench", "leyolo.tools.ablate"))
    return cli.main


def test_parse_vary_types():
    vary = parse_vary(["lr0=1e-3,0.02", "mosaic=0,1", "cos-lr=true", "model=leyolo-s", "epochs=3.0"])
    assert vary == {"lr0": [0.001, 0.02], "mosaic": [0.0, 1.0], "cos_lr": [True], "model": ["leyolo-s"], "epochs": [3]}
    assert isinstance(vary["epochs"][0], int) and isinstance(vary["mosaic"][0], float)


def test_plan_is_one_at_a_time_and_skips_the_baseline_value():
    variants = plan_variants({"model": "leyolo-n", "seed": 7}, parse_vary(["mosaic=0,1,0.5", "model=leyolo-s"]))
    assert [v.name for v in variants] == ["baseline", "mosaic=0", "mosaic=0.5", "model=leyolo-s"]  # 1 == scratch's 1.0
    base = variants[0].config
    assert base["recipe"] == "scratch" and base["mosaic"] == 1.0 and base["lr0"] == 0.01  # recipe pinned
    for v in variants[1:]:
        changed = {k for k in set(base) | set(v.config) if base.get(k) != v.config.get(k)}
        assert changed == {v.key}, v.name
        assert v.config["seed"] == 7
    recipe = plan_variants({"model": "leyolo-n"}, parse_vary(["recipe=finetune,scratch"]))
    assert [v.name for v in recipe] == ["baseline", "recipe=finetune"]
    assert recipe[1].config.get("lr0") is None  # the finetune recipe fills its own lr0


@pytest.mark.parametrize("items, message", [
    (["nope=1,2"], "valid keys: amp, backbone_lr, backbone_weights, batch, box"),
    (["data=a.yaml"], "set by the ablation"),
    (["mosaic"], "key=value1,value2"),
    (["lr0=abc"], "expects a number"),
    (["epochs=0"], "--epochs must be at least 1"),
    (["model=leyolo-zz"], "neither a registered name"),
])
def test_bad_vary(items, message):
    with pytest.raises(LeyoloError, match=message):
        plan_variants({"model": "leyolo-n"}, parse_vary(items))


def test_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text("model: leyolo-n\nlr0: 1e-3\nplots: false\n")
    assert load_base(tmp_path / "base.yaml") == {"model": "leyolo-n", "lr0": 0.001, "plots": False}
    (tmp_path / "bad.json").write_text('{"model": "leyolo-n", "learning_rate": 0.1}')
    with pytest.raises(LeyoloError, match="unknown key 'learning_rate'"):
        load_base(tmp_path / "bad.json")
    assert load_base("leyolo-s") == {"model": "leyolo-s"}


def test_ablate_trains_each_variant_in_its_own_folder(plugin_cli, tmp_path, capsys):
    data = generate_shapes_dataset(tmp_path / "data", n_train=8, n_val=4, imgsz=64, progress=False)
    (tmp_path / "base.yaml").write_text("model: leyolo-n\nplots: false\n")
    argv = ["ablate", "-q", "--base", str(tmp_path / "base.yaml"), "--vary", "mosaic=0,0.5", "--data", str(data),
            "--epochs", "1", "--imgsz", "64", "--batch", "4", "--workers", "0", "--out", str(tmp_path / "out")]
    assert plugin_cli(argv) == 0
    with open(tmp_path / "out" / "ablation.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in rows] == ["baseline", "mosaic=0", "mosaic=0.5"]
    assert len({r["run_dir"] for r in rows}) == 3
    for r in rows:
        assert (Path(r["run_dir"]) / "weights" / "best.safetensors").is_file()
        assert 0.0 <= float(r["mAP50-95"]) <= float(r["mAP50"]) <= 1.0
        assert int(r["params"]) > 0 and float(r["latency_ms"]) > 0 and float(r["file_mb"]) > 1
        assert int(r["epochs"]) == 1
    markdown = (tmp_path / "out" / "ablation.md").read_text()
    assert "| mosaic=0.5 | mosaic | 0.5 |" in markdown
    assert "mosaic is switched off for every epoch" in markdown  # close_mosaic 10 >= 1 epoch: said, not hidden
    assert "| baseline |" in capsys.readouterr().out


def test_ablate_cli_bad_key(plugin_cli, tmp_path, capsys):
    argv = ["ablate", "--base", "leyolo-n", "--vary", "speed=1,2", "--data", str(tmp_path / "d.yaml")]
    assert plugin_cli(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown key 'speed'" in err and "mosaic" in err


def test_failed_variant_is_a_row_not_a_crash(tmp_path):
    data = generate_shapes_dataset(tmp_path / "data", n_train=8, n_val=4, imgsz=64, progress=False)
    base = {"model": "leyolo-n", "epochs": 1, "imgsz": 64, "batch": 4, "workers": 0, "plots": False}
    rows = run_ablation(base, {"teacher": [str(tmp_path / "missing.safetensors")]}, data, out=tmp_path / "out")
    assert [r["variant"] for r in rows] == ["baseline", f"teacher={tmp_path / 'missing.safetensors'}"]
    assert rows[0]["note"] == "" and rows[0]["mAP50"] is not None
    assert rows[1]["note"].startswith("failed:") and "missing.safetensors" in rows[1]["note"]
    assert "failed:" in (tmp_path / "out" / "ablation.md").read_text()
