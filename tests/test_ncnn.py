"""NCNN export (pnnx) and the ncnn backend: parity with torch, dynamic and static shapes, metadata, CLI.

Unit tests use ``leyolo-n`` and ``yolov12-n`` at 64-160 px with perturbed weights (untrained
class scores are all about the same); the detections test uses the shared ``detector`` (published
nano, or the trained shapes model without ``../shared``); the coco-mini mAP check against
onnxruntime needs ``../shared``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from shared_data import COCO_MINI, needs_shared

import leyolo
from leyolo.cli import main
from leyolo.deploy import ncnn as ncnn_export
from leyolo.errors import LeyoloError
from leyolo.inference.backends import NcnnBackend, TorchBackend, dfl_anchors
from leyolo.models.heads import make_anchors

pytest.importorskip("pnnx", reason="the ncnn extra is not installed: pip install 'leyolo[ncnn]'")
pytest.importorskip("ncnn", reason="the ncnn extra is not installed: pip install 'leyolo[ncnn]'")

IMGSZ = 128
BOX_TOL_PX = 0.05  # measured: < 0.005 px at 640 for the published nano
SCORE_TOL = 1e-4  # measured: < 2e-5


def _perturbed(arch: str, seed: int = 0) -> leyolo.Detector:
    """An untrained model whose class scores spread over (0, 1), so score parity means something."""
    torch.manual_seed(seed)
    model = leyolo.create_model(arch, nc=3, names=["a", "b", "c"]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        for branch in model.head.cls:
            branch[-1].bias.zero_()
    return leyolo.Detector(model)


def _rand(h: int, w: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, h, w), dtype=np.float32)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ncnn")


@pytest.fixture(scope="module")
def nano_like() -> leyolo.Detector:
    return _perturbed("leyolo-n")


@pytest.fixture(scope="module")
def dynamic_export(nano_like, out_dir) -> Path:
    return nano_like.export(out_dir / "leyolo-n_ncnn_model", format="ncnn", imgsz=IMGSZ)


@pytest.fixture(scope="module")
def static_export(nano_like, out_dir) -> Path:
    return nano_like.export(out_dir / "static_ncnn_model", format="ncnn", imgsz=96, dynamic=False)


def _max_diff(reference: leyolo.Detector, export: Path, shapes) -> tuple[float, float]:
    ref = TorchBackend(reference.model)
    engine = leyolo.load(export).backend("ncnn")
    box = score = 0.0
    for h, w in shapes:
        x = _rand(h, w)
        a, b = ref(x), engine(x)
        assert a.shape == b.shape
        box = max(box, float(np.abs(a[:, :4] - b[:, :4]).max()))
        score = max(score, float(np.abs(a[:, 4:] - b[:, 4:]).max()))
    return box, score


def test_export_folder_and_metadata(dynamic_export):
    assert dynamic_export.name.endswith("_ncnn_model")
    files = sorted(p.name for p in dynamic_export.iterdir())
    assert files == ["metadata.json", "model.ncnn.bin", "model.ncnn.param"]  # nothing of pnnx's scratch left
    meta = json.loads((dynamic_export / "metadata.json").read_text())
    assert meta["format"] == "ncnn" and meta["dynamic"] is True and meta["half"] is False
    assert meta["names"] == ["a", "b", "c"] and meta["imgsz"] == IMGSZ and meta["strides"] == [8, 16, 32]
    assert meta["output"] == "ltrb+scores" and meta["pnnx"] == "20261020"
    assert ncnn_export.unconverted_layers(dynamic_export / "model.ncnn.param") == []
    det = leyolo.load(dynamic_export)
    assert det.export_format == "ncnn" and det.names == ["a", "b", "c"] and det.meta.strides == (8, 16, 32)
    assert leyolo.load(dynamic_export / "model.ncnn.param").export_format == "ncnn"  # the .param works too
    assert det.resolve_backend("auto") == "ncnn" and det.resolve_backend("torch") == "ncnn"
    with pytest.raises(LeyoloError, match="runs on --backend ncnn"):
        det.resolve_backend("onnxruntime")


def test_dynamic_export_matches_torch_at_any_shape(nano_like, dynamic_export):
    """One export, square and rectangular letterbox shapes, none of them the traced ones."""
    box, score = _max_diff(nano_like, dynamic_export, [(128, 128), (96, 128), (128, 64), (160, 96), (64, 64)])
    assert box < BOX_TOL_PX and score < SCORE_TOL, (box, score)


def test_yolov12_area_attention_converts_dynamic(out_dir):
    """YOLOv12's area attention reshapes by the map size: it converts with pnnx's second shape."""
    det = _perturbed("yolov12-n", seed=1)
    path = det.export(out_dir / "yolov12-n_ncnn_model", format="ncnn", imgsz=IMGSZ)
    box, score = _max_diff(det, path, [(128, 128), (96, 160), (160, 64)])
    assert box < BOX_TOL_PX and score < SCORE_TOL, (box, score)


def test_static_export_refuses_other_sizes(nano_like, static_export):
    meta = json.loads((static_export / "metadata.json").read_text())
    assert meta["dynamic"] is False and meta["imgsz"] == 96
    det = leyolo.load(static_export)
    box, score = _max_diff(nano_like, static_export, [(96, 96)])
    assert box < BOX_TOL_PX and score < SCORE_TOL
    with pytest.raises(LeyoloError, match="exported for --imgsz 96, not 128"):
        det.predict(np.zeros((90, 120, 3), np.uint8), imgsz=128)
    with pytest.raises(LeyoloError, match="exported for 96x96 inputs"):
        det.backend("ncnn")(_rand(64, 96))
    assert len(det.predict(np.zeros((90, 120, 3), np.uint8), imgsz=96)) == 1  # padded to its square


def test_detections_match_torch(detector, images, conf, out_dir):
    """Export, reload, predict: the published nano (or trained shapes model) finds the same boxes."""
    path = detector.export(out_dir / "detector_ncnn_model", format="ncnn", imgsz=320)
    exported = leyolo.load(path)
    expected = detector.predict(images, backend="torch", imgsz=320, conf=conf)
    got = exported.predict(images, imgsz=320, conf=conf)
    assert sum(len(r.boxes.xyxy) for r in expected) > 0
    for a, b in zip(expected, got):
        assert len(a.boxes.xyxy) == len(b.boxes.xyxy)
        np.testing.assert_array_equal(a.boxes.cls, b.boxes.cls)
        np.testing.assert_allclose(a.boxes.xyxy, b.boxes.xyxy, atol=0.05)
        np.testing.assert_allclose(a.boxes.conf, b.boxes.conf, atol=1e-4)


def test_pytorch_weights_run_on_ncnn(nano_like):
    """--backend ncnn on PyTorch weights converts them once (dynamic) and caches the backend."""
    image = (np.random.default_rng(2).random((100, 140, 3)) * 255).astype(np.uint8)
    a = nano_like.predict(image, backend="torch", imgsz=IMGSZ, conf=0.3)[0]
    b = nano_like.predict(image, backend="ncnn", imgsz=IMGSZ, conf=0.3)[0]
    assert nano_like.backend("ncnn", IMGSZ) is nano_like.backend("ncnn", IMGSZ)
    assert len(a.boxes.xyxy) == len(b.boxes.xyxy) > 0

    def rows(r):  # an untrained model has tied scores, so compare the sets, not their order
        table = np.column_stack([r.boxes.cls, np.round(r.boxes.xyxy, 1)])
        return table[np.lexsort(table.T[::-1])]

    np.testing.assert_allclose(rows(a), rows(b), atol=0.15)


def test_backend_options(dynamic_export):
    param, weights = ncnn_export.ncnn_files(dynamic_export)
    engine = NcnnBackend(param, weights, threads=1, fp16=True, output="ltrb+scores", strides=(8, 16, 32))
    opt = engine.net.opt
    assert opt.num_threads == 1 and opt.use_fp16_storage and not opt.use_fp16_arithmetic
    plain = NcnnBackend(param, weights, output="ltrb+scores", strides=(8, 16, 32))
    assert not plain.net.opt.use_fp16_storage  # ncnn's own default is fp16 where the CPU has it
    batch = np.concatenate([_rand(64, 96, 3), _rand(64, 96, 4)])
    out = plain(batch)
    assert out.shape == (2, 7, 8 * 12 + 4 * 6 + 2 * 3)
    np.testing.assert_allclose(out[1:], plain(batch[1:]), atol=1e-5)  # a batch is its images, one by one
    with pytest.raises(LeyoloError, match="no strides"):
        NcnnBackend(param, weights, output="ltrb+scores")
    with pytest.raises(LeyoloError, match="unknown NCNN output layout"):
        NcnnBackend(param, weights, output="boxes")


def test_half_export(nano_like, out_dir):
    path = nano_like.export(out_dir / "half_ncnn_model", format="ncnn", imgsz=IMGSZ, half=True)
    full = (out_dir / "leyolo-n_ncnn_model" / "model.ncnn.bin")
    assert json.loads((path / "metadata.json").read_text())["half"] is True
    if full.is_file():
        assert (path / "model.ncnn.bin").stat().st_size < 0.6 * full.stat().st_size  # fp16 weights
    det = leyolo.load(path)
    assert det.backend("ncnn").net.opt.use_fp16_storage
    box, score = _max_diff(nano_like, path, [(96, 128)])
    assert box < 2.0 and score < 0.02, (box, score)


def test_set_predictor_exports_its_decode_static_only(tmp_path):
    """A head that is not a dense DFL head exports its whole decode; the export check refuses what is wrong."""
    from toy_set_model import ToySetModel

    torch.manual_seed(0)
    det = leyolo.Detector(ToySetModel().eval())
    path = det.export(tmp_path / "toy_ncnn_model", format="ncnn", imgsz=128, dynamic=False)
    assert json.loads((path / "metadata.json").read_text())["output"] == "xyxy+scores"
    box, score = _max_diff(det, path, [(128, 128)])
    assert box < BOX_TOL_PX and score < SCORE_TOL
    with pytest.raises(LeyoloError, match="differs from torch at 160x128.*try --static"):
        det.export(tmp_path / "toy-dyn_ncnn_model", format="ncnn", imgsz=128)
    assert not (tmp_path / "toy-dyn_ncnn_model").exists()


@pytest.mark.parametrize("h,w", [(128, 128), (96, 160), (64, 32)])
def test_numpy_anchors_are_the_heads(h, w):
    maps = [torch.zeros(1, 1, -(-h // s), -(-w // s)) for s in (8, 16, 32)]
    points, stride = make_anchors(maps, (8, 16, 32))
    np_points, np_stride = dfl_anchors(h, w, (8, 16, 32))
    np.testing.assert_array_equal(np_points, points.T.numpy())
    np.testing.assert_array_equal(np_stride, stride.T.numpy())


@pytest.mark.parametrize("options,match", [
    ({"nms": True}, "--nms is not available for ncnn"),
    ({"simplify": True}, "--simplify is not available for ncnn"),
    ({"batch": 2}, "one image at a time"),
    ({"int8": True, "data": "x.yaml"}, "--int8 is for --format engine"),
])
def test_export_option_validation(options, match):
    from leyolo.deploy.base import ExportOptions

    with pytest.raises(LeyoloError, match=match):
        ExportOptions(**options).validate("ncnn")


def test_default_path_and_format_from_name():
    from leyolo.deploy.export import default_path, path_format

    assert default_path("leyolo-n", "ncnn", 320) == Path("leyolo-n-320_ncnn_model")
    assert path_format(Path("out/x_ncnn_model")) == "ncnn"


def test_missing_pnnx_names_the_extra(nano_like, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pnnx", None)  # import pnnx -> ImportError
    with pytest.raises(LeyoloError, match=r"pip install 'leyolo\[ncnn\]'"):
        nano_like.export(tmp_path / "x_ncnn_model", format="ncnn", imgsz=64)
    assert not (tmp_path / "x_ncnn_model").exists()


def test_unconverted_layers_are_refused(tmp_path, dynamic_export):
    """pnnx leaves what it cannot convert under torch names; the export says which instead of writing it."""
    text = (dynamic_export / "model.ncnn.param").read_text().splitlines()
    text.insert(2, "torch.arange             torch.arange_0           1 1 in0 zz")
    text.insert(3, "aten::meshgrid           pnnx_1                   1 1 zz yy")
    param = tmp_path / "bad.ncnn.param"
    param.write_text("\n".join(text) + "\n")
    assert ncnn_export.unconverted_layers(param) == ["aten::meshgrid", "torch.arange"]
    graph = torch.nn.Identity()
    with pytest.raises(LeyoloError, match="pnnx left layers ncnn cannot run.*--static"):
        ncnn_export.check_conversion(graph, param, dynamic_export / "model.ncnn.bin", [(64, 64)], False)


def test_conversion_check_catches_wrong_outputs(nano_like, dynamic_export):
    """The export-time check compares with torch: a graph that computes something else is refused."""
    graph, _ = ncnn_export.export_graph(nano_like.model)
    with torch.no_grad():
        graph.model.head.cls[0][-1].bias.add_(3.0)  # torch now disagrees with the converted file
    with pytest.raises(LeyoloError, match="differs from torch"):
        ncnn_export.check_conversion(graph, dynamic_export / "model.ncnn.param",
                                     dynamic_export / "model.ncnn.bin", [(64, 64)], False)


def test_broken_folders_fail_in_one_line(dynamic_export, tmp_path):
    bare = tmp_path / "bare_ncnn_model"
    bare.mkdir()
    for name in ("model.ncnn.param", "model.ncnn.bin"):
        (bare / name).write_bytes((dynamic_export / name).read_bytes())
    with pytest.raises(LeyoloError, match="no metadata.json"):
        leyolo.load(bare)
    (bare / "metadata.json").write_text("{not json")
    with pytest.raises(LeyoloError, match="corrupt leyolo metadata"):
        leyolo.load(bare)
    (bare / "model.ncnn.bin").unlink()
    with pytest.raises(LeyoloError, match="model.ncnn.bin is missing"):
        leyolo.load(bare)


def test_cli_export_predict_val(tmp_path, capsys):
    """leyolo export --format ncnn, then predict and val with --backend ncnn --threads 1."""
    from leyolo.data.synthetic import generate_shapes_dataset

    data = generate_shapes_dataset(tmp_path / "shapes", n_train=2, n_val=3, imgsz=64, progress=False)
    out = tmp_path / "cli_ncnn_model"
    weights = tmp_path / "w.safetensors"
    leyolo.Detector(leyolo.create_model("leyolo-n", nc=3, names=["circle", "square", "triangle"])).save(weights)
    assert main(["export", "--model", str(weights), "--format", "ncnn", "--imgsz", "64", "--out", str(out)]) == 0
    assert "exported" in capsys.readouterr().out and (out / "model.ncnn.param").is_file()
    source = data.parent / "images" / "val"
    assert main(["predict", "--model", str(out), "--source", str(source), "--backend", "ncnn", "--threads", "1",
                 "--imgsz", "64", "--save-dir", str(tmp_path / "pred"), "--save-txt", "-q"]) == 0
    assert main(["val", "--model", str(out), "--data", str(data), "--backend", "ncnn", "--threads", "1",
                 "--imgsz", "64", "--no-plots", "-q"]) == 0
    assert "mAP50-95" in capsys.readouterr().out
    assert main(["export", "--model", str(weights), "--format", "ncnn", "--nms", "--out", str(tmp_path / "n")]) == 1
    assert "--nms is not available for ncnn" in capsys.readouterr().err


@needs_shared
@pytest.mark.slow
def test_coco_mini_map_matches_onnxruntime(nano, tmp_path_factory):
    """Done-when of the NCNN issue: coco-mini mAP within 0.002 of onnxruntime at 640 and 320 (one dynamic export)."""
    out = tmp_path_factory.mktemp("ncnn-map")
    ncnn_det = leyolo.load(nano.export(out / "nano_ncnn_model", format="ncnn", imgsz=640))
    onnx_det = leyolo.load(nano.export(out / "nano.onnx", imgsz=640))
    for imgsz in (640, 320):
        expected = onnx_det.val(COCO_MINI / "data.yaml", imgsz=imgsz)["mAP50-95"]
        got = ncnn_det.val(COCO_MINI / "data.yaml", imgsz=imgsz, backend="ncnn")["mAP50-95"]
        assert got == pytest.approx(expected, abs=0.002), (imgsz, got, expected)
