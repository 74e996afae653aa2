"""Losses: box geometry, task-aligned assignment, the YOLO criterion and a tiny overfit."""

from __future__ import annotations

import math

import pytest
import torch

from leyolo.losses import TaskAlignedAssigner, YoloCriterion, bbox_iou, bbox_to_dist, dist_to_bbox
from leyolo.models.heads import make_anchors

STRIDES = (8, 16, 32)
BINS = 16


# ---------------------------------------------------------------- boxes
def test_bbox_iou_hand_case_and_ciou():
    a = torch.tensor([0.0, 0.0, 10.0, 10.0])
    b = torch.tensor([5.0, 5.0, 15.0, 15.0])
    assert bbox_iou(a, b).item() == pytest.approx(25 / 175, rel=1e-5)
    assert bbox_iou(a, b, ciou=True).item() < bbox_iou(a, b).item()
    assert bbox_iou(a, a, ciou=True).item() == pytest.approx(1.0, abs=1e-5)
    # Different aspect ratio, same centre: CIoU only pays the aspect term.
    c = torch.tensor([0.0, 2.0, 10.0, 8.0])
    assert bbox_iou(a, c, ciou=True).item() < bbox_iou(a, c).item() == pytest.approx(0.6, rel=1e-5)
    # Broadcasting gives a pairwise matrix.
    assert bbox_iou(torch.stack([a, b])[:, None], torch.stack([a, b, c])[None]).shape == (2, 3)


def test_dist_bbox_round_trip():
    points = torch.tensor([[5.0, 5.0], [2.5, 7.5]])
    dist = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 1.5, 2.5, 3.5]])
    boxes = dist_to_bbox(dist, points)
    assert torch.allclose(boxes[0], torch.tensor([4.0, 3.0, 8.0, 9.0]))
    assert torch.allclose(bbox_to_dist(points, boxes, reg_max=15), dist)
    # Clamped to [0, reg_max - 0.01].
    far = bbox_to_dist(points[:1], torch.tensor([[6.0, -100.0, 7.0, 6.0]]), reg_max=15)
    assert far.min().item() == 0.0 and far.max().item() == pytest.approx(14.99)


# ---------------------------------------------------------------- assigner
def _assign(assigner, scores, boxes, points, labels, gts, mask=None):
    gts = torch.tensor(gts, dtype=torch.float32).view(1, -1, 4)
    labels = torch.tensor(labels, dtype=torch.float32).view(1, -1, 1)
    mask = torch.ones_like(labels) if mask is None else torch.tensor(mask, dtype=torch.float32).view(1, -1, 1)
    return assigner(torch.tensor(scores).unsqueeze(0), torch.tensor(boxes).unsqueeze(0),
                    torch.tensor(points), labels, gts, mask)


def test_assigner_only_inside_anchor_is_foreground():
    assigner = TaskAlignedAssigner(topk=10, num_classes=3)
    points = [[10.0, 10.0], [50.0, 50.0]]
    boxes = [[2.0, 2.0, 18.0, 18.0], [40.0, 40.0, 60.0, 60.0]]
    scores = [[0.1, 0.6, 0.1], [0.1, 0.9, 0.1]]
    labels, tboxes, tscores, fg, idx = _assign(assigner, scores, boxes, points, [1], [[0.0, 0.0, 20.0, 20.0]])
    assert fg.tolist() == [[True, False]]
    assert labels[0, 0].item() == 1 and labels[0, 1].item() == 3  # background label = num_classes
    assert torch.allclose(tboxes[0, 0], torch.tensor([0.0, 0.0, 20.0, 20.0]))
    # Single positive: its normalised score equals the gt's best IoU, only on the gt class.
    iou = bbox_iou(torch.tensor(boxes[0]), torch.tensor([0.0, 0.0, 20.0, 20.0])).item()
    assert tscores[0, 0, 1].item() == pytest.approx(iou, rel=1e-4)
    assert tscores[0, 0, [0, 2]].abs().sum().item() == 0.0 and tscores[0, 1].abs().sum().item() == 0.0


