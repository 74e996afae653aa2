"""ONNX graph edits done after the torch export: simplification and the end-to-end postprocess.

Both tails (NMS for dense models, top-k for set predictors) follow TensorRT's EfficientNMS output layout, which most deployment code
already reads:

- ``num_dets``    ``[B, 1]``          int32: how many rows of the others are real;
- ``det_boxes``   ``[B, max_det, 4]`` float32: xyxy in network-input (letterboxed) pixels;
- ``det_scores``  ``[B, max_det]``    float32, highest first;
- ``det_classes`` ``[B, max_det]``    int32.

Rows past ``num_dets`` are zero. It is built from the standard ``NonMaxSuppression`` op,
which is per-class NMS over every (class, box) pair above the score threshold: exactly the
numpy ``postprocess`` with ``multi_label=True``. Single-label masks each box to its best
class first, as ``postprocess`` does by default. The top-k tail is ``ops.topk_postprocess``:
the ``max_det`` best (query, class) pairs, no NMS.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import LeyoloError, first_line
from ..optional import require

NMS_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")


def simplify(proto: Any) -> Any:
    """Run onnxslim (constant folding, dead-node removal, pattern fusions) on ``proto``."""
    onnxslim = require("onnxslim", "--simplify")
    try:
        return onnxslim.slim(proto)
    except Exception as exc:  # onnxslim raises assorted errors on graphs it cannot handle
        raise LeyoloError(f"onnxslim failed to simplify the graph ({type(exc).__name__}: {first_line(exc)}); "
                          "export without --simplify") from exc


def check_same_outputs(reference: Any, candidate: Any, imgsz: int, what: str, seed: int = 0) -> None:
    """Run both graphs on one random letterboxed-like input; raise if the decoded outputs differ.

    Tolerances are those of the parity tests: scores 1e-4 absolute, boxes (pixels)
    1e-3 + 1e-5 x |value|.
    """
    import onnxruntime as ort

    x = np.random.default_rng(seed).random((1, 3, imgsz, imgsz), dtype=np.float32)
    outs = []
    for proto in (reference, candidate):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # compare graphs, not fusions
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        outs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    a, b = outs
    if a.shape != b.shape:
        raise LeyoloError(f"{what} changed the output shape {a.shape} -> {b.shape}")
    box_err = np.abs(a[:, :4] - b[:, :4]) - (1e-3 + 1e-5 * np.abs(a[:, :4]))
    score_err = np.abs(a[:, 4:] - b[:, 4:]).max(initial=0.0)
    if box_err.max(initial=-1.0) > 0 or score_err > 1e-4:
        raise LeyoloError(f"{what} changed the outputs (max score difference {score_err:.2e}); export without it")


class _GraphBuilder:
    """Appends nodes and constants to a graph with unique ``nms/`` names."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"nms/{stem}_{self.count}"

    def const(self, value: Any, dtype: Any) -> str:
        from onnx import numpy_helper

        name = self.name("const")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> Any:
        from onnx import helper

        name = self.name(op_type)
        outputs = [f"{name}:{i}" for i in range(n_out)]
        self.graph.node.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))
        return outputs[0] if n_out == 1 else outputs


def append_nms(proto: Any, nc: int, conf: float, iou: float, max_det: int, multi_label: bool) -> Any:
    """Replace the decoded output ``[B, 4 + nc, A]`` by the EfficientNMS-style outputs, in place.

    Per-batch selection: NonMaxSuppression returns ``(batch, class, box)`` rows for the whole
    batch; a ``[B, rows]`` score matrix (-1 where the row belongs to another image) goes through
    TopK(max_det). ``max_det`` padding rows with score -1 keep TopK valid when fewer survive.
    """

    graph = proto.graph
    if len(graph.output) != 1:
        raise LeyoloError("--nms needs the plain decoded export (one output)")
    decoded = graph.output[0].name
    dims = graph.output[0].type.tensor_type.shape.dim
    batch_dim = dims[0].dim_param or dims[0].dim_value  # (a dynamic export leaves the channel dim symbolic too)
    b = _GraphBuilder(graph)
    i64, f32 = np.int64, np.float32
    boxes = b.op("Transpose", [b.op("Slice", [decoded, b.const([0], i64), b.const([4], i64), b.const([1], i64)])],
                 perm=[0, 2, 1])  # [B, A, 4]
    scores = b.op("Slice", [decoded, b.const([4], i64), b.const([4 + nc], i64), b.const([1], i64)])  # [B, nc, A]
    if not multi_label:  # keep each box's best class only (first index on ties, like numpy argmax)
        best = b.op("ArgMax", [scores], axis=1, keepdims=1)  # [B, 1, A]
        is_best = b.op("Equal", [best, b.const(np.arange(nc).reshape(1, nc, 1), i64)])
        scores = b.op("Where", [is_best, scores, b.const(0.0, f32)])
    selected = b.op("NonMaxSuppression", [boxes, scores, b.const([max_det], i64), b.const([iou], f32),
                                          b.const([conf], f32)], center_point_box=0)  # [N, 3]
    rows = b.op("Concat", [selected, b.const(np.zeros((max_det, 3)), i64)], axis=0)  # [N + K, 3]
    row_scores = b.op("Concat", [b.op("GatherND", [scores, selected]), b.const(np.full(max_det, -1.0), f32)], axis=0)
    row_batch = b.op("Gather", [rows, b.const(0, i64)], axis=1)  # [N + K]
    n_batch = b.op("Gather", [b.op("Shape", [decoded]), b.const(0, i64)], axis=0)
    batch_ids = b.op("Unsqueeze", [b.op("Range", [b.const(0, i64), n_batch, b.const(1, i64)]), b.const([1], i64)])
    mine = b.op("Equal", [b.op("Unsqueeze", [row_batch, b.const([0], i64)]), batch_ids])  # [B, N + K]
    matrix = b.op("Where", [mine, b.op("Unsqueeze", [row_scores, b.const([0], i64)]), b.const(-1.0, f32)])
    top_scores, top_rows = b.op("TopK", [matrix, b.const([max_det], i64)], n_out=2, axis=1, largest=1, sorted=1)
    valid = b.op("Greater", [top_scores, b.const(-0.5, f32)])  # [B, K]
    picked = b.op("Gather", [rows, top_rows], axis=0)  # [B, K, 3]
    part: Callable[[int], str] = lambda j: b.op("Gather", [picked, b.const([j], i64)], axis=2)  # noqa: E731 [B, K, 1]
    det_boxes = b.op("GatherND", [boxes, b.op("Concat", [part(0), part(2)], axis=2)])  # [B, K, 4]
    classes = b.op("Squeeze", [part(1), b.const([2], i64)])
    _set_outputs(graph, b, valid, det_boxes, top_scores, classes, batch_dim, max_det)
    return proto


