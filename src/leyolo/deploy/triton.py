"""Triton Inference Server model repository: ``<repo>/<name>/1/model.onnx`` + ``config.pbtxt`` + labels.

The model is the ordinary ONNX export (with its leyolo metadata), so what Triton runs is what
``leyolo predict --model model.onnx`` runs. ``config.pbtxt`` is written from the ONNX graph's
own inputs and outputs (names, types, shapes; symbolic dimensions become -1), so it stays right
for ``--nms`` (the four EfficientNMS-style outputs) and ``--half`` (FP32 inputs and outputs).

Batching: a dynamic export (the default) has a symbolic batch dimension, so the config declares
``max_batch_size`` and ``dynamic_batching`` (Triton gathers requests up to
``max_queue_delay_microseconds``; it only batches requests of equal shape, which is what
per-image letterboxing needs). A ``--static`` export has batch 1 baked in: ``max_batch_size: 0``
and no dynamic batching. ``labels.txt`` has one class name per line (the order of class ids)
and is named by the class output's ``label_filename``; the model's preprocessing (imgsz,
stride, pad value) is in the ``leyolo`` parameter as JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import LeyoloError
from ..fileio import atomic_dir
from ..models.base import DetectionModel
from .base import ExportOptions, model_metadata
from .onnx_export import export_onnx

MAX_BATCH = 8  # max_batch_size of a dynamic export (ExportOptions.batch when larger)
QUEUE_DELAY_US = 5000  # as leyolo serve's --max-wait-ms 5
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32",
                  7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}


def model_name(arch: str) -> str:
    """A Triton model name (a folder name) from the architecture name."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", arch).strip("._")
    return name or "leyolo"


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def tensor_specs(proto: Any) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of an ONNX graph: name, Triton data type and full shape (-1 where symbolic)."""
    initializers = {t.name for t in proto.graph.initializer}

    def spec(value: Any) -> dict:
        kind = value.type.tensor_type
        if kind.elem_type not in ONNX_TO_TRITON:
            raise LeyoloError(f"ONNX tensor {value.name}: element type {kind.elem_type} has no Triton type")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
        return {"name": value.name, "data_type": ONNX_TO_TRITON[kind.elem_type], "dims": dims}

    inputs = [spec(v) for v in proto.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in proto.graph.output]


def render_config(name: str, inputs: list[dict], outputs: list[dict], max_batch: int, labels: str | None,
                  parameters: dict[str, str]) -> str:
    """``config.pbtxt`` text. With ``max_batch > 0`` the batch dimension is left out of ``dims``."""

    def block(kind: str, specs: list[dict]) -> list[str]:
        lines = [f"{kind} ["]
        for i, s in enumerate(specs):
            dims = s["dims"][1:] if max_batch > 0 else s["dims"]
            lines += ["  {", f"    name: {_quote(s['name'])}", f"    data_type: {s['data_type']}",
                      f"    dims: [ {', '.join(str(d) for d in dims)} ]"]
            if labels and s.get("labels"):
                lines.append(f"    label_filename: {_quote(labels)}")
            lines.append("  }," if i < len(specs) - 1 else "  }")
        return [*lines, "]"]

    lines = [f"name: {_quote(name)}", 'backend: "onnxruntime"', f"max_batch_size: {max_batch}",
             *block("input", inputs), *block("output", outputs)]
    if max_batch > 0:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}", "}"]
    lines += ["instance_group [", "  {", "    count: 1", "    kind: KIND_AUTO", "  }", "]"]
    for key, value in parameters.items():
        lines += ["parameters {", f"  key: {_quote(key)}", f"  value: {{ string_value: {_quote(value)} }}", "}"]
    return "\n".join(lines) + "\n"


def export_triton(model: DetectionModel, repo: str | Path, opts: ExportOptions, name: str | None = None) -> Path:
    """Write the model into the Triton repository ``repo`` (as ``<repo>/<name>/``); returns ``repo``.

    The model folder is replaced atomically; other models in the repository are left alone.
    """
    import onnx

    repo = Path(repo)
    if repo.suffix.lower() == ".onnx" or (repo.exists() and not repo.is_dir()):
        raise LeyoloError(f"{repo}: a Triton export is a folder (the model repository), not a file")
    name = model_name(name or model.meta.arch)
    nms = opts.nms
    max_batch = (max(opts.batch, MAX_BATCH) if opts.batch > 1 else MAX_BATCH) if opts.dynamic else 0
    meta = model_metadata(model, opts.imgsz)
    preprocess = {k: meta[k] for k in ("arch", "imgsz", "stride", "pad_value", "kind") if k in meta}
    preprocess.update(input="RGB float32 in [0, 1], letterboxed", dynamic=bool(opts.dynamic), nms=bool(nms))

    def write(folder: Path) -> None:
        (folder / "1").mkdir()
        onnx_path = export_onnx(model, folder / "1" / "model.onnx", **vars(opts))
        inputs, outputs = tensor_specs(onnx.load(str(onnx_path), load_external_data=False))
        if not nms and outputs[0]["dims"][1] == -1:  # the tracer leaves [B, 4 + nc, A]'s middle symbolic
            outputs[0]["dims"][1] = 4 + model.nc
        if opts.dynamic and any(s["dims"][:1] != [-1] for s in inputs + outputs):
            raise LeyoloError("the ONNX export has a fixed batch dimension; cannot declare dynamic batching")
        for s in outputs:  # the tensor whose values are class ids (or scores per class) gets the labels
            s["labels"] = s["name"] == ("det_classes" if nms else outputs[0]["name"])
        (folder / "labels.txt").write_text("".join(f"{n}\n" for n in model.meta.names), encoding="utf-8")
        text = render_config(name, inputs, outputs, max_batch, "labels.txt", {"leyolo": json.dumps(preprocess)})
        (folder / "config.pbtxt").write_text(text, encoding="utf-8")

    atomic_dir(repo / name, write)
    return repo


__all__ = ["export_triton", "model_name", "render_config", "tensor_specs"]
