"""Le-DETR: sizes against the paper's Table 4, the model contract, decoder depth, sampling and export.

The paper's rows (params in millions and GFLOPs at 640 with the inference decoder depth) are the
ground truth for the builder; everything else runs on small inputs so the file stays fast.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import leyolo
from leyolo.cli import main
from leyolo.losses import build_criterion
from leyolo.models.detr_decoder import bilinear_gather
from leyolo.models.flops import count_gflops, count_params
from leyolo.models.ledetr import LeDETR
from leyolo.models.registry import create_model

# Table 4 of the paper: (decoder layers at inference, params M, GFLOPs) per scale
TABLE4 = {"m": (5, 32.7, 115.0), "l": (6, 41.5, 124.3), "x": (6, 44.9, 196.9)}


def create(scale: str, nc: int) -> LeDETR:
    return create_model(f"le-detr-{scale}", nc=nc)


TARGETS = torch.tensor([[0, 1, 10, 12, 60, 70], [0, 2, 70, 20, 120, 100], [1, 0, 8, 6, 40, 44.0]])


@pytest.mark.parametrize("scale", ["m", "l", "x"])
def test_parameters_match_table_4_within_5_percent(scale):
    layers, params, _ = TABLE4[scale]
    model = create(scale, 80)
    assert model.decoder.eval_layers == layers
    assert len(model.decoder.layers) == 6  # trained with 6
    ours = count_params(model) / 1e6
    assert ours == pytest.approx(params, rel=0.05), f"le-detr-{scale}: {ours:.2f} M vs the paper's {params} M"
    # the layers dropped at inference are what the paper's 5- vs 6-layer rows differ by (~1.3 M each)
    if layers < 6:
        dropped = count_params(model, inference=False) / 1e6 - ours
        assert 1.0 < dropped < 1.7


def test_gflops_match_table_4_within_10_percent_and_dropping_layers_removes_their_cost():
    for scale, (layers, _, gflops) in TABLE4.items():
        model = create(scale, 80)
        ours = count_gflops(model, 640)
        assert ours == pytest.approx(gflops, rel=0.10), f"le-detr-{scale}: {ours:.1f} vs the paper's {gflops}"
        if scale == "m":
            model.set_eval_layers(4)
            fewer = count_gflops(model, 640)
            assert 0.2 < ours - fewer < 2.0  # one decoder layer: Table 4 says ~0.8 GFLOPs


def test_cpu_variants_are_small():
    for scale in ("n", "n-ly"):
        model = create(scale, 80)
        params, gflops = count_params(model) / 1e6, count_gflops(model, 320)
        assert 2.0 < params < 8.0 and 1.0 < gflops < 6.0, (scale, params, gflops)


def test_info_cli_reports_the_inference_depth(capsys):
    assert main(["info", "--model", "le-detr-n", "--imgsz", "320", "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert main(["info", "--model", "le-detr-n", "--imgsz", "320", "--json", "--decoder-layers", "2"]) == 0
    fewer = json.loads(capsys.readouterr().out)
    assert fewer["params"] < full["params"] and fewer["gflops"] < full["gflops"]


@pytest.mark.parametrize("scale", ["n", "n-ly", "m", "l", "x"])
def test_forward_backward_every_scale(scale):
    """Training mode with targets: the raw output carries every layer, denoising and the encoder's
    selection; the criterion's loss reaches every parameter that runs."""
    torch.manual_seed(0)
    model = create(scale, 3).train()
    x = torch.rand(2, 3, 128, 160)
    raw = model(x, TARGETS)
    assert len(raw["layers"]) == len(model.decoder.layers)
    assert raw["dn"] is not None and raw["dn"]["groups"] >= 1
    loss, items = build_criterion(model)(raw, TARGETS)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        out = model.decode(model(x))
    assert out.shape == (2, 4 + 3, model.decoder.queries)
    assert torch.all((out[:, 4:] >= 0) & (out[:, 4:] <= 1))


def test_eval_stops_at_the_inference_depth():
    model = create("n", 3).eval()
    calls = []
    for i, layer in enumerate(model.decoder.layers):
        layer.register_forward_hook(lambda *_, i=i: calls.append(i))
    model.set_eval_layers(2)
    with torch.no_grad():
        model(torch.rand(1, 3, 128, 128))
    assert calls == [0, 1]
    with pytest.raises(ValueError):
        model.set_eval_layers(4)


def test_gather_sampling_equals_grid_sample():
    torch.manual_seed(0)
    value = torch.randn(6, 8, 7, 9)
    grid = torch.rand(6, 5, 4, 2) * 2.4 - 1.2  # some points fall outside the map: zero padding
    expected = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    assert torch.allclose(bilinear_gather(value, grid), expected, atol=1e-5)
    model = create("n", 3).eval()
    x = torch.rand(1, 3, 128, 96)
    with torch.no_grad():
        a = model.decode(model(x))
        model.set_sampling("gather")
        b = model.decode(model(x))
    assert torch.allclose(a, b, atol=1e-4)


