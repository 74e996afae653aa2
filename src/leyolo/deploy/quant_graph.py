"""ONNX graph facts that quantization needs: the head's output convs, the decode tail, layer groups.

Everything here works on the graph alone (no PyTorch model), so a plain ``.onnx`` export can
be quantized too. The rules are structural rather than name patterns where that is possible:

- head output convs: the ``Conv`` nodes with a Conv-free path to a graph output. In a leyolo
  export these are exactly the last conv of every box/cls branch and the DFL's fixed conv
  (the box convs reach the output through the per-level concat that also carries the class
  logits);
- decode tail: every node downstream of those convs (DFL softmax, anchors, box arithmetic,
  sigmoid, the final concat of pixel boxes and probabilities, NMS if present). It always stays
  float: one INT8 scale for ``[0, 640]`` pixel boxes and ``[0, 1]`` scores zeroes the scores
  (measured: mAP 0.0 when it is quantized);
- layer groups: nodes grouped by the exporter's module scope (``/model/layers.3/...`` or
  ``/model/head/cls.1/...``), the unit of the sensitivity scan and of ``--exclude layers.3``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from ..errors import LeyoloError

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "ConvInteger", "QLinearConv", "MatMulInteger",
                 "DynamicQuantizeLinear"}


def consumers(proto: Any) -> dict[str, list[Any]]:
    """Tensor name -> nodes reading it."""
    out: dict[str, list[Any]] = defaultdict(list)
    for node in proto.graph.node:
        for name in node.input:
            if name:
                out[name].append(node)
    return out


def head_output_convs(proto: Any) -> list[str]:
    """Names of the Conv nodes with a Conv-free path to a graph output (see the module doc)."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    found: list[str] = []
    seen: set[str] = set()
    stack = [o.name for o in proto.graph.output]
    while stack:
        tensor = stack.pop()
        node = producers.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Conv":
            found.append(node.name)
            continue  # do not walk past a conv
        stack.extend(i for i in node.input if i)
    if not found:
        raise LeyoloError("no output convolution found in the ONNX graph (not a leyolo detection export?)")
    return sorted(found)


def decode_tail(proto: Any, sources: Iterable[str]) -> list[str]:
    """Every node downstream of the nodes ``sources`` (themselves excluded)."""
    by_name = {n.name: n for n in proto.graph.node}
    readers = consumers(proto)
    tail: set[str] = set()
    stack = [o for s in sources for o in by_name[s].output]
    while stack:
        for node in readers.get(stack.pop(), []):
            if node.name not in tail:
                tail.add(node.name)
                stack.extend(node.output)
    return sorted(tail - set(sources))


def group_of(node_name: str) -> str:
    """``/model/layers.3/expand/conv/Conv`` -> ``layers.3``; ``/model/head/cls.1/...`` -> ``head/cls.1``."""
    parts = [p for p in node_name.split("/") if p]
    if parts and parts[0] == "model":
        parts = parts[1:]
    if len(parts) >= 3 and parts[0] == "head":
        return "/".join(parts[:2])
    return parts[0] if len(parts) > 1 else node_name


def layer_groups(proto: Any, skip: Iterable[str] = ()) -> dict[str, list[str]]:
    """Group name -> node names, for groups holding at least one Conv (nodes in ``skip`` left out)."""
    skipped = set(skip)
    groups: dict[str, list[str]] = defaultdict(list)
    has_conv: set[str] = set()
    for node in proto.graph.node:
        if node.name in skipped or not node.name:
            continue
        key = group_of(node.name)
        groups[key].append(node.name)
        if node.op_type == "Conv":
            has_conv.add(key)
    return {k: v for k, v in groups.items() if k in has_conv}


def match_nodes(proto: Any, tokens: Iterable[str]) -> list[str]:
    """Node names for ``--exclude NAMES``: exact node names or layer groups (``layers.1``, ``head/cls.0``)."""
    names = [n.name for n in proto.graph.node if n.name]
    picked: set[str] = set()
    for token in tokens:
        token = token.strip()
        if not token:
            continue
        hits = [n for n in names if n == token or group_of(n) == token.strip("/").removeprefix("model/")]
        if not hits:
            raise LeyoloError(f"--exclude {token}: no such node or layer in the graph (e.g. layers.1, "
                              f"head/cls.0 or a node name such as {names[0]})")
        picked.update(hits)
    return sorted(picked)


def is_quantized(proto: Any) -> bool:
    return any(n.op_type in QUANTIZED_OPS for n in proto.graph.node)
