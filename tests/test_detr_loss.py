"""The Le-DETR criterion, its matcher, box helpers and denoising queries, on hand-made tensors (no model)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from leyolo.errors import LeyoloError
from leyolo.losses import CRITERIA, DetrCriterion, HungarianMatcher, detr_criterion
from leyolo.losses.detr import ITEM_KEYS, box_iou_giou, box_to_bins, mal_loss, union_matches, vfl_loss
from leyolo.models.denoising import denoising_queries
from leyolo.models.detr_boxes import (box_to_distance, cxcywh_to_xyxy, distance_to_box, distribution_to_distance,
                                      inverse_sigmoid, weighting_function, xyxy_to_cxcywh)

R = 16  # reg_max for the tests (Le-DETR uses 32)
UP, SCALE = torch.tensor([0.5]), torch.tensor([4.0])
PIX = torch.tensor([640.0, 480.0, 640.0, 480.0])


def _targets(labels: list[list[int]], boxes: list[torch.Tensor]) -> torch.Tensor:
    """Per-image labels and normalised cxcywh -> the trainer's ``[M, 6]`` pixel targets."""
    rows = [torch.cat((torch.full((len(b), 1), float(i)), torch.tensor(l, dtype=torch.float)[:, None],
                       cxcywh_to_xyxy(b) * PIX), 1) for i, (l, b) in enumerate(zip(labels, boxes))]
    return torch.cat(rows) if rows else torch.zeros(0, 6)


def _layer(logits: torch.Tensor, corners: torch.Tensor, refs: torch.Tensor) -> dict:
    project = weighting_function(R, UP, SCALE)
    return {"logits": logits, "corners": corners, "refs": refs,
            "boxes": distance_to_box(refs, distribution_to_distance(corners, project), SCALE)}


def _raw(b: int = 2, q: int = 6, nc: int = 3, layers: int = 2, dn: dict | None = None, seed: int = 0,
         grad: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)

    def t(*shape: int, lo: float | None = None) -> torch.Tensor:
        x = torch.rand(*shape, generator=g) * 0.4 + 0.3 if lo is not None else torch.randn(*shape, generator=g)
        return x.requires_grad_(grad)

    refs = torch.rand(b, q, 4, generator=g) * 0.3 + 0.35
    outs = [_layer(t(b, q, nc), t(b, q, 4 * (R + 1)), refs) for _ in range(layers)]
    return {"scale": PIX, "logits": outs[-1]["logits"], "boxes": outs[-1]["boxes"], "layers": outs,
            "pre": {"logits": t(b, q, nc), "boxes": t(b, q, 4, lo=0.3)},
            "enc": {"logits": t(b, q, nc), "boxes": t(b, q, 4, lo=0.3)},
            "dn": dn, "reg_max": R, "up": UP, "reg_scale": SCALE}


LABELS = [[0, 2], [1]]
BOXES = [torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]]), torch.tensor([[0.5, 0.5, 0.4, 0.4]])]


# -- box helpers -----------------------------------------------------------------------------------

def test_box_conversions_and_inverse_sigmoid():
    b = torch.tensor([[0.5, 0.4, 0.2, 0.1]])
    assert torch.allclose(cxcywh_to_xyxy(b), torch.tensor([[0.4, 0.35, 0.6, 0.45]]))
    assert torch.allclose(xyxy_to_cxcywh(cxcywh_to_xyxy(b)), b)
    assert torch.allclose(inverse_sigmoid(b).sigmoid(), b, atol=1e-6)
    assert torch.isfinite(inverse_sigmoid(torch.tensor([0.0, 1.0]))).all()


def test_weighting_function_shape_and_symmetry():
    w = weighting_function(32, UP, SCALE)
    assert w.shape == (33,) and float(w[16]) == 0.0
    assert torch.allclose(w, -w.flip(0)) and (w.diff() > 0).all()
    assert float(w[0]) == -4.0 and float(w[1]) == pytest.approx(-2.0)  # -2*up*scale, then -up*scale
    with pytest.raises(ValueError):
        weighting_function(7, UP, SCALE)


