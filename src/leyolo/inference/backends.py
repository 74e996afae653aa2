"""Backends run a letterboxed float batch ``[B, 3, H, W]`` and return its network output.

Most return decoded ``[B, 4 + nc, N]`` so one numpy postprocess serves them all. A backend
whose ``end_to_end`` is true runs an export with its postprocess inside the graph (NMS, or
top-k for set predictors) and returns an ``NmsBatch`` (EfficientNMS layout, boxes still in
letterboxed pixels) instead; ``nms`` then holds the thresholds baked into it (or ``None``).

This module runs exports; writing them is ``leyolo.deploy``'s job. ``auto_backend`` picks the
fastest runtime this machine has for a device.
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from ..errors import LeyoloError, first_line
from ..fileio import model_file
from ..models.base import DecodedModel, DetectionModel
from ..ops import Detections
from ..optional import require
from .cpus import usable_cpus

BACKENDS = ("torch", "onnxruntime", "torchscript", "openvino", "ncnn", "tensorrt")
CHOICES = ("auto", *BACKENDS)
NMS_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")  # the layout deploy.onnx_graph writes
# CPU runtimes, fastest first on this project's machine (BENCHMARKS.md, "Backends"); auto takes
# the first one installed. OpenVINO is an optional extra, onnxruntime a core dependency.
CPU_PREFERENCE = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class NmsBatch:
    """End-to-end outputs of a batch: ``num_dets [B, 1]``, ``boxes [B, K, 4]``, ``scores``/``classes [B, K]``."""

    num_dets: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray]) -> "NmsBatch":
        return cls(*(np.asarray(outputs[name]) for name in NMS_OUTPUTS))

    @classmethod
    def concat(cls, parts: Sequence["NmsBatch"]) -> "NmsBatch":
        fields = ("num_dets", "boxes", "scores", "classes")
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))

    def __len__(self) -> int:
        return len(self.num_dets)

    def detections(self, i: int) -> Detections:
        """The real rows of image ``i`` (input pixels, highest score first)."""
        n = int(np.asarray(self.num_dets[i]).reshape(-1)[0])
        return Detections(self.boxes[i, :n].astype(np.float32), self.scores[i, :n].astype(np.float32),
                          self.classes[i, :n].astype(np.int64))


Output = np.ndarray | NmsBatch


class Backend(Protocol):
    name: str
    end_to_end: bool  # outputs are already NMS'd (an ``NmsBatch``)

    def __call__(self, batch: np.ndarray) -> Output: ...


def _one_by_one(run: Callable[[np.ndarray], Output], batch: np.ndarray) -> Output:
    """Run a fixed-batch-1 model image by image and join the outputs."""
    parts = [run(batch[i : i + 1]) for i in range(batch.shape[0])]
    return np.concatenate(parts) if isinstance(parts[0], np.ndarray) else NmsBatch.concat(parts)


def runtime_installed(name: str) -> bool:
    """Whether a backend's runtime can be imported here (torch and torchscript always can)."""
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino", "ncnn": "ncnn", "tensorrt": "tensorrt"}.get(name)
    return module is None or importlib.util.find_spec(module) is not None


def auto_backend(device: str = "cpu", export_format: str | None = None) -> str:
    """The backend ``--backend auto`` means for a device and what is loaded (``None``: PyTorch weights).

    TorchScript and OpenVINO exports run on their own runtime. On CPU, PyTorch weights and ONNX
    files take the fastest installed runtime of ``CPU_PREFERENCE`` (PyTorch weights through a
    cached ONNX export); on CUDA, PyTorch weights stay on torch and ONNX files on onnxruntime.
    """
    if export_format in ("torchscript", "openvino"):
        return export_format
    if torch_device(device).type != "cpu":
        return "torch" if export_format is None else "onnxruntime"
    return next((name for name in CPU_PREFERENCE if runtime_installed(name)),
                "torch" if export_format is None else "onnxruntime")


