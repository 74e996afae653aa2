"""End-to-end tests of the training engine on a tiny synthetic dataset (64 px images, 1-3 epochs).

Each run takes a second or two on one CPU thread; the DDP test starts two torchrun workers.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors import safe_open

import leyolo
from leyolo.api import Detector
from leyolo.cli import main
from leyolo.engine.checkpoint import TRAIN_PREFIX
from leyolo.engine.config import RECIPES, TrainConfig
from leyolo.engine.plots import read_results
from leyolo.engine.trainer import Trainer, train
from leyolo.errors import LeyoloError
from leyolo.weights import native
from leyolo.weights.native import load_native, read_native_metadata

NAMES = ["box", "disc"]
IMG = 64
FAST = dict(imgsz=IMG, batch=4, workers=0)  # 8 train images -> 2 batches per epoch


# ------------------------------------------------------------------------------ data set
def _draw(rng: np.random.Generator, n_objects: int, first_class: int) -> tuple[np.ndarray, list[str]]:
    img = np.full((IMG, IMG, 3), 40, np.uint8)
    lines = []
    for j in range(n_objects):
        cls = (first_class + j) % 2
        size = int(rng.integers(14, 24))
        half = size // 2
        cx, cy = (int(v) for v in rng.integers(half + 2, IMG - half - 2, size=2))
        if cls == 0:
            cv2.rectangle(img, (cx - half, cy - half), (cx + half, cy + half), (0, 200, 255), -1)
        else:
            cv2.circle(img, (cx, cy), half, (255, 120, 0), -1)
        lines.append(f"{cls} {cx / IMG:.6f} {cy / IMG:.6f} {2 * half / IMG:.6f} {2 * half / IMG:.6f}")
    return img, lines


def make_dataset(root: Path, n_train: int = 8, n_val: int = 4, seed: int = 0) -> Path:
    """YOLO layout (images/<split>, labels/<split>) with filled squares (box) and discs (disc)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, lines = _draw(rng, 1 + i % 2, i % 2)
            assert cv2.imwrite(str(root / "images" / split / f"{i}.png"), img)
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    yaml_path = root / "data.yaml"
    yaml_path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: box\n  1: disc\n")
    return yaml_path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("shapes"))


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as fh:
        return list(fh.keys())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ 1. basic run