def test_box_distance_round_trip_through_soft_bins():
    """box -> distance -> two-bin soft target -> its expectation -> box: recovered (exact two-bin interpolation)."""
    refs = torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.2]])
    gt = torch.tensor([[0.52, 0.47, 0.45, 0.33], [0.31, 0.58, 0.17, 0.24]])
    assert torch.allclose(distance_to_box(refs, box_to_distance(refs, cxcywh_to_xyxy(gt), SCALE), SCALE), gt, atol=1e-6)
    left, w_left, w_right = box_to_bins(refs, cxcywh_to_xyxy(gt), R, UP, SCALE)
    probs = torch.zeros(8, R + 1)
    probs[torch.arange(8), left] = w_left
    probs[torch.arange(8), left + 1] += w_right
    corners = probs.clamp(min=1e-12).log().reshape(2, 4 * (R + 1))
    back = distance_to_box(refs, distribution_to_distance(corners, weighting_function(R, UP, SCALE)), SCALE)
    assert torch.allclose(back, gt, atol=1e-4)
    # Out of range: all mass on the end bin, pulling as far as possible.
    far = cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 2.0, 0.3]]))
    left, w_left, w_right = box_to_bins(refs[:1], far, R, UP, SCALE)
    assert int(left[0]) == R - 1 and float(w_right[0]) == 1.0


def test_box_helpers_trace_without_python_control_flow():
    def f(corners, refs, up, scale):
        return distance_to_box(refs, distribution_to_distance(corners, weighting_function(R, up, scale)), scale)

    args = (torch.randn(1, 5, 4 * (R + 1)), torch.rand(1, 5, 4), UP, SCALE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(f, args)
    other = (torch.randn(2, 7, 4 * (R + 1)), torch.rand(2, 7, 4), torch.tensor([0.7]), torch.tensor([3.0]))
    assert torch.allclose(traced(*other), f(*other), atol=1e-6)


# -- matcher and loss pieces ---------------------------------------------------------------------

def test_matcher_follows_the_boxes_and_handles_empty_images():
    gt = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2]])
    boxes = torch.stack((torch.cat((gt, torch.tensor([[0.5, 0.5, 0.9, 0.9]]))),
                         torch.cat((gt.flip(0), torch.tensor([[0.5, 0.5, 0.9, 0.9]])))))
    logits = torch.zeros(2, 3, 2)
    m = HungarianMatcher()
    (q0, g0), (q1, g1) = m(logits, boxes, [torch.tensor([0, 1])] * 2, [gt, gt])
    assert dict(zip(q0.tolist(), g0.tolist())) == {0: 0, 1: 1}
    assert dict(zip(q1.tolist(), g1.tolist())) == {0: 1, 1: 0}  # swapped predictions -> swapped assignment
    (qa, ga), (qb, gb) = m(logits, boxes, [torch.tensor([0, 1]), torch.zeros(0, dtype=torch.long)],
                           [gt, torch.zeros(0, 4)])
    assert len(qa) == 2 and len(qb) == 0 and qb.dtype == torch.long
    none = m(logits, boxes, [torch.zeros(0, dtype=torch.long)] * 2, [torch.zeros(0, 4)] * 2)
    assert all(len(q) == 0 for q, _ in none)


def test_union_keeps_the_most_frequent_gt_per_query():
    t = torch.tensor
    passes = [[(t([0, 1]), t([0, 1]))], [(t([0, 2]), t([1, 1]))], [(t([0]), t([1]))]]
    (q, g), = union_matches(passes)
    assert dict(zip(q.tolist(), g.tolist())) == {0: 1, 1: 1, 2: 1}


