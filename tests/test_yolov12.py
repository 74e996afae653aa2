"""YOLOv12 (v1.0 and turbo): exact counts, GFLOP rules, shapes, area attention, training, export."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from shared_data import COCO_DATA, HAVE_SHARED, randomise_batchnorm

import leyolo
from leyolo.cli import main
from leyolo.models.flops import count_gflops, count_params, has_attention
from leyolo.inference.backends import load_torchscript
from leyolo.losses import build_criterion
from leyolo.models.attention import RELAN, AreaAttention, AttentionBlock
from leyolo.models.heads import DecoupledHead, DenseHead, DNiNHead
from leyolo.models.layers import C3k2
from leyolo.models.yolov12 import ultralytics_key
from leyolo.models.registry import get_entry
from leyolo.models.summary import extra_gflops

# shared/reference/YOLOV12.md, section 4 (nc=80, 640x640).
PARAMS = {
    "yolov12-n": 2_602_288, "yolov12-s": 9_284_096, "yolov12-m": 20_199_168, "yolov12-l": 26_450_784,
    "yolov12-x": 59_210_784,
    "yolov12-n-turbo": 2_553_904, "yolov12-s-turbo": 9_127_424, "yolov12-m-turbo": 19_670_784,
    "yolov12-l-turbo": 26_506_496, "yolov12-x-turbo": 59_414_176,
}
FUSED_PARAMS = {"yolov12-n": 2_590_824, "yolov12-n-turbo": 2_542_440}
# Section 4's GFLOPs table at 640, to its 4 decimals (rule A: conv + BN unfused, rule F: BN fused,
# rule T: A + attention matmuls)
GFLOPS = {
    "yolov12-n": (6.6511, 6.4879, 7.6341),
    "yolov12-s": (21.6870, 21.3757, 23.6531),
    "yolov12-m": (68.0711, 67.4464, 71.3479),
    "yolov12-l": (89.7413, 88.8775, 96.2949),
    "yolov12-x": (200.3153, 199.0197, 210.1457),
    "yolov12-n-turbo": (6.1497, 5.9866, 7.1328),
    "yolov12-s-turbo": (19.7406, 19.4293, 21.7067),
    "yolov12-m-turbo": (60.4230, 59.7984, 63.6998),
    "yolov12-l-turbo": (83.2664, 82.3927, 89.8200),
    "yolov12-x-turbo": (185.8992, 184.5886, 195.7296),
}
TABLE_PRECISION = 5e-5  # half a unit of the table's 4th decimal
MODELS = leyolo.list_models("yolov12*")
STRIDES = (8, 16, 32)
NO = 4 * 16 + 80


@functools.lru_cache(maxsize=None)
def _shared_model(name: str):
    """One eval-mode model per name for read-only tests (never mutated)."""
    torch.manual_seed(0)
    return leyolo.create_model(name).eval()


@functools.lru_cache(maxsize=None)
def _meta_model(name: str):
    """Built on the meta device: parameter counts and FLOP hooks need shapes only (fast at x/640)."""
    with torch.device("meta"):
        return leyolo.create_model(name)


def _scored_model(name: str = "yolov12-n") -> torch.nn.Module:
    """An eval-mode model with non-trivial BatchNorm and class biases at zero, so scores are ~0.5, not ~1e-5."""
    torch.manual_seed(0)
    model = leyolo.create_model(name)
    randomise_batchnorm(model)
    with torch.no_grad():
        for cls in model.head.cls:
            cls[-1].bias.zero_()
    return model.eval()


# -- registry and exact counts ---------------------------------------------------------------------

def test_registry_lists_both_variants():
    assert MODELS == sorted(PARAMS)
    for name in MODELS:
        entry = get_entry(name)
        assert entry.family == "yolov12" and entry.imgsz == 640
    assert "yolov12-n" in leyolo.list_models() and "leyolo-n" in leyolo.list_models()


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_is_exact(name):
    model = _meta_model(name)
    assert count_params(model) == PARAMS[name]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == PARAMS[name] - 16  # the fixed DFL conv
    assert model.meta.arch == name and model.meta.imgsz == 640
    assert model.nc == 80 and model.names[0] == "person"
    assert len(model.layers) == 21 and model.head_sources == (14, 17, 20)
    assert isinstance(model.head, DecoupledHead) and isinstance(model.head, DenseHead)


def test_module_parameter_counts():
    def n(m):
        return count_params(m)

    assert n(AttentionBlock(64, 2, 2.0, area=4)) == 36_928
    assert n(AttentionBlock(64, 2, 2.0, area=4, turbo=True)) == 35_392
    assert n(AreaAttention(256, 8, 4)) == 277_248
    assert n(RELAN(128, 128, n=2, attention=True, area=4)) == 180_864
    assert n(RELAN(128, 128, n=2, attention=True, area=4, turbo=True)) == 174_720
    assert n(RELAN(384, 128, n=1, attention=False)) == 86_912
    assert n(C3k2(32, 64, n=1, c3k=False, e=0.25)) == 6_640
    assert n(C3k2(384, 256, n=1, c3k=True)) == 378_880
    head = DecoupledHead(80, (64, 128, 256))
    assert n(head) == 464_912
    assert (n(head.box), n(head.cls), n(head.dfl)) == (381_888, 83_008, 16)


def test_per_layer_counts_large():
    """Spot checks of the spec's per-layer table (l, v1.0 and turbo)."""
    v1, turbo = _meta_model("yolov12-l"), _meta_model("yolov12-l-turbo")
    assert [count_params(v1.layers[i]) for i in (2, 6, 8, 11, 14, 17, 20)] == [
        173_824, 4_272_944, 4_272_944, 2_102_784, 592_640, 2_037_248, 2_496_512]
    assert [count_params(turbo.layers[i]) for i in (1, 3, 6, 8)] == [37_120, 147_968, 4_540_416, 4_540_416]
    assert count_params(v1.head) == 1_472_704