def torch_device(device: str) -> torch.device:
    """Parse a device string, with a one-line error for unknown or unavailable devices."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise LeyoloError(f"unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LeyoloError("device 'cuda' requested but CUDA is not available")
    return dev


class TorchBackend:
    """Eager PyTorch on a BatchNorm-folded copy of the model.

    ``threads`` sets torch's intra-op threads around each call (and restores them), since
    torch's thread count is process-wide; ``None`` leaves torch's own setting.
    """

    name = "torch"
    end_to_end = False
    nms = None
    fixed_hw = None

    def __init__(self, model: DetectionModel, device: str = "cpu", threads: int | None = None) -> None:
        self.device = torch_device(device)
        self.threads = threads
        fused = copy.deepcopy(model).eval().fuse()
        # channels-last runs the depthwise convolutions far faster on CPU (oneDNN)
        self.model = DecodedModel(fused).to(self.device, memory_format=torch.channels_last)
        self.model.requires_grad_(False)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
            return self.model(x).float().cpu().numpy()
        finally:
            if self.threads:
                torch.set_num_threads(previous)


class TorchScriptBackend:
    """A traced ``DecodedModel`` (an exported ``.torchscript`` or an in-memory trace), on CPU.

    The trace is made on CPU and records its device, so other devices are refused rather than
    half-working; use the torch backend for CUDA.
    """

    name = "torchscript"
    end_to_end = False
    nms = None
    fixed_hw = None  # the trace is shape-generic

    def __init__(self, module: torch.jit.ScriptModule, device: str = "cpu") -> None:
        if torch_device(device).type != "cpu":
            raise LeyoloError("the torchscript backend runs on CPU only; use --backend torch for other devices")
        self.module = module

    @classmethod
    def from_file(cls, path: str | Path, device: str = "cpu") -> "TorchScriptBackend":
        """Load an exported archive. It runs TorchScript code: meant for files the user made or trusts."""
        return cls(load_torchscript(path), device)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.module(torch.from_numpy(batch)).float().numpy()


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """Load an exported archive on CPU.

    Trust: ``torch.jit.load`` does not run a general pickle (tensors and constants go through
    TorchScript's restricted unpickler, no arbitrary Python imports), but the archive's code is
    TorchScript that runs with every operator torch registers. It is not a sandbox: load only
    exports you made or trust, as you would an executable.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # RuntimeError with a C++ backtrace; keep one line
        raise LeyoloError(f"{path}: torch cannot load this TorchScript archive ({first_line(exc)})") from exc
    return module.eval()


def onnxruntime_session(path: str | Path, threads: int | None = None, spinning: bool = True,
                        profile_prefix: str | Path | None = None):
    """An onnxruntime CPU session with full graph optimisation, on the CPUs this process may use.

    ``spinning`` keeps onnxruntime's idle threads busy-waiting between calls: fastest on a quiet
    machine, slower when the cores are oversubscribed (BENCHMARKS.md, onnxruntime settings).
    ``profile_prefix``: record onnxruntime's profile (``session.end_profiling()`` returns its file).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or usable_cpus()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise LeyoloError(f"{path}: onnxruntime cannot load this model ({first_line(exc)})") from exc


def _fixed(shape: Sequence[Any]) -> tuple[tuple[int, int] | None, int | None]:
    """(fixed (h, w) or None, fixed batch or None) of an NCHW input shape with ints or symbols."""
    hw = tuple(shape[2:]) if all(isinstance(s, int) and s > 0 for s in shape[2:]) else None
    return hw, (shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None)  # type: ignore[return-value]


class OnnxRuntimeBackend:
    """ONNX Runtime on an exported file (or on a model exported to a temporary file)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, nms: dict | None = None,
                 spinning: bool = True) -> None:
        self.path = Path(path)
        self.session = onnxruntime_session(self.path, threads, spinning)
        self.input_name = self.session.get_inputs()[0].name
        self.fixed_hw, self.fixed_batch = _fixed(self.session.get_inputs()[0].shape)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.end_to_end = tuple(self.output_names) == NMS_OUTPUTS
        self.nms = nms if self.end_to_end else None

    def __call__(self, batch: np.ndarray) -> Output:
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            return _one_by_one(self, batch)
        outputs = self.session.run(None, {self.input_name: batch})
        if self.end_to_end:
            return NmsBatch.from_outputs(dict(zip(self.output_names, outputs)))
        return outputs[0]