def test_giou_and_l1_by_hand():
    a, b = torch.tensor([0.0, 0.0, 2.0, 2.0]), torch.tensor([1.0, 1.0, 3.0, 3.0])
    iou, giou = box_iou_giou(a, b)
    assert float(iou) == pytest.approx(1 / 7, abs=1e-6) and float(giou) == pytest.approx(1 / 7 - 2 / 9, abs=1e-6)
    pred, gt = xyxy_to_cxcywh(a)[None] / 4, xyxy_to_cxcywh(b)[None] / 4
    out = {"boxes": pred[None], "logits": torch.zeros(1, 1, 1)}
    l1, g = DetrCriterion._boxes(out, (torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), gt), 1.0)
    assert float(l1) == pytest.approx(2 * 0.25) and float(g) == pytest.approx(1 - (1 / 7 - 2 / 9), abs=1e-6)


def test_mal_and_vfl_by_hand():
    x, q = torch.tensor([0.3]), torch.tensor([0.6])
    p = 1 / (1 + math.exp(-0.3))
    one, zero = torch.ones(1), torch.zeros(1)
    qg = 0.6**1.5
    assert float(mal_loss(x, one, q, 1.5)) == pytest.approx(-(qg * math.log(p) + (1 - qg) * math.log(1 - p)), rel=1e-5)
    assert float(mal_loss(x, zero, zero, 1.5)) == pytest.approx(-(p**1.5) * math.log(1 - p), rel=1e-5)
    assert float(vfl_loss(x, one, q)) == pytest.approx(-0.6 * (0.6 * math.log(p) + 0.4 * math.log(1 - p)), rel=1e-5)
    assert float(vfl_loss(x, zero, zero)) == pytest.approx(-0.75 * p**2 * math.log(1 - p), rel=1e-5)


# -- the criterion ---------------------------------------------------------------------------------

def _perfect(shift: float) -> dict:
    """Queries 0..n-1 predict the gts (shifted by ``shift``), the rest predict nothing."""
    b, q, nc = 2, 5, 3
    logits = torch.full((b, q, nc), -12.0)
    boxes = torch.full((b, q, 4), 0.1)
    for i, (lab, box) in enumerate(zip(LABELS, BOXES)):
        logits[i, torch.arange(len(lab)), torch.tensor(lab)] = 12.0
        boxes[i, : len(lab)] = box + torch.tensor([shift, shift, 0, 0])
    out = {"logits": logits, "boxes": boxes}
    return {"scale": PIX, **out, "layers": [dict(out)], "pre": dict(out), "enc": dict(out), "dn": None,
            "reg_max": R, "up": UP, "reg_scale": SCALE}


def test_perfect_prediction_scores_near_zero_and_below_a_shifted_one():
    crit = DetrCriterion(3)
    targets = _targets(LABELS, BOXES)
    perfect, items = crit(_perfect(0.0), targets)
    shifted, _ = crit(_perfect(0.05), targets)
    assert float(perfect) < 1e-2 < float(shifted)
    assert set(items) == set(ITEM_KEYS) and float(items["fgl"]) == float(items["dn"]) == 0.0
    assert float(perfect) == pytest.approx(float(sum(items.values())), abs=1e-6)


def test_gradients_reach_logits_boxes_and_corners():
    raw = _raw(grad=True)
    loss, items = DetrCriterion(3)(raw, _targets(LABELS, BOXES))
    loss.backward()
    for layer in raw["layers"]:
        assert layer["logits"].grad.abs().sum() > 0 and layer["corners"].grad.abs().sum() > 0
    assert raw["pre"]["boxes"].grad.abs().sum() > 0 and raw["enc"]["logits"].grad.abs().sum() > 0
    assert all(float(items[k]) > 0 for k in ("cls", "l1", "giou", "fgl", "ddf"))


def test_empty_targets_and_teacher_and_factory():
    crit = DetrCriterion(3)
    loss, items = crit(_raw(), torch.zeros(0, 6))
    assert torch.isfinite(loss) and float(loss) > 0 and float(items["l1"]) == 0.0
    with pytest.raises(LeyoloError, match="not supported"):
        crit(_raw(), _targets(LABELS, BOXES), teacher_raw=_raw())
    assert CRITERIA["detr"] is detr_criterion
    model = nn.Module()
    model.nc = 3
    built = detr_criterion(model, {"cls": 0.5, "box": 7.5, "dfl": 1.5, "detr_cls_loss": "vfl", "detr_giou": 3.0})
    assert built.cls_loss == "vfl" and built.weights == {"cls": 1.0, "l1": 5.0, "giou": 3.0, "fgl": 0.15, "ddf": 1.5}