def test_fuse_keeps_outputs():
    torch.manual_seed(0)
    model = create("n", 3).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.rand(1, 3, 128, 128)
    # compared before the query selection: an untrained model's near-tied encoder scores let fp32
    # rounding pick a few other queries, while the fused convolutions are what is under test
    with torch.no_grad():
        before = model.encoder(model.backbone(x))
        model.fuse()
        after = model.encoder(model.backbone(x))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(m.merged is not None for m in model.modules() if hasattr(m, "merged"))  # RepVGG branches merged
    for a, b in zip(before, after):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_registered_with_its_criterion_and_recipe():
    from leyolo.engine.config import TrainConfig
    from leyolo.models.registry import get_entry

    entry = get_entry("le-detr-n")
    assert entry.criterion == "detr" and entry.recipe == "detr"
    cfg = TrainConfig(model="le-detr-n").resolved(pretrained=False, family="detr")
    assert (cfg.optimizer, cfg.grad_clip, cfg.backbone_lr, cfg.nbs) == ("AdamW", 0.1, 0.5, cfg.batch)
    assert TrainConfig(model="leyolo-n").resolved(pretrained=False).optimizer == "SGD"
    assert TrainConfig(model="le-detr-n", optimizer="SGD", lr0=0.01).resolved(False, "detr").optimizer == "SGD"