def test_assigner_topk_picks_best_alignment():
    gt = [[0.0, 0.0, 40.0, 40.0]]
    points = [[10.0, 10.0], [30.0, 30.0], [20.0, 20.0]]
    # Anchor 0: perfect box, low score; anchor 1: IoU 0.64, high score; anchor 2: poor box and score.
    boxes = [[0.0, 0.0, 40.0, 40.0], [4.0, 4.0, 36.0, 36.0], [15.0, 15.0, 25.0, 25.0]]
    scores = [[0.1], [0.9], [0.05]]
    _, _, tscores, fg, _ = _assign(TaskAlignedAssigner(topk=1, num_classes=1), scores, boxes, points, [0], gt)
    assert fg.tolist() == [[True, False, False]]  # beta=6: localisation dominates
    assert tscores[0, 0, 0].item() == pytest.approx(1.0, rel=1e-4)
    _, _, _, fg, _ = _assign(TaskAlignedAssigner(topk=1, num_classes=1, beta=1.0), scores, boxes, points, [0], gt)
    assert fg.tolist() == [[False, True, False]]  # beta=1: the confident anchor wins
    _, _, tscores, fg, _ = _assign(TaskAlignedAssigner(topk=2, num_classes=1), scores, boxes, points, [0], gt)
    assert fg.tolist() == [[True, True, False]]
    assert 0 < tscores[0, 1, 0].item() < tscores[0, 0, 0].item()


def test_assigner_overlap_goes_to_higher_iou():
    points = [[20.0, 20.0], [5.0, 5.0]]
    boxes = [[10.0, 10.0, 30.0, 30.0], [0.0, 0.0, 12.0, 12.0]]
    scores = [[0.5, 0.5], [0.5, 0.5]]
    labels, tboxes, _, fg, idx = _assign(TaskAlignedAssigner(topk=10, num_classes=2), scores, boxes, points,
                                         [0, 1], [[0.0, 0.0, 40.0, 40.0], [10.0, 10.0, 30.0, 30.0]])
    assert fg.tolist() == [[True, True]]
    assert idx[0, 0].item() == 1 and labels[0, 0].item() == 1  # IoU 1.0 with gt 1 vs 0.25 with gt 0
    assert idx[0, 1].item() == 0 and labels[0, 1].item() == 0  # only inside gt 0


def test_assigner_no_gts_and_padding():
    assigner = TaskAlignedAssigner(topk=10, num_classes=2)
    points = [[10.0, 10.0], [30.0, 30.0]]
    boxes = [[0.0, 0.0, 20.0, 20.0], [20.0, 20.0, 40.0, 40.0]]
    scores = [[0.9, 0.9], [0.9, 0.9]]
    empty = assigner(torch.tensor(scores)[None], torch.tensor(boxes)[None], torch.tensor(points),
                     torch.zeros(1, 0, 1), torch.zeros(1, 0, 4), torch.zeros(1, 0, 1))
    assert not empty[3].any() and empty[2].sum().item() == 0.0
    # A padding row whose (zero) box would otherwise contain nothing, plus one that would contain everything.
    labels, _, tscores, fg, _ = _assign(assigner, scores, boxes, points, [0, 1],
                                        [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 50.0, 50.0]], mask=[0, 0])
    assert not fg.any() and tscores.sum().item() == 0.0 and (labels == 2).all()


