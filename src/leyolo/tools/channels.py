"""Channel pruning through torch-pruning's dependency graph, with bias compensation.

torch-pruning keeps depthwise groups, residual adds and neck concats consistent; this module adds
what LayerGraphModels need on top of it: the head outputs and DFL kept whole, widths rounded to the
nearest multiple of 8, per-layer ratios keyed by module name (the sensitivity scan's plan), YOLOv12's
attention kept dense, and bias compensation (``compensate``): a removed channel's mean is folded
into the next layer, so it sees the same mean as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ..errors import LeyoloError, first_line
from ..models.graph import LayerGraphModel
from ..optional import require

IMPORTANCE = ("l2", "l1", "variance")  # weight norms, or what compensation leaves (CompensatedImportance)
# Families whose graphs torch-pruning was checked on (forward, widths, save/load, export).
CHANNEL_FAMILIES = ("leyolo", "yolov12")


def head_outputs(model: nn.Module) -> list[nn.Module]:
    """The convs that must keep their widths: every branch's output conv and the DFL."""
    head = getattr(model, "head", None)
    if not isinstance(model, LayerGraphModel) or not hasattr(head, "box"):
        raise LeyoloError(f"{type(model).__name__}: pruning needs a layer-graph model with a dense head")
    return [seq[-1] for seq in list(head.box) + list(head.cls)] + [head.dfl.conv]


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """YOLOv12's area-attention modules: kept dense (opaque to the dependency graph, never resized)."""
    from ..models.attention import AreaAttention

    return [m for m in model.modules() if isinstance(m, AreaAttention)]


def every_layer_forward(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Head maps plus the outputs of layers that feed nothing (published medium), so those get pruned too."""
    outputs: dict[int, torch.Tensor] = {}
    prev = x
    for i, layer in enumerate(model.layers):
        src = model.sources[i]
        if isinstance(src, tuple):
            inp = [prev if s == -1 else outputs[s] for s in src]
        else:
            inp = prev if src == -1 else outputs[src]
        prev = outputs[i] = layer(inp)
    used = {s for src in model.sources for s in (src if isinstance(src, tuple) else (src,)) if s >= 0}
    used |= {i - 1 for i, src in enumerate(model.sources) if src == -1 or (isinstance(src, tuple) and -1 in src)}
    dead = [outputs[i] for i in range(len(model.layers)) if i not in used and i not in model.head_sources]
    return list(model.head([outputs[i] for i in model.head_sources])) + dead


def _nearest_rounding(pruner_class: type) -> type:
    """``pruner_class`` with torch-pruning's width rounding changed from "down" to "nearest, at least one block"."""

    class NearestRounding(pruner_class):  # type: ignore[misc, valid-type]
        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            keep = max(round_to, round((current_channels - n_pruned) / round_to) * round_to)
            return max(current_channels - keep, 0)

    return NearestRounding


def _opaque_pruner(tp: Any) -> Any:
    """A torch-pruning function for modules left whole: the graph does not trace into them, and they
    report their widths. Any group that would resize one is skipped because the module is ignored."""

    class Opaque(tp.pruner.function.BasePruningFunc):
        def prune_out_channels(self, layer: nn.Module, idxs: list) -> nn.Module:
            raise LeyoloError(f"{type(layer).__name__} is kept dense and cannot be resized")

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer: nn.Module) -> int:
            return int(layer.dim)

        def get_in_channels(self, layer: nn.Module) -> int:
            return int(layer.dim)

    return Opaque()


# ---------------------------------------------------------------------------------- C3k2 halves
def _halves_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = [self.halves[0](x), self.halves[1](x)]
    for block in self.blocks:
        y.append(block(y[-1]))
    return self.fuse(torch.cat(y, 1))


