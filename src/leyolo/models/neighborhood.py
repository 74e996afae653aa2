"""Neighbourhood attention (NA) in pure PyTorch, exact and exportable, with NATTEN as a fast path.

Semantics are NATTEN's (Hassani et al., "Neighborhood Attention Transformer"; NATTEN 0.17's naive
kernels): per axis of length ``L``, query ``i`` attends to the ``k`` keys ``start(i) + [0..k)``
with ``start(i) = clamp(i - k//2, 0, L - k)``, so windows shift inward at the borders and every
query sees exactly ``k`` (1-D) or ``k*k`` (2-D) keys. With dilation ``d`` the axis splits into
``d`` interleaved groups (positions with equal ``i % d``) and the rule applies inside each group.
The relative position bias (RPB) of key ``j`` for query ``i`` is ``table[(j - i)/d + k - 1]`` per
axis, so the table is ``(heads, 2k-1[, 2k-1])``. Scores are ``q.k / sqrt(head_dim) + bias``.

Deviation from NATTEN: NATTEN raises when ``L < k*d``; here the kernel shrinks to the group
length (``k_eff = min(k, L_group)``), so a 5x5 map with ``k=7`` is global attention. Small
images then still run; where ``L >= k*d`` the result equals NATTEN's.

Why pure PyTorch: NATTEN has no ONNX/TensorRT export (NATTEN #17) and, from 0.20, no CPU kernels
and no RPB. Backends, all computing the same function with the same parameters:

- ``masked``: an additive ``[N, N]`` mask (RPB for neighbours, a finite large negative value,
  FP16-safe, elsewhere) and ``F.scaled_dot_product_attention``. O(N^2), fastest for small maps.
- ``gather``: neighbour indices ``[N, K]``, gathered keys/values, matmul, softmax. O(N*K*d).
- ``natten``: NATTEN's CUDA kernels (0.17 unfused ops with RPB, or >= 0.20 fused ops without).
- ``auto``: ``natten`` on CUDA outside export/tracing when it can run the call, else ``masked``
  for ``N <= MASKED_MAX_TOKENS`` (measured on CPU), else ``gather``.

Masks and indices are built per call from ``arange`` over the runtime lengths (nothing cached, no
size baked in as a constant), so an ONNX graph exported with dynamic H/W/N stays exact at other
sizes; ``auto`` picks ``masked`` or ``gather`` once, from the size at export time. Both pure backends keep ``K = kernel`` slots per axis (slots beyond ``k_eff`` are
masked) so that their graphs do not depend on the size either.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import LeyoloError
from ..optional import require

Backend = Literal["auto", "masked", "gather", "natten"]
BACKENDS = ("auto", "masked", "gather", "natten")
MASKED_MAX_TOKENS = 2048  # auto: masked SDPA up to this many tokens, gather above (measured on CPU)
NEG = torch.finfo(torch.float16).min / 2  # "not a neighbour": finite, so FP16/TensorRT stay NaN-free


def _check(kernel: int, dilation: int, backend: str) -> None:
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"neighbourhood attention needs an odd kernel >= 1 (NATTEN's rule), got {kernel}")
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown neighbourhood-attention backend {backend!r}; choose one of {BACKENDS}")


def _axis(length: int, kernel: int, dilation: int, device: torch.device | None) -> tuple[Tensor, ...]:
    """Per query of one axis: group, position in group, group length, window start, k_eff.

    Only ``arange``/``flip``/elementwise ops on it, so traced graphs follow the runtime length.
    """
    pos = torch.arange(length, device=device)
    rev = pos.flip(0)  # length - 1 - pos, without Python arithmetic on the size
    ip = pos // dilation if dilation > 1 else pos
    glen = ip + (rev // dilation if dilation > 1 else rev) + 1
    keff = glen.clamp(max=kernel)
    start = torch.minimum((ip - keff // 2).clamp(min=0), glen - keff)
    return pos - ip * dilation, ip, glen, start, keff


def _dense_axis(length: int, kernel: int, dilation: int, device: torch.device | None) -> tuple[Tensor, Tensor]:
    """``[L, L]`` neighbour flags and RPB indices (clamped into the table for non-neighbours)."""
    group, ip, _, start, keff = _axis(length, kernel, dilation, device)
    jp = ip[None, :]
    nb = (group[:, None] == group[None, :]) & (jp >= start[:, None]) & (jp < (start + keff)[:, None])
    return nb, (jp - ip[:, None] + kernel - 1).clamp(0, 2 * kernel - 2)


def _slots(length: int, kernel: int, dilation: int, device: torch.device | None) -> tuple[Tensor, Tensor, Tensor]:
    """``[L, kernel]`` key indices, slot validity (slot < k_eff) and RPB indices."""
    group, ip, glen, start, keff = _axis(length, kernel, dilation, device)
    slot = torch.arange(kernel, device=device)
    jp = torch.minimum(start[:, None] + slot, glen[:, None] - 1)  # invalid slots stay inside the group
    return jp * dilation + group[:, None], slot < keff[:, None], jp - ip[:, None] + kernel - 1


def neighbour_index(length: int, kernel: int, dilation: int = 1) -> Tensor:
    """Flat key indices per query, ``[length, K]``, ``K = min(kernel, ceil(length / dilation))``.

    ``K == kernel`` whenever ``length >= kernel * dilation``; below that, queries of a shorter
    dilation group have fewer keys and their missing slots read ``-1``.
    """
    _check(kernel, dilation, "auto")
    idx, valid, _ = _slots(length, kernel, dilation, None)
    return torch.where(valid, idx, -1)[:, : min(kernel, -(-length // dilation))]


def _masked(q: Tensor, k: Tensor, v: Tensor, kernel: int, dilation: int, rpb: Tensor | None) -> Tensor:
    axes = [_dense_axis(n, kernel, dilation, q.device) for n in q.shape[2:-1]]
    if len(axes) == 1:
        allowed, rel = axes[0]
    else:  # product of the per-axis windows; [H, W, H, W] -> [N, N]
        (nbh, relh), (nbw, relw) = axes
        allowed = (nbh[:, None, :, None] & nbw[None, :, None, :]).flatten(0, 1).flatten(1, 2)
        rel = (relh[:, None, :, None] * (2 * kernel - 1) + relw[None, :, None, :]).flatten(0, 1).flatten(1, 2)
    neg = torch.full((), NEG, dtype=q.dtype, device=q.device)
    if rpb is None:  # one [N, N] mask broadcast over heads (SDPA is ~4x slower with a per-head mask)
        mask = torch.where(allowed, torch.zeros((), dtype=q.dtype, device=q.device), neg)
    else:  # one gather from the table plus a NEG slot gives bias and mask at once: [heads, N, N]
        table = torch.cat([rpb.to(q.dtype).flatten(1), neg.expand(rpb.shape[0], 1)], 1)
        idx = torch.where(allowed, rel, table.shape[1] - 1)
        # index_select + reshape is ~5x faster than table[:, idx]; the leading 1 keeps SDPA on its fast path
        mask = table.index_select(1, idx.flatten()).reshape(1, -1, *idx.shape)
    out = F.scaled_dot_product_attention(q.flatten(2, -2), k.flatten(2, -2), v.flatten(2, -2), attn_mask=mask)
    return out.reshape(v.shape)


def _gather(q: Tensor, k: Tensor, v: Tensor, kernel: int, dilation: int, rpb: Tensor | None) -> Tensor:
    if q.dim() == 4:
        idx, valid, rel = _slots(q.shape[2], kernel, dilation, q.device)
    else:  # flat [N, kh*kw] indices: one gather (half the time of gathering rows, then columns)
        (ih, vh, rh), (iw, vw, rw) = (_slots(n, kernel, dilation, q.device) for n in q.shape[2:4])
        idx = (ih[:, None, :, None] * q.shape[3] + iw[None, :, None, :]).flatten(2, 3).flatten(0, 1)
        valid = (vh[:, None, :, None] & vw[None, :, None, :]).flatten(2, 3).flatten(0, 1)
        rel = (rh[:, None, :, None] * (2 * kernel - 1) + rw[None, :, None, :]).flatten(2, 3).flatten(0, 1)
    qf, kf, vf = (t.flatten(2, -2) for t in (q, k, v))
    attn = (qf.unsqueeze(-2) * q.shape[-1] ** -0.5) @ kf[:, :, idx].transpose(-1, -2)  # [B, h, N, 1, K]
    if rpb is not None:
        attn = attn + rpb.to(q.dtype).flatten(1).index_select(1, rel.flatten()).reshape(-1, *rel.shape).unsqueeze(-2)
    attn = torch.where(valid.unsqueeze(-2), attn, torch.full((), NEG, dtype=q.dtype, device=q.device))
    return (attn.softmax(-1) @ vf[:, :, idx]).reshape(v.shape)


def _natten_ok(q: Tensor, kernel: int, dilation: int) -> bool:
    """NATTEN needs CUDA and ``L >= k*d``; only then its semantics equal ours."""
    return q.is_cuda and all(n >= kernel * dilation for n in q.shape[2:-1])


def _natten(q: Tensor, k: Tensor, v: Tensor, kernel: int, dilation: int, rpb: Tensor | None) -> Tensor:
    natten = require("natten", "backend='natten'")
    nd = q.dim() - 3
    version = getattr(natten, "__version__", "?")
    if not q.is_cuda:
        raise LeyoloError(f"backend='natten' needs CUDA tensors (natten {version} has no CPU kernels); "
                          "use backend='masked' or 'gather'")
    if not _natten_ok(q, kernel, dilation):  # NATTEN raises here; our rule is global attention per axis
        return _masked(q, k, v, kernel, dilation, rpb)
    fn, rpb = natten.functional, rpb.to(q.dtype) if rpb is not None else None
    qk, av, fused = (getattr(fn, f"na{nd}d{s}", None) for s in ("_qk", "_av", ""))
    if qk is not None and av is not None:  # NATTEN <= 0.17: unfused heads-first ops that take an RPB
        attn = qk(q * q.shape[-1] ** -0.5, k, kernel_size=kernel, dilation=dilation, rpb=rpb).softmax(-1)
        return av(attn, v, kernel_size=kernel, dilation=dilation)
    if fused is None:
        raise LeyoloError(f"natten {version} has no na{nd}d; install natten>=0.17")
    if rpb is not None and "rpb" not in inspect.signature(fused).parameters:
        raise LeyoloError(f"natten {version} has no relative position bias (dropped in 0.20); "
                          "use backend='masked'/'gather', rpb=False, or natten 0.17")
    extra = {"rpb": rpb} if rpb is not None else {}
    q, k, v = (t.movedim(1, -2).contiguous() for t in (q, k, v))  # fused ops are heads-last
    return fused(q, k, v, kernel_size=kernel, dilation=dilation, **extra).movedim(-2, 1)


def _exporting() -> bool:
    compiling = getattr(torch.compiler, "is_compiling", lambda: False)()  # torch >= 2.3
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or compiling


def _natten_can(q: Tensor, kernel: int, dilation: int, rpb: Tensor | None) -> bool:
    """For ``auto``: NATTEN importable and able to run this call exactly (else the pure form)."""
    if _exporting() or not _natten_ok(q, kernel, dilation) or importlib.util.find_spec("natten") is None:
        return False
    fn = require("natten", "backend='natten'").functional
    nd = q.dim() - 3
    if hasattr(fn, f"na{nd}d_qk"):
        return True
    fused = getattr(fn, f"na{nd}d", None)
    return fused is not None and (rpb is None or "rpb" in inspect.signature(fused).parameters)


def _na(q: Tensor, k: Tensor, v: Tensor, kernel: int, dilation: int, rpb: Tensor | None, backend: str) -> Tensor:
    _check(kernel, dilation, backend)
    nd = q.dim() - 3
    if rpb is not None and not _exporting() and tuple(rpb.shape[1:]) != (2 * kernel - 1,) * nd:
        raise ValueError(f"rpb must be [heads{', 2k-1' * nd}] with 2k-1 = {2 * kernel - 1}, got {tuple(rpb.shape)}")
    if backend == "auto":
        if _natten_can(q, kernel, dilation, rpb):
            backend = "natten"
        else:
            backend = "masked" if q.shape[2:-1].numel() <= MASKED_MAX_TOKENS else "gather"
    return {"masked": _masked, "gather": _gather, "natten": _natten}[backend](q, k, v, kernel, dilation, rpb)


def na1d(q: Tensor, k: Tensor, v: Tensor, kernel: int, dilation: int = 1, rpb: Tensor | None = None,
         backend: str = "auto") -> Tensor:
    """1-D NA: ``q, k, v`` ``[B, heads, L, d]``, ``rpb`` ``[heads, 2k-1]`` -> ``[B, heads, L, d]``."""
    if q.dim() != 4:
        raise ValueError(f"na1d expects [B, heads, L, d], got {tuple(q.shape)}")
    return _na(q, k, v, kernel, dilation, rpb, backend)


def na2d(q: Tensor, k: Tensor, v: Tensor, kernel: int, dilation: int = 1, rpb: Tensor | None = None,
         backend: str = "auto") -> Tensor:
    """2-D NA: ``q, k, v`` ``[B, heads, H, W, d]``, ``rpb`` ``[heads, 2k-1, 2k-1]`` -> same shape as ``v``."""
    if q.dim() != 5:
        raise ValueError(f"na2d expects [B, heads, H, W, d], got {tuple(q.shape)}")
    return _na(q, k, v, kernel, dilation, rpb, backend)


def _setup(module: nn.Module, dim: int, heads: int, kernel: int, dilation: int, backend: str) -> None:
    """The settings both NA modules check and keep."""
    if dim % heads:
        raise ValueError(f"dim {dim} is not divisible by heads {heads}")
    _check(kernel, dilation, backend)
    module.heads, module.kernel, module.dilation, module.backend = heads, kernel, dilation, backend


class NeighborhoodAttention2d(nn.Module):
    """NA over a channels-last map ``[B, H, W, C]``; parameter names and layout are NATTEN's
    ``NeighborhoodAttention2D`` (fused ``qkv``, ``rpb``, ``proj``), so its checkpoints load as-is."""

    def __init__(self, dim: int, heads: int, kernel: int = 7, dilation: int = 1, qkv_bias: bool = True,
                 rpb: bool = True, backend: str = "auto") -> None:
        super().__init__()
        _setup(self, dim, heads, kernel, dilation, backend)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.rpb = nn.Parameter(nn.init.trunc_normal_(torch.zeros(heads, 2 * kernel - 1, 2 * kernel - 1), std=0.02,
                                                      a=-2.0, b=2.0)) if rpb else None  # as NATTEN's init
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        # reshape, not unflatten: the TorchScript ONNX exporter freezes unflatten's sizes
        q, k, v = self.qkv(x).reshape(*x.shape[:-1], 3, self.heads, -1).permute(3, 0, 4, 1, 2, 5).unbind(0)
        out = na2d(q, k, v, self.kernel, self.dilation, self.rpb, self.backend)
        return self.proj(out.permute(0, 2, 3, 1, 4).flatten(-2))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, kernel={self.kernel}, dilation={self.dilation}, backend={self.backend!r}"


class NeighborhoodAttention1d(nn.Module):
    """NA over a token sequence ``[B, N, C]`` (NAIFI). Separate ``q``/``k``/``v`` projections because
    positions are added to the query and key inputs only (the DETR/AIFI convention)."""

    def __init__(self, dim: int, heads: int, kernel: int = 63, dilation: int = 1, qkv_bias: bool = True,
                 rpb: bool = False, backend: str = "auto") -> None:
        super().__init__()
        _setup(self, dim, heads, kernel, dilation, backend)
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=qkv_bias) for _ in range(3))
        self.rpb = nn.Parameter(nn.init.trunc_normal_(torch.zeros(heads, 2 * kernel - 1), std=0.02, a=-2.0, b=2.0)) \
            if rpb else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        qk_in = x if pos is None else x + pos
        q, k, v = (t.reshape(*x.shape[:-1], self.heads, -1).transpose(1, 2)
                   for t in (self.q(qk_in), self.k(qk_in), self.v(x)))
        out = na1d(q, k, v, self.kernel, self.dilation, self.rpb, self.backend)
        return self.proj(out.transpose(1, 2).flatten(-2))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, kernel={self.kernel}, dilation={self.dilation}, backend={self.backend!r}"


__all__ = ["BACKENDS", "Backend", "MASKED_MAX_TOKENS", "NeighborhoodAttention1d", "NeighborhoodAttention2d",
           "na1d", "na2d", "neighbour_index"]