def openvino_xml(path: str | Path) -> Path:
    """The IR file of an OpenVINO export given as its folder or its ``.xml``."""
    return model_file(path, ".xml", "an OpenVINO IR")[0]


def compile_openvino(model: str | Path, half: bool = False, threads: int | None = None) -> Any:
    """A CPU compiled model with the latency hint (one request, the usable CPUs).

    Without ``half`` inference is pinned to f32: the CPU plugin defaults to bf16 where the CPU
    has it, which moves boxes by pixels.
    """
    ov = require("openvino", "the openvino backend")
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads or usable_cpus())}
    if not half:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    try:
        return ov.Core().compile_model(str(model), "CPU", config)
    except Exception as exc:  # openvino raises RuntimeError with multi-line C++ messages
        raise LeyoloError(f"{model}: OpenVINO cannot load this model ({first_line(exc)})") from exc


class OpenVinoBackend:
    """OpenVINO on CPU (latency hint) for an IR ``.xml`` or an ONNX file."""

    name = "openvino"

    def __init__(self, path: str | Path, nms: dict | None = None, half: bool = False,
                 threads: int | None = None) -> None:
        self.path = Path(path)
        self.compiled = compile_openvino(self.path, half=half, threads=threads)
        shape = self.compiled.input(0).get_partial_shape()
        self.fixed_hw, self.fixed_batch = _fixed([d.get_length() if d.is_static else None for d in shape])
        # a port can carry several tensor names (OpenVINO merges Identity nodes away): prefer ours
        self.output_names = [next((n for n in o.get_names() if n in NMS_OUTPUTS), o.get_any_name())
                             for o in self.compiled.outputs]
        self.end_to_end = tuple(self.output_names) == NMS_OUTPUTS
        self.nms = nms if self.end_to_end else None

    def __call__(self, batch: np.ndarray) -> Output:
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            return _one_by_one(self, batch)
        result = self.compiled(batch)
        outputs = [result[o] for o in self.compiled.outputs]
        if self.end_to_end:
            return NmsBatch.from_outputs(dict(zip(self.output_names, outputs)))
        return outputs[0]