@torch.no_grad()
def split_halves(model: nn.Module) -> list[nn.Module]:
    """Give every C3k2 two separate 1x1 convs in place of one conv and ``chunk(2)`` (same function).

    torch-pruning cannot keep ``chunk``'s two halves equal, so it mis-maps channel indices through
    the split and the concat after it; as two convs each half is an ordinary group. ``join_halves``
    puts them back (the halves must then have equal widths: ``plan`` and uniform ratios keep them so).
    """
    import copy as _copy
    import types

    from ..models.layers import C3k2

    blocks = [m for m in model.modules() if isinstance(m, C3k2)]
    for block in blocks:
        whole = block.split
        c = whole.conv.out_channels // 2
        halves = nn.ModuleList(_copy.deepcopy(whole) for _ in range(2))
        for i, half in enumerate(halves):
            sl = slice(i * c, (i + 1) * c)
            half.conv.weight = nn.Parameter(whole.conv.weight[sl].clone())
            half.conv.out_channels = c
            half.bn = nn.BatchNorm2d(c, whole.bn.eps, whole.bn.momentum)
            half.bn.load_state_dict({k: (v[sl].clone() if v.ndim else v.clone()) for k, v in whole.bn.state_dict().items()})
        del block.split
        block.halves = halves
        block.forward = types.MethodType(_halves_forward, block)
    return blocks


@torch.no_grad()
def join_halves(blocks: list[nn.Module]) -> None:
    """Undo ``split_halves``: one 1x1 conv whose two ``chunk`` halves are the pruned halves."""
    for block in blocks:
        first, second = block.halves
        if first.conv.out_channels != second.conv.out_channels:
            raise LeyoloError(f"C3k2 halves pruned to different widths ({first.conv.out_channels} and "
                              f"{second.conv.out_channels}): they must match for chunk(2)")
        whole = first
        whole.conv.weight = nn.Parameter(torch.cat([first.conv.weight, second.conv.weight]))
        whole.conv.out_channels = 2 * first.conv.out_channels
        bn = nn.BatchNorm2d(whole.conv.out_channels, first.bn.eps, first.bn.momentum)
        state = {k: (torch.cat([v, second.bn.state_dict()[k]]) if v.ndim else v)
                 for k, v in first.bn.state_dict().items()}
        bn.load_state_dict(state)
        whole.bn = bn
        del block.halves, block.forward
        block.split = whole


def tied_halves(model: nn.Module) -> list[tuple[str, str]]:
    """Names of the two half convs of every split C3k2 (their widths must stay equal)."""
    names = {m: n for n, m in model.named_modules()}
    return [(names[b.halves[0].conv], names[b.halves[1].conv]) for b in model.modules() if hasattr(b, "halves")]


def make_pruner(model: nn.Module, ratio: float = 0.0, importance: str = "l2", round_to: int | None = 8,
                ratios: Mapping[str, float] | None = None, stats: "InputStats | None" = None) -> Any:
    """A torch-pruning ``MetaPruner`` for ``model``: uniform ``ratio``, or per-group ``ratios`` by root conv name.

    ``importance`` "variance" ranks channels by what bias compensation cannot restore (needs ``stats``).
    """
    arch = str(getattr(getattr(model, "meta", None), "arch", ""))
    if not arch.startswith(CHANNEL_FAMILIES) or arch.endswith("-turbo"):  # turbo's qk/v attention: not checked
        raise LeyoloError(f"channel pruning is verified for {', '.join(CHANNEL_FAMILIES)} models only, not {arch} "
                          "(use --method l1-unstructured)")
    if importance not in IMPORTANCE:
        raise LeyoloError(f"unknown importance {importance!r} ({', '.join(IMPORTANCE)})")
    if importance == "variance" and stats is None:
        raise LeyoloError("importance 'variance' needs calibration images (--data)")
    tp = require("torch_pruning", "channel pruning")
    model.eval()
    example = torch.zeros(1, 3, 64, 64, dtype=next(model.parameters()).dtype)
    dense = attention_modules(model)
    modules = dict(model.named_modules())
    by_module = {modules[name]: float(r) for name, r in (ratios or {}).items() if r > 0}
    magnitude = tp.importance.MagnitudeImportance(p=1 if importance == "l1" else 2)
    pruner = _nearest_rounding(tp.pruner.MetaPruner)(
        model, example, importance=magnitude, pruning_ratio=ratio, pruning_ratio_dict=by_module or None,
        ignored_layers=head_outputs(model) + dense, round_to=round_to, forward_fn=every_layer_forward,
        customized_pruners={type(dense[0]): _opaque_pruner(tp)} if dense else None,  # looked up by class
    )
    if importance == "variance":
        pruner.importance = CompensatedImportance(stats, following_norms(model), pruner.DG.is_in_channel_pruning_fn,
                                                  magnitude)
    return pruner