def test_train_writes_results_plots_and_loadable_weights(data, tmp_path):
    result = train("leyolo-n", str(data), epochs=2, project=str(tmp_path), name="a", **FAST)

    save_dir, best, last = Path(result["save_dir"]), Path(result["best"]), Path(result["last"])
    assert save_dir == tmp_path / "a"
    assert best.is_file() and last.is_file()
    assert result["epochs"] == 2
    assert "mAP50-95" in result["metrics"]

    rows = read_results(save_dir / "results.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    for column in ("train/box", "train/cls", "train/dfl", "metrics/mAP50-95"):
        assert column in rows[0], column
        assert all(np.isfinite(r[column]) for r in rows)
    assert all(r["train/cls"] > 0 for r in rows)
    assert _is_png(save_dir / "loss.png") and _is_png(save_dir / "map.png")

    detector = leyolo.load(best)
    assert isinstance(detector, Detector)
    assert detector.names == NAMES and detector.model.nc == 2
    assert detector.meta.imgsz == IMG
    image = cv2.imread(str(data.parent / "images" / "val" / "0.png"))
    out = detector.predict(image, imgsz=IMG, conf=0.0)
    assert len(out) == 1 and out[0].orig_shape == (IMG, IMG)
    assert out[0].boxes.xyxy.shape[1:] == (4,)
    assert all(0 <= c < 2 for c in out[0].classes.tolist())

    keys = _keys(last)
    assert any(k.startswith(TRAIN_PREFIX + "model.") for k in keys)
    assert any(k.startswith(TRAIN_PREFIX + "optim.") for k in keys)
    assert not any(k.startswith(TRAIN_PREFIX) for k in _keys(best))  # best: weights only
    meta = read_native_metadata(last)
    assert meta["train"]["epoch"] == 1 and meta["train"]["epochs"] == 2
    assert meta["train"]["config"]["recipe"] == "scratch"  # a registered name trains from scratch
    assert meta["train"]["config"]["lr0"] == RECIPES["scratch"]["lr0"]
    again = leyolo.load(last)
    assert again.names == NAMES and again.model.nc == 2


def test_same_seed_same_run(data, tmp_path):
    """Two runs with one seed in one process match (model init included); the caller's RNGs are left alone."""
    import random

    losses = []
    for name in ("s1", "s2"):
        torch.manual_seed(123), np.random.seed(123), random.seed(123)
        train("leyolo-n", str(data), epochs=1, project=str(tmp_path), name=name, plots=False, val=False, **FAST)
        draws = (torch.rand(1).item(), np.random.rand(), random.random())
        torch.manual_seed(123), np.random.seed(123), random.seed(123)
        assert draws == (torch.rand(1).item(), np.random.rand(), random.random())
        row = read_results(tmp_path / name / "results.csv")[0]
        losses.append([row["train/box"], row["train/cls"], row["train/dfl"]])
    assert losses[0] == losses[1]


# ------------------------------------------------------------------------------ 2. resume
def test_resume_after_interrupt(data, tmp_path):
    def kill_after_first_epoch(trainer: Trainer) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("leyolo-n", str(data), epochs=3, project=str(tmp_path), name="r", plots=False,
              callbacks={"after_epoch": [kill_after_first_epoch]}, **FAST)
    run = tmp_path / "r"
    last = run / "weights" / "last.safetensors"
    assert read_native_metadata(last)["train"]["epoch"] == 0
    assert [r["epoch"] for r in read_results(run / "results.csv")] == [1]
    saved, _ = load_native(last)
    saved_momentum = {k: v for k, v in saved.items() if k.startswith(TRAIN_PREFIX + "optim.")}
    assert saved_momentum

    seen = {}

    def inspect(trainer: Trainer) -> None:
        seen["start_epoch"] = trainer.start_epoch
        seen["epochs"] = trainer.epochs
        seen["save_dir"] = trainer.save_dir
        state = trainer.optimizer.state_dict()["state"]
        seen["buffers"] = {f"{TRAIN_PREFIX}optim.{i}.{k}": v.clone() for i, entry in state.items()
                           for k, v in entry.items() if isinstance(v, torch.Tensor)}
        seen["weight"] = trainer.model.layers[0].conv.weight.detach().clone()

    mosaic = []
    result = train(resume=run, callbacks={"before_train": [inspect],
                                          "after_iter": [lambda t: mosaic.append(t.train_set.mosaic_enabled)]})

    assert seen["start_epoch"] == 1 and seen["epochs"] == 3
    assert seen["save_dir"] == run
    assert set(seen["buffers"]) == set(saved_momentum)  # momentum buffers restored, not empty
    for key, value in saved_momentum.items():
        torch.testing.assert_close(seen["buffers"][key], value)
    torch.testing.assert_close(seen["weight"], saved[TRAIN_PREFIX + "model.layers.0.conv.weight"])
    # scratch recipe: close_mosaic 10 > 3 epochs, so mosaic is off from epoch 0, also after a resume
    assert mosaic and not any(mosaic)

    assert Path(result["save_dir"]) == run and result["epochs"] == 3
    assert [r["epoch"] for r in read_results(run / "results.csv")] == [1, 2, 3]
    assert read_native_metadata(last)["train"]["epoch"] == 2
    assert leyolo.load(result["best"]).names == NAMES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no second run folder


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_run_repeats_the_uninterrupted_one(data, tmp_path, workers):
    """Data order, augmentations (in the main process or in workers) and weights follow (seed, epoch)."""
    opts = dict(epochs=2, plots=False, val=False, mosaic=1.0, close_mosaic=0, **(FAST | {"workers": workers}))
    train("leyolo-n", str(data), project=str(tmp_path), name="whole", **opts)

    def stop(trainer: Trainer) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("leyolo-n", str(data), project=str(tmp_path), name="cut", callbacks={"after_epoch": [stop]}, **opts)
    train(resume=tmp_path / "cut")
    rows = {name: read_results(tmp_path / name / "results.csv") for name in ("whole", "cut")}
    keys = ("train/box", "train/cls", "train/dfl")
    assert [[r[k] for k in keys] for r in rows["cut"]] == [[r[k] for k in keys] for r in rows["whole"]]
    whole, _ = load_native(tmp_path / "whole" / "weights" / "last.safetensors")
    cut, _ = load_native(tmp_path / "cut" / "weights" / "last.safetensors")
    for key, value in whole.items():
        torch.testing.assert_close(cut[key], value, rtol=0, atol=0, msg=key)


def test_resume_errors(data, tmp_path):
    with pytest.raises(LeyoloError, match="no checkpoint"):
        train(resume=tmp_path / "nothing")
    plain = Detector(leyolo.create_model("leyolo-n", nc=2, names=NAMES)).save(tmp_path / "plain.safetensors")
    with pytest.raises(LeyoloError, match="not a training checkpoint"):
        train(resume=plain)


# ------------------------------------------------------------------------------ 3. atomic save
def test_checkpoint_write_is_atomic(data, tmp_path, monkeypatch):
    real_save = native.save_file
    calls = {"last": 0}

    def failing_save(tensors, filename, metadata=None):
        if ".last.safetensors." in Path(filename).name:
            calls["last"] += 1
            if calls["last"] == 2:  # second epoch: die half-way through the write
                real_save(tensors, filename, metadata=metadata)
                with open(filename, "r+b") as fh:
                    fh.truncate(os.path.getsize(filename) // 2)
                raise OSError("No space left on device")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(native, "save_file", failing_save)
    with pytest.raises(OSError, match="No space left"):
        train("leyolo-n", str(data), epochs=2, project=str(tmp_path), name="x", plots=False, **FAST)
    assert calls["last"] == 2
    weights = tmp_path / "x" / "weights"
    assert sorted(p.name for p in weights.iterdir()) == ["best.safetensors", "last.safetensors"]
    last = weights / "last.safetensors"
    assert read_native_metadata(last)["train"]["epoch"] == 0  # the first epoch's file, whole
    assert leyolo.load(last).names == NAMES
    assert any(k.startswith(TRAIN_PREFIX) for k in _keys(last))


# ------------------------------------------------------------------------------ 4. fine-tune, new classes
def test_finetune_with_other_class_count(data, tmp_path):
    source = Detector(leyolo.create_model("leyolo-n", nc=3)).save(tmp_path / "three.safetensors")
    src, _ = load_native(source)
    seen = {}

    def before(trainer: Trainer) -> None:
        model = trainer.model
        seen["config"] = trainer.config
        seen["stem"] = model.layers[0].conv.weight.detach().clone()
        seen["box_out"] = model.head.box[0][-1].weight.detach().clone()
        seen["nc"] = model.nc
        seen["names"] = list(model.names)

    result = train(str(source), str(data), epochs=1, project=str(tmp_path), name="ft", plots=False,
                   callbacks={"before_train": [before]}, **FAST)

    cfg = seen["config"]
    assert cfg.recipe == "finetune" and cfg.lr0 == RECIPES["finetune"]["lr0"] and cfg.mosaic == 0.0
    assert seen["nc"] == 2 and seen["names"] == NAMES
    torch.testing.assert_close(seen["stem"], src["layers.0.conv.weight"], rtol=0, atol=0)
    torch.testing.assert_close(seen["box_out"], src["head.box.0.3.weight"], rtol=0, atol=0)

    tuned, _ = load_native(result["best"])
    assert set(tuned) == set(src)
    changed = {k for k in src if tuned[k].shape != src[k].shape}
    assert changed == {f"head.cls.{i}.3.{p}" for i in range(3) for p in ("weight", "bias")}
    for i in range(3):
        assert tuned[f"head.cls.{i}.3.weight"].shape[0] == 2
    detector = leyolo.load(result["best"])
    assert detector.names == NAMES and detector.model.nc == 2


# ------------------------------------------------------------------------------ 5. distillation
def test_distillation(data, tmp_path):
    torch.manual_seed(1234)  # a teacher that differs from the seed-0 student
    teacher = Detector(leyolo.create_model("leyolo-n", nc=2, names=NAMES)).save(tmp_path / "teacher.safetensors")
    result = train("leyolo-n", str(data), epochs=1, project=str(tmp_path), name="kd", plots=False, val=False,
                   teacher=str(teacher), distill_ratio=1.0, **FAST)
    rows = read_results(Path(result["save_dir"]) / "results.csv")
    assert "train/distill" in rows[0]
    assert rows[0]["train/distill"] > 0

    wrong = Detector(leyolo.create_model("leyolo-n", nc=3)).save(tmp_path / "teacher3.safetensors")
    with pytest.raises(LeyoloError, match="teacher"):
        train("leyolo-n", str(data), epochs=1, project=str(tmp_path), name="kd3", teacher=str(wrong), **FAST)


def test_feature_distillation_trains_adapters_and_resumes_exactly(data, tmp_path):
    """Channel-wise feature distillation from a wider teacher: the 1x1 adapters learn, ride in the resume
    state (not in the model), and a cut + resumed run repeats the uninterrupted one bit for bit."""
    torch.manual_seed(1234)
    teacher = Detector(leyolo.create_model("leyolo-s", nc=2, names=NAMES)).save(tmp_path / "teacher-s.safetensors")
    opts = dict(epochs=2, plots=False, val=False, mosaic=1.0, close_mosaic=0, teacher=str(teacher),
                distill_ratio=0.0, feature_distill=1.0, **FAST)
    seen = {}

    def adapters(trainer: Trainer) -> None:
        seen.setdefault("start", {k: v.clone() for k, v in trainer.distiller.state_dict().items()})

    train("leyolo-n", str(data), project=str(tmp_path), name="whole", callbacks={"before_train": [adapters]}, **opts)
    rows = read_results(tmp_path / "whole" / "results.csv")
    assert all(r["train/feat"] > 0 for r in rows) and "train/distill" not in rows[0]  # feature term only
    whole, _ = load_native(tmp_path / "whole" / "weights" / "last.safetensors")
    learnt = {k[len(TRAIN_PREFIX + "distill."):]: v for k, v in whole.items() if k.startswith(TRAIN_PREFIX + "distill.")}
    assert set(learnt) == set(seen["start"]) and any(not torch.equal(learnt[k], seen["start"][k]) for k in learnt)
    best, _ = load_native(tmp_path / "whole" / "weights" / "best.safetensors")
    assert not any("distill" in k for k in best)  # the adapters are not part of the model
    assert leyolo.load(tmp_path / "whole" / "weights" / "best.safetensors").names == NAMES

    def stop(trainer: Trainer) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("leyolo-n", str(data), project=str(tmp_path), name="cut", callbacks={"after_epoch": [stop]}, **opts)
    train(resume=tmp_path / "cut")
    cut_rows = read_results(tmp_path / "cut" / "results.csv")
    assert [r["train/feat"] for r in cut_rows] == [r["train/feat"] for r in rows]
    cut, _ = load_native(tmp_path / "cut" / "weights" / "last.safetensors")
    for key, value in whole.items():
        if not key.endswith("rng.torch"):
            torch.testing.assert_close(cut[key], value, rtol=0, atol=0, msg=key)

    with pytest.raises(LeyoloError, match="--feature-distill needs --teacher"):
        train("leyolo-n", str(data), epochs=1, project=str(tmp_path), name="nt", feature_distill=1.0, **FAST)
    assert main(["train", "--model", "leyolo-n", "--data", str(data), "--epochs", "1", "--imgsz", str(IMG),
                 "--feature-distill", "1", "--project", str(tmp_path), "--name", "cli"]) != 0


# ------------------------------------------------------------------------------ 6. bad labels
def test_bad_labels_are_logged_and_skipped(tmp_path, caplog):
    yaml_path = make_dataset(tmp_path / "bad", n_train=8, n_val=2)
    label = tmp_path / "bad" / "labels" / "train" / "0.txt"
    label.write_text("0 0.5 0.5 0.3 0.3\n"
                     "5 0.5 0.5 0.2 0.2\n"  # class out of range
                     "1 0.5 0.5 0.2\n"  # 4 columns
                     "0 1.5 0.5 0.2 0.2\n")  # not normalised
    records = {}

    def grab(trainer: Trainer) -> None:
        records.update({Path(r.path).name: r for r in trainer.train_set.labels})

    caplog.set_level(logging.WARNING, logger="leyolo")
    result = train("leyolo-n", str(yaml_path), epochs=1, project=str(tmp_path), name="bad", plots=False,
                   callbacks={"before_train": [grab]}, **FAST)

    assert len(read_results(Path(result["save_dir"]) / "results.csv")) == 1
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "leyolo")
    assert f"{label}:2: class 5 out of range" in text
    assert f"{label}:3: expected 5 columns" in text
    assert f"{label}:4: coordinates outside [0, 1]" in text
    assert f"{label}:1" not in text
    assert records["0.png"].classes.tolist() == [0]  # the good line survives
    assert len(records) == 8


# ------------------------------------------------------------------------------ 7. multi-scale
def test_multi_scale(data, tmp_path, monkeypatch):
    original = Trainer._scaled_batch
    shapes = []

    def spy(self, images, targets):
        out_images, out_targets = original(self, images, targets)
        shapes.append(tuple(out_images.shape[-2:]))
        if len(out_targets):
            assert float(out_targets[:, 2:].max()) <= out_images.shape[-1] + 1e-3
        return out_images, out_targets

    monkeypatch.setattr(Trainer, "_scaled_batch", spy)
    train("leyolo-n", str(data), epochs=1, imgsz=IMG, batch=2, workers=0, multi_scale=0.5, seed=0,
          project=str(tmp_path), name="ms", plots=False, val=False)
    assert len(shapes) == 4
    assert all(h == w and h % 32 == 0 and 32 <= h <= 96 for h, w in shapes)
    assert len(set(shapes)) >= 2, shapes


# ------------------------------------------------------------------------------ 8. DDP (gloo, CPU)
@pytest.mark.parametrize("model", ["leyolo-n", "le-detr-n-ly"])  # a dense head and a set predictor (its own recipe)
def test_ddp_two_cpu_processes(data, tmp_path, capsys, model):
    project = tmp_path / "runs"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "leyolo", "train", "--model", model, "--data", str(data),
           "--epochs", "1", "--imgsz", str(IMG), "--batch", "4", "--workers", "0", "--project", str(project),
           "--name", "ddp", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in project.iterdir()) == ["ddp"]  # only rank 0 writes
    run = project / "ddp"
    assert [r["epoch"] for r in read_results(run / "results.csv")] == [1]
    best = run / "weights" / "best.safetensors"
    assert best.is_file() and (run / "weights" / "last.safetensors").is_file()

    capsys.readouterr()
    assert main(["val", "--model", str(best), "--data", str(data), "--imgsz", str(IMG),
                 "--save-dir", str(tmp_path / "val")]) == 0
    assert "mAP" in capsys.readouterr().out