def test_matching_is_permutation_invariant_but_denoising_matching_is_fixed():
    gen = torch.Generator().manual_seed(1)
    dn_batch = denoising_queries([torch.tensor(x) for x in LABELS], BOXES, 3, 6, nn.Embedding(4, 8, padding_idx=3),
                                 num_denoising=8, generator=gen)
    ndn = dn_batch.num_dn
    dn_raw = _raw(q=ndn, layers=2, seed=5)
    dn = {"layers": dn_raw["layers"], "pre": dn_raw["pre"], "positive": dn_batch.positive,
          "gt_index": dn_batch.gt_index, "groups": dn_batch.groups}
    crit, targets = DetrCriterion(3), _targets(LABELS, BOXES)
    raw = _raw(dn=dn)
    base, items = crit(raw, targets)
    assert float(items["dn"]) > 0

    def permuted(d: dict, perm: torch.Tensor) -> dict:
        return {k: (v[:, perm] if torch.is_tensor(v) and v.ndim == 3 else v) for k, v in d.items()}

    perm = torch.randperm(6, generator=gen)
    same = {**raw, "layers": [permuted(x, perm) for x in raw["layers"]], "pre": permuted(raw["pre"], perm),
            "enc": permuted(raw["enc"], perm)}
    same["logits"], same["boxes"] = same["layers"][-1]["logits"], same["layers"][-1]["boxes"]
    assert float(crit(same, targets)[0]) == pytest.approx(float(base), rel=1e-5)  # Hungarian follows the queries
    dperm = torch.randperm(ndn, generator=gen)
    moved_dn = {**dn, "layers": [permuted(x, dperm) for x in dn["layers"]], "pre": permuted(dn["pre"], dperm)}
    moved = {**raw, "dn": moved_dn}
    loss, moved_items = crit(moved, targets)
    assert float(moved_items["dn"]) != pytest.approx(float(items["dn"]), rel=1e-3)  # fixed slots: the loss moves
    assert float(moved_items["cls"]) == pytest.approx(float(items["cls"]), rel=1e-6)


# -- denoising queries ---------------------------------------------------------------------------

def _identity_embed(nc: int) -> nn.Embedding:
    embed = nn.Embedding(nc + 1, nc + 1, padding_idx=nc)
    with torch.no_grad():
        embed.weight.copy_(torch.eye(nc + 1))
    return embed


def test_denoising_layout_and_mask():
    labels = [torch.tensor([0, 1]), torch.tensor([2])]
    dn = denoising_queries(labels, BOXES, 3, 5, _identity_embed(3), num_denoising=6, label_noise=0.0,
                           generator=torch.Generator().manual_seed(0))
    assert dn.groups == 3 and dn.num_dn == 12 and dn.embed.shape == (2, 12, 4) and dn.boxes.shape == (2, 12, 4)
    assert dn.positive[0].tolist() == [0, 1, 4, 5, 8, 9] and dn.gt_index[0].tolist() == [0, 1, 0, 1, 0, 1]
    assert dn.positive[1].tolist() == [0, 4, 8] and dn.gt_index[1].tolist() == [0, 0, 0]
    cls = dn.embed.argmax(-1)
    assert cls[0].tolist() == [0, 1] * 6 and cls[1].tolist() == [2, 3] * 6  # image 1's padding slots: class nc
    m = dn.attn_mask
    assert m.shape == (17, 17) and m.dtype == torch.bool
    assert not m[0, 3] and m[0, 4] and m[4, 3] and not m[5, 7] and m[11, 0]  # own group only
    assert m[12, 0] and m[16, 11] and not m[0, 12] and not m[12, 16]  # matching queries cannot see dn queries
    assert denoising_queries([torch.zeros(0, dtype=torch.long)] * 2, [torch.zeros(0, 4)] * 2, 3, 5,
                             _identity_embed(3)) is None


