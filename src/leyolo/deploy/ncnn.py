"""NCNN export: ``<name>_ncnn_model/`` with ``model.ncnn.param``, ``model.ncnn.bin`` and ``metadata.json``.

The model is traced with ``torch.jit.trace`` and converted by pnnx (the ``pnnx`` package's
converter binary, pinned in the ``ncnn`` extra: a pnnx release once broke YOLO exports). pnnx is
run as a subprocess here rather than through ``pnnx.export``, which ignores the converter's exit
status and then imports the Python file it generated.

What is converted, measured with pnnx 20261020 / ncnn 1.0.20261020 on leyolo-n and yolov12-n:

* Dynamic shapes (the default) come from pnnx's second trace shape (``inputshape2``); the
  trunks of both families, YOLOv12's area attention included, then run at any multiple-of-32
  size, square or not, within 1e-4 of torch.
* The anchors of the decode do not survive: they are built with ``arange`` from the map shapes,
  which pnnx folds to constants for one fixed shape and, with two shapes, leaves as
  ``torch.arange``/``torch.full``/``aten::meshgrid`` layers that ncnn cannot load. So for dense
  DFL heads the graph ends after the DFL expectation and the sigmoid (layout ``ltrb+scores``:
  ``[4 + nc, A]``, box side distances in stride units, then class scores) and the backend adds
  the anchor grid in numpy (``leyolo.inference.backends.NcnnBackend``), cached per input shape.
  Other heads (set predictors) export their whole decode (``xyxy+scores``); the test's toy DETR
  converts with ``--static`` only (its pixel scale folds to a constant), which the check below catches.
* Batch is 1: ncnn runs one image per extractor; the backend loops over a batch.

Every export is checked before it is kept: the converted net runs on a fixed random input
(two shapes when dynamic) and must match torch, and a param file with layers ncnn does not know
(pnnx leaves them under their torch names) is refused with the list of them.

``half``: pnnx stores the weights as fp16 (half the ``.bin``) and the backend turns on ncnn's
fp16 storage, which ARM CPUs with fp16 support use (measured on this project's AVX-512 x86: no effect,
only the fp16 weights' rounding shows: mAP unchanged at 3 digits on coco-mini).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import LeyoloError, first_line
from ..fileio import atomic_dir, model_file
from ..models.base import DetectionModel
from ..models.heads import DenseHead
from ..optional import require
from .base import ExportOptions, decoded_graph, export_metadata

PARAM_FILE = "model.ncnn.param"
BIN_FILE = "model.ncnn.bin"
METADATA_FILE = "metadata.json"
FOLDER_SUFFIX = "_ncnn_model"
INPUT_NAME, OUTPUT_NAME = "in0", "out0"  # what pnnx names the graph's input and output
LAYOUTS = ("ltrb+scores", "xyxy+scores")
# a layer type ncnn knows is a bare CamelCase name; pnnx leaves what it cannot convert under its
# torch name (``torch.arange``, ``Tensor.reshape``, ``pnnx.Expression``, ``aten::meshgrid``, ``prim::ListUnpack``)
_UNCONVERTED = re.compile(r"[.:]")
_PNNX_TIMEOUT_S = 900


class DistanceGraph(nn.Module):
    """A dense DFL model up to its distances and scores: ``[B, 4 + nc, A]`` = (l, t, r, b) in stride units, sigmoids.

    ``DenseHead.decode`` without the anchor grid, which NCNN cannot build for dynamic shapes.
    """

    def __init__(self, model: DetectionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.model.head
        box_logits, cls_logits = head.flatten(self.model(x))
        return torch.cat((head.dfl(box_logits), cls_logits.sigmoid()), 1)


def ncnn_layout(model: DetectionModel) -> str:
    """``ltrb+scores`` for dense DFL heads (anchors added by the backend), else ``xyxy+scores`` (whole decode)."""
    head = getattr(model, "head", None)
    return "ltrb+scores" if model.output_kind == "dense" and isinstance(head, DenseHead) else "xyxy+scores"


def export_graph(model: DetectionModel) -> tuple[nn.Module, str]:
    """The module pnnx converts (CPU, fp32, BatchNorm folded) and its output layout."""
    layout = ncnn_layout(model)
    graph = decoded_graph(model)  # the fused copy; for dense heads, re-wrapped to stop before the anchors
    if layout == "ltrb+scores":
        graph = DistanceGraph(graph.model).eval()
    return graph, layout


def second_shape(imgsz: int, stride: int) -> tuple[int, int]:
    """pnnx's second trace shape for dynamic exports: differs from ``imgsz`` in both sides (rectangular)."""
    return imgsz + stride, imgsz + 2 * stride