def test_attention_geometry():
    for name, (h6, h8, mlp) in {"yolov12-n": (2, 4, 128), "yolov12-s": (4, 8, 256), "yolov12-l": (8, 8, 307),
                                "yolov12-x": (12, 12, 460), "yolov12-l-turbo": (8, 8, 384),
                                "yolov12-x-turbo": (12, 12, 576)}.items():
        model = _meta_model(name)
        a6, a8 = model.layers[6].blocks[0][0], model.layers[8].blocks[0][0]
        assert (a6.attn.heads, a8.attn.heads, a6.attn.area, a8.attn.area) == (h6, h8, 4, 1), name
        assert a6.attn.head_dim == 32 and a6.mlp[0].conv.out_channels == mlp, name
        assert a6.attn.pe.conv.kernel_size == ((5, 5) if "turbo" in name else (7, 7))


@pytest.mark.parametrize("name", MODELS)
def test_layer_scale_only_in_large_attention_layers(name):
    model = _meta_model(name)
    large = name.split("-")[1] in ("l", "x")
    for i, layer in enumerate(model.layers):
        if not isinstance(layer, RELAN):
            continue
        if large and i in (6, 8):
            assert layer.gamma is not None and layer.gamma.shape == (layer.fuse.conv.out_channels,)
            assert layer.gamma.requires_grad
        else:
            assert layer.gamma is None, (name, i)
    if large:  # values need a real tensor
        real = _shared_model(name)
        for i in (6, 8):
            assert torch.equal(real.layers[i].gamma, torch.full_like(real.layers[i].gamma, 0.01))


# -- GFLOPs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_gflops_table(name):
    """Rules A, F and T equal the spec's table to its 4 decimals, v1.0 and turbo alike."""
    model = _meta_model(name)
    a, f, t = GFLOPS[name]
    assert count_gflops(model, 640) == pytest.approx(a, abs=TABLE_PRECISION)
    assert count_gflops(model, 640, fused=True) == pytest.approx(f, abs=TABLE_PRECISION)
    assert count_gflops(model, 640, attention=True) == pytest.approx(t, abs=TABLE_PRECISION)
    # what `leyolo info` prints for the two extra rules, rounded to the table's precision
    assert extra_gflops(model, 640) == {"gflops_fused": f, "gflops_with_attention": t}


