"""Fast defaults: ``--backend auto``, the per-detector backend cache, and thread counts from usable CPUs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import leyolo
from leyolo import api
from leyolo.cli import main
from leyolo.errors import LeyoloError
from leyolo.inference import backends
from leyolo.inference.backends import auto_backend, onnxruntime_session
from leyolo.inference.cpus import cgroup_cpu_limit, usable_cpus


def test_auto_prefers_the_first_installed_cpu_runtime(monkeypatch):
    assert auto_backend("cpu") == backends.CPU_PREFERENCE[0] == "onnxruntime"
    monkeypatch.setattr(backends, "runtime_installed", lambda name: name == "openvino")
    assert auto_backend("cpu") == "openvino"  # onnxruntime missing: the next one
    monkeypatch.setattr(backends, "runtime_installed", lambda name: False)
    assert auto_backend("cpu") == "torch"  # no optional runtime at all: PyTorch weights still run
    assert auto_backend("cpu", "torchscript") == "torchscript"
    assert auto_backend("cpu", "openvino") == "openvino"


def test_auto_on_cuda_keeps_torch(monkeypatch):
    monkeypatch.setattr(backends, "torch_device", lambda device: torch.device("cuda", 0))
    assert auto_backend("cuda") == "torch"
    assert auto_backend("cuda", "onnx") == "onnxruntime"


def test_default_backend_of_predict_is_auto_and_matches_torch():
    torch.manual_seed(0)
    detector = leyolo.load("leyolo-n")
    image = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    fast = detector.predict(image, conf=0.0, max_det=50)[0]
    assert isinstance(detector.backend(), backends.OnnxRuntimeBackend)
    ref = detector.predict(image, backend="torch", conf=0.0, max_det=50)[0]
    assert len(ref) == 50 and len(fast) == 50
    np.testing.assert_allclose(fast.scores, ref.scores, atol=1e-5)


def test_backends_are_built_once_per_detector(monkeypatch):
    built = []
    real = api.OnnxRuntimeBackend

    def counting(*args, **kwargs):
        built.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "OnnxRuntimeBackend", counting)
    torch.manual_seed(0)
    detector = leyolo.load("leyolo-n")
    image = np.full((160, 160, 3), 90, np.uint8)
    for _ in range(5):
        detector.predict(image, backend="onnxruntime", imgsz=160)
    detector.predict(image, backend="onnxruntime", imgsz=320)  # the dynamic export serves every size
    assert len(built) == 1
    assert detector.backend("onnxruntime") is detector.backend("onnxruntime")
    detector.predict(image, backend="onnxruntime", threads=1)  # another thread count is another session
    assert len(built) == 2


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_cache_notices_changed_weights(backend):
    """In-place weight changes rebuild the backend (and the temporary ONNX export behind onnxruntime)."""
    torch.manual_seed(0)
    detector = leyolo.load("leyolo-n")
    image = np.full((128, 128, 3), 90, np.uint8)
    before = detector.predict(image, backend=backend, conf=0.0, max_det=5)[0].scores
    engine = detector.backend(backend)
    state = {k: v.clone() for k, v in detector.model.state_dict().items()}
    for key in state:
        if key.endswith("cls.0.3.bias"):  # the class output of P3: every score there moves
            state[key] += 3.0
    detector.model.load_state_dict(state)
    assert detector.backend(backend) is not engine
    after = detector.predict(image, backend=backend, conf=0.0, max_det=5)[0].scores
    assert after.min() > before.max()


def test_unknown_and_mismatched_backends_are_one_line_errors(tmp_path):
    detector = leyolo.load("leyolo-n")
    with pytest.raises(LeyoloError, match="unknown backend 'tflite'"):
        detector.backend("tflite")
    path = detector.export(tmp_path / "n.torchscript", imgsz=64)
    with pytest.raises(LeyoloError, match="runs on --backend torchscript"):
        leyolo.load(path).backend("onnxruntime")


def test_usable_cpus_follow_affinity_and_cgroup(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs of quota
    assert cgroup_cpu_limit(tmp_path) == 1.5
    assert usable_cpus(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == 8
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000")  # cgroup v1: 3 CPUs
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert usable_cpus(tmp_path) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})
    assert usable_cpus(tmp_path) == 1


def test_onnxruntime_threads_follow_usable_cpus(monkeypatch, tmp_path):
    path = leyolo.load("leyolo-n").export(tmp_path / "n.onnx", imgsz=64)
    monkeypatch.setattr(backends, "usable_cpus", lambda: 1)
    assert onnxruntime_session(path).get_session_options().intra_op_num_threads == 1
    assert onnxruntime_session(path, threads=3).get_session_options().intra_op_num_threads == 3


def test_cli_threads_option(tmp_path, capsys):
    image = tmp_path / "a.png"
    import cv2

    cv2.imwrite(str(image), np.full((64, 64, 3), 100, np.uint8))
    assert main(["predict", "--model", "leyolo-n", "--source", str(image), "--no-save", "--threads", "1",
                 "--imgsz", "64"]) == 0
    assert "1 images" in capsys.readouterr().out
    assert main(["predict", "--model", "leyolo-n", "--source", str(image), "--threads", "0"]) == 2
