"""TensorRT export: a serialized engine built from the ONNX export, its leyolo metadata in front of it.

``leyolo export --format engine [--half] [--int8 --data data.yaml] [--static]`` needs an NVIDIA GPU
with CUDA (a CUDA build of torch) and ``pip install 'leyolo[tensorrt]'`` (TensorRT 10: the
name-based tensor API, ``execute_async_v3``); elsewhere it fails in one line before any work.

* The network is the ONNX export (``onnx_export``) parsed by TensorRT's ONNX parser: same graph,
  same decode, so an engine drops in wherever the ONNX file does.
* Dynamic (the default): one optimisation profile over the shapes a letterboxed batch can take,
  ``min (1, 3, stride, stride)``, ``opt = max (batch, 3, imgsz, imgsz)`` (``profile_shapes``): the
  letterbox never makes a side longer than ``imgsz``, so larger inputs (``--augment``'s 1.3x, a
  larger ``--imgsz``) are refused by the backend with the engine's range. ``--static`` builds for
  ``(batch, 3, imgsz, imgsz)`` only.
* ``--half``: the ONNX export's FP16 trunk with its FP32 decode (``base.HalfDecodedModel``) in a
  strongly typed network, so TensorRT keeps the casts where the graph has them (the DFL in FP32;
  this is also the only FP16 route TensorRT 11 keeps, having removed the FP16 builder flag).
* ``--int8 --data data.yaml``: implicit INT8 with TensorRT's entropy calibrator
  (``IInt8EntropyCalibrator2``) over up to ``CALIB_IMAGES`` train images (never val, which gets
  scored), letterboxed to the square ``imgsz`` input exactly as inference pads a fixed-shape
  input, in batches of ``CALIB_BATCH`` (the static export's batch). Layers TensorRT leaves in
  float run FP32, or FP16 with ``--half``. The calibration cache is written beside the engine
  (``<engine>.calib``) and reused by the next build of the same weights, size and images (its
  first line is the key: a hash of them); delete it to recalibrate. Implicit quantization is
  deprecated in TensorRT 10 and removed in 11, which is refused with the reason.

File layout (``.engine``): ``MAGIC``, a 4-byte little-endian length, that many bytes of metadata
JSON (``base.export_metadata`` plus ``profile``, ``int8``, ``tensorrt``), then the TensorRT plan.
``read_engine_metadata`` reads the header without TensorRT. Running a plan is
``leyolo.inference.backends.TensorRTBackend``'s job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np

from ..errors import LeyoloError, first_line
from ..fileio import atomic_write
from ..models.base import DetectionModel
from ..optional import require
from .base import ExportOptions, export_metadata
from .onnx_export import export_onnx

log = logging.getLogger("leyolo")

ENGINE_SUFFIX = ".engine"
CACHE_SUFFIX = ".calib"
MAGIC = b"LEYOLO-TRT\x00"
CALIB_IMAGES = 512
CALIB_BATCH = 8
WORKSPACE_BYTES = 4 << 30
MIN_TRT_MAJOR = 10  # name-based tensor API, execute_async_v3, get_tensor_profile_shape
MAX_INT8_TRT_MAJOR = 10  # TensorRT 11 removed IBuilderConfig.int8_calibrator and BuilderFlag.INT8

Shape = tuple[int, int, int, int]


# ------------------------------------------------------------------------------------ availability
def cuda_check(feature: str) -> None:
    """A one-line error where there is no CUDA GPU (TensorRT runs on NVIDIA GPUs only)."""
    import torch

    if not torch.cuda.is_available():
        build = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
        raise LeyoloError(f"{feature} needs an NVIDIA GPU with CUDA, and {build} "
                          "(TensorRT runs on NVIDIA GPUs only; use --format onnx, openvino or ncnn on CPUs)")


def require_tensorrt(feature: str, int8: bool = False) -> Any:
    """``tensorrt``, after the CUDA check, at a version this code uses (10.x for INT8 calibration)."""
    cuda_check(feature)
    trt = require("tensorrt", feature)
    major = trt_major(trt)
    if major < MIN_TRT_MAJOR:
        raise LeyoloError(f"{feature} needs TensorRT >= {MIN_TRT_MAJOR}, found {trt.__version__}: "
                          "pip install 'leyolo[tensorrt]'")
    if int8 and (major > MAX_INT8_TRT_MAJOR or not hasattr(trt, "IInt8EntropyCalibrator2")):
        raise LeyoloError(f"--int8 calibration needs TensorRT 10 (TensorRT {trt.__version__} removed implicit "
                          "INT8 quantization): pip install 'tensorrt>=10,<11'")
    return trt


def trt_major(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        return 0


# ------------------------------------------------------------------------------------------ shapes
def profile_shapes(imgsz: int, batch: int = 1, dynamic: bool = True, stride: int = 32) -> tuple[Shape, Shape, Shape]:
    """(min, opt, max) input shapes of the optimisation profile.

    Dynamic: any batch up to ``batch`` and any multiple-of-``stride`` side up to ``imgsz`` (a
    letterboxed image's long side is ``imgsz``, its short side as little as one stride);
    optimised for full batches of square inputs. Static: ``(batch, 3, imgsz, imgsz)`` three times.
    """
    if imgsz < stride or imgsz % stride or batch < 1:
        raise LeyoloError(f"profile needs imgsz a multiple of {stride} and batch >= 1, got {imgsz} and {batch}")
    full: Shape = (batch, 3, imgsz, imgsz)
    if not dynamic:
        return full, full, full
    return (1, 3, stride, stride), full, full


def calibration_shape(opts: ExportOptions, count: int) -> Shape:
    """The fixed input shape of INT8 calibration: the static export's batch, or ``CALIB_BATCH`` when dynamic."""
    batch = opts.batch if not opts.dynamic else min(CALIB_BATCH, max(count, 1))
    return (batch, 3, opts.imgsz, opts.imgsz)


# ------------------------------------------------------------------------------------- calibration
class CalibrationBatches:
    """Float32 ``[batch, 3, H, W]`` batches of ``count`` images from ``load(i) -> [3, H, W]``, in order.

    Only full batches are given (TensorRT's calibration shape is fixed): ``count // batch`` of them,
    the remainder is dropped (and said in ``dropped``). ``next()`` returns None when done; ``reset()``
    starts over.
    """

    def __init__(self, load: Callable[[int], np.ndarray], count: int, batch: int) -> None:
        if batch < 1:
            raise LeyoloError(f"calibration batch must be >= 1, got {batch}")
        if count < batch:
            raise LeyoloError(f"INT8 calibration needs at least {batch} images, found {count}")
        self.load, self.count, self.batch = load, count, batch
        self.dropped = count % batch
        self._next = 0

    def __len__(self) -> int:
        return self.count // self.batch

    def reset(self) -> None:
        self._next = 0

    def next(self) -> np.ndarray | None:
        if self._next >= len(self):
            return None
        start = self._next * self.batch
        self._next += 1
        blobs = [np.asarray(self.load(i), dtype=np.float32) for i in range(start, start + self.batch)]
        blobs = [b[0] if b.ndim == 4 and b.shape[0] == 1 else b for b in blobs]  # [1, 3, H, W] blobs too
        shapes = {b.shape for b in blobs}
        if any(len(s) != 3 for s in shapes):
            raise LeyoloError(f"calibration images must load as [3, H, W], got {sorted(shapes)}")
        if len(shapes) != 1:
            raise LeyoloError(f"calibration images letterboxed to different shapes {sorted(shapes)}")
        return np.ascontiguousarray(np.stack(blobs))

    def __iter__(self) -> Iterator[np.ndarray]:
        self.reset()
        while (blob := self.next()) is not None:
            yield blob


class CalibrationCache:
    """TensorRT's calibration table in a file whose first line is ``key``: another key means recalibrate."""

    HEADER = b"# leyolo calibration "

    def __init__(self, path: str | Path, key: str) -> None:
        self.path, self.key = Path(path), key

    def read(self) -> bytes | None:
        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        header, _, table = data.partition(b"\n")
        if header != self.HEADER + self.key.encode() or not table:
            log.info("%s: calibration cache for other weights, size or images; recalibrating", self.path)
            return None
        return table

    def write(self, table: bytes) -> Path:
        return atomic_write(self.path, lambda tmp: Path(tmp).write_bytes(self.HEADER + self.key.encode() + b"\n"
                                                                              + bytes(table)))


def calibration_key(model: DetectionModel, files: Sequence[Path], shape: Shape) -> str:
    """A hash of the weights, the calibration shape and the images (path, size, mtime): the cache's validity."""
    digest = hashlib.sha256(repr(shape).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    for file in files:
        stat = Path(file).stat()
        digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def calibration_files(data: str | Path, n: int = CALIB_IMAGES) -> list[Path]:
    """Up to ``n`` evenly spaced images of ``data``'s train split (calibrating on val would flatter its mAP)."""
    from ..data.datasets import load_data_yaml, split_images

    spec = load_data_yaml(data)
    if "train" not in spec.splits:
        raise LeyoloError(f"{data}: --int8 calibrates on the train split, which this data.yaml does not define")
    files = split_images(spec, "train")
    if len(files) <= n:
        return files
    return [files[int(i)] for i in np.linspace(0, len(files) - 1, n)]


def letterboxed_loader(files: Sequence[Path], imgsz: int, stride: int = 32,
                       pad_value: int = 114) -> Callable[[int], np.ndarray]:
    """``i -> [3, imgsz, imgsz]`` float32 RGB in [0, 1]: the square letterbox of a fixed-shape input."""
    from ..data.images import read_image
    from ..ops import letterbox

    def load(i: int) -> np.ndarray:
        boxed, _ = letterbox(read_image(files[i]), imgsz, stride, pad_value, auto=False)
        return cv2.dnn.blobFromImage(boxed, 1 / 255.0, swapRB=True)[0]

    return load


def torch_cuda_buffer(blob: np.ndarray) -> tuple[Any, int]:
    """A CUDA copy of ``blob`` (kept alive by the caller) and its device pointer."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(blob)).cuda()
    return tensor, int(tensor.data_ptr())


def make_calibrator(trt: Any, batches: CalibrationBatches, cache: CalibrationCache,
                    to_device: Callable[[np.ndarray], tuple[Any, int]] = torch_cuda_buffer) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` through ``to_device`` and keeping ``cache``.

    The class is made here because its base comes from the ``tensorrt`` module (passed in, so the
    batching and cache logic run without a GPU in the tests).
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined, misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches, self.cache = batches, cache
            self._device: Any = None  # the current batch's device memory: TensorRT reads it after get_batch
            self.seen = 0

        def get_batch_size(self) -> int:
            return self.batches.batch

        def get_batch(self, names: list[str]) -> list[int] | None:  # noqa: ARG002 - one input
            blob = self.batches.next()
            if blob is None:
                return None
            self._device, pointer = to_device(blob)
            self.seen += 1
            log.info("INT8 calibration batch %d/%d", self.seen, len(self.batches))
            return [pointer]

        def read_calibration_cache(self) -> bytes | None:
            table = self.cache.read()
            if table is not None:
                log.info("INT8 calibration: reusing %s", self.cache.path)
            return table

        def write_calibration_cache(self, table: Any) -> None:
            self.cache.write(bytes(table))

    return EntropyCalibrator()


# ------------------------------------------------------------------------------------------- build
def build_engine(trt: Any, onnx_path: Path, opts: ExportOptions, input_name: str = "images",
                 calibrator: Any = None, calib_shape: Shape | None = None, stride: int = 32,
                 workspace: int = WORKSPACE_BYTES) -> bytes:
    """Parse the ONNX file and build a serialized plan (see the module docstring for the precisions)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if typed is not None and not opts.int8:  # INT8 calibration needs weak typing (TensorRT 10)
        flags |= 1 << int(typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise LeyoloError(f"TensorRT cannot parse the ONNX export: {errors[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if opts.dynamic:
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, *profile_shapes(opts.imgsz, opts.batch, True, stride))
        config.add_optimization_profile(profile)
    if opts.int8:
        config.set_flag(trt.BuilderFlag.INT8)
        if opts.half:
            config.set_flag(trt.BuilderFlag.FP16)
        config.int8_calibrator = calibrator
        if opts.dynamic and calib_shape is not None:
            calib = builder.create_optimization_profile()
            calib.set_shape(input_name, calib_shape, calib_shape, calib_shape)
            config.set_calibration_profile(calib)
    try:
        plan = builder.build_serialized_network(network, config)
    except Exception as exc:  # noqa: BLE001 - TensorRT raises RuntimeError/TypeError with C++ text
        raise LeyoloError(f"TensorRT could not build the engine ({first_line(exc)})") from exc
    if plan is None:
        raise LeyoloError("TensorRT could not build the engine (its log above says why)")
    return bytes(plan)


def export_engine(model: DetectionModel, path: str | Path, opts: ExportOptions) -> Path:
    """Build a TensorRT engine of ``model`` (via its ONNX export) and write it with its metadata to ``path``."""
    path = Path(path)
    trt = require_tensorrt("TensorRT export", int8=opts.int8)
    stride = int(model.stride)
    data = str(opts.data) if opts.data is not None else None
    opts = replace(opts, data=data)
    meta = export_metadata(model, "engine", opts) | {
        "int8": bool(opts.int8), "tensorrt": str(trt.__version__),
        "profile": [list(s) for s in profile_shapes(opts.imgsz, opts.batch, opts.dynamic, stride)],
    }
    calibrator, calib_shape = None, None
    if opts.int8:
        files = calibration_files(data)  # type: ignore[arg-type]
        calib_shape = calibration_shape(opts, len(files))
        batches = CalibrationBatches(letterboxed_loader(files, opts.imgsz, stride, model.meta.pad_value),
                                     len(files), calib_shape[0])
        if batches.dropped:
            log.info("INT8 calibration: %d images in %d batches of %d (%d left out)", len(files), len(batches),
                     batches.batch, batches.dropped)
        cache = CalibrationCache(path.with_name(path.name + CACHE_SUFFIX), calibration_key(model, files, calib_shape))
        calibrator = make_calibrator(trt, batches, cache)
        meta["calibration"] = {"images": len(batches) * batches.batch, "data": data, "cache": cache.path.name}
    onnx_opts = replace(opts, int8=False, data=None, half=bool(opts.half and not opts.int8))
    with tempfile.TemporaryDirectory(prefix="leyolo-trt-") as work:
        onnx_path = export_onnx(model, Path(work) / "model.onnx", **vars(onnx_opts))
        plan = build_engine(trt, onnx_path, opts, calibrator=calibrator, calib_shape=calib_shape, stride=stride)
    return write_engine(path, meta, plan)


# ------------------------------------------------------------------------------------------- files
def write_engine(path: str | Path, meta: dict[str, Any], plan: bytes) -> Path:
    """``MAGIC`` + length + metadata JSON + plan, atomically."""
    header = json.dumps(meta).encode()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(MAGIC + len(header).to_bytes(4, "little") + header)
            fh.write(plan)

    return atomic_write(path, write)


def _read_header(fh: Any, path: Path) -> dict[str, Any]:
    if fh.read(len(MAGIC)) != MAGIC:
        raise LeyoloError(f"{path}: not a leyolo TensorRT engine (no leyolo header; engines built by other "
                          "tools carry no class names)")
    size = int.from_bytes(fh.read(4), "little")
    if not 0 < size < 1 << 24:
        raise LeyoloError(f"{path}: corrupt leyolo engine header")
    try:
        info = json.loads(fh.read(size))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LeyoloError(f"{path}: corrupt leyolo metadata in engine") from exc
    if not isinstance(info, dict):
        raise LeyoloError(f"{path}: corrupt leyolo metadata in engine (not an object)")
    return info


def read_engine_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a leyolo ``.engine`` (read without TensorRT or a GPU)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _read_header(fh, path)
    except OSError as exc:
        raise LeyoloError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_engine(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """(metadata, TensorRT plan) of a leyolo ``.engine``."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            info = _read_header(fh, path)
            plan = fh.read()
    except OSError as exc:
        raise LeyoloError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not plan:
        raise LeyoloError(f"{path}: the engine has no TensorRT plan after its header")
    return info, plan


__all__ = ["CACHE_SUFFIX", "CALIB_BATCH", "CALIB_IMAGES", "CalibrationBatches", "CalibrationCache", "ENGINE_SUFFIX",
           "MAGIC", "build_engine", "calibration_files", "calibration_key", "calibration_shape", "cuda_check",
           "export_engine", "letterboxed_loader", "make_calibrator", "profile_shapes", "read_engine",
           "read_engine_metadata", "require_tensorrt", "write_engine"]