def prunable_groups(pruner: Any) -> Iterable[Any]:
    """The dependency groups pruning may cut (head outputs, DFL and attention excluded), one per root conv."""
    return pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types)


# ---------------------------------------------------------------------------------- compensation
def following_norms(model: nn.Module) -> dict[nn.Conv2d, nn.BatchNorm2d]:
    """Each conv's BatchNorm in a ``ConvBNAct`` (a module holding ``.conv`` and ``.bn``)."""
    return {m.conv: m.bn for m in model.modules()
            if isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d)}


def _dense(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.groups == 1


@dataclass
class InputStats:
    """Per-input-channel mean and variance of every dense conv's input on calibration images."""

    mean: dict[nn.Conv2d, torch.Tensor]
    var: dict[nn.Conv2d, torch.Tensor]


@torch.no_grad()
def conv_input_stats(model: nn.Module, batches: Iterable[torch.Tensor]) -> InputStats:
    """Mean and variance of each dense conv's input channels on ``batches`` (eval mode): the means are
    what compensation folds in, the variances what it cannot (``CompensatedImportance``)."""
    sums: dict[nn.Conv2d, torch.Tensor] = {}
    squares: dict[nn.Conv2d, torch.Tensor] = {}
    counts: dict[nn.Conv2d, int] = {}

    def hook(conv: nn.Conv2d, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].double()
        sums[conv] = sums.get(conv, 0) + x.sum((0, 2, 3))
        squares[conv] = squares.get(conv, 0) + (x * x).sum((0, 2, 3))
        counts[conv] = counts.get(conv, 0) + x.shape[0] * x.shape[2] * x.shape[3]

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if _dense(m)]
    was_training = model.training
    model.eval()
    try:
        seen = 0
        for images in batches:
            model(images)
            seen += len(images)
        if not seen:
            raise LeyoloError("bias compensation got no calibration images")
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    mean = {conv: sums[conv] / counts[conv] for conv in sums}
    var = {conv: (squares[conv] / counts[conv] - mean[conv] ** 2).clamp_min(0).float() for conv in sums}
    return InputStats({conv: m.float() for conv, m in mean.items()}, var)