# ---------------------------------------------------------------- criterion
def _perfect_maps(gt: list[float], nc: int, cls: int, size: int = 64) -> list[torch.Tensor]:
    """Maps whose DFL expectation hits the gt exactly (two bins) at every anchor inside it."""
    shapes = [(size // s, size // s) for s in STRIDES]
    maps = [torch.zeros(1, 4 * BINS + nc, h, w) for h, w in shapes]
    points, stride = make_anchors(maps, STRIDES)
    a = points.shape[0]
    box = torch.zeros(a, 4, BINS)  # uniform elsewhere
    logits_cls = torch.full((a, nc), -20.0)
    gt_t = torch.tensor(gt)
    for i in range(a):
        p = points[i] * stride[i]
        if (p > gt_t[:2]).all() and (p < gt_t[2:]).all():
            d = bbox_to_dist(points[i], gt_t / stride[i], BINS - 1)
            assert (d.frac() > 0).all(), "pick a gt with non-integer distances"
            lo = d.floor().long()
            box[i] = -1e4
            for side in range(4):
                box[i, side, lo[side]] = math.log(1 - d[side].frac())
                box[i, side, lo[side] + 1] = math.log(d[side].frac())
            logits_cls[i, cls] = 20.0
    flat = torch.cat((box.reshape(a, 4 * BINS), logits_cls), 1).T  # [no, A]
    out, start = [], 0
    for h, w in shapes:
        out.append(flat[:, start:start + h * w].reshape(1, -1, h, w).clone())
        start += h * w
    return out


GT = [19.0, 21.0, 37.0, 35.0]  # 4 candidate anchors at 64x64 (< topk), non-integer distances


def test_criterion_perfect_vs_random_and_gradient():
    crit = YoloCriterion(2, STRIDES, BINS)
    targets = torch.tensor([[0, 1, *GT]])
    perfect = _perfect_maps(GT, 2, 1)
    loss, items = crit(perfect, targets)
    assert items["box"].item() < 1e-4
    assert items["cls"].item() < 1e-3
    # DFL can't go below the entropy of the two-bin split; it must sit right at it.
    assert items["dfl"].item() < 0.7
    torch.manual_seed(0)
    rand = [torch.randn_like(m).requires_grad_(True) for m in perfect]
    rloss, ritems = crit(rand, targets)
    assert rloss.item() > 10 * loss.item()
    # Random boxes get small soft targets (IoU^6), so the box term is small but still clearly worse.
    assert ritems["box"].item() > 100 * max(items["box"].item(), 1e-7) and set(ritems) == {"box", "cls", "dfl"}
    rloss.backward()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in rand)
    # Box-branch gradient reaches the DFL logits, class gradient the class logits.
    assert rand[0].grad[:, :4 * BINS].abs().sum() > 0 and rand[0].grad[:, 4 * BINS:].abs().sum() > 0


def test_criterion_batch_scaling_and_multiscale():
    crit = YoloCriterion(2, STRIDES, BINS)
    torch.manual_seed(0)
    for size in (64, 96):
        maps = [torch.randn(3, 4 * BINS + 2, size // s, size // s) for s in STRIDES]
        targets = torch.tensor([[0, 0, 4, 4, 30, 30], [2, 1, 10, 12, 60, 50], [2, 0, 1, 1, 9, 9]])
        loss, items = crit(maps, targets)
        expected = 7.5 * items["box"] + 0.5 * items["cls"] + 1.5 * items["dfl"]
        assert loss.item() == pytest.approx(3 * expected.item(), rel=1e-5)
    with pytest.raises(ValueError):
        crit(maps, torch.tensor([[3, 0, 4, 4, 30, 30]]))  # batch index out of range


def test_criterion_empty_targets():
    crit = YoloCriterion(2, STRIDES, BINS)
    maps = [torch.randn(2, 4 * BINS + 2, 64 // s, 64 // s, requires_grad=True) for s in STRIDES]
    loss, items = crit(maps, torch.zeros(0, 6))
    assert items["box"].item() == 0.0 and items["dfl"].item() == 0.0 and items["cls"].item() > 0
    loss.backward()
    cls_grad = maps[0].grad[:, 4 * BINS:]
    assert torch.all(cls_grad >= 0) and cls_grad.sum() > 0  # only pushes scores down
    assert maps[0].grad[:, :4 * BINS].abs().sum() == 0


def test_focal_lowers_easy_cls_loss():
    targets = torch.tensor([[0, 1, *GT]])
    maps = _perfect_maps(GT, 2, 1)
    for m in maps:
        m[:, 4 * BINS:] *= 0.2  # confident but not saturated: logits +-4
    bce = YoloCriterion(2, STRIDES, BINS)(maps, targets)[1]["cls"]
    focal = YoloCriterion(2, STRIDES, BINS, focal_gamma=2.0)(maps, targets)[1]["cls"]
    assert 0 < focal.item() < 0.05 * bce.item()


def test_class_weights_scale_cls_loss():
    torch.manual_seed(0)
    maps = [torch.randn(1, 4 * BINS + 1, 64 // s, 64 // s) for s in STRIDES]
    targets = torch.tensor([[0, 0, *GT]])
    plain = YoloCriterion(1, STRIDES, BINS)(maps, targets)[1]
    weighted = YoloCriterion(1, STRIDES, BINS, class_weights=torch.tensor([3.0]))(maps, targets)[1]
    assert weighted["cls"].item() == pytest.approx(3 * plain["cls"].item(), rel=1e-5)
    assert weighted["box"].item() == pytest.approx(plain["box"].item(), rel=1e-6)
    with pytest.raises(ValueError):
        YoloCriterion(2, class_weights=torch.ones(3))


def test_distillation():
    crit = YoloCriterion(2, STRIDES, BINS)
    targets = torch.tensor([[0, 1, *GT]])
    torch.manual_seed(0)
    student = [torch.randn(1, 4 * BINS + 2, 64 // s, 64 // s, requires_grad=True) for s in STRIDES]
    base, base_items = crit(student, targets)
    same, items = crit(student, targets, teacher_raw=[m.detach().clone() for m in student], distill_ratio=1.0)
    assert abs(items["distill"].item()) < 1e-5
    assert same.item() == pytest.approx(base.item(), rel=1e-5)
    teacher = [torch.randn_like(m) for m in student]
    loss, items = crit(student, targets, teacher_raw=teacher, distill_ratio=0.5)
    assert items["distill"].item() > 0.01
    assert loss.item() == pytest.approx(base.item() + 0.5 * items["distill"].item(), rel=1e-4)
    loss.backward()
    assert student[0].grad.abs().sum() > 0
    # Ratio 0 disables it; mismatched teacher layout is an error.
    assert "distill" not in crit(student, targets, teacher_raw=teacher, distill_ratio=0.0)[1]
    with pytest.raises(ValueError):
        crit(student, targets, teacher_raw=[torch.randn(1, 4 * BINS + 3, 64 // s, 64 // s) for s in STRIDES],
             distill_ratio=1.0)
    with pytest.raises(ValueError):
        crit(student, targets, teacher_raw=[torch.randn(1, 4 * BINS + 2, 96 // s, 96 // s) for s in STRIDES],
             distill_ratio=1.0)


# ---------------------------------------------------------------- overfit
def test_tiny_overfit():
    import leyolo

    torch.manual_seed(0)
    model = leyolo.create_model("leyolo-n", nc=2)
    model.head.initialize_biases(64)
    model.train()
    crit = YoloCriterion(2, model.strides, model.head.bins)
    image = torch.rand(1, 3, 64, 64)
    targets = torch.tensor([[0, 1, 12.0, 16.0, 50.0, 52.0]])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss, _ = crit(model(image), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_channel_wise_feature_distillation_by_hand():
    """CWD on a 1x2 map: teacher logits (0, ln 3) -> p = (1/4, 3/4); student (0, 0) -> q = (1/2, 1/2)."""
    import math

    from leyolo.losses.feature_distill import ChannelWiseDistillation

    cwd = ChannelWiseDistillation([1], [1])  # equal widths: the adapter starts as the identity
    teacher = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)
    student = torch.zeros(1, 1, 1, 2, requires_grad=True)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # 0.1308
    loss = cwd([student], [teacher])
    assert abs(loss.item() - expected) < 1e-6
    assert abs(cwd([student.expand(3, -1, -1, -1)], [teacher.expand(3, -1, -1, -1)]).item() - 3 * expected) < 1e-5
    assert cwd([teacher.clone()], [teacher]).item() < 1e-7  # identical maps: no loss
    loss.backward()
    assert student.grad.abs().sum() > 0 and cwd.align[0].weight.grad is not None
    # temperature 2: T^2 KL of the softened distributions
    soft = ChannelWiseDistillation([1], [1], temperature=2.0)
    p = torch.tensor([1.0, 3.0 ** 0.5]) / (1 + 3.0 ** 0.5)
    assert abs(soft([student], [teacher]).item() - 4 * float((p * (p / 0.5).log()).sum())) < 1e-6


def test_feature_distillation_adapts_widths_and_rejects_mismatches():
    from leyolo.errors import LeyoloError
    from leyolo.losses.feature_distill import ChannelWiseDistillation

    cwd = ChannelWiseDistillation([8, 16], [16, 32])
    loss = cwd([torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)], [torch.randn(2, 16, 4, 4), torch.randn(2, 32, 2, 2)])
    assert loss.item() > 0
    with pytest.raises(LeyoloError, match="shapes differ"):
        cwd([torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)], [torch.randn(2, 16, 8, 8), torch.randn(2, 32, 2, 2)])
    with pytest.raises(LeyoloError, match="reads 2 maps"):
        ChannelWiseDistillation([8, 16], [16])
