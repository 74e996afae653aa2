"""Pruning (``leyolo.tools.prune``): L1 unstructured sparsity, torch-pruning channel pruning, save/load/export.

Channel pruning is checked on the published nano (or, without ``../shared``, the same leyolo-n
network trained on shapes by the session fixture), whose graph has everything a dependency graph
can get wrong: depthwise convs, residual adds in the inverted bottlenecks, and concats in the SPPF
and the neck. The shapes model also shows, with or without ``../shared``, what BatchNorm
recalibration is for: one-shot 30% pruning drops it to ~0 mAP and no boxes, re-measured statistics
bring both back.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from shared_data import COCO_DATA as DATA
from shared_data import needs_shared, shapes_mosaics
from torch import nn

import leyolo
from leyolo import cli
from leyolo.api import Detector
from leyolo.tools.channels import conv_input_stats
from leyolo.tools.sensitivity import plan, scan
from leyolo.tools.prune import (
    calibration_batches,
    channel_prune,
    head_outputs,
    l1_unstructured,
    prunable_convs,
    prune,
    recalibrate_batchnorm,
    weight_sparsity,
)
from leyolo.weights.widths import fit_to_state_dict
from leyolo.errors import LeyoloError
from leyolo.models.flops import count_gflops, count_params
from leyolo.models.base import DecodedModel
from leyolo.models.layers import InvertedBottleneck

# 30% of the channels: pointwise convs keep ~0.7^2 of their MACs, depthwise ones 0.7, the head outputs all;
# measured 0.54 (nano at 320) and 0.52 (shapes at 128)
GFLOPS_KEPT_AT_30 = (0.45, 0.62)


def _val_image() -> Path:
    return sorted((DATA.parent / "images" / "val2017").glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def subject(detector, images):
    """What the pruning tests cut: the published nano with a coco-mini photo, or without ``../shared`` the
    trained shapes model with a mosaic of its val images; both detect objects in ``image`` at 0.25."""
    return SimpleNamespace(detector=detector, image=images[0], imgsz=320, nc=len(detector.names))


@pytest.fixture(scope="module")
def channel_pruned(subject, tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "channel.safetensors"
    return prune(subject.detector, "channel", 0.3, imgsz=subject.imgsz, out=out, runs=1, evaluate=False)


def test_l1_unstructured_zeroes_weights_keeps_shapes(subject):
    model = copy.deepcopy(subject.detector.model)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    l1_unstructured(model, 0.3)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in model.state_dict())  # made permanent
    assert weight_sparsity(model) == pytest.approx(0.3, abs=0.01)
    for _, conv in prunable_convs(model):
        assert (conv.weight == 0).float().mean().item() == pytest.approx(0.3, abs=0.05)
    head = model.head
    assert (head.cls[0][-1].weight != 0).all()  # head output convs untouched
    before = subject.detector.predict(subject.image, imgsz=320, conf=0.25, backend="torch")[0]
    after = Detector(model).predict(subject.image, imgsz=320, conf=0.25, backend="torch")[0]
    assert len(before) > 0 and len(after) > 0  # 30% of the smallest weights: still confident detections


def test_channel_pruning_respects_graph_and_cuts_flops(subject, channel_pruned):
    base, row = channel_pruned["rows"]
    lo, hi = GFLOPS_KEPT_AT_30
    assert lo * base["gflops"] <= row["gflops"] <= hi * base["gflops"], (row["gflops"], base["gflops"])
    assert row["params"] < 0.7 * base["params"]
    assert base["gflops"] == pytest.approx(count_gflops(subject.detector.model, subject.imgsz), rel=1e-12)
    detector = leyolo.load(channel_pruned["out"])  # rebuilt from the stored widths
    model = detector.model
    assert count_params(model) == row["params"]
    assert count_gflops(model, 320) == pytest.approx(row["gflops"])
    assert detector.meta.extra["pruned"]["method"] == "channel"
    for block in model.modules():
        if isinstance(block, InvertedBottleneck):
            dw = block.depthwise.conv
            assert dw.groups == dw.in_channels == dw.out_channels  # depthwise stays depthwise
            c_in = block.expand.conv.in_channels if block.expand is not None else dw.in_channels
            if block.residual:
                assert c_in == block.project.out_channels  # residual add still shape-consistent
    assert model.layers[1].conv.out_channels < subject.detector.model.layers[1].conv.out_channels
    with torch.no_grad():
        for size in (64, 320):
            maps = model.eval()(torch.rand(1, 3, size, size))
            assert [m.shape[1] for m in maps] == [64 + subject.nc] * 3
            assert maps[0].shape[-1] == size // 8


def test_recalibrated_batchnorm_holds_the_statistics_of_its_input():
    torch.manual_seed(0)
    model = leyolo.create_model("leyolo-n").eval()
    batches = [torch.rand(4, 3, 64, 64) * s for s in (0.5, 1.0)]
    bn = model.layers[1].bn
    with torch.no_grad():  # stale statistics that a missing reset would blend in
        bn.running_mean.fill_(5.0), bn.running_var.fill_(9.0), bn.num_batches_tracked.fill_(1000)
    seen = []
    hook = bn.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    assert recalibrate_batchnorm(model, iter(batches)) == 8
    hook.remove()
    x = torch.cat(seen)  # what the BatchNorm saw, all 8 images (equal batches: mean of means is exact)
    torch.testing.assert_close(bn.running_mean, x.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bn.running_var, torch.stack([b.var((0, 2, 3)) for b in x.split(4)]).mean(0),
                               atol=1e-5, rtol=1e-3)
    assert not model.training and bn.momentum == 0.03  # left as it was found (YOLO BatchNorm momentum)
    with pytest.raises(LeyoloError, match="no images"):
        recalibrate_batchnorm(model, iter([]))


@needs_shared
def test_recalibration_rescues_a_lightly_pruned_model(nano):
    """One-shot channel pruning shifts every next layer's input mean; re-measured BN statistics absorb it."""
    pruned = channel_prune(copy.deepcopy(nano.model).float().eval(), 0.05)
    before = Detector(copy.deepcopy(pruned)).val(DATA, imgsz=320)["mAP50-95"]
    recalibrate_batchnorm(pruned, calibration_batches(DATA, 320, 32))
    after = Detector(pruned.eval()).val(DATA, imgsz=320)["mAP50-95"]
    assert after > before + 0.05, (before, after)