class CompensatedImportance:
    """Channel importance once its mean is compensated: the variance it still removes from its consumers.

    With the mean folded in, removing input channel ``c`` of a dense conv changes its normalised outputs
    by ``(gamma_o / sigma_o) * W[o, c] * (x_c - mu_c)``, whose energy is
    ``sum_o (gamma_o / sigma_o)^2 W[o, c]^2 Var(x_c)``: summed over every consumer of the group's channel.
    A nearly constant channel is then free to remove however large its weights are, which weight
    magnitude (the default importance) cannot see. Groups without a measured consumer fall back to it.
    """

    def __init__(self, stats: InputStats, norms: dict[nn.Conv2d, nn.BatchNorm2d], is_in_channel: Any,
                 fallback: Any) -> None:
        self.stats, self.norms, self.is_in_channel, self.fallback = stats, norms, is_in_channel, fallback

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor:
        n = len(group[0].idxs)
        score = torch.zeros(n, dtype=torch.float64)
        found = False
        for item in group:
            dep, idxs = item.dep, item.idxs
            conv = dep.target.module
            var = self.stats.var.get(conv)
            roots = getattr(item, "root_idxs", None)
            if var is None or not (_dense(conv) and self.is_in_channel(dep.handler)) or not idxs or roots is None:
                continue
            if any(r is None for r in roots):
                continue
            scale = torch.ones(conv.out_channels, dtype=torch.float64)
            norm = self.norms.get(conv)
            if norm is not None:
                scale = (norm.weight.double() ** 2) / (norm.running_var.double() + norm.eps)
            idx = torch.as_tensor(idxs, dtype=torch.long)
            energy = (conv.weight[:, idx].double() ** 2).sum((2, 3)).T @ scale * var[idx].double()  # [len(idx)]
            score.index_add_(0, torch.as_tensor(roots, dtype=torch.long), energy)
            found = True
        if not found:
            return self.fallback(group)
        # ties (exact zeros: dead channels) confuse torch-pruning's width rounding; weight norm breaks them
        magnitude = self.fallback(group).double().cpu()
        tie = magnitude / magnitude.max().clamp_min(1e-30)
        return (score + 1e-6 * score.max().clamp_min(1e-30) * (tie + 1e-3)).float()


@torch.no_grad()
def compensate(group: Any, means: dict[nn.Conv2d, torch.Tensor], norms: dict[nn.Conv2d, nn.BatchNorm2d],
               is_in_channel: Any) -> int:
    """Fold the mean of the input channels ``group`` removes into each consumer, before the group is pruned.

    A dense conv whose input channel ``c`` (mean ``mu_c``) disappears loses ``sum_k W[:, c, k] * mu_c``
    from every output on average; that shift goes into its BatchNorm's running mean (or its bias, the
    head outputs) so its normalised output keeps its mean. Depthwise consumers lose the channel whole
    (their output goes too); the dense conv after them is compensated instead. Border effects of zero
    padding are ignored. Returns the number of convs adjusted; ``means`` is updated to the kept channels.
    """
    adjusted = 0
    for dep, idxs in group:
        conv = dep.target.module
        if not (_dense(conv) and is_in_channel(dep.handler) and conv in means and idxs):
            continue
        mu = means[conv]
        if mu.numel() != conv.in_channels:  # the index bookkeeping went out of step: better no compensation
            raise LeyoloError(f"bias compensation lost track of a conv's inputs ({mu.numel()} != {conv.in_channels})")
        idx = torch.as_tensor(sorted(set(int(i) for i in idxs)), dtype=torch.long)
        shift = conv.weight[:, idx].double().sum((2, 3)) @ mu[idx].double()  # [out]
        norm = norms.get(conv)
        if norm is not None:
            norm.running_mean -= shift.to(norm.running_mean)
        elif conv.bias is not None:
            conv.bias += shift.to(conv.bias)
        else:
            conv.bias = nn.Parameter(shift.to(conv.weight))
        keep = torch.ones(mu.numel(), dtype=torch.bool)
        keep[idx] = False
        means[conv] = mu[keep]
        adjusted += 1
    return adjusted