def _pnnx_binary() -> str:
    pnnx = require("pnnx", "NCNN export")
    binary = getattr(pnnx, "EXEC_PATH", None)
    if not binary or not Path(binary).is_file():
        raise LeyoloError(f"the pnnx package has no converter binary at {binary!r}; reinstall it: "
                          "pip install --force-reinstall 'leyolo[ncnn]'")
    return str(binary)


def run_pnnx(graph: nn.Module, work: Path, shape: tuple[int, int], shape2: tuple[int, int] | None,
             fp16: bool) -> tuple[Path, Path]:
    """Trace ``graph`` at ``shape`` (and ``shape2`` for dynamic sizes) and convert it; returns (param, bin)."""
    binary = _pnnx_binary()
    pt = work / "model.pt"
    with warnings.catch_warnings():  # torch 2.13 marks jit.trace deprecated; pnnx reads TorchScript
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(graph, torch.rand(1, 3, *shape), check_trace=False)
        traced.save(str(pt))
    cmd = [binary, str(pt), f"inputshape=[1,3,{shape[0]},{shape[1]}]f32", "device=cpu",
           f"fp16={int(fp16)}", f"ncnnparam={work / PARAM_FILE}", f"ncnnbin={work / BIN_FILE}"]
    if shape2 is not None:
        cmd.append(f"inputshape2=[1,3,{shape2[0]},{shape2[1]}]f32")
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=_PNNX_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LeyoloError(f"pnnx could not run ({first_line(exc)})") from exc
    param, weights = work / PARAM_FILE, work / BIN_FILE
    if proc.returncode != 0 or not param.is_file() or not weights.is_file():
        lines = [x for x in (proc.stderr + proc.stdout).strip().splitlines() if x.strip()]
        raise LeyoloError(f"pnnx failed to convert the model (exit {proc.returncode}): "
                          f"{lines[-1] if lines else 'no output'}")
    return param, weights


def unconverted_layers(param: Path) -> list[str]:
    """Layer types in an ncnn ``.param`` that ncnn does not implement (left by pnnx under their torch names)."""
    types = [line.split()[0] for line in param.read_text().splitlines()[2:] if line.strip()]
    return sorted({t for t in types if _UNCONVERTED.search(t)})


def run_ncnn(param: Path, weights: Path, image: np.ndarray, fp16: bool = False, threads: int = 1) -> np.ndarray:
    """One ``[3, H, W]`` float image through a converted net: its ``out0`` as ``[C, N]`` (the export check)."""
    ncnn = require("ncnn", "checking an NCNN export")
    net = ncnn.Net()
    net.opt.num_threads = threads
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = fp16
    net.opt.use_fp16_arithmetic = False
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise LeyoloError(f"{param.parent}: ncnn cannot load the converted model")
    blob = np.ascontiguousarray(image, dtype=np.float32)  # the Mat borrows this memory: keep it alive
    with net.create_extractor() as ex:
        ex.input(INPUT_NAME, ncnn.Mat(blob))
        ret, out = ex.extract(OUTPUT_NAME)
        if ret != 0:
            raise LeyoloError(f"{param.parent}: ncnn failed to run the converted model (code {ret})")
        result = np.array(out, copy=True)
    net.clear()
    return result


