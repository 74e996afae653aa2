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
from ..models.base import DecodedModel, DetectionModel
from ..ops import Detections
from ..optional import require
from .cpus import usable_cpus

BACKENDS = ("torch", "onnxruntime", "torchscript", "openvino")
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
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino"}.get(name)
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


def onnxruntime_session(path: str | Path, threads: int | None = None, spinning: bool = True):
    """An onnxruntime CPU session with full graph optimisation, on the CPUs this process may use.

    ``spinning`` keeps onnxruntime's idle threads busy-waiting between calls: fastest on a quiet
    machine, slower when the cores are oversubscribed (BENCHMARKS.md, onnxruntime settings).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or usable_cpus()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
    path = Path(path)
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) != 1:
            raise LeyoloError(f"{path}: expected one OpenVINO .xml in the folder, found {len(xmls)}")
        path = xmls[0]
    if path.suffix.lower() != ".xml" or not path.is_file():
        raise LeyoloError(f"{path}: not an OpenVINO IR (.xml)")
    if not path.with_suffix(".bin").is_file():
        raise LeyoloError(f"{path}: weights file {path.with_suffix('.bin').name} is missing")
    return path


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
