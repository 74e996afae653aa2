"""Neighbourhood attention: both exact backends against a naive per-query oracle, the index rule
(by hand and against NATTEN's window-start formula), gradients, the modules, ONNX at other sizes."""

from __future__ import annotations

import importlib.util
import io
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from leyolo.errors import LeyoloError
from leyolo.models import neighborhood as nb
from leyolo.models.neighborhood import (NeighborhoodAttention1d, NeighborhoodAttention2d, na1d, na2d,
                                        neighbour_index)

EXACT = ("masked", "gather")


def oracle_axis(length: int, kernel: int, dilation: int) -> list[list[tuple[int, int]]]:
    """Per query: (key, RPB index) pairs, by NATTEN's rule applied inside each dilation group."""
    out = []
    for i in range(length):
        group = list(range(i % dilation, length, dilation))
        keff, p = min(kernel, len(group)), group.index(i)
        start = min(max(p - keff // 2, 0), len(group) - keff)
        out.append([(j, (j - i) // dilation + kernel - 1) for j in group[start:start + keff]])
    return out


def oracle(q, k, v, kernel, dilation=1, rpb=None):
    """Naive NA: one query at a time, neighbours picked by the clamp rule, softmax over them (float64)."""
    q, k, v = q.double(), k.double(), v.double()
    spatial = q.shape[2:-1]
    axes = [oracle_axis(n, kernel, dilation) for n in spatial]
    out = torch.empty_like(v)
    for pos in itertools.product(*(range(n) for n in spatial)):
        pairs = list(itertools.product(*(axes[a][i] for a, i in enumerate(pos))))
        keys = tuple([p[a][0] for p in pairs] for a in range(len(spatial)))
        scores = torch.einsum("bhd,bhkd->bhk", q[(..., *pos, slice(None))], k[(slice(None), slice(None), *keys)])
        scores = scores / math.sqrt(q.shape[-1])
        if rpb is not None:
            scores = scores + rpb.double()[(slice(None), *([p[a][1] for p in pairs] for a in range(len(spatial))))]
        out[(..., *pos, slice(None))] = torch.einsum("bhk,bhkd->bhd", scores.softmax(-1),
                                                     v[(slice(None), slice(None), *keys)])
    return out


def qkv(*shape, dtype=torch.float32, grad=False):
    return [torch.randn(*shape, dtype=dtype, requires_grad=grad) for _ in range(3)]


def test_index_by_hand():
    idx = neighbour_index(5, 3)
    assert idx[:, 0].tolist() == [0, 0, 1, 2, 2]
    assert idx.tolist() == [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [2, 3, 4]]
    # dilation 2 splits 0..6 into groups [0, 2, 4, 6] and [1, 3, 5]; the rule applies inside each
    assert neighbour_index(7, 3, 2).tolist() == [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [2, 4, 6],
                                                 [1, 3, 5], [2, 4, 6]]
    assert neighbour_index(3, 7).tolist() == [[0, 1, 2]] * 3  # map smaller than the kernel: global
    assert neighbour_index(5, 7, 2).tolist() == [[0, 2, 4], [1, 3, -1], [0, 2, 4], [1, 3, -1], [0, 2, 4]]


def natten_window_start(index: int, length: int, kernel: int, dilation: int) -> int:
    """NATTEN 0.17 ``get_window_start`` (naive CPU kernels), non-causal, rewritten in Python."""
    di, ip = index % dilation, index // dilation
    lp = (length + dilation - 1) // dilation
    lp -= 1 if di >= dilation - (lp * dilation - length) else 0
    ns = kernel // 2
    return (max(ip - ns, 0) + (ip + ns >= lp) * (lp - ip - ns - 1)) * dilation + di


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (7, 1), (3, 2), (5, 3), (7, 2)])
def test_index_matches_natten(kernel, dilation):
    for length in range(kernel * dilation, kernel * dilation + 12):  # NATTEN needs length >= kernel * dilation
        idx = neighbour_index(length, kernel, dilation)
        want = [[natten_window_start(i, length, kernel, dilation) + j * dilation for j in range(kernel)]
                for i in range(length)]
        assert idx.tolist() == want, length


CASES_2D = [(7, 7, 7, 1), (13, 17, 5, 1), (6, 8, 3, 1), (20, 20, 7, 1), (5, 5, 7, 1), (9, 11, 3, 2), (8, 13, 3, 3),
            (5, 7, 3, 2)]


@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("use_rpb", [False, True])
@pytest.mark.parametrize("h,w,kernel,dilation", CASES_2D)
def test_na2d_matches_oracle(h, w, kernel, dilation, use_rpb, backend):
    torch.manual_seed(h * w + kernel)
    q, k, v = qkv(2, 2, h, w, 8)
    rpb = torch.randn(2, 2 * kernel - 1, 2 * kernel - 1) if use_rpb else None
    out = na2d(q, k, v, kernel, dilation, rpb, backend)
    assert out.shape == v.shape
    torch.testing.assert_close(out.double(), oracle(q, k, v, kernel, dilation, rpb), atol=1e-5, rtol=0)


CASES_1D = [(400, 63, 1), (64, 63, 1), (50, 7, 1), (20, 63, 1), (37, 5, 3), (30, 7, 2), (9, 7, 2)]


@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("use_rpb", [False, True])
@pytest.mark.parametrize("length,kernel,dilation", CASES_1D)
def test_na1d_matches_oracle(length, kernel, dilation, use_rpb, backend):
    torch.manual_seed(length + kernel)
    q, k, v = qkv(2, 2, length, 8)
    rpb = torch.randn(2, 2 * kernel - 1) if use_rpb else None
    out = na1d(q, k, v, kernel, dilation, rpb, backend)
    torch.testing.assert_close(out.double(), oracle(q, k, v, kernel, dilation, rpb), atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", EXACT)
def test_kernel_covering_the_map_is_global_attention(backend):
    for shape, kernel in [((1, 2, 7, 7, 8), 7), ((1, 2, 6, 5, 8), 7), ((1, 2, 4, 9, 8), 9)]:
        q, k, v = qkv(*shape)
        want = F.scaled_dot_product_attention(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3)).reshape(shape)
        torch.testing.assert_close(na2d(q, k, v, kernel, backend=backend), want, atol=1e-5, rtol=0)
    for length, kernel in [(63, 63), (40, 63)]:
        q, k, v = qkv(1, 2, length, 8)
        torch.testing.assert_close(na1d(q, k, v, kernel, backend=backend), F.scaled_dot_product_attention(q, k, v),
                                   atol=1e-5, rtol=0)


def test_gradients_agree_across_backends():
    torch.manual_seed(0)
    for fn, shape, rpb_shape in [(na2d, (1, 2, 9, 11, 8), (2, 9, 9)), (na1d, (1, 2, 40, 8), (2, 13))]:
        base = qkv(*shape) + [torch.randn(rpb_shape)]
        grads = []
        for backend in EXACT:
            leaves = [t.clone().requires_grad_() for t in base]
            out = fn(*leaves[:3], rpb_shape[-1] // 2 + 1, 1, leaves[3], backend)
            (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
            grads.append([t.grad for t in leaves])
        for a, b in zip(*grads):
            assert a.abs().sum() > 0
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_auto_picks_gather_above_the_threshold(monkeypatch):
    calls = []
    monkeypatch.setattr(nb, "_gather", lambda *a: calls.append("gather") or a[2])
    monkeypatch.setattr(nb, "_masked", lambda *a: calls.append("masked") or a[2])
    monkeypatch.setattr(nb, "MASKED_MAX_TOKENS", 100)
    na1d(*qkv(1, 1, 100, 4), 7)
    na2d(*qkv(1, 1, 10, 11, 4), 7)
    assert calls == ["masked", "gather"]


def _copy(module, make, backend):
    """The same parameters under another backend: checkpoints load across backends."""
    other = make(backend)
    other.load_state_dict(module.state_dict())
    return other.eval()


def test_2d_module_backends_agree_and_match_manual():
    torch.manual_seed(1)
    def make(backend):
        return NeighborhoodAttention2d(16, 2, kernel=5, backend=backend)

    m = make("masked").eval()
    x = torch.randn(2, 9, 7, 16)
    with torch.no_grad():
        outs = [_copy(m, make, b)(x) for b in ("masked", "gather", "auto")]
        q, k, v = m.qkv(x).reshape(2, 9, 7, 3, 2, 8).permute(3, 0, 4, 1, 2, 5)  # NATTEN's qkv layout
        want = m.proj(oracle(q, k, v, 5, 1, m.rpb).float().permute(0, 2, 3, 1, 4).reshape(2, 9, 7, 16))
    assert set(m.state_dict()) == {"qkv.weight", "qkv.bias", "rpb", "proj.weight", "proj.bias"}
    for out in outs:
        torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


def test_1d_module_adds_pos_to_queries_and_keys_only():
    torch.manual_seed(2)
    def make(backend):
        return NeighborhoodAttention1d(16, 2, kernel=7, rpb=True, backend=backend)

    m = make("gather").eval()
    x, pos = torch.randn(2, 30, 16), torch.randn(1, 30, 16)
    with torch.no_grad():
        outs = [_copy(m, make, b)(x, pos) for b in ("masked", "gather", "auto")]
        heads = [t.reshape(2, 30, 2, 8).transpose(1, 2) for t in (m.q(x + pos), m.k(x + pos), m.v(x))]
        want = m.proj(oracle(*heads, 7, 1, m.rpb).float().transpose(1, 2).reshape(2, 30, 16))
        assert not torch.allclose(m(x, pos), m(x))
    for out in outs:
        torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


def _onnx(module, args, names, dynamic):
    buf = io.BytesIO()
    torch.onnx.export(module, args, buf, dynamo=False, opset_version=17, input_names=names, output_names=["y"],
                      dynamic_axes=dynamic)
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, as deploy/onnx_export.py uses
@pytest.mark.parametrize("backend", EXACT)
def test_onnx_2d_dynamic_sizes(backend):
    torch.manual_seed(3)
    m = NeighborhoodAttention2d(16, 2, kernel=5, backend=backend).eval()
    axes = {0: "b", 1: "h", 2: "w"}
    sess = _onnx(m, (torch.randn(1, 8, 10, 16),), ["x"], {"x": axes, "y": axes})
    for shape in [(1, 8, 10, 16), (2, 13, 6, 16), (1, 3, 4, 16)]:  # export size, another, smaller than the kernel
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(sess.run(None, {"x": x.numpy()})[0]), m(x), atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("backend", EXACT)
def test_onnx_1d_with_pos_dynamic_length(backend):
    torch.manual_seed(4)
    m = NeighborhoodAttention1d(16, 2, kernel=9, rpb=True, backend=backend).eval()
    axes = {0: "b", 1: "n"}
    sess = _onnx(m, (torch.randn(1, 24, 16), torch.randn(1, 24, 16)), ["x", "pos"], {"x": axes, "pos": axes, "y": axes})
    for n in (24, 41, 5):
        x, pos = torch.randn(2, n, 16), torch.randn(2, n, 16)
        with torch.no_grad():
            got = sess.run(None, {"x": x.numpy(), "pos": pos.numpy()})[0]
            torch.testing.assert_close(torch.from_numpy(got), m(x, pos), atol=1e-4, rtol=0)


HAS_NATTEN = importlib.util.find_spec("natten") is not None


@pytest.mark.skipif(not (HAS_NATTEN and torch.cuda.is_available()), reason="needs natten and a CUDA device")
@pytest.mark.parametrize("use_rpb", [False, True])
def test_natten_matches_masked(use_rpb):
    torch.manual_seed(5)
    q, k, v = (t.cuda() for t in qkv(2, 4, 16, 20, 32))
    rpb = torch.randn(4, 13, 13, device="cuda") if use_rpb else None
    try:
        got = na2d(q, k, v, 7, 1, rpb, "natten")
    except LeyoloError as exc:  # natten >= 0.20 has no relative position bias
        assert use_rpb and "relative position bias" in str(exc)
        return
    torch.testing.assert_close(got, na2d(q, k, v, 7, 1, rpb, "masked"), atol=1e-3, rtol=1e-3)
    q1, k1, v1 = (t.cuda() for t in qkv(2, 4, 200, 32))
    torch.testing.assert_close(na1d(q1, k1, v1, 63, backend="natten"), na1d(q1, k1, v1, 63, backend="masked"),
                               atol=1e-3, rtol=1e-3)


@pytest.mark.skipif(HAS_NATTEN, reason="natten is installed")
def test_natten_missing_gives_one_line_hint():
    with pytest.raises(LeyoloError, match="pip install natten") as info:
        na2d(*qkv(1, 1, 8, 8, 4), 3, backend="natten")
    assert "\n" not in str(info.value)
    na2d(*qkv(1, 1, 8, 8, 4), 3, backend="auto")  # auto falls back silently


def test_bad_arguments_raise():
    q, k, v = qkv(1, 1, 8, 8, 4)
    with pytest.raises(ValueError, match="odd kernel"):
        na2d(q, k, v, 4)
    with pytest.raises(ValueError, match="odd kernel"):
        na1d(q[..., 0, :], k[..., 0, :], v[..., 0, :], 6)
    with pytest.raises(ValueError, match="odd kernel"):
        NeighborhoodAttention2d(8, 2, kernel=8)
    with pytest.raises(ValueError, match="odd kernel"):
        NeighborhoodAttention1d(8, 2, kernel=62)
    with pytest.raises(ValueError, match="unknown neighbourhood-attention backend"):
        na2d(q, k, v, 3, backend="flash")
    with pytest.raises(ValueError, match="unknown neighbourhood-attention backend"):
        NeighborhoodAttention1d(8, 2, backend="cuda")
    with pytest.raises(ValueError, match="rpb must be"):
        na2d(q, k, v, 3, rpb=torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="dilation"):
        na2d(q, k, v, 3, dilation=0)