def test_gflops_rules_on_a_real_model():
    """Real forward = meta forward; T - A is the attention term; a fused model counts as rule F."""
    model = leyolo.create_model("yolov12-n")
    a = count_gflops(model, 640)
    assert a == pytest.approx(count_gflops(_meta_model("yolov12-n"), 640), abs=1e-9)
    # L6: 4 blocks x 2 * 1600^2 * 64 / 4; L8: 4 x 2 * 400^2 * 128 (MACs) -> 0.98304 GFLOPs
    assert count_gflops(model, 640, attention=True) - a == pytest.approx(0.98304, abs=1e-9)
    f = count_gflops(model, 640, fused=True)
    model.eval().fuse()
    assert count_gflops(model, 640) == pytest.approx(f, abs=1e-9)
    assert has_attention(model) and not has_attention(leyolo.create_model("leyolo-n"))


# -- forward, decode, backward ---------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes_64(name):
    model = _shared_model(name)
    with torch.no_grad():
        maps = model(torch.rand(2, 3, 64, 96))
        decoded = model.decode(maps)
    assert model.strides == STRIDES
    assert [tuple(m.shape) for m in maps] == [(2, NO, 64 // s, 96 // s) for s in STRIDES]
    assert tuple(decoded.shape) == (2, 84, sum((64 // s) * (96 // s) for s in STRIDES))
    assert torch.isfinite(decoded).all()


@pytest.mark.parametrize("name", ["yolov12-n", "yolov12-s-turbo"])
def test_forward_shapes_640(name):
    model = _shared_model(name)
    c3, c4, c5 = {"yolov12-n": (64, 128, 256), "yolov12-s-turbo": (128, 256, 512)}[name]
    with torch.no_grad():
        feats = model.features(torch.rand(1, 3, 640, 640))
        maps = model.head(feats)
        decoded = model.decode(maps)
    assert [tuple(f.shape) for f in feats] == [(1, c3, 80, 80), (1, c4, 40, 40), (1, c5, 20, 20)]
    assert [tuple(m.shape) for m in maps] == [(1, NO, 80, 80), (1, NO, 40, 40), (1, NO, 20, 20)]
    assert tuple(decoded.shape) == (1, 84, 8400)
    scores = decoded[:, 4:]
    assert torch.all((scores >= 0) & (scores <= 1))


def test_head_bias_init():
    head = _shared_model("yolov12-n").head
    for box, cls, want in zip(head.box, head.cls, (-11.5366, -10.1503, -8.7641)):
        assert torch.all(box[-1].bias == 1.0)
        assert cls[-1].bias[0].item() == pytest.approx(want, abs=1e-4)
    assert math.isclose(-11.5366, math.log(5 / 80 / (640 / 8) ** 2), abs_tol=1e-4)


@pytest.mark.parametrize("name", ["yolov12-n", "yolov12-n-turbo", "yolov12-l"])
def test_backward_reaches_every_trainable_parameter(name):
    torch.manual_seed(0)
    model = leyolo.create_model(name).train()
    model.decode(model(torch.rand(2, 3, 64, 64))).sum().backward()
    checked = 0
    for pname, p in model.named_parameters():
        if pname.startswith("head.dfl."):
            assert not p.requires_grad and p.grad is None, pname
            continue
        assert p.requires_grad and p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        checked += 1
    assert checked > 200
    if name == "yolov12-l":
        assert model.layers[6].gamma.grad.abs().sum() > 0


def test_training_step_with_criterion():
    torch.manual_seed(0)
    model = leyolo.create_model("yolov12-n", nc=3).train()
    criterion = build_criterion(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 1, 8.0, 8.0, 40.0, 50.0], [1, 0, 20.0, 4.0, 60.0, 30.0], [1, 2, 2.0, 30.0, 20.0, 62.0]])
    before = model.layers[6].blocks[0][0].attn.proj.conv.weight.detach().clone()
    loss, items = criterion(model(images), targets)
    assert torch.isfinite(loss) and loss.item() > 0
    assert set(items) >= {"box", "cls", "dfl"} and all(torch.isfinite(v).all() for v in items.values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert not torch.equal(before, model.layers[6].blocks[0][0].attn.proj.conv.weight)
    loss2, _ = criterion(model(images), targets)
    assert torch.isfinite(loss2)


def test_criterion_accepts_both_heads():
    for name in ("leyolo-n", "yolov12-n"):
        head = _shared_model(name).head
        assert isinstance(head, DenseHead)
        crit = build_criterion(_shared_model(name))
        assert crit.nc == 80 and crit.strides == STRIDES
    assert isinstance(_shared_model("leyolo-n").head, DNiNHead)
    with pytest.raises(TypeError):
        build_criterion(torch.nn.Linear(2, 2))


def test_custom_classes_and_reset():
    model = leyolo.create_model("yolov12-n", nc=3)
    assert model.nc == 3 and model.names == ["class0", "class1", "class2"]
    model.head.reset_class_outputs(5)
    assert model.nc == 5
    with torch.no_grad():
        maps = model.eval()(torch.rand(1, 3, 64, 64))
    assert all(m.shape[1] == 64 + 5 for m in maps)
    assert model.decode(maps).shape[1] == 4 + 5
    assert model.head.cls[0][-1].bias[0].item() == pytest.approx(math.log(5 / 5 / 80 ** 2))


def test_fuse_keeps_outputs():
    torch.manual_seed(0)
    for name in FUSED_PARAMS:
        model = leyolo.create_model(name)
        randomise_batchnorm(model)
        model.eval()
        x = torch.rand(1, 3, 64, 96)
        with torch.no_grad():
            before = model(x)
            model.fuse()
            after = model(x)
        assert count_params(model) == FUSED_PARAMS[name]
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        for b, a in zip(before, after):
            assert torch.allclose(a, b, rtol=0, atol=1e-4 * max(1.0, b.abs().max().item()))


# -- area attention --------------------------------------------------------------------------------

def _naive_area_attention(attn: AreaAttention, x: torch.Tensor) -> torch.Tensor:
    """The spec's AAttn written out: explicit max-subtracted softmax per strip of ceil(N/area) tokens."""
    b, c, h, w = x.shape
    n, heads, d = h * w, attn.heads, attn.head_dim
    if attn.turbo:
        qk = attn.qk(x).flatten(2)  # [B, 2C, N]: all q, then all k; head h at h*d
        q, k = qk[:, :c].reshape(b, heads, d, n), qk[:, c:].reshape(b, heads, d, n)
        v = attn.v(x).flatten(2).reshape(b, heads, d, n)
    else:
        qkv = attn.qkv(x).flatten(2).reshape(b, heads, 3, d, n)  # channel head*3d + j*d + i
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    out = torch.zeros_like(q)
    run = -(-n // attn.area)
    for start in range(0, n, run):
        sl = slice(start, min(start + run, n))
        logits = q[..., sl].transpose(-1, -2) @ k[..., sl] / math.sqrt(d)  # [B, heads, m, m]
        logits = logits - logits.amax(-1, keepdim=True)
        prob = logits.exp() / logits.exp().sum(-1, keepdim=True)
        out[..., sl] = v[..., sl] @ prob.transpose(-1, -2)
    out = out.reshape(b, c, h, w)
    return attn.proj(out + attn.pe(v.reshape(b, c, h, w)))


def _test_attention(dim, heads, area, turbo, seed=0, sharp=False):
    """An eval-mode AreaAttention with random BN statistics: spec init (trunc-normal 0.02, as inside
    an AttentionBlock), or ``sharp`` weights that make the softmax far from uniform."""
    torch.manual_seed(seed)
    attn = AttentionBlock(dim, heads, 2.0, area, turbo).attn
    if sharp:
        with torch.no_grad():
            for m in attn.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.normal_(0, 0.3 if m.groups == 1 else 0.1)
    randomise_batchnorm(attn, seed)
    return attn.eval()


def _max_error(got: torch.Tensor, want: torch.Tensor, sharp: bool) -> float:
    """Absolute error; for the sharp weights (outputs ~10) relative to max(1, |want|)."""
    err = (got - want).abs().max().item()
    return err / max(1.0, want.abs().max().item()) if sharp else err


@pytest.mark.parametrize("sharp", [False, True])
@pytest.mark.parametrize("turbo", [False, True])
@pytest.mark.parametrize("dim,heads,area,h,w", [(64, 2, 4, 40, 40), (128, 4, 4, 16, 24), (128, 4, 1, 20, 20),
                                                (96, 3, 4, 8, 12)])
def test_area_attention_matches_explicit_softmax(dim, heads, area, h, w, turbo, sharp):
    attn = _test_attention(dim, heads, area, turbo, sharp=sharp)
    x = torch.randn(2, dim, h, w)
    with torch.no_grad():
        got, want = attn(x), _naive_area_attention(attn, x)
    assert _max_error(got, want, sharp) < 1e-5


def test_area_attention_strips_are_independent():
    """With area 4 on a 16-row map, changing rows 0-3 leaves the attention output of rows 8-11 alone
    except through the (local, 7x7) position perceiver."""
    attn = _test_attention(64, 2, 4, False, sharp=True)
    x = torch.randn(1, 64, 16, 8)
    y = x.clone()
    y[:, :, :4] += torch.randn(1, 64, 4, 8)
    with torch.no_grad():
        q, k, v, _ = attn.tokens(x)
        q2, k2, v2, _ = attn.tokens(y)
        a, b = attn.attend(q, k, v), attn.attend(q2, k2, v2)
    assert torch.allclose(a[:, 32:], b[:, 32:], atol=1e-6)  # strips 1-3 (tokens 32..127) unchanged
    assert not torch.allclose(a[:, :32], b[:, :32], atol=1e-3)


@pytest.mark.parametrize("turbo", [False, True])
@pytest.mark.parametrize("h,w,area", [(5, 5, 4), (7, 7, 4), (3, 5, 4), (1, 1, 4), (7, 9, 4), (5, 5, 1)])
def test_area_attention_pads_uneven_token_counts(h, w, area, turbo):
    """N % area != 0: the sequence is padded and the padding masked; strips are runs of ceil(N/area)."""
    attn = _test_attention(64, 2, area, turbo, seed=1, sharp=True)
    x = torch.randn(2, 64, h, w, requires_grad=True)
    got = attn(x)
    with torch.no_grad():
        want = _naive_area_attention(attn, x)
    assert got.shape == x.shape
    assert _max_error(got, want, sharp=True) < 1e-5
    got.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    run = -(-h * w // area)
    assert attn.attention_macs(h, w) == 2 * area * run * run * 64  # what rule T counts: the padded strips


@pytest.mark.parametrize("hw", [(100, 100), (70, 90), (640, 100)])
def test_input_size_not_multiple_of_32_is_a_clear_error(hw):
    model = _shared_model("yolov12-n")
    with pytest.raises(ValueError, match=rf"multiples of 32, got {hw[0]}x{hw[1]}"):
        model(torch.rand(1, 3, *hw))


# -- ultralytics key layout ------------------------------------------------------------------------

def test_state_dict_layout_maps_to_ultralytics_keys():
    model = _meta_model("yolov12-n")
    own = model.state_dict()
    assert len(own) == 691 and sum(k.endswith("num_batches_tracked") for k in own) == 113  # as yolo12n
    examples = {
        "model.6.cv1.conv.weight": None,
        "model.6.m.1.0.attn.qkv.conv.weight": (192, 64, 1, 1),
        "model.6.m.0.1.attn.pe.conv.weight": (64, 1, 7, 7),
        "model.8.m.1.1.mlp.1.conv.weight": None,
        "model.11.m.0.cv3.conv.weight": None,
        "model.2.m.0.cv2.bn.running_var": None,
        "model.20.m.0.m.1.cv2.conv.weight": None,
        "model.21.cv2.2.1.conv.weight": None,
        "model.21.cv2.0.2.bias": None,
        "model.21.cv3.1.1.0.conv.weight": None,
        "model.21.dfl.conv.weight": (1, 16, 1, 1),
    }
    for key, shape in examples.items():
        mine = ultralytics_key(key, model)
        assert mine in own, (key, mine)
        if shape is not None:
            assert tuple(own[mine].shape) == shape
    assert ultralytics_key("model.6.gamma", _meta_model("yolov12-l")) == "layers.6.gamma"
    # every key round-trips: ours -> theirs (inverse renames) -> ours
    for key in own:
        parts, module, theirs = key.split("."), model, ["model"]
        if parts[0] == "head":
            theirs += ["21", {"box": "cv2", "cls": "cv3", "dfl": "dfl"}[parts[1]], *parts[2:]]
        else:
            theirs.append(parts[1])
            module = model.layers[int(parts[1])]
            for part in parts[2:]:
                inverse = {v: k for k, v in getattr(type(module), "ULTRALYTICS_NAMES", {}).items()}
                theirs.append(inverse.get(part, part))
                module = module._modules.get(part) if module is not None else None
        assert ultralytics_key(".".join(theirs), model) == key


# -- export and CLI --------------------------------------------------------------------------------

def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from leyolo.deploy.onnx_export import export_onnx

    model = _scored_model()
    path = export_onnx(model, tmp_path / "yolov12-n.onnx", imgsz=320)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        ref = model.decode(model(x)).numpy()
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert out.shape == ref.shape == (1, 84, 2100)
    assert np.abs(out[:, 4:] - ref[:, 4:]).max() < 1e-4
    assert ref[:, 4:].max() > 0.1  # the comparison covers non-trivial scores
    box_err = np.abs(out[:, :4] - ref[:, :4]) - (1e-3 + 1e-5 * np.abs(ref[:, :4]))
    assert box_err.max() <= 0


def test_cli_info_labels_attention_counts(capsys):
    assert main(["info", "--model", "yolov12-n", "--imgsz", "640", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"model", "params", "gflops", "imgsz"} <= set(info)
    assert info["model"] == "yolov12-n" and info["params"] == 2_602_288 and info["imgsz"] == 640
    assert info["gflops"] == pytest.approx(6.6511, abs=1e-9)  # rounded to 4 decimals, like the table
    assert info["gflops_fused"] == pytest.approx(6.4879, abs=1e-9)
    assert info["gflops_with_attention"] == pytest.approx(7.6341, abs=1e-9)
    assert main(["info", "--model", "leyolo-n", "--imgsz", "320", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "gflops_fused" not in info and "gflops_with_attention" not in info


def test_torchscript_export_matches_torch_at_any_size(tmp_path):
    model = _scored_model()
    path = leyolo.Detector(model).export(tmp_path / "yolov12-n.torchscript", imgsz=320)
    traced = load_torchscript(path)
    for hw in ((320, 320), (256, 416)):  # traced at 320: area attention must not bake in the token count
        x = torch.rand(1, 3, *hw)
        with torch.no_grad():
            ref = model.decode(model(x)).numpy()
            out = traced(x).numpy()
        assert out.shape == ref.shape
        assert np.abs(out[:, 4:] - ref[:, 4:]).max() < 1e-4
        assert ref[:, 4:].max() > 0.1  # the comparison covers non-trivial scores
        assert (np.abs(out[:, :4] - ref[:, :4]) - (1e-3 + 1e-5 * np.abs(ref[:, :4]))).max() <= 0


def test_prune_l1_works_and_turbo_channel_is_refused(tmp_path):
    from leyolo.tools.prune import channel_prune, prune, weight_sparsity
    from leyolo.errors import LeyoloError

    torch.manual_seed(0)
    det = leyolo.Detector(leyolo.create_model("yolov12-n"))
    result = prune(det, "l1-unstructured", 0.3, imgsz=64, out=tmp_path / "v12-l1.safetensors", runs=1,
                   evaluate=False)
    pruned = leyolo.load(result["out"])
    assert 0.29 < weight_sparsity(pruned.model) < 0.31
    qkv = pruned.model.layers[6].blocks[0][0].attn.qkv.conv.weight  # an attention projection is pruned like any conv
    assert 0.25 < float((qkv == 0).float().mean()) < 0.35
    assert count_params(pruned.model) == PARAMS["yolov12-n"]  # shapes kept
    with pytest.raises(LeyoloError, match="l1-unstructured"):  # turbo's qk/v attention layout: not verified
        channel_prune(leyolo.create_model("yolov12-n-turbo"), 0.3)


def test_channel_pruned_yolov12_saves_reloads_exports_and_predicts(tmp_path):
    """The C3k2 halves are pruned as two convs and joined back; attention stays dense; the file reloads."""
    import onnxruntime as ort

    from leyolo.models.attention import AreaAttention
    from leyolo.models.layers import C3k2
    from leyolo.tools.prune import prune

    torch.manual_seed(0)
    dense = leyolo.create_model("yolov12-n", nc=3, names=["a", "b", "c"])
    det = leyolo.Detector(dense)
    result = prune(det, "channel", 0.3, imgsz=128, out=tmp_path / "v12.safetensors", runs=1, evaluate=False)
    base, row = result["rows"]
    assert row["gflops"] < 0.7 * base["gflops"] and row["params"] < 0.75 * base["params"]
    pruned = leyolo.load(result["out"])
    assert count_params(pruned.model) == row["params"]
    for block in pruned.model.modules():
        if isinstance(block, C3k2):
            assert block.split.conv.out_channels % 16 == 0  # two equal halves of multiples of 8 for chunk(2)
    attn_before = [m.proj.conv.weight.shape for m in dense.modules() if isinstance(m, AreaAttention)]
    attn_after = [m.proj.conv.weight.shape for m in pruned.model.modules() if isinstance(m, AreaAttention)]
    assert attn_after == attn_before and attn_after  # attention kept dense
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8)
    onnx = pruned.export(tmp_path / "v12.onnx", imgsz=128)
    ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    ref = pruned.predict(image, imgsz=128, conf=0.0, max_det=20, backend="torch")[0]
    got = leyolo.load(onnx).predict(image, imgsz=128, conf=0.0, max_det=20)[0]
    assert len(ref) == 20 and len(got) == len(ref)  # untrained: compare the top scores, not real objects
    np.testing.assert_allclose(np.sort(got.scores), np.sort(ref.scores), atol=1e-4)


def test_static_int8_quantization_runs_and_tracks_fp32(tmp_path, request):
    ort = pytest.importorskip("onnxruntime")
    from leyolo.tools.quantize import quantize

    model = _scored_model()
    # any photos of a train split will do: coco-mini's, or the synthetic shapes set's without ../shared
    calibration = COCO_DATA if HAVE_SHARED else request.getfixturevalue("trained_shapes").data
    result = quantize(leyolo.Detector(model), calibration, method="static", calib_images=4, calibration="minmax",
                      float_layers=0, imgsz=160, out=tmp_path / "v12-int8.onnx", runs=1, evaluate=False)
    session = ort.InferenceSession(result["out"], providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in __import__("onnx").load(result["out"]).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        ref = model.decode(model(x)).numpy()
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert out.shape == ref.shape
    assert np.corrcoef(out[:, 4:].ravel(), ref[:, 4:].ravel())[0, 1] > 0.9  # INT8 follows the fp32 scores