# ------------------------------------------------------------------------------ 9. CLI
def test_cli_train(data, tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    assert main(["train", "--data", str(missing)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing.yaml" in err[0]

    project = tmp_path / "runs"
    args = ["train", "--model", "leyolo-n", "--data", str(data), "--epochs", "1", "--imgsz", str(IMG),
            "--batch", "4", "--workers", "0", "--project", str(project), "--name", "cli"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "best weights" in out and str(project / "cli" / "weights" / "best.safetensors") in out
    assert len(read_results(project / "cli" / "results.csv")) == 1

    bad = list(args)
    bad[bad.index("--imgsz") + 1] = "65"
    assert main(bad) == 1
    err = capsys.readouterr().err
    assert "--imgsz must be a positive multiple of 32" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--resume", "--project", str(empty)]) == 1
    assert "no run to resume" in capsys.readouterr().err


def test_cli_resume_keeps_checkpoint_settings(data, tmp_path, capsys):
    """``--resume`` without --workers/--device keeps the checkpoint's values, not the CLI defaults."""
    def stop(trainer: Trainer) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("leyolo-n", str(data), epochs=2, project=str(tmp_path), name="c", plots=False, val=False,
              callbacks={"after_epoch": [stop]}, **FAST)
    last = tmp_path / "c" / "weights" / "last.safetensors"
    assert main(["train", "--resume", "--project", str(tmp_path)]) == 0  # latest run of the project
    assert "best weights" in capsys.readouterr().out
    config = read_native_metadata(last)["train"]["config"]
    assert read_native_metadata(last)["train"]["epoch"] == 1
    assert config["workers"] == 0 and config["device"] == "cpu" and config["val"] is False
    assert [r["epoch"] for r in read_results(tmp_path / "c" / "results.csv")] == [1, 2]


# ------------------------------------------------------------------------------ 10. recipes
def test_config_recipes():
    scratch = TrainConfig(model="leyolo-n").resolved(pretrained=False)
    assert scratch.recipe == "scratch"
    assert scratch.lr0 == 0.01 and scratch.mosaic == 1.0
    assert scratch.warmup_epochs == 3.0 and scratch.close_mosaic == 10

    tune = TrainConfig(model="weights.safetensors").resolved(pretrained=True)
    assert tune.recipe == "finetune"
    assert tune.lr0 == 0.001 and tune.mosaic == 0.0 and tune.warmup_epochs == 0.0 and tune.close_mosaic == 0

    explicit = TrainConfig(lr0=0.05, mosaic=0.3).resolved(pretrained=True)
    assert explicit.recipe == "finetune" and explicit.lr0 == 0.05 and explicit.mosaic == 0.3
    assert explicit.warmup_bias_lr == 0.0  # the rest still comes from the recipe
    forced = TrainConfig(recipe="scratch").resolved(pretrained=True)
    assert forced.recipe == "scratch" and forced.lr0 == 0.01
    assert TrainConfig().lr0 is None  # resolved() returns a copy

    with pytest.raises(LeyoloError, match="recipe"):
        TrainConfig(recipe="magic").resolved(False)
    with pytest.raises(LeyoloError, match="imgsz"):
        TrainConfig(imgsz=65).resolved(False)
    with pytest.raises(LeyoloError, match="multi-scale"):
        TrainConfig(multi_scale=1.5).resolved(False)
    cfg = TrainConfig(epochs=7, name="z")
    assert TrainConfig.from_dict({**cfg.to_dict(), "unknown": 1}) == cfg


def test_detector_train_fine_tunes_in_memory_model(data, tmp_path):
    import leyolo

    detector = leyolo.api.Detector(leyolo.create_model("leyolo-n", nc=2, names=["box", "disc"]))
    before = detector.model.layers[0].conv.weight.detach().clone()
    result = detector.train(data, epochs=1, imgsz=64, batch=4, workers=0, project=str(tmp_path), name="mem")
    assert Path(result["best"]).is_file()
    assert torch.equal(detector.model.layers[0].conv.weight, before)  # the caller's model is not touched
    trained = leyolo.load(result["best"])
    assert trained.names == ["box", "disc"]
    assert not torch.equal(trained.model.layers[0].conv.weight, before)
    # an in-memory model counts as pretrained: the fine-tune recipe applies
    meta_config = json.loads(safe_open_metadata(Path(result["last"]))["leyolo"])["train"]["config"]
    assert meta_config["recipe"] == "finetune"


def safe_open_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata()


def test_multi_gpu_device_launches_torchrun(monkeypatch, capsys):
    import subprocess

    from leyolo.cli import main

    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["train", "--data", "d.yaml", "--device", "cuda:0,1", "--epochs", "3"]) == 0
    (cmd, env), = calls
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    assert cmd[cmd.index("--device") + 1] == "cuda" and "--epochs" in cmd
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"


# --------------------------------------------------------------------------- --time planning
def _planner(minutes: float, min_epochs: int = 1, elapsed: float = 0.0) -> Trainer:
    trainer = Trainer(TrainConfig(time=minutes, min_epochs=min_epochs))
    trainer.config = trainer.requested
    trainer.t0 = time.perf_counter() - elapsed
    trainer.epochs, trainer.planned = 1, False
    return trainer


def test_time_plan_fills_the_budget_from_measured_speed():
    t = _planner(1.0, elapsed=2.0)  # 20% of epoch 1 took 2 s: 10 s per epoch, 58 s left
    t._plan_epochs(0.2, 10.0)
    assert t.planned and t.epochs == 6  # epoch 1 ends at ~10 s, then five more fill the minute
    t = _planner(1.0, elapsed=30.0)
    t._plan_epochs(2, 15.0)  # two epochs done at 30 s: two more of 15 s end on the minute
    assert t.epochs == 4
    t = _planner(1.0, min_epochs=8, elapsed=50.0)
    t._plan_epochs(2, 25.0)  # the budget is spent, but the minimum still runs
    assert t.epochs == 8


def test_time_run_logs_its_plan_and_runs_what_it_says(data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="leyolo")
    result = train("leyolo-n", str(data), time=0.001, min_epochs=3, project=str(tmp_path), name="t", plots=False,
                   val=False, **FAST)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "leyolo")
    assert result["epochs"] == 3 == len(read_results(Path(result["save_dir"]) / "results.csv"))
    assert "planned 3 epochs" in text and "epochs planned from measured speed" in text
    assert "/100" not in text  # the default --epochs never shows up in a --time run


def test_le_detr_trains_resumes_and_saves_with_its_own_recipe(data, tmp_path):
    """The DETR family through the same trainer: its recipe (AdamW, backbone groups at 0.5x lr, clip 0.1,
    no accumulation), targets passed to forward (denoising), a resume that restores the AdamW state,
    and a checkpoint that reloads with its inference depth."""
    seen = {}

    def record(trainer: Trainer) -> None:
        cfg = trainer.config
        seen["recipe"] = (cfg.recipe, cfg.optimizer, cfg.grad_clip, trainer.accumulate)
        seen["scales"] = sorted({g["lr_scale"] for g in trainer.optimizer.param_groups})

    def stop(trainer: Trainer) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("le-detr-n", str(data), epochs=2, project=str(tmp_path), name="d", plots=False,
              callbacks={"before_train": [record], "after_epoch": [stop]}, **FAST)
    assert seen["recipe"] == ("detr-scratch", "AdamW", 0.1, 1)
    assert seen["scales"] == [0.5, 1.0]
    run = tmp_path / "d"
    rows = read_results(run / "results.csv")
    assert rows[0]["train/l1"] > 0 and rows[0]["train/dn"] > 0  # matching and denoising losses both ran
    result = train(resume=run)
    assert result["epochs"] == 2 and [r["epoch"] for r in read_results(run / "results.csv")] == [1, 2]
    detector = leyolo.load(result["best"])
    assert detector.meta.kind == "set" and detector.names == NAMES
    detector.set_decoder_layers(2)
    detector.save(tmp_path / "two.safetensors")
    assert leyolo.load(tmp_path / "two.safetensors").model.decoder.eval_layers == 2