def check_conversion(graph: nn.Module, param: Path, weights: Path, shapes: list[tuple[int, int]],
                     fp16: bool) -> float:
    """Run the converted net beside torch at each shape; refuse it past tolerance. Returns the worst difference."""
    bad = unconverted_layers(param)
    if bad:
        raise LeyoloError(f"pnnx left layers ncnn cannot run ({', '.join(bad)}); "
                          "try --static (a fixed input size converts more of the graph)")
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for k, (h, w) in enumerate(shapes):
        x = torch.rand(1, 3, h, w, generator=generator)
        with torch.no_grad():
            ref = graph(x)[0].numpy()
        out = run_ncnn(param, weights, x[0].numpy(), fp16=fp16)
        if out.shape != ref.shape:
            raise LeyoloError(f"the NCNN export gives {out.shape} at {h}x{w}, torch {ref.shape}: conversion is wrong")
        # boxes (stride units or pixels) get a relative bound, scores an absolute one; fp16 weights lose ~3 digits
        tol = 5e-2 if fp16 else 2e-3
        err = np.abs(out - ref) / (1.0 + np.abs(ref))
        worst = max(worst, float(err.max()))
        if not np.isfinite(out).all() or worst > tol:
            hint = ("; it converts for one input size only: try --static" if k else
                    f"; pnnx {_pnnx_version()} may not convert this model correctly")
            raise LeyoloError(f"the NCNN export differs from torch at {h}x{w} (max relative difference {worst:.3g} "
                              f"> {tol}){hint}")
    return worst


def _pnnx_version() -> str:
    try:
        from importlib.metadata import version

        return version("pnnx")
    except Exception:  # noqa: BLE001 - metadata missing: only used in messages
        return "?"


def export_ncnn(model: DetectionModel, path: str | Path, opts: ExportOptions) -> Path:
    """Convert ``model`` with pnnx into the folder ``path`` (``*_ncnn_model``), checked against torch."""
    path = Path(path)
    graph, layout = export_graph(model)
    stride = int(model.stride)
    size = (opts.imgsz, opts.imgsz)
    size2 = second_shape(opts.imgsz, stride) if opts.dynamic else None
    meta = export_metadata(model, "ncnn", opts) | {
        "output": layout, "input": INPUT_NAME, "outputs": [OUTPUT_NAME], "pnnx": _pnnx_version(),
        "files": {"param": PARAM_FILE, "bin": BIN_FILE},
    }

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="leyolo-pnnx-") as scratch:
            param, weights = run_pnnx(graph, Path(scratch), size, size2, bool(opts.half))
            check_conversion(graph, param, weights, [size] + ([(size2[0], size[1])] if size2 else []),
                             bool(opts.half))
            param.replace(tmp / PARAM_FILE)
            weights.replace(tmp / BIN_FILE)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1))

    return atomic_dir(path, write)


def ncnn_files(path: str | Path) -> tuple[Path, Path]:
    """(param, bin) of an NCNN export given as its folder or its ``.param``."""
    return model_file(path, ".param", "an NCNN model")


def is_ncnn_export(path: str | Path) -> bool:
    """Whether ``path`` looks like an NCNN export: a ``.param`` file or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        return path.name.endswith(FOLDER_SUFFIX) or any(path.glob("*.ncnn.param"))
    return path.suffix.lower() == ".param"


def read_ncnn_metadata(path: str | Path) -> dict[str, Any]:
    """``metadata.json`` beside the ``.param``: names, input size, strides, output layout, dynamic, half."""
    param, _ = ncnn_files(path)
    file = param.parent / METADATA_FILE
    if not file.is_file():
        raise LeyoloError(f"{param.parent}: no {METADATA_FILE} beside {param.name}; not a leyolo NCNN export")
    try:
        info = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise LeyoloError(f"{file}: corrupt leyolo metadata") from exc
    if not isinstance(info, dict):
        raise LeyoloError(f"{file}: corrupt leyolo metadata (not an object)")
    if info.get("output", "xyxy+scores") not in LAYOUTS:
        raise LeyoloError(f"{file}: unknown output layout {info.get('output')!r} "
                          f"(expected one of {', '.join(LAYOUTS)})")
    return info


__all__ = ["BIN_FILE", "DistanceGraph", "METADATA_FILE", "PARAM_FILE", "check_conversion", "export_graph",
           "export_ncnn", "is_ncnn_export", "ncnn_files", "ncnn_layout", "read_ncnn_metadata", "run_pnnx",
           "second_shape", "unconverted_layers"]