def round_segments(pruner: Any, group: Any, round_to: int) -> Any:
    """``group`` with each concatenated input's share of the removed channels rounded to a multiple of ``round_to``.

    torch-pruning rounds the width of the group's root; when the root's channels are a concat of
    several convs' outputs (LeYOLO's neck: 32 + 64 -> 96), removing 8 of the 96 can take 3 from one
    source and 5 from the other, leaving widths of 29 and 59. Each source's count is rounded to the
    nearest multiple (at least one block kept), its least important channels chosen, as for the root.
    """
    dep0, idxs0 = group[0]
    module, fn = dep0.target.module, dep0.handler
    channels = (pruner.DG.get_out_channels if pruner.DG.is_out_channel_pruning_fn(fn)
                else pruner.DG.get_in_channels)(module)
    if not idxs0 or not channels:
        return group
    uneven = False  # cheap test first: does any conv lose a count of channels off the grid?
    for item in group:
        roots = getattr(item, "root_idxs", None)
        if (isinstance(item.dep.target.module, nn.Conv2d) and pruner.DG.is_out_channel_pruning_fn(item.dep.handler)
                and roots is not None and len(set(roots)) % round_to):
            uneven = True
            break
    if not uneven:
        return group
    full = pruner.DG.get_pruning_group(module, fn, list(range(channels)))
    segments: list[list[int]] = []
    for item in full:
        target, roots = item.dep.target.module, getattr(item, "root_idxs", None)
        if (not isinstance(target, nn.Conv2d) or not pruner.DG.is_out_channel_pruning_fn(item.dep.handler)
                or roots is None or any(r is None for r in roots)):
            continue
        seg = sorted(set(int(r) for r in roots))
        if 0 < len(seg) < channels and seg not in segments:
            segments.append(seg)
    if len(segments) < 2 or any(set(a) & set(b) for i, a in enumerate(segments) for b in segments[i + 1:]):
        return group  # not a plain concat of disjoint sources
    removed = set(int(i) for i in idxs0)
    if all(len(removed & set(seg)) % round_to == 0 for seg in segments):
        return group
    imp = pruner.estimate_importance(full)
    if imp is None or len(imp) != channels:
        return group
    chosen = removed - set().union(*map(set, segments))
    for seg in segments:
        k = len(removed & set(seg))
        keep = max(round_to, round((len(seg) - k) / round_to) * round_to) if k else len(seg)
        n = max(len(seg) - keep, 0)
        order = sorted(seg, key=lambda c: float(imp[c]))
        chosen |= set(order[:n])
    if not chosen:
        return pruner.DG.get_pruning_group(module, fn, [])
    return pruner.DG.get_pruning_group(module, fn, sorted(chosen))


def channel_prune(model: nn.Module, ratio: float = 0.3, importance: str = "l2", round_to: int | None = 8, *,
                  ratios: Mapping[str, float] | None = None, stats: InputStats | None = None,
                  compensate_bias: bool = True) -> nn.Module:
    """Remove channels of ``model`` (in place) with torch-pruning; returns ``model``.

    ``ratio`` is the fraction removed from every prunable group, or ``ratios`` maps root conv names
    (``sensitivity.plan``) to their own fractions (groups not named are kept). ``round_to`` keeps each
    pruned width a multiple of N, rounded to the *nearest* multiple (never below N): onnxruntime's x86
    kernels work on 8-channel blocks, and without rounding the 30%-pruned nano ran 35% *slower* than
    the original (BENCHMARKS.md); torch-pruning's own rounding goes down (24 -> 16 at 5%). With
    ``stats`` (``conv_input_stats`` of this model) and ``compensate_bias``, every removed channel's
    mean is folded into its consumers (``compensate``).
    """
    halves = split_halves(model)
    try:
        pruner = make_pruner(model, 0.0 if ratios is not None else ratio, importance, round_to, ratios, stats)
        norms = following_norms(model)
        means = {conv: m.clone() for conv, m in stats.mean.items()} if stats is not None and compensate_bias else None
        for group in pruner.step(interactive=True):
            if round_to:
                group = round_segments(pruner, group, round_to)
            if means is not None:
                compensate(group, means, norms, pruner.DG.is_in_channel_pruning_fn)
            group.prune()
    finally:
        join_halves(halves)
    example = torch.zeros(1, 3, 64, 64, dtype=next(model.parameters()).dtype)
    try:
        with torch.no_grad():
            model(example)
    except RuntimeError as exc:  # a dependency torch-pruning missed: refuse rather than save a broken model
        raise LeyoloError(f"channel pruning produced inconsistent widths ({first_line(exc, 120)})") from None
    return model