def test_recalibration_brings_back_the_detections_of_a_pruned_model(trained_shapes, tmp_path):
    """30% channel pruning of the trained shapes model, without and with re-measured BatchNorm statistics."""
    mosaics = shapes_mosaics(trained_shapes.val_images)
    kw = dict(imgsz=trained_shapes.imgsz, data=trained_shapes.data, runs=1)
    one_shot = prune(trained_shapes.weights, "channel", 0.3, bn_images=0, out=tmp_path / "one-shot.safetensors", **kw)
    recal = prune(trained_shapes.weights, "channel", 0.3, bn_images=32, out=tmp_path / "recal.safetensors", **kw)
    assert one_shot["record"]["bn_images"] == 0 and recal["record"]["bn_images"] == 32
    original, cut = one_shot["rows"]
    _, cut_recal = recal["rows"]
    assert original["mAP50-95"] == pytest.approx(trained_shapes.metrics["mAP50-95"], abs=1e-4)
    assert cut["gflops"] == pytest.approx(cut_recal["gflops"]) and cut["params"] == cut_recal["params"]  # same cut
    lo, hi = GFLOPS_KEPT_AT_30
    assert lo * original["gflops"] <= cut["gflops"] <= hi * original["gflops"]
    # measured: 0.31 unpruned, 0.027 one-shot, 0.143 recalibrated
    assert cut["mAP50-95"] < 0.5 * original["mAP50-95"]
    assert cut_recal["mAP50-95"] > cut["mAP50-95"] + 0.05, (cut["mAP50-95"], cut_recal["mAP50-95"])
    counts = {}
    for name, result in (("one-shot", one_shot), ("recalibrated", recal)):
        pruned = leyolo.load(result["out"])
        counts[name] = sum(len(r) for r in pruned.predict(mosaics, imgsz=320, conf=0.25, backend="torch"))
    assert counts["recalibrated"] > 0 and counts["recalibrated"] > counts["one-shot"], counts  # measured 10 vs 0