def test_onnx_export_matches_torch_detections(tmp_path):
    """The whole small model, dynamic ONNX (GridSample and gather variants), in onnxruntime at two sizes."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create("n", 3).eval()
    detector = leyolo.Detector(model)
    path = detector.export(tmp_path / "n.onnx", imgsz=128)
    gather = detector.export(tmp_path / "n-gather.onnx", imgsz=128, sampling="gather")
    import onnx
    import onnxruntime as ort

    assert any(n.op_type == "GridSample" for n in onnx.load(str(path)).graph.node)
    assert not any(n.op_type == "GridSample" for n in onnx.load(str(gather)).graph.node)
    for h, w in ((128, 128), (160, 96)):
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            expected = model.decode(model(x)).numpy()
        for p in (path, gather):
            got = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
            assert got.shape == expected.shape
            np.testing.assert_allclose(_by_query(got), _by_query(expected), atol=2e-3, rtol=1e-3)


def _by_query(out: np.ndarray) -> np.ndarray:
    """Queries (columns) in a canonical order: an untrained model has near-tied encoder scores, whose
    top-k order may differ between runtimes while the selected set is the same."""
    cols = out[0]
    order = np.lexsort(np.round(cols[::-1], 2))
    return cols[:, order]


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """Matcher, denoising queries and every loss together: a micro Le-DETR learns 4 synthetic images.

    A direct loop (no augmentation) on one batch, then COCO mAP50 of the eval-mode model on the same
    images through the library's own evaluator. The weights move fast here, so BatchNorm's running
    statistics (momentum 0.03-0.1) trail them: they are re-measured at the final weights, as the
    low-lr last epochs of a real run let them settle.
    """
    from dataclasses import replace

    from leyolo.data.dataset import DetectionDataset, collate
    from leyolo.data.datasets import load_data_yaml
    from leyolo.data.synthetic import generate_shapes_dataset
    from leyolo.models.base import ModelEntry
    from leyolo.models.ledetr import SCALES
    from leyolo.models.registry import register_model, unregister_model

    yaml_path = generate_shapes_dataset(tmp_path_factory.mktemp("of"), n_train=4, n_val=1, imgsz=128, seed=3, progress=False)
    text = yaml_path.read_text().replace("val: images/val", "val: images/train")
    yaml_path.write_text(text)
    arch = replace(SCALES["n-ly"], hidden=64, encoder_heads=2, encoder_ffn=256, decoder_heads=4, decoder_ffn=256,
                   decoder_layers=2, eval_layers=2, queries=30, denoising=20, points=(2, 2, 2))
    name = "le-detr-test-micro"
    register_model(ModelEntry(name, lambda nc=3, names=None: LeDETR(arch, nc=nc, names=names, name=name), 128,
                              "le-detr", "test-only", criterion="detr", recipe="detr"))
    try:
        torch.manual_seed(0)
        spec = load_data_yaml(yaml_path)
        dataset = DetectionDataset(spec, "train", imgsz=128, augment=False)
        batch = collate([dataset[i] for i in range(4)])
        x, targets = batch["images"].float() / 255, batch["targets"]
        model = create_model(name, nc=3, names=list(spec.names)).train()
        criterion = build_criterion(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        steps = 150
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=steps, pct_start=0.1)
        first = None
        for _ in range(steps):
            loss, items = criterion(model(x, targets), targets)
            first = first or {k: float(v) for k, v in items.items()}
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            optimizer.step()
            schedule.step()
        losses = (first, {k: float(v) for k, v in items.items()})
        for module in model.modules():  # re-measure the statistics at the final weights
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a cumulative average over the passes
        with torch.no_grad():
            model(x)
        yield model.eval(), yaml_path, losses
    finally:
        unregister_model(name)


def test_overfits_a_handful_of_images_to_near_perfect_map50(overfit):
    model, yaml_path, (first, last) = overfit
    assert last["l1"] < 0.3 * first["l1"] and last["dn"] < first["dn"]
    metrics = leyolo.Detector(model).val(str(yaml_path), imgsz=128, backend="torch")
    assert metrics["detections"] > 0
    assert metrics["mAP50"] > 0.9, metrics["mAP50"]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_detections_equal_torch_on_a_trained_model(overfit, backend, tmp_path):
    """The trained micro model (distinct scores: no near-ties to reorder the top-k): the same boxes,
    classes and scores from torch, onnxruntime and OpenVINO."""
    pytest.importorskip(backend)
    model, yaml_path, _ = overfit
    images = sorted((yaml_path.parent / "images" / "train").glob("*"))
    detector = leyolo.Detector(model)
    out = tmp_path / ("m.onnx" if backend == "onnxruntime" else "m_openvino_model")
    exported = leyolo.load(detector.export(out, imgsz=128))
    for image in images:
        want = detector.predict(str(image), imgsz=128, conf=0.25, backend="torch")[0].boxes
        got = exported.predict(str(image), imgsz=128, conf=0.25)[0].boxes
        assert len(want) > 0 and len(got) == len(want)
        np.testing.assert_allclose(got.xyxy, want.xyxy, atol=0.5)
        np.testing.assert_allclose(got.conf, want.conf, atol=2e-3)
        assert got.cls.tolist() == want.cls.tolist()


def _ort_run(path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("part", ["naifi", "natblock"])
def test_naifi_and_efficientnat_block_export_to_onnx(tmp_path, part):
    """The two neighbourhood-attention sites of Le-DETR, exported alone with dynamic sizes: onnxruntime
    agrees with torch to 1e-4 at the export size and at another one (the window is built in-graph)."""
    pytest.importorskip("onnxruntime")
    from leyolo.models.detr_encoder import NAIFI
    from leyolo.models.efficientnat import EfficientNATBlock

    torch.manual_seed(0)
    module = (NAIFI(64, 4, 128, kernel=15) if part == "naifi" else EfficientNATBlock(64, kernel=7)).eval()
    x = torch.randn(1, 64, 8, 10)
    path = tmp_path / f"{part}.onnx"
    torch.onnx.export(module, x, str(path), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    for shape in ((1, 64, 8, 10), (2, 64, 12, 6)):
        y = torch.randn(shape)
        with torch.no_grad():
            expected = module(y).numpy()
        np.testing.assert_allclose(_ort_run(path, y), expected, atol=1e-4, rtol=1e-4)


def test_le_detr_m_exports_to_onnx_with_torch_detections(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create("m", 80).eval()
    path = leyolo.Detector(model).export(tmp_path / "m.onnx", imgsz=256)
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        expected = model.decode(model(x)).numpy()
    np.testing.assert_allclose(_by_query(_ort_run(path, x)), _by_query(expected), atol=2e-3, rtol=1e-3)


def test_predict_val_and_torchscript_through_the_public_api(tmp_path):
    """A set predictor needs no special case: predict gives top-k detections, TorchScript equals torch."""
    torch.manual_seed(0)
    model = create("n", 3).eval()
    detector = leyolo.Detector(model)
    image = (np.random.default_rng(0).random((120, 200, 3)) * 255).astype(np.uint8)
    result = detector.predict(image, imgsz=128, conf=0.0, backend="torch")[0]
    scores = result.boxes.conf
    assert len(scores) == 300  # top-k over 100 queries x 3 classes, no NMS: every pair above conf 0 is kept
    assert np.all(np.diff(scores) <= 0)
    script = detector.export(tmp_path / "n.torchscript", imgsz=128)
    traced = torch.jit.load(str(script))
    x = torch.rand(1, 3, 128, 160)
    with torch.no_grad():
        assert torch.allclose(traced(x), model.decode(model(x)), atol=1e-4)


def test_an_export_takes_inputs_with_fewer_tokens_than_queries(tmp_path):
    """64 px gives 84 tokens for 100 queries: torch selects all 84; the export (k fixed) adds
    placeholder queries that score zero, so the detections are the same."""
    pytest.importorskip("onnxruntime")
    model = create("n-ly", 3).eval()
    path = leyolo.Detector(model).export(tmp_path / "small.onnx", imgsz=128)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        want = model.decode(model(x)).numpy()
    got = _ort_run(path, x)
    assert want.shape[-1] == 84 and got.shape[-1] == 100
    assert np.all(got[0, 4:, 84:] < 1e-6)  # the placeholders
    np.testing.assert_allclose(_by_query(got[:, :, :84]), _by_query(want), atol=1e-4, rtol=1e-4)
