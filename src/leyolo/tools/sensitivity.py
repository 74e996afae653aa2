"""Per-layer pruning sensitivity and a global GFLOPs target: remove more where it costs least.

The scan cuts one dependency group at a time (a root conv and every layer tied to its channels),
at a few fractions of its width in multiples of 8, and measures how far the decoded output moves on
calibration images (the same images and error as the INT8 sensitivity scan: relative squared error
of boxes and of scores against the unpruned model). A cut is *simulated*: the removed channels'
outputs are replaced by their calibration means, which is exactly what pruning with bias
compensation computes (up to zero-padding borders), so the scan costs one forward pass per step
instead of one torch-pruning run. ``plan`` then spends the GFLOPs budget greedily on the cheapest
error per saved MAC; groups whose first 8 channels already cost more than ``protect`` are never
cut (on the published nano that is the stem; head outputs and the DFL are not prunable at all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from .channels import InputStats, join_halves, make_pruner, prunable_groups, split_halves, tied_halves

PROTECT = 0.25  # relative output error of the first 8-channel cut above which a group is left whole


@dataclass
class GroupScan:
    """One dependency group: its root conv, width, the cuts tried and their output errors."""

    name: str
    channels: int
    removed: list[int]
    errors: list[float]
    convs: list[tuple[str, str]] = field(default_factory=list)  # (conv name, "out" | "in") it resizes
    protected: bool = False

    def error(self, removed: int) -> float:
        """Output error of removing ``removed`` channels, interpolated between the cuts tried."""
        points = [(0, 0.0)] + list(zip(self.removed, self.errors))
        for (r0, e0), (r1, e1) in zip(points, points[1:]):
            if removed <= r1:
                return e0 + (e1 - e0) * (removed - r0) / max(r1 - r0, 1)
        return math.inf


def _unit(model: nn.Module, conv_name: str) -> str:
    """The module whose output is the channel a conv produces: its ``ConvBNAct`` (post-activation), else itself."""
    parent, _, attr = conv_name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    return parent if attr == "conv" and isinstance(getattr(owner, "bn", None), nn.BatchNorm2d) else conv_name


def _decoded(model: nn.Module, batches: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([model.decode(model(b)) for b in batches])


def _relative_error(ref: torch.Tensor, out: torch.Tensor) -> float:
    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a - b) ** 2).sum() / (a ** 2).sum().clamp_min(1e-12))

    return rel(ref[:, :4], out[:, :4]) + rel(ref[:, 4:], out[:, 4:])


def _steps(channels: int, round_to: int, max_ratio: float) -> list[int]:
    """Channels removed at each scanned cut: multiples of ``round_to`` near 1/8 ... ``max_ratio`` of the width."""
    most = channels - max(round_to, math.ceil(channels * (1 - max_ratio) / round_to) * round_to)
    wanted = {max(round_to, round(channels * f / 8 / round_to) * round_to) for f in range(1, 8)}
    return sorted(r for r in wanted if 0 < r <= most)


def scan(model: nn.Module, batches: Sequence[torch.Tensor], stats: InputStats, importance: str = "variance",
         round_to: int = 8, max_ratio: float = 0.75, protect: float = PROTECT) -> list[GroupScan]:
    """Output error of cutting each prunable group alone (``model`` is left unchanged)."""
    model.eval()
    halves = split_halves(model)  # as channel_prune sees the model: group names match its ``ratios``
    try:
        names = {m: n for n, m in model.named_modules()}
        pruner = make_pruner(model, 0.0, importance, round_to, stats=stats)  # traces with autograd: no no_grad
        with torch.no_grad():
            return _scan(model, batches, pruner, names, round_to, max_ratio, protect)
    finally:
        join_halves(halves)


def _scan(model: nn.Module, batches: Sequence[torch.Tensor], pruner: Any, names: dict[nn.Module, str],
          round_to: int, max_ratio: float, protect: float) -> list[GroupScan]:
    is_out = pruner.DG.is_out_channel_pruning_fn
    units = {n: model.get_submodule(_unit(model, n)) for m, n in names.items() if isinstance(m, nn.Conv2d)}
    sums: dict[nn.Module, torch.Tensor] = {}
    counts: dict[nn.Module, int] = {}

    def measure(mod: nn.Module, _: Any, out: torch.Tensor) -> None:
        sums[mod] = sums.get(mod, 0) + out.double().sum((0, 2, 3))
        counts[mod] = counts.get(mod, 0) + out.shape[0] * out.shape[2] * out.shape[3]

    handles = [u.register_forward_hook(measure) for u in set(units.values())]
    try:
        ref = _decoded(model, batches)
    finally:
        for h in handles:
            h.remove()
    unit_means = {u: (sums[u] / counts[u]).float() for u in sums}
    results = []
    for group in prunable_groups(pruner):
        root = group[0].dep.target.module
        if pruner._get_channel_groups(group) > 1:  # grouped channels (none in these families): not scanned
            continue
        order = torch.argsort(pruner.estimate_importance(group).float().cpu())
        channels = len(order)
        convs = [(names[d.target.module], "out" if is_out(d.handler) else "in") for d, _ in group
                 if isinstance(d.target.module, nn.Conv2d)]
        entry = GroupScan(names[root], channels, [], [], convs)
        for removed in _steps(channels, round_to, max_ratio):
            cut = pruner.DG.get_pruning_group(root, group[0].dep.handler, order[:removed].tolist())
            masks: dict[nn.Module, list[int]] = {}
            for d, idxs in cut:
                if isinstance(d.target.module, nn.Conv2d) and is_out(d.handler):
                    masks.setdefault(units[names[d.target.module]], []).extend(int(i) for i in idxs)

            def replace(mod: nn.Module, _: Any, out: torch.Tensor) -> torch.Tensor:
                idx = torch.as_tensor(sorted(set(masks[mod])), dtype=torch.long)
                out = out.clone()
                out[:, idx] = unit_means[mod][idx].view(1, -1, 1, 1).to(out)
                return out

            handles = [u.register_forward_hook(replace) for u in masks]
            try:
                entry.removed.append(removed)
                entry.errors.append(_relative_error(ref, _decoded(model, batches)))
            finally:
                for h in handles:
                    h.remove()
        entry.protected = not entry.errors or entry.errors[0] > protect
        results.append(entry)
    return results


def conv_macs(model: nn.Module, imgsz: int) -> dict[str, tuple[int, int, int, int]]:
    """Per conv: (in channels, out channels, groups, MACs per in*out/groups unit) at a square ``imgsz``."""
    shapes: dict[str, tuple[int, int, int, int]] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            def hook(mod: nn.Conv2d, _: Any, out: torch.Tensor, name: str = name) -> None:
                k = mod.kernel_size[0] * mod.kernel_size[1]
                shapes[name] = (mod.in_channels, mod.out_channels, mod.groups, k * out.shape[2] * out.shape[3])
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, imgsz, imgsz, dtype=next(model.parameters()).dtype))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def plan(scans: Sequence[GroupScan], model: nn.Module, imgsz: int, keep_fraction: float,
         round_to: int = 8) -> dict[str, float]:
    """Per-group ratios (root conv name -> fraction removed) that bring conv MACs to ``keep_fraction``.

    Greedy: repeatedly remove ``round_to`` more channels from the unprotected group with the smallest
    increase in scanned error per MAC saved, until the conv MACs are at or below the target (or
    nothing is left to cut). MACs of a conv resized by two groups are tracked jointly.
    """
    halves = split_halves(model)
    try:
        shapes = conv_macs(model, imgsz)
        tied = tied_halves(model)
    finally:
        join_halves(halves)
    width = {n: [c_in, c_out] for n, (c_in, c_out, _, _) in shapes.items()}
    depthwise = {n for n, (c_in, c_out, g, _) in shapes.items() if g > 1 and g == c_in == c_out}

    def macs(n: str) -> int:
        c_in, c_out = width[n]
        groups = c_in if n in depthwise else shapes[n][2]
        return c_out * (c_in // max(groups, 1)) * shapes[n][3]

    total = sum(macs(n) for n in shapes)
    target = keep_fraction * total
    removed = {s.name: 0 for s in scans}
    live = [s for s in scans if not s.protected]

    def saving(s: GroupScan) -> int:
        touched = {n for n, _ in s.convs}
        before = sum(macs(n) for n in touched)
        for n, role in s.convs:
            width[n][1 if role == "out" else 0] -= round_to
            if n in depthwise and role == "out":
                width[n][0] -= round_to
        after = sum(macs(n) for n in touched)
        undo(s)
        return before - after

    def undo(s: GroupScan) -> None:
        for n, role in s.convs:
            width[n][1 if role == "out" else 0] += round_to
            if n in depthwise and role == "out":
                width[n][0] += round_to

    def apply(s: GroupScan) -> None:
        for n, role in s.convs:
            width[n][1 if role == "out" else 0] -= round_to
            if n in depthwise and role == "out":
                width[n][0] -= round_to

    # a depthwise conv appears with both an "out" and an "in" entry: count its width change once
    for s in live:
        s.convs = list(dict.fromkeys((n, r) for n, r in s.convs if not (n in depthwise and r == "in")))
    while total > target:
        best, best_cost, best_saved = None, math.inf, 0
        for s in live:
            nxt = removed[s.name] + round_to
            if not s.removed or nxt > s.removed[-1]:
                continue
            saved = saving(s)
            if saved <= 0:
                continue
            cost = max(s.error(nxt) - s.error(removed[s.name]), 1e-9) / saved
            if cost < best_cost:
                best, best_cost, best_saved = s, cost, saved
        if best is None:
            break
        apply(best)
        removed[best.name] += round_to
        total -= best_saved
    for first, second in tied:  # a C3k2's two halves must keep equal widths (chunk(2)): cut both by the least
        pair = [s for s in scans if (first, "out") in s.convs or (second, "out") in s.convs]
        least = min((removed[s.name] for s in pair), default=0) if len(pair) == 2 else 0
        for s in pair:
            removed[s.name] = least
    by_name = {s.name: s.channels for s in scans}
    return {name: r / by_name[name] for name, r in removed.items() if r}