def _set_outputs(graph: Any, b: _GraphBuilder, valid: str, boxes: str, scores: str, classes: str, batch_dim: Any,
                 max_det: int) -> None:
    """The four end-to-end outputs from the top ``max_det`` rows (invalid rows zeroed), named and shaped."""
    from onnx import TensorProto, helper

    i64, f32 = np.int64, np.float32
    zero_f, zero_i = b.const(0.0, f32), b.const(0, i64)
    outputs = {
        "num_dets": b.op("Cast", [b.op("ReduceSum", [b.op("Cast", [valid], to=TensorProto.INT64), b.const([1], i64)],
                                       keepdims=1)], to=TensorProto.INT32),
        "det_boxes": b.op("Where", [b.op("Unsqueeze", [valid, b.const([2], i64)]), boxes, zero_f]),
        "det_scores": b.op("Where", [valid, scores, zero_f]),
        "det_classes": b.op("Cast", [b.op("Where", [valid, classes, zero_i])], to=TensorProto.INT32),
    }
    for name, tensor in outputs.items():
        graph.node.append(helper.make_node("Identity", [tensor], [name], name=f"nms/{name}"))
    shapes = {"num_dets": (TensorProto.INT32, [batch_dim, 1]),
              "det_boxes": (TensorProto.FLOAT, [batch_dim, max_det, 4]),
              "det_scores": (TensorProto.FLOAT, [batch_dim, max_det]),
              "det_classes": (TensorProto.INT32, [batch_dim, max_det])}
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(n, *shapes[n]) for n in NMS_OUTPUTS)


def append_topk(proto: Any, nc: int, conf: float, max_det: int) -> Any:
    """Replace a set predictor's decoded output ``[B, 4 + nc, Q]`` by the EfficientNMS-style outputs, in place.

    Scores are flattened query-major (``q * nc + c``, as ``ops.topk_postprocess``) and padded with
    ``max_det`` scores of -1, so TopK(max_det) is valid whatever ``Q * nc`` is; padding rows and rows
    at or below ``conf`` are the invalid ones (zeroed, not counted in ``num_dets``).
    """
    from onnx import TensorProto, helper

    graph = proto.graph
    if len(graph.output) != 1:
        raise LeyoloError("--nms needs the plain decoded export (one output)")
    decoded = graph.output[0].name
    dims = graph.output[0].type.tensor_type.shape.dim
    batch_dim = dims[0].dim_param or dims[0].dim_value
    b = _GraphBuilder(graph)
    i64, f32 = np.int64, np.float32
    boxes = b.op("Transpose", [b.op("Slice", [decoded, b.const([0], i64), b.const([4], i64), b.const([1], i64)])],
                 perm=[0, 2, 1])  # [B, Q, 4]
    scores = b.op("Transpose", [b.op("Slice", [decoded, b.const([4], i64), b.const([4 + nc], i64), b.const([1], i64)])],
                  perm=[0, 2, 1])  # [B, Q, nc]
    flat = b.op("Reshape", [scores, b.const([0, -1], i64)])  # [B, Q * nc]
    n_batch = b.op("Slice", [b.op("Shape", [decoded]), b.const([0], i64), b.const([1], i64)])  # [1]
    pad_shape = b.op("Concat", [n_batch, b.const([max_det], i64)], axis=0)
    pad = b.op("ConstantOfShape", [pad_shape], value=helper.make_tensor("minus_one", TensorProto.FLOAT, [1], [-1.0]))
    padded = b.op("Concat", [flat, pad], axis=1)
    top_scores, top_index = b.op("TopK", [padded, b.const([max_det], i64)], n_out=2, axis=1, largest=1, sorted=1)
    valid = b.op("Greater", [top_scores, b.const(float(conf), f32)])  # padding (-1) is never valid
    n_query = b.op("Gather", [b.op("Shape", [boxes]), b.const(1, i64)], axis=0)
    query = b.op("Min", [b.op("Div", [top_index, b.const(nc, i64)]), b.op("Sub", [n_query, b.const(1, i64)])])
    classes = b.op("Mod", [top_index, b.const(nc, i64)])
    det_boxes = b.op("GatherND", [boxes, b.op("Unsqueeze", [query, b.const([2], i64)])], batch_dims=1)  # [B, K, 4]
    _set_outputs(graph, b, valid, det_boxes, top_scores, classes, batch_dim, max_det)
    return proto