def test_pruned_model_exports_with_parity_and_predicts(channel_pruned, subject, tmp_path):
    detector = leyolo.load(channel_pruned["out"])
    path = detector.export(tmp_path / "pruned.onnx", imgsz=320)
    x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x})[0]
    with torch.no_grad():
        want = DecodedModel(copy.deepcopy(detector.model).eval()).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got[:, :4], want[:, :4], atol=1e-2, rtol=1e-4)
    np.testing.assert_allclose(got[:, 4:], want[:, 4:], atol=1e-4)
    # one-shot 30% pruning without recalibration leaves no confident score (the nano's best is below 0.001):
    # compare the detections above half of the best score on the image
    best = detector.predict(subject.image, imgsz=320, conf=1e-9, max_det=1, backend="torch")[0]
    assert len(best) == 1
    low = float(best.scores[0]) / 2
    ref = detector.predict(subject.image, imgsz=320, conf=low, max_det=50, backend="torch")[0]
    got = leyolo.load(path).predict(subject.image, imgsz=320, conf=low, max_det=50)[0]
    assert len(ref) > 0 and len(got) == len(ref)
    np.testing.assert_array_equal(got.classes, ref.classes)
    np.testing.assert_allclose(np.asarray(got.boxes), np.asarray(ref.boxes), atol=1e-2, rtol=0)
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4, rtol=0)


def test_inconsistent_widths_are_refused(channel_pruned, subject):
    tensors = leyolo.load(channel_pruned["out"]).model.state_dict()
    broken = dict(tensors)
    key = "layers.5.project.weight"
    broken[key] = broken[key][:-8]  # 8 fewer output channels than the residual add / BN expect
    with pytest.raises(LeyoloError, match="do not fit"):
        fit_to_state_dict(leyolo.create_model("leyolo-n", nc=subject.nc), broken)
    wrong_kernel = dict(tensors)
    wrong_kernel["layers.0.conv.weight"] = torch.zeros(16, 3, 5, 5)
    with pytest.raises(LeyoloError, match="kernel"):
        fit_to_state_dict(leyolo.create_model("leyolo-n", nc=subject.nc), wrong_kernel)


def test_bad_prune_inputs(tmp_path):
    with pytest.raises(LeyoloError, match="unknown pruning method"):
        prune("leyolo-n", "magic", 0.3, imgsz=64)
    with pytest.raises(LeyoloError, match="--ratio"):
        prune("leyolo-n", "channel", 1.5, imgsz=64)
    with pytest.raises(LeyoloError, match="need --data"):
        prune("leyolo-n", "channel", 0.3, finetune_epochs=1, imgsz=64)
    with pytest.raises(LeyoloError, match="--round-to"):
        prune("leyolo-n", "channel", 0.3, imgsz=64, round_to=0)
    with pytest.raises(LeyoloError, match="--bn-images"):
        prune("leyolo-n", "channel", 0.3, imgsz=64, bn_images=-1)
    other = leyolo.load("leyolo-n").model
    other.meta.arch = "leyolo-n-turbo"  # an architecture torch-pruning was not verified on
    with pytest.raises(LeyoloError, match="verified for leyolo"):
        channel_prune(other, 0.3)
    with pytest.raises(LeyoloError, match="need --data"):
        prune("leyolo-n", "channel", target_gflops=0.1, imgsz=64)
    with pytest.raises(LeyoloError, match="not both"):
        prune("leyolo-n", "channel", target_gflops=0.1, speedup=2, imgsz=64, data=__file__)
    with pytest.raises(LeyoloError, match="variance"):
        prune("leyolo-n", "channel", 0.3, importance="variance", imgsz=64)