def test_denoising_noise_statistics():
    nc, n, images = 80, 200, 5
    g = torch.Generator().manual_seed(0)
    labels = [torch.randint(0, nc, (n,), generator=g) for _ in range(images)]
    boxes = [torch.cat((torch.rand(n, 2, generator=g) * 0.4 + 0.3, torch.rand(n, 2, generator=g) * 0.2 + 0.1), 1)
             for _ in range(images)]
    dn = denoising_queries(labels, boxes, nc, 10, _identity_embed(nc), num_denoising=400, label_noise=0.5,
                           box_noise=1.0, generator=g)
    assert dn.groups == 2
    cls = dn.embed.argmax(-1)
    truth = torch.stack(labels).repeat(1, 4)
    rate = float((cls != truth).float().mean())
    assert rate == pytest.approx(0.25 * (1 - 1 / nc), abs=0.02)
    gt = cxcywh_to_xyxy(torch.stack(boxes).repeat(1, 4, 1))
    iou = box_iou_giou(cxcywh_to_xyxy(dn.boxes.sigmoid()), gt)[0]
    negative = (torch.arange(dn.num_dn) // n) % 2 == 1
    pos, neg = float(iou[:, ~negative].mean()), float(iou[:, negative].mean())
    assert pos > 0.3 and neg < 0.2 and pos > 3 * neg, (pos, neg)  # negatives lie outside the positive band
    again = denoising_queries(labels, boxes, nc, 10, _identity_embed(nc), num_denoising=400,
                              generator=torch.Generator().manual_seed(3))
    same = denoising_queries(labels, boxes, nc, 10, _identity_embed(nc), num_denoising=400,
                             generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.boxes, same.boxes)


# -- end to end -------------------------------------------------------------------------------------

def test_criterion_overfits_learnable_predictions():
    """Free tensors shaped like the raw output, optimised under the criterion, land on the gts."""
    torch.manual_seed(0)
    b, q, nc = 2, 6, 3
    labels = [[0, 2], [1, 1]]
    boxes = [torch.tensor([[0.35, 0.4, 0.2, 0.25], [0.65, 0.6, 0.25, 0.2]]),
             torch.tensor([[0.4, 0.6, 0.3, 0.2], [0.6, 0.35, 0.2, 0.3]])]
    targets = _targets(labels, boxes)
    refs = torch.cat((torch.rand(b, q, 2) * 0.3 + 0.35, torch.full((b, q, 2), 0.5)), -1)
    params = {name: torch.zeros(b, q, size, requires_grad=True) for name, size in
              (("l0", nc), ("l1", nc), ("c0", 4 * (R + 1)), ("c1", 4 * (R + 1)), ("pl", nc), ("pb", 4))}
    opt = torch.optim.Adam(params.values(), lr=0.05)
    crit = DetrCriterion(nc)
    for _ in range(200):
        layers = [_layer(params["l0"], params["c0"], refs), _layer(params["l1"], params["c1"], refs)]
        pre = {"logits": params["pl"], "boxes": params["pb"].sigmoid()}
        raw = {"scale": PIX, "logits": layers[-1]["logits"], "boxes": layers[-1]["boxes"], "layers": layers,
               "pre": pre, "enc": pre, "dn": None, "reg_max": R, "up": UP, "reg_scale": SCALE}
        loss, _ = crit(raw, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = raw["layers"][-1]
        for i, (q_idx, g_idx) in enumerate(HungarianMatcher()(final["logits"], final["boxes"],
                                                               [torch.tensor(x) for x in labels], boxes)):
            iou = box_iou_giou(cxcywh_to_xyxy(final["boxes"][i, q_idx]), cxcywh_to_xyxy(boxes[i][g_idx]))[0]
            assert float(iou.min()) > 0.9
            scores = final["logits"][i, q_idx].sigmoid()
            assert (scores.argmax(-1) == torch.tensor(labels[i])[g_idx]).all()