def dfl_anchors(h: int, w: int, strides: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Anchor points ``[2, A]`` (cell centres, grid units) and strides ``[1, A]`` of a dense head at input ``h x w``.

    The grid of ``leyolo.models.heads.make_anchors``: levels in stride order, rows then columns;
    a level's map is ``ceil(side / stride)`` (stride-2 convolutions with padding 1).
    """
    points, scales = [], []
    for s in strides:
        gh, gw = -(-h // s), -(-w // s)
        yy, xx = np.meshgrid(np.arange(gh, dtype=np.float32) + 0.5, np.arange(gw, dtype=np.float32) + 0.5,
                             indexing="ij")
        points.append(np.stack((xx.reshape(-1), yy.reshape(-1))))
        scales.append(np.full((1, gh * gw), float(s), dtype=np.float32))
    return np.concatenate(points, 1), np.concatenate(scales, 1)


class NcnnBackend:
    """NCNN on CPU for an exported ``.param``/``.bin`` (``leyolo.deploy.ncnn``), one image per extractor.

    ``output`` is the export's layout: ``xyxy+scores`` (the whole decode in the graph) or
    ``ltrb+scores`` (side distances in stride units: the anchor grid of ``strides`` is added here,
    cached per input shape, since NCNN cannot build it for dynamic shapes). ``fp16`` turns on
    ncnn's fp16 storage (with fp16 weights: ``--half`` exports); otherwise everything is fp32,
    which ncnn would not do by default on CPUs with fp16 support. ``fixed_hw``: a ``--static``
    export's input size (others are refused with that size).
    """

    name = "ncnn"
    end_to_end = False
    nms = None

    def __init__(self, param: str | Path, weights: str | Path, *, threads: int | None = None, fp16: bool = False,
                 output: str = "xyxy+scores", strides: Sequence[int] | None = None,
                 fixed_hw: tuple[int, int] | None = None) -> None:
        ncnn = require("ncnn", "the ncnn backend")
        if output not in ("xyxy+scores", "ltrb+scores"):
            raise LeyoloError(f"{param}: unknown NCNN output layout {output!r}")
        if output == "ltrb+scores" and not strides:
            raise LeyoloError(f"{param}: the export's metadata has no strides to build anchors from")
        self.path = Path(param).parent
        self.output, self.strides, self.fixed_hw = output, tuple(strides or ()), fixed_hw
        self.fixed_batch = None
        self._mat = ncnn.Mat
        net = ncnn.Net()
        net.opt.num_threads = int(threads or usable_cpus())
        net.opt.use_vulkan_compute = False
        net.opt.use_fp16_storage = net.opt.use_fp16_packed = bool(fp16)
        net.opt.use_fp16_arithmetic = False  # fp16 sums move boxes; storage alone keeps the bandwidth saving
        net.opt.use_bf16_storage = False
        if net.load_param(str(param)) != 0:
            raise LeyoloError(f"{param}: ncnn cannot read this .param (wrong file, or layers this ncnn lacks)")
        if net.load_model(str(weights)) != 0:
            raise LeyoloError(f"{weights}: ncnn cannot read these weights (truncated or not this .param's)")
        self.net = net
        inputs = list(net.input_names())
        if len(inputs) != 1:
            raise LeyoloError(f"{param}: expected one input, found {len(inputs)}")
        self.input_name = inputs[0]
        self.output_names = sorted(net.output_names())  # ncnn lists outputs unordered; pnnx names them out0, out1..
        self._anchors: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def _run(self, image: np.ndarray) -> np.ndarray:
        blob = np.ascontiguousarray(image, dtype=np.float32)  # the Mat borrows this memory: keep it referenced
        with self.net.create_extractor() as ex:
            ex.input(self.input_name, self._mat(blob))
            ret, out = ex.extract(self.output_names[0])
            if ret != 0:
                raise LeyoloError(f"{self.path}: ncnn failed on a {blob.shape[1]}x{blob.shape[2]} input (code {ret})")
            return np.array(out, dtype=np.float32, copy=True)

    def _decode(self, raw: np.ndarray, h: int, w: int) -> np.ndarray:
        """``[B, 4 + nc, A]`` distances + scores -> xyxy input pixels + scores (``DenseHead.decode``'s arithmetic)."""
        anchors = self._anchors.get((h, w))
        if anchors is None:
            anchors = self._anchors[h, w] = dfl_anchors(h, w, self.strides)
        points, scale = anchors
        if raw.shape[-1] != points.shape[1]:
            raise LeyoloError(f"{self.path}: {raw.shape[-1]} outputs at {h}x{w}, expected {points.shape[1]} anchors "
                              f"for strides {list(self.strides)}")
        boxes = np.concatenate((points - raw[:, 0:2], points + raw[:, 2:4]), 1) * scale
        return np.concatenate((boxes, raw[:, 4:]), 1)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        h, w = batch.shape[2:]
        if self.fixed_hw is not None and (h, w) != tuple(self.fixed_hw):
            raise LeyoloError(f"{self.path} was exported for {self.fixed_hw[0]}x{self.fixed_hw[1]} inputs (--static), "
                              f"got {h}x{w}; export without --static for other sizes")
        raw = np.stack([self._run(image) for image in batch])
        return self._decode(raw, h, w) if self.output == "ltrb+scores" else raw


def cuda_device(device: str) -> torch.device:
    """The CUDA device a TensorRT engine runs on (``cpu``, the default of every command, means ``cuda:0``)."""
    dev = torch.device(device) if device not in ("", "cpu") else torch.device("cuda", 0)
    if dev.type != "cuda":
        raise LeyoloError(f"the tensorrt backend runs on CUDA devices, not {device!r}")
    if not torch.cuda.is_available():
        build = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
        raise LeyoloError(f"the tensorrt backend needs an NVIDIA GPU with CUDA, and {build} "
                          "(run the ONNX, OpenVINO or NCNN export on CPUs)")
    return torch.device("cuda", dev.index if dev.index is not None else 0)


class TensorRTBackend:
    """A TensorRT plan (``leyolo.deploy.tensorrt``) on a CUDA device, through torch's CUDA memory and stream.

    TensorRT 10's name-based API: the input shape is set per call (``set_input_shape``), outputs
    are allocated at the shapes the context then reports, ``execute_async_v3`` runs on torch's
    current stream. Shapes outside the engine's optimisation profile are refused with its range;
    batches larger than the profile's run in chunks.
    """

    name = "tensorrt"

    def __init__(self, plan: bytes, path: str | Path | None = None, device: str = "cuda",
                 nms: dict | None = None) -> None:
        self.device = cuda_device(device)
        trt = require("tensorrt", "the tensorrt backend")
        self.path = Path(path) if path is not None else Path("engine")
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(self.device):
            self.engine = self.runtime.deserialize_cuda_engine(plan)
            if self.engine is None:
                raise LeyoloError(f"{self.path}: TensorRT cannot load this engine (built by another TensorRT "
                                  f"version or for another GPU: rebuild it here with leyolo export --format engine)")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise LeyoloError(f"{self.path}: expected one input tensor, found {len(inputs)}")
        self.input_name = inputs[0]
        self.output_names = [n for n in names if n not in inputs]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        if any(d < 0 for d in shape):
            low, _, high = (tuple(s) for s in self.engine.get_tensor_profile_shape(self.input_name, 0))
        else:
            low = high = shape
        self.min_shape, self.max_shape = low, high
        self.fixed_hw = tuple(high[2:]) if low[2:] == high[2:] else None
        self.fixed_batch = None  # larger batches run in chunks of max_shape[0]
        self.end_to_end = tuple(self.output_names) == NMS_OUTPUTS
        self.nms = nms if self.end_to_end else None

    def _check(self, shape: tuple[int, ...]) -> None:
        low, high = self.min_shape, self.max_shape
        if any(s < lo or s > hi for s, lo, hi in zip(shape[1:], low[1:], high[1:])):
            raise LeyoloError(f"{self.path}: input {shape[2]}x{shape[3]} is outside the engine's optimisation profile "
                              f"({low[2]}x{low[3]} to {high[2]}x{high[3]}); re-export with a larger --imgsz "
                              "(or without --augment)")

    def __call__(self, batch: np.ndarray) -> Output:
        self._check(batch.shape)
        top = self.max_shape[0]
        if batch.shape[0] > top:
            parts = [self(batch[i : i + top]) for i in range(0, batch.shape[0], top)]
            return np.concatenate(parts) if isinstance(parts[0], np.ndarray) else NmsBatch.concat(parts)
        if batch.shape[0] < self.min_shape[0]:
            raise LeyoloError(f"{self.path}: the engine needs batches of at least {self.min_shape[0]}")
        with torch.cuda.device(self.device):
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=self.dtypes[self.input_name])).to(self.device)
            self.context.set_input_shape(self.input_name, tuple(x.shape))
            self.context.set_tensor_address(self.input_name, int(x.data_ptr()))
            outputs = {}
            for name in self.output_names:
                dtype = torch.from_numpy(np.empty(0, dtype=self.dtypes[name])).dtype
                outputs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype,
                                            device=self.device)
                self.context.set_tensor_address(name, int(outputs[name].data_ptr()))
            stream = torch.cuda.current_stream(self.device)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise LeyoloError(f"{self.path}: TensorRT failed to run the engine")
            stream.synchronize()
            arrays = {n: t.cpu().numpy() for n, t in outputs.items()}
        if self.end_to_end:
            return NmsBatch.from_outputs(arrays)
        return arrays[self.output_names[0]].astype(np.float32, copy=False)