def _tiny_dataset(root: Path) -> Path:
    """8 train (= val) images of 64 px with a square or a disc each, YOLO txt labels."""
    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for i in range(8):
        img = np.full((64, 64, 3), 40, np.uint8)
        cx, cy, r = (int(v) for v in (*rng.integers(16, 48, 2), rng.integers(7, 12)))
        if i % 2:
            cv2.circle(img, (cx, cy), r, (255, 120, 0), -1)
        else:
            cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), (0, 200, 255), -1)
        cv2.imwrite(str(root / "images" / f"{i}.png"), img)
        (root / "labels" / f"{i}.txt").write_text(f"{i % 2} {cx / 64} {cy / 64} {2 * r / 64} {2 * r / 64}\n")
    (root / "data.yaml").write_text("path: .\ntrain: images\nval: images\nnames: [square, disc]\n")
    return root / "data.yaml"


def test_prune_cli_finetunes_on_tiny_dataset(tmp_path, monkeypatch, capsys):
    data = _tiny_dataset(tmp_path / "data")
    out = tmp_path / "pruned.safetensors"
    monkeypatch.setattr(cli, "PLUGIN_MODULES", tuple(dict.fromkeys((*cli.PLUGIN_MODULES, "leyolo.tools.prune"))))
    rc = cli.main(["prune", "--model", "leyolo-n", "--method", "channel", "--ratio", "0.3", "--data", str(data),
                   "--finetune-epochs", "1", "--imgsz", "64", "--batch", "4", "--workers", "0", "--runs", "1",
                   "--bn-images", "6", "--round-to", "4",
                   "--out", str(out), "-q"])
    captured = capsys.readouterr()
    printed = captured.out
    assert rc == 0, captured.err
    assert "+ fine-tune 1 ep" in printed and out.exists()
    tuned = leyolo.load(out)
    record = tuned.meta.extra["pruned"]
    assert tuned.names == ["square", "disc"] and record["ratio"] == 0.3
    assert record["bn_images"] == 6 and record["round_to"] == 4  # BatchNorm re-measured on 6 train images
    kept = {id(m) for m in head_outputs(tuned.model)}  # head outputs and DFL keep their widths
    widths = {m.out_channels for m in tuned.model.modules() if isinstance(m, nn.Conv2d) and id(m) not in kept}
    assert all(w % 4 == 0 for w in widths), sorted(widths)
    assert count_params(tuned.model) < count_params(leyolo.load("leyolo-n").model) * 0.7
    assert isinstance(tuned.model.head.cls[0][-1], nn.Conv2d) and tuned.model.head.cls[0][-1].out_channels == 2
    assert rc == 0 and cli.main(["prune", "--model", "leyolo-n", "--method", "magic"]) == 1


def _shapes_batches(trained_shapes, images: int = 16) -> list[torch.Tensor]:
    return list(calibration_batches(trained_shapes.data, trained_shapes.imgsz, images))


def test_bias_compensation_keeps_the_next_layers_output_mean(trained_shapes):
    """Cutting half of a class branch's channels shifts the class logits' mean; compensation puts it back.

    The group's only dense consumer is the branch's 1x1 output conv (bias, no padding), so the folded
    mean is exact on the calibration images themselves.
    """
    base = copy.deepcopy(trained_shapes.detector.model).float().eval()
    batches = _shapes_batches(trained_shapes)
    nc = trained_shapes.detector.model.head.nc

    def logit_means(model):
        with torch.no_grad():
            return torch.cat([model(b)[0][:, -nc:] for b in batches]).mean((0, 2, 3))

    want = logit_means(base)
    results = {}
    for compensate in (False, True):
        model, stats = copy.deepcopy((base, conv_input_stats(base, batches)))
        channel_prune(model, ratios={"head.cls.0.0.conv": 0.5}, stats=stats, compensate_bias=compensate)
        assert model.head.cls[0][0].conv.out_channels == base.head.cls[0][0].conv.out_channels // 2
        results[compensate] = logit_means(model)
    shift = (results[False] - want).abs().max().item()
    assert shift > 0.05, shift  # removing the channels moves the logits' mean
    torch.testing.assert_close(results[True], want, atol=max(1e-4, shift / 100), rtol=1e-4)


