"""TensorRT export (``--format engine``) and the tensorrt backend.

Without an NVIDIA GPU (and the ``tensorrt`` extra) only what needs neither runs: option
validation, the one-line errors where CUDA or TensorRT is missing, the optimisation-profile
shapes, the INT8 calibrator's batching and cache file on numpy data (through a stand-in for the
``tensorrt`` module), the builder calls, and the engine file's header. The tests at the bottom
build, load and score real engines; they skip with the reason where there is no GPU. A GPU
session runs this file alone: ``python -m pytest tests/test_tensorrt.py -rs``.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from shared_data import COCO_MINI, HAVE_SHARED

import leyolo
from leyolo.cli import main
from leyolo.deploy import tensorrt as trt_export
from leyolo.deploy.base import ExportOptions
from leyolo.errors import LeyoloError
from leyolo.inference.backends import TensorRTBackend, cuda_device

HAVE_GPU = torch.cuda.is_available()
try:
    import tensorrt  # noqa: F401

    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False
needs_gpu = pytest.mark.skipif(not (HAVE_GPU and HAVE_TRT),
                               reason="needs an NVIDIA GPU with CUDA and pip install 'leyolo[tensorrt]' "
                                      f"(CUDA available: {HAVE_GPU}, tensorrt installed: {HAVE_TRT})")
no_gpu = pytest.mark.skipif(HAVE_GPU, reason="checks the error on machines without CUDA")


@pytest.fixture(scope="module")
def small() -> leyolo.Detector:
    torch.manual_seed(0)
    return leyolo.Detector(leyolo.create_model("leyolo-n", nc=3, names=["a", "b", "c"]))


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory) -> Path:
    from leyolo.data.synthetic import generate_shapes_dataset

    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_train=12, n_val=4, imgsz=96, progress=False)


# -------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("fmt,options,match", [
    ("engine", {"int8": True}, "--int8 needs --data"),
    ("engine", {"data": "d.yaml"}, "--data is only used by --format engine --int8"),
    ("onnx", {"int8": True, "data": "d.yaml"}, "--int8 is for --format engine"),
    ("openvino", {"int8": True, "data": "d.yaml"}, "--int8 is for --format engine"),
    ("engine", {"nms": True}, "--nms is not available for engine"),
])
def test_option_validation(fmt, options, match):
    with pytest.raises(LeyoloError, match=match):
        ExportOptions(**options).validate(fmt)


def test_valid_options_pass():
    for options in ({}, {"half": True}, {"int8": True, "data": "d.yaml"}, {"dynamic": False, "batch": 4}):
        ExportOptions(**options).validate("engine")


def test_default_path_and_format_from_name():
    from leyolo.deploy.export import default_path, path_format

    assert default_path("leyolo-n", "engine", 640) == Path("leyolo-n-640.engine")
    assert path_format(Path("a/b.engine")) == "engine"


# ----------------------------------------------------------------------- missing CUDA / TensorRT
@no_gpu
def test_export_without_cuda_is_one_line(small, tmp_path):
    with pytest.raises(LeyoloError, match="needs an NVIDIA GPU with CUDA") as info:
        small.export(tmp_path / "m.engine", imgsz=64)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "m.engine").exists()


@no_gpu
def test_cli_export_without_cuda(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    leyolo.Detector(leyolo.create_model("leyolo-n", nc=2, names=["a", "b"])).save(weights)
    assert main(["export", "--model", str(weights), "--format", "engine", "--imgsz", "64",
                 "--out", str(tmp_path / "m.engine")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NVIDIA GPU with CUDA" in err[0]


def test_export_without_tensorrt_names_the_extra(small, tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # past the CUDA check
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(LeyoloError, match=r"needs tensorrt, which is not installed: pip install 'leyolo\[tensorrt\]'"):
        small.export(tmp_path / "m.engine", imgsz=64)


@pytest.mark.parametrize("version,int8,match", [
    ("8.6.1", False, "needs TensorRT >= 10"),
    ("11.4.0", True, "--int8 calibration needs TensorRT 10"),
])
def test_tensorrt_versions(monkeypatch, version, int8, match):
    import sys

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))
    with pytest.raises(LeyoloError, match=match):
        trt_export.require_tensorrt("TensorRT export", int8=int8)


def test_tensorrt_11_without_int8_is_accepted(monkeypatch):
    import sys

    fake = types.SimpleNamespace(__version__="11.4.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    assert trt_export.require_tensorrt("TensorRT export") is fake


@no_gpu
def test_backend_without_cuda(tmp_path):
    with pytest.raises(LeyoloError, match="tensorrt backend needs an NVIDIA GPU with CUDA"):
        TensorRTBackend(b"plan", tmp_path / "m.engine")
    with pytest.raises(LeyoloError, match="runs on CUDA devices, not 'mps'"):
        cuda_device("mps")


def test_pytorch_weights_need_an_engine(small):
    with pytest.raises(LeyoloError, match="build one with leyolo export --format engine"):
        small.resolve_backend("tensorrt")


# --------------------------------------------------------------------------------------- shapes
def test_profile_shapes_dynamic():
    low, opt, high = trt_export.profile_shapes(640, batch=4, dynamic=True)
    assert low == (1, 3, 32, 32)  # a letterboxed strip: one stride on its short side
    assert opt == high == (4, 3, 640, 640)  # the letterbox's long side is imgsz: never more
    assert trt_export.profile_shapes(320, 1, True, stride=64)[0] == (1, 3, 64, 64)


def test_profile_shapes_static_and_invalid():
    assert trt_export.profile_shapes(320, 2, dynamic=False) == ((2, 3, 320, 320),) * 3
    for imgsz, batch in ((330, 1), (16, 1), (320, 0)):
        with pytest.raises(LeyoloError):
            trt_export.profile_shapes(imgsz, batch)


def test_calibration_shape():
    assert trt_export.calibration_shape(ExportOptions(imgsz=320, dynamic=True), 500) == (8, 3, 320, 320)
    assert trt_export.calibration_shape(ExportOptions(imgsz=320, dynamic=True), 5) == (5, 3, 320, 320)
    assert trt_export.calibration_shape(ExportOptions(imgsz=320, dynamic=False, batch=2), 500) == (2, 3, 320, 320)


# ---------------------------------------------------------------------------------- calibration
def _numbered(i: int) -> np.ndarray:
    return np.full((3, 4, 6), float(i), dtype=np.float32)


def test_calibration_batches():
    batches = trt_export.CalibrationBatches(_numbered, count=10, batch=4)
    assert len(batches) == 2 and batches.dropped == 2
    first, second = batches.next(), batches.next()
    assert first.shape == (4, 3, 4, 6) and first.dtype == np.float32 and first.flags["C_CONTIGUOUS"]
    assert [float(b[0, 0, 0]) for b in first] == [0, 1, 2, 3] and float(second[0, 0, 0, 0]) == 4
    assert batches.next() is None  # images 8 and 9 are left out: TensorRT's calibration shape is fixed
    assert [b.shape[0] for b in batches] == [4, 4]  # iteration starts over
    batches.reset()
    assert float(batches.next()[0, 0, 0, 0]) == 0


def test_calibration_batches_accept_blobs_and_check_shapes():
    blobs = trt_export.CalibrationBatches(lambda i: _numbered(i)[None], count=2, batch=2)
    assert blobs.next().shape == (2, 3, 4, 6)
    mixed = trt_export.CalibrationBatches(lambda i: np.zeros((3, 4 + i, 6), np.float32), count=2, batch=2)
    with pytest.raises(LeyoloError, match="different shapes"):
        mixed.next()
    with pytest.raises(LeyoloError, match="at least 8 images"):
        trt_export.CalibrationBatches(_numbered, count=3, batch=8)


def test_calibration_cache(tmp_path):
    path = tmp_path / "m.engine.calib"
    cache = trt_export.CalibrationCache(path, "k1")
    assert cache.read() is None  # no file yet
    table = b"TRT-1000-EntropyCalibration2\nimages: 3c010a14\n"
    cache.write(table)
    assert path.read_bytes().startswith(b"# leyolo calibration k1\n")
    assert cache.read() == table
    assert trt_export.CalibrationCache(path, "k2").read() is None  # other weights/images: recalibrate


def test_calibration_key_tracks_weights_shape_and_images(small, tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    for f in (a, b):
        cv2.imwrite(str(f), np.zeros((8, 8, 3), np.uint8))
    shape = (8, 3, 64, 64)
    key = trt_export.calibration_key(small.model, [a, b], shape)
    assert key == trt_export.calibration_key(small.model, [a, b], shape)
    assert key != trt_export.calibration_key(small.model, [a], shape)
    assert key != trt_export.calibration_key(small.model, [a, b], (4, 3, 64, 64))
    other = leyolo.create_model("leyolo-n", nc=3, names=["a", "b", "c"])
    assert key != trt_export.calibration_key(other, [a, b], shape)


class _FakeCalibratorBase:
    def __init__(self) -> None:
        self.base_initialised = True


def test_calibrator_feeds_batches_and_keeps_the_cache(tmp_path):
    fake_trt = types.SimpleNamespace(IInt8EntropyCalibrator2=_FakeCalibratorBase)
    batches = trt_export.CalibrationBatches(_numbered, count=5, batch=2)
    cache = trt_export.CalibrationCache(tmp_path / "c.calib", "key")
    sent: list[np.ndarray] = []

    def to_device(blob):
        sent.append(blob)
        return blob, 1000 + len(sent)

    calibrator = trt_export.make_calibrator(fake_trt, batches, cache, to_device)
    assert isinstance(calibrator, _FakeCalibratorBase) and calibrator.base_initialised
    assert calibrator.get_batch_size() == 2
    assert calibrator.get_batch(["images"]) == [1001]
    assert calibrator.get_batch(["images"]) == [1002]
    assert calibrator.get_batch(["images"]) is None  # 5 images in batches of 2: two batches
    assert [float(b[0, 0, 0, 0]) for b in sent] == [0, 2]
    assert calibrator._device is sent[-1]  # the last batch stays referenced while TensorRT reads it
    assert calibrator.read_calibration_cache() is None
    calibrator.write_calibration_cache(memoryview(b"table"))
    assert calibrator.read_calibration_cache() == b"table"


def test_calibration_files_and_loader(shapes_data, tmp_path):
    files = trt_export.calibration_files(shapes_data, n=5)
    assert len(files) == 5 and all("train" in str(f) for f in files)
    assert len(trt_export.calibration_files(shapes_data)) == 12
    load = trt_export.letterboxed_loader(files, 128, 32, 114)
    blob = load(0)
    assert blob.shape == (3, 128, 128) and blob.dtype == np.float32 and 0 <= blob.min() <= blob.max() <= 1
    wide = tmp_path / "wide.jpg"
    cv2.imwrite(str(wide), np.zeros((20, 80, 3), np.uint8))
    padded = trt_export.letterboxed_loader([wide], 64)(0)
    assert padded.shape == (3, 64, 64)
    assert padded[:, 0, 0] == pytest.approx(114 / 255, abs=1e-6)  # square padding, the static-input letterbox
    no_train = tmp_path / "val-only.yaml"
    no_train.write_text(f"path: {shapes_data.parent}\nval: images/val\nnames: [circle, square, triangle]\n")
    with pytest.raises(LeyoloError, match="calibrates on the train split"):
        trt_export.calibration_files(no_train)


# ------------------------------------------------------------------------------- builder calls
class _Recorder:
    """A stand-in ``tensorrt`` module that records what ``build_engine`` asks of it."""

    def __init__(self, version: str = "10.13.0") -> None:
        self.calls: list[tuple] = []
        rec = self
        self.__version__ = version

        class Flag:
            STRONGLY_TYPED = 1
            EXPLICIT_BATCH = 0

        class BuilderFlag:
            FP16, INT8 = "FP16", "INT8"

        class Profile:
            def set_shape(self, name, low, opt, high):
                rec.calls.append(("set_shape", name, low, opt, high))

        class Config:
            def set_memory_pool_limit(self, pool, size):
                rec.calls.append(("workspace", size))

            def add_optimization_profile(self, profile):
                rec.calls.append(("add_profile",))

            def set_flag(self, flag):
                rec.calls.append(("flag", flag))

            def set_calibration_profile(self, profile):
                rec.calls.append(("calibration_profile",))

            @property
            def int8_calibrator(self):
                return None

            @int8_calibrator.setter
            def int8_calibrator(self, value):
                rec.calls.append(("calibrator", value))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                rec.calls.append(("network", flags))
                return "network"

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                rec.calls.append(("build",))
                return b"PLAN"

        class Parser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                rec.calls.append(("parse", Path(path).name))
                return True

        self.NetworkDefinitionCreationFlag = Flag
        self.BuilderFlag = BuilderFlag
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
        self.Builder, self.OnnxParser = Builder, Parser


def test_build_fp16_dynamic_is_strongly_typed_with_the_profile():
    rec = _Recorder()
    opts = ExportOptions(imgsz=320, half=True, batch=2)
    assert trt_export.build_engine(rec, Path("m.onnx"), opts) == b"PLAN"
    assert ("network", 1 << 1) in rec.calls  # strongly typed: the ONNX export's own FP16/FP32 casts
    assert ("set_shape", "images", (1, 3, 32, 32), (2, 3, 320, 320), (2, 3, 320, 320)) in rec.calls
    assert not any(c[0] == "flag" for c in rec.calls)  # no weak-typing precision flags (removed in TensorRT 11)


def test_build_int8_dynamic_sets_flags_calibrator_and_calibration_profile():
    rec = _Recorder()
    opts = ExportOptions(imgsz=320, int8=True, data="d.yaml", half=True)
    marker = object()
    trt_export.build_engine(rec, Path("m.onnx"), opts, calibrator=marker, calib_shape=(8, 3, 320, 320))
    assert ("network", 0) in rec.calls  # INT8 calibration needs weak typing
    assert ("flag", "INT8") in rec.calls and ("flag", "FP16") in rec.calls and ("calibrator", marker) in rec.calls
    assert ("set_shape", "images", (8, 3, 320, 320), (8, 3, 320, 320), (8, 3, 320, 320)) in rec.calls
    assert ("calibration_profile",) in rec.calls


def test_build_static_has_no_profile_and_failures_are_one_line():
    rec = _Recorder()
    trt_export.build_engine(rec, Path("m.onnx"), ExportOptions(imgsz=320, dynamic=False))
    assert not any(c[0] in ("set_shape", "add_profile") for c in rec.calls)
    rec.Builder.build_serialized_network = lambda self, network, config: None
    with pytest.raises(LeyoloError, match="could not build the engine"):
        trt_export.build_engine(rec, Path("m.onnx"), ExportOptions(imgsz=320))


# ---------------------------------------------------------------------------------- engine file
def test_engine_file_round_trip_and_load(small, tmp_path):
    from leyolo.deploy.base import export_metadata

    meta = export_metadata(small.model, "engine", ExportOptions(imgsz=64)) | {"int8": False, "profile": []}
    path = trt_export.write_engine(tmp_path / "m.engine", meta, b"\x00PLAN\xff")
    assert path.read_bytes().startswith(trt_export.MAGIC)
    assert trt_export.read_engine_metadata(path)["names"] == ["a", "b", "c"]
    assert trt_export.read_engine(path) == (meta, b"\x00PLAN\xff")
    det = leyolo.load(path)
    assert det.export_format == "engine" and det.names == ["a", "b", "c"] and det.meta.imgsz == 64
    assert det.resolve_backend("auto") == "tensorrt" and det.resolve_backend("torch") == "tensorrt"
    with pytest.raises(LeyoloError, match="runs on --backend tensorrt"):
        det.resolve_backend("onnxruntime")
    if not HAVE_GPU:
        with pytest.raises(LeyoloError, match="needs an NVIDIA GPU"):
            det.predict(np.zeros((64, 64, 3), np.uint8))


def test_foreign_or_corrupt_engines(tmp_path):
    foreign = tmp_path / "trtexec.engine"
    foreign.write_bytes(b"ftrt\x00\x00plan")
    with pytest.raises(LeyoloError, match="not a leyolo TensorRT engine"):
        leyolo.load(foreign)
    corrupt = tmp_path / "bad.engine"
    corrupt.write_bytes(trt_export.MAGIC + (5).to_bytes(4, "little") + b"{nope")
    with pytest.raises(LeyoloError, match="corrupt leyolo metadata"):
        leyolo.load(corrupt)
    empty = tmp_path / "empty.engine"
    trt_export.write_engine(empty, {"names": ["a"]}, b"")
    with pytest.raises(LeyoloError, match="no TensorRT plan"):
        trt_export.read_engine(empty)


# ------------------------------------------------------------------------------ on a real GPU
@pytest.fixture(scope="module")
def gpu_exports(small, shapes_data, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("engines")
    return {
        "onnx": small.export(out / "m.onnx", imgsz=128),
        "fp32": small.export(out / "fp32.engine", format="engine", imgsz=128),
        "fp16": small.export(out / "fp16.engine", format="engine", imgsz=128, half=True),
        "static": small.export(out / "static.engine", format="engine", imgsz=128, dynamic=False),
        "int8": small.export(out / "int8.engine", format="engine", imgsz=128, int8=True, data=shapes_data),
    }


def _rand(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)


@needs_gpu
@pytest.mark.parametrize("kind,box_tol", [("fp32", 0.05), ("fp16", 2.0)])
def test_gpu_engine_matches_onnxruntime(gpu_exports, kind, box_tol):
    ort = leyolo.load(gpu_exports["onnx"]).backend("onnxruntime")
    engine = leyolo.load(gpu_exports[kind]).backend("tensorrt")
    for h, w in ((128, 128), (96, 128), (64, 32)):
        a, b = ort(_rand(h, w)), engine(_rand(h, w))
        assert a.shape == b.shape
        assert np.abs(a[:, :4] - b[:, :4]).max() < box_tol
    batch = np.concatenate([_rand(96, 128), _rand(96, 128)])
    assert engine(batch).shape[0] == 2  # past the profile's batch 1: run in chunks
    with pytest.raises(LeyoloError, match="outside the engine's optimisation profile"):
        engine(_rand(160, 128))


@needs_gpu
def test_gpu_static_engine_and_int8_cache(gpu_exports):
    static = leyolo.load(gpu_exports["static"]).backend("tensorrt")
    assert static.fixed_hw == (128, 128)
    int8 = gpu_exports["int8"]
    cache = int8.with_name(int8.name + trt_export.CACHE_SUFFIX)
    assert cache.is_file() and cache.read_bytes().startswith(b"# leyolo calibration ")
    meta = trt_export.read_engine_metadata(int8)
    assert meta["int8"] is True and meta["calibration"]["images"] == 8
    assert leyolo.load(int8).backend("tensorrt")(_rand(128, 128)).shape[1] == 7


@needs_gpu
@pytest.mark.skipif(not HAVE_SHARED, reason="published nano / coco-mini not found under ../shared")
def test_gpu_coco_mini_map(nano, tmp_path):
    onnx = leyolo.load(nano.export(tmp_path / "nano.onnx", imgsz=640))
    engine = leyolo.load(nano.export(tmp_path / "nano.engine", format="engine", imgsz=640))
    half = leyolo.load(nano.export(tmp_path / "half.engine", format="engine", imgsz=640, half=True))
    expected = onnx.val(COCO_MINI / "data.yaml", imgsz=640, backend="onnxruntime")["mAP50-95"]
    assert engine.val(COCO_MINI / "data.yaml", imgsz=640)["mAP50-95"] == pytest.approx(expected, abs=0.002)
    assert half.val(COCO_MINI / "data.yaml", imgsz=640)["mAP50-95"] == pytest.approx(expected, abs=0.01)
    print(json.dumps({"onnxruntime": expected}))