def test_global_target_met_with_widths_of_8_and_scan_leaves_head_outputs(trained_shapes, tmp_path):
    """--target-gflops: non-uniform widths from the scan, at or just under the target, multiples of 8."""
    base = trained_shapes.detector.model
    imgsz = trained_shapes.imgsz
    target = 0.6 * count_gflops(base, imgsz)
    result = prune(trained_shapes.weights, "channel", data=trained_shapes.data, target_gflops=target, imgsz=imgsz,
                   bn_images=16, out=tmp_path / "target.safetensors", runs=1)
    original, cut = result["rows"]
    assert 0.9 * target <= cut["gflops"] <= target, (cut["gflops"], target)
    record = result["record"]
    ratios = record["ratios"]
    assert len(set(ratios.values())) > 2  # non-uniform
    pruned = leyolo.load(result["out"])
    kept = {id(m) for m in head_outputs(pruned.model)}
    widths = [m.out_channels for m in pruned.model.modules() if isinstance(m, nn.Conv2d) and id(m) not in kept]
    assert all(w % 8 == 0 for w in widths), sorted(set(widths))
    scanned = {s.name for s in result["scans"]}
    names = {m: n for n, m in base.named_modules()}
    assert not scanned & {names[m] for m in head_outputs(base)}  # head outputs and DFL never cut
    assert not set(record["protected"]) & set(ratios)
    assert cut["mAP50-95"] > 0.5 * original["mAP50-95"], (cut, original)  # measured 0.31 -> 0.27 (one-shot)


def test_plan_never_cuts_protected_groups(trained_shapes):
    base = copy.deepcopy(trained_shapes.detector.model).float().eval()
    batches = _shapes_batches(trained_shapes, 8)
    stats = conv_input_stats(base, batches)
    scans = scan(base, batches, stats, protect=0.0)  # everything that costs anything is protected
    assert all(s.protected for s in scans if s.errors and s.errors[0] > 0)
    scans = scan(base, batches, stats)
    first = sorted(scans, key=lambda s: s.errors[0] if s.errors else 0)[-3:]  # the three most sensitive
    for s in first:
        s.protected = True
    ratios = plan(scans, base, trained_shapes.imgsz, 0.5)
    assert ratios and not {s.name for s in first} & set(ratios)
    assert "layers.0.conv" in {s.name for s in scans}  # the stem is scanned (and left whole only if it costs)


@needs_shared
def test_compensation_with_variance_ranking_beats_recalibration_alone(nano):
    """Published nano, 10% of the channels, one-shot at 320 (measured: 0.082 recal alone, 0.142 both)."""
    batches = list(calibration_batches(DATA, 320, 32))
    base = copy.deepcopy(nano.model).float().eval()
    old = channel_prune(copy.deepcopy(base), 0.1, "l2")
    recalibrate_batchnorm(old, iter(batches))
    model, stats = copy.deepcopy((base, conv_input_stats(base, batches)))
    channel_prune(model, 0.1, "variance", stats=stats)
    recalibrate_batchnorm(model, iter(batches))
    before = Detector(old.eval()).val(DATA, imgsz=320)["mAP50-95"]
    after = Detector(model.eval()).val(DATA, imgsz=320)["mAP50-95"]
    assert after > before + 0.03, (before, after)


@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_concatenated_sources_keep_widths_of_8(ratio):
    """A group whose channels are a concat of two convs' outputs (the neck: 32 + 64 -> 96) is rounded per
    source: removing 8 of the 96 once took 3 and 5, leaving the residual streams at 29 and 59 channels."""
    from leyolo.models.registry import create_model

    model = create_model("leyolo-n", nc=3).eval()
    consumer = model.layers[22].depthwise  # its 96 inputs: the neck's concat of a 32- and a 64-channel stream
    assert consumer.conv.in_channels == 96
    with torch.no_grad():  # make the 8 cheapest channels 3 of one source and 5 of the other
        for c in (0, 1, 2, 91, 92, 93, 94, 95):
            consumer.conv.weight[c] = 0
            consumer.bn.weight[c] = 0
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    channel_prune(model, ratio, "l2", 8)
    kept = {id(m) for m in head_outputs(model)}
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in kept}
    assert any(widths[n] < before[n] for n in widths)
    assert all(w % 8 == 0 for w in widths.values()), {n: w for n, w in widths.items() if w % 8}
    with torch.no_grad():
        assert [m.shape[1] for m in model(torch.rand(1, 3, 64, 64))] == [64 + 3] * 3
