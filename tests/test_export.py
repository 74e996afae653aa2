"""Exports (ONNX static/dynamic/simplified/FP16/NMS, TorchScript, OpenVINO): parity, metadata, CLI.

Uses the published nano and coco-mini from ``../shared`` when present; otherwise the shapes model
trained by the session fixture, on mosaics of its val images. Both detect objects at ``conf``, and every
comparison of detections asserts that the compared sets are non-empty (coco-mini mAP checks skip
without ``../shared``; the shapes val set stands in for them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from shared_data import COCO_MINI, SHAPES_IMGSZ, needs_shared

import leyolo
from leyolo.cli import main
from leyolo.deploy.onnx_graph import NMS_OUTPUTS, append_nms
from leyolo.inference.backends import openvino_xml
from leyolo.errors import LeyoloError
from leyolo.inference.backends import OnnxRuntimeBackend, OpenVinoBackend, TorchBackend, TorchScriptBackend
from leyolo.ops import postprocess

IMGSZ = 320


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module")
def exports(detector, out_dir, conf) -> dict[str, Path]:
    """Every export the module checks, made once (about 10 s)."""
    ex = detector.export
    return {
        "onnx-static": ex(out_dir / "static.onnx", imgsz=IMGSZ, dynamic=False),
        "onnx-dynamic": ex(out_dir / "dynamic.onnx", imgsz=IMGSZ, dynamic=True),
        "onnx-simplified": ex(out_dir / "simplified.onnx", imgsz=IMGSZ, dynamic=False, simplify=True),
        "onnx-half": ex(out_dir / "half.onnx", imgsz=IMGSZ, dynamic=True, half=True),
        "onnx-nms": ex(out_dir / "nms.onnx", imgsz=IMGSZ, dynamic=True, nms=True, conf=conf),
        "onnx-nms-val": ex(out_dir / "nms-val.onnx", imgsz=IMGSZ, dynamic=True, nms=True, conf=0.001, max_det=300,
                           multi_label=True),
        "torchscript": ex(out_dir / "model.torchscript", imgsz=IMGSZ, dynamic=False),
        "openvino": ex(out_dir / "model_openvino_model", format="openvino", imgsz=IMGSZ, dynamic=True),
    }


def _engine(kind: str, path: Path):
    if kind == "torchscript":
        return TorchScriptBackend.from_file(path)
    if kind == "openvino":
        return OpenVinoBackend(openvino_xml(path))
    return OnnxRuntimeBackend(path)


def _blob(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return cv2.dnn.blobFromImage(cv2.resize(img, (w, h)), 1 / 255.0, swapRB=True)


def _assert_raw_close(out: np.ndarray, ref: np.ndarray, score_atol: float = 1e-4, box_atol: float = 1e-3) -> None:
    """Boxes are pixels (up to 320 here): abs <= box_atol + 1e-5 |value|; scores absolute."""
    assert out.shape == ref.shape and out.dtype == np.float32
    assert (ref[:, 4:].max(1) > 0.25).any(axis=-1).all(), "every image must hold confident detections"
    np.testing.assert_allclose(out[:, :4], ref[:, :4], atol=box_atol, rtol=1e-5)
    np.testing.assert_allclose(out[:, 4:], ref[:, 4:], atol=score_atol, rtol=0)


# -- raw parity with the torch DecodedModel --------------------------------------------------------

@pytest.mark.parametrize("kind", ["onnx-static", "onnx-dynamic", "onnx-simplified", "torchscript", "openvino"])
def test_raw_outputs_match_torch(kind, detector, exports, images):
    engine = _engine(kind.split("-")[0], exports[kind])
    reference = TorchBackend(detector.model)  # the BatchNorm-folded DecodedModel every export is traced from
    shapes = [(IMGSZ, IMGSZ)] + ([] if kind in ("onnx-static", "onnx-simplified") else [(224, IMGSZ), (IMGSZ, 256)])
    for h, w in shapes:
        x = np.concatenate([_blob(img, h, w) for img in images[:2]])  # batch 2 (static ones run it one by one)
        out = engine(x)
        assert out.shape == (2, 4 + len(detector.names), (h // 8) * (w // 8) * 21 // 16)
        _assert_raw_close(out, reference(x))


def test_simplified_graph_is_smaller_and_checked(exports):
    import onnx

    plain, slim = (onnx.load(str(exports[k])) for k in ("onnx-static", "onnx-simplified"))
    assert len(slim.graph.node) < len(plain.graph.node)
    assert {p.key for p in slim.metadata_props} >= {"leyolo", "names"}


def test_half_export_is_fp16_inside_fp32_outside(detector, exports, images):
    import onnx

    proto = onnx.load(str(exports["onnx-half"]))
    f16 = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    assert f16 >= 0.9 * len(proto.graph.initializer)  # all conv weights; the DFL bins stay fp32 for decoding
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert exports["onnx-half"].stat().st_size < 0.6 * exports["onnx-dynamic"].stat().st_size
    x = _blob(images[0], IMGSZ, IMGSZ)
    out, ref = OnnxRuntimeBackend(exports["onnx-half"])(x), TorchBackend(detector.model)(x)
    assert np.abs(out[:, 4:] - ref[:, 4:]).max() < 0.05  # fp16 rounding, measured ~0.02
    confident = ref[0, 4:].max(0) > 0.25
    assert confident.any(), "no confident anchor: the box comparison below would compare nothing"
    assert np.abs(out[0, :4, confident] - ref[0, :4, confident]).max() < 2.0  # px; measured ~0.35
    assert leyolo.load(exports["onnx-half"]).meta.extra["half"] is True


# -- the NMS graph ---------------------------------------------------------------------------------

def _decoded_graph(nc: int):
    """A graph whose decoded output is its input: isolates the NMS tail."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 4 + nc, "anchors"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4 + nc, "anchors"])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["output"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("multi_label", [False, True])
def test_nms_tail_matches_numpy_postprocess(multi_label):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    nc, anchors, max_det = 3, 60, 7
    xy = rng.uniform(0, 80, (2, 2, anchors))
    wh = rng.uniform(5, 30, (2, 2, anchors))
    pred = np.concatenate([xy, xy + wh, rng.uniform(0, 1, (2, nc, anchors))], 1).astype(np.float32)
    pred[1, 4:] *= 0.253  # image 2: few candidates above conf (3 of 180 scores, all up to 0.253)
    empty = pred[:1].copy()
    empty[:, 4:] = 0.01  # nothing above conf
    counts = [len(postprocess(p, 0.25, 0.5, max_det, multi_label)) for p in (*pred, *empty)]
    assert counts[0] == max_det and 0 < counts[1] < max_det and counts[2] == 0, counts  # full, partial, empty
    proto = append_nms(_decoded_graph(nc), nc, conf=0.25, iou=0.5, max_det=max_det, multi_label=multi_label)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(NMS_OUTPUTS)
    for batch in (pred, pred[1:], empty):
        num, boxes, scores, classes = session.run(None, {"images": batch})
        assert num.dtype == classes.dtype == np.int32 and num.shape == (len(batch), 1)
        assert boxes.shape == (len(batch), max_det, 4) and scores.shape == classes.shape == (len(batch), max_det)
        for i in range(len(batch)):
            ref = postprocess(batch[i], 0.25, 0.5, max_det, multi_label)
            n = int(num[i, 0])
            assert n == len(ref)
            np.testing.assert_allclose(scores[i, :n], ref.scores, atol=1e-6)
            np.testing.assert_allclose(boxes[i, :n], ref.boxes, atol=1e-4)
            np.testing.assert_array_equal(classes[i, :n], ref.classes)
            assert not boxes[i, n:].any() and not scores[i, n:].any() and not classes[i, n:].any()  # zero padding
    assert int(session.run(None, {"images": empty})[0][0, 0]) == 0


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_nms_export_predicts_like_numpy_postprocess(backend, detector, exports, images, conf):
    det = leyolo.load(exports["onnx-nms"])
    engine = det.backend(backend, IMGSZ)
    assert engine.end_to_end and engine.nms == {"layout": "efficient_nms", "conf": conf, "iou": 0.7, "max_det": 300,
                                                "multi_label": False}
    ref = detector.predict(images, imgsz=IMGSZ, conf=conf, backend="torch")
    got = det.predict(images, imgsz=IMGSZ, conf=conf, backend=backend, batch=2)
    assert all(len(r) > 0 for r in ref), [len(r) for r in ref]
    for a, b in zip(ref, got):
        assert len(a) == len(b) and b.orig_shape == a.orig_shape
        np.testing.assert_array_equal(a.classes, b.classes)
        np.testing.assert_allclose(np.asarray(b.boxes), np.asarray(a.boxes), atol=0.5, rtol=0)  # original pixels
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-4, rtol=0)
    # stricter thresholds than the baked ones still apply on top: between the 2nd and 3rd best score
    # keeps exactly two, and max_det 1 then keeps the best one
    scores = ref[0].scores
    assert len(scores) >= 3, scores
    strict_conf = float(scores[1] + scores[2]) / 2
    strict = det.predict(images[0], imgsz=IMGSZ, conf=strict_conf)[0]
    assert len(strict) == 2 and (strict.scores > strict_conf).all()
    np.testing.assert_allclose(strict.scores, scores[:2], atol=1e-4)
    best = det.predict(images[0], imgsz=IMGSZ, conf=strict_conf, max_det=1)[0]
    assert len(best) == 1 and best.scores[0] == pytest.approx(float(scores[0]), abs=1e-4)


def test_static_nms_export_runs_batches_image_by_image(detector, out_dir, images):
    path = detector.export(out_dir / "nms-static.onnx", imgsz=IMGSZ, dynamic=False, nms=True, conf=0.1, max_det=20)
    engine = OnnxRuntimeBackend(path)
    assert engine.fixed_batch == 1 and engine.end_to_end
    x = np.concatenate([_blob(img, IMGSZ, IMGSZ) for img in images])
    joined = engine(x)  # fixed batch 1: split, run and concatenated back
    assert joined.num_dets.shape == (3, 1) and joined.boxes.shape == (3, 20, 4)
    for i in range(3):
        one = engine(x[i : i + 1])
        np.testing.assert_array_equal(joined.num_dets[i], one.num_dets[0])
        np.testing.assert_array_equal(joined.boxes[i], one.boxes[0])
        ref = postprocess(TorchBackend(detector.model)(x[i : i + 1])[0], 0.1, 0.7, 20)
        got = joined.detections(i)
        assert len(ref) > 0, f"image {i}: nothing above conf 0.1 to compare"
        assert len(got) == len(ref) and got.classes.dtype == np.int64
        np.testing.assert_array_equal(got.classes, ref.classes)
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4)
        np.testing.assert_allclose(got.boxes, ref.boxes, atol=1e-2, rtol=0)


def test_nms_export_warns_about_settings_it_cannot_honour(exports, images, caplog):
    det = leyolo.load(exports["onnx-nms"])
    with caplog.at_level("WARNING", logger="leyolo"):
        det.predict(images[0], imgsz=IMGSZ, conf=0.0001, iou=0.5)
    assert "NMS in its graph" in caplog.text and "iou 0.5" in caplog.text


# -- metadata, loading, backends -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["onnx-static", "onnx-dynamic", "onnx-nms-val", "torchscript", "openvino"])
def test_metadata_round_trip(kind, detector, exports):
    det = leyolo.load(exports[kind])
    fmt = kind.split("-")[0]
    assert det.model is None and det.export_format == fmt and fmt in repr(det)
    assert det.names == detector.names and det.meta.arch == "leyolo-n" and det.meta.imgsz == IMGSZ
    assert det.meta.stride == 32 and det.meta.pad_value == 114
    assert det.meta.extra["dynamic"] is (kind != "onnx-static")  # TorchScript traces are shape-generic
    baked = det.meta.extra["nms"]
    if kind == "onnx-nms-val":
        assert baked == {"layout": "efficient_nms", "conf": 0.001, "iou": 0.7, "max_det": 300, "multi_label": True}
    else:
        assert baked is None
    info = det.info()  # what the export's metadata says; GFLOPs need the PyTorch model
    assert info["format"] == fmt and info["classes"] == len(detector.names) and info["imgsz"] == IMGSZ
    assert info["gflops"] is None and info["nms"] == baked
    assert (info["params"] > 0) if fmt == "onnx" else (info["params"] is None)


def test_openvino_folder_layout_and_xml_loading(exports, detector):
    folder = exports["openvino"]
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.bin", "model.xml"]
    assert json.loads((folder / "metadata.json").read_text())["names"] == detector.names
    assert leyolo.load(folder / "model.xml").names == detector.names
    assert not list(folder.parent.glob(".*"))  # no temporary leftovers


def test_openvino_metadata_from_rt_info(exports, tmp_path, detector):
    import shutil

    copy = Path(shutil.copytree(exports["openvino"], tmp_path / "copy_openvino_model"))
    (copy / "metadata.json").unlink()
    det = leyolo.load(copy)
    assert det.names == detector.names and det.meta.imgsz == IMGSZ


def test_export_runs_only_on_its_runtime(exports):
    with pytest.raises(LeyoloError, match="torchscript export; it runs on --backend torchscript"):
        leyolo.load(exports["torchscript"]).backend("onnxruntime")
    assert leyolo.load(exports["onnx-dynamic"]).backend("openvino", IMGSZ).name == "openvino"  # ONNX reads on OpenVINO


def test_pytorch_model_runs_on_every_backend(detector, images, conf):
    ref = detector.predict(images[0], imgsz=IMGSZ, conf=conf, backend="torch")[0]
    assert len(ref) > 0
    for backend in ("onnxruntime", "torchscript", "openvino"):
        got = detector.predict(images[0], imgsz=IMGSZ, conf=conf, backend=backend)[0]
        assert len(got) == len(ref), backend
        np.testing.assert_array_equal(got.classes, ref.classes)
        np.testing.assert_allclose(np.asarray(got.boxes), np.asarray(ref.boxes), atol=1e-2, rtol=0)
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4, rtol=0)


def test_bad_export_options(detector, tmp_path, monkeypatch):
    with pytest.raises(LeyoloError, match="--nms is not available for torchscript"):
        detector.export(tmp_path / "x.torchscript", nms=True)
    with pytest.raises(LeyoloError, match="multiple of 32"):
        detector.export(tmp_path / "x.onnx", imgsz=100)
    with pytest.raises(LeyoloError, match="name says torchscript"):
        detector.export(tmp_path / "x.torchscript", format="onnx")
    with pytest.raises(LeyoloError, match="unsupported export format"):
        detector.export(tmp_path / "x.bin", format="tflite")
    monkeypatch.setitem(sys.modules, "onnxslim", None)  # import onnxslim -> ImportError
    with pytest.raises(LeyoloError, match=r"pip install 'leyolo\[export\]'"):
        detector.export(tmp_path / "x.onnx", imgsz=IMGSZ, simplify=True)
    assert not list(tmp_path.iterdir())  # failed exports leave nothing behind


def test_missing_openvino_is_one_clear_line(detector, exports, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(LeyoloError, match="pip install openvino"):
        detector.export(tmp_path / "m_openvino_model", imgsz=IMGSZ)
    det = leyolo.load(exports["openvino"])  # metadata.json needs no OpenVINO
    with pytest.raises(LeyoloError, match="pip install openvino"):
        det.predict(np.zeros((64, 64, 3), np.uint8), imgsz=IMGSZ)
    capsys.readouterr()
    out = tmp_path / "c_openvino_model"
    assert main(["export", "--model", "leyolo-n", "--format", "openvino", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "pip install openvino" in err[0]
    assert not list(tmp_path.iterdir())


def test_openvino_export_is_atomic(detector, tmp_path, monkeypatch):
    import openvino

    target = tmp_path / "a_openvino_model"
    target.mkdir()
    (target / "keep.txt").write_text("old")

    def broken(*args, **kwargs):
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(openvino, "save_model", broken)
    with pytest.raises(RuntimeError, match="conversion failed"):
        detector.export(target, imgsz=IMGSZ)
    assert [p.name for p in tmp_path.iterdir()] == [target.name] and (target / "keep.txt").read_text() == "old"


# -- CLI -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,out,extra", [
    ("onnx", "cli.onnx", ["--dynamic", "--nms", "--conf", "0.3"]),
    ("torchscript", "cli.torchscript", []),
    ("openvino", "cli_openvino_model", []),
])
def test_cli_export_then_predict(fmt, out, extra, tmp_path, capsys, images, detector, detector_weights):
    model = detector_weights
    path = tmp_path / out
    assert main(["export", "--model", model, "--format", fmt, "--imgsz", str(IMGSZ), "--out", str(path), *extra]) == 0
    assert f"exported {path}" in capsys.readouterr().out
    assert leyolo.load(path).export_format == fmt
    src = tmp_path / "src"
    src.mkdir()
    assert cv2.imwrite(str(src / "a.jpg"), images[0])
    rc = main(["predict", "--model", str(path), "--source", str(src), "--imgsz", str(IMGSZ), "--save-txt",
               "--save-dir", str(tmp_path / "pred"), "--conf", "0.3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "1 images" in captured.out
    rows = [line.split() for line in (tmp_path / "pred" / "labels" / "a.txt").read_text().splitlines()]
    assert rows, "the exported model finds the objects the PyTorch model finds"
    # the same rows as the PyTorch model on the same (JPEG-decoded) image
    ref = detector.predict(src / "a.jpg", imgsz=IMGSZ, conf=0.3, backend="torch")[0]
    assert len(rows) == len(ref)
    assert sorted(int(r[0]) for r in rows) == sorted(ref.classes.tolist())
    np.testing.assert_allclose(sorted(float(r[5]) for r in rows), sorted(ref.scores.tolist()), atol=1e-3)


# -- accuracy: the shapes model's val mAP through every format (with or without ../shared) ------------

@pytest.mark.parametrize("fmt,name,options", [
    ("onnx", "static.onnx", {"dynamic": False}),
    ("onnx", "nms-val.onnx", {"dynamic": True, "nms": True, "conf": 0.001, "max_det": 300, "multi_label": True}),
    ("torchscript", "m.torchscript", {}),
    ("openvino", "m_openvino_model", {"dynamic": True}),
], ids=["onnx-static", "onnx-nms-val", "torchscript", "openvino"])
def test_shapes_val_map_matches_torch(fmt, name, options, trained_shapes, tmp_path):
    reference = trained_shapes.metrics  # torch backend, same data and size
    assert reference["mAP50-95"] > 0.2 and reference["detections"] > 0
    path = leyolo.load(trained_shapes.weights).export(tmp_path / name, format=fmt, imgsz=SHAPES_IMGSZ, **options)
    metrics = leyolo.load(path).val(trained_shapes.data, imgsz=SHAPES_IMGSZ)
    assert metrics["images"] == reference["images"] and metrics["detections"] > 0
    assert metrics["mAP50-95"] == pytest.approx(reference["mAP50-95"], abs=0.002)
    assert metrics["mAP50"] == pytest.approx(reference["mAP50"], abs=0.002)


# -- accuracy: coco-mini val mAP at 320 ------------------------------------------------------------

def _map(det: leyolo.Detector, square: bool = False) -> float:
    if not square:
        return det.val(COCO_MINI / "data.yaml", imgsz=IMGSZ)["mAP50-95"]
    with pytest.MonkeyPatch.context() as mp:  # validate() has no square switch; the static exports pad square
        plain = det.predictor
        mp.setattr(det, "predictor", lambda *a, **k: plain(*a, square=True, **k))
        return det.val(COCO_MINI / "data.yaml", imgsz=IMGSZ)["mAP50-95"]


@pytest.fixture(scope="module")
def torch_map(detector) -> dict[bool, float]:
    """The torch backend's mAP50-95, letterboxed to a multiple of 32 (False) or to the full square (True)."""
    return {False: _map(detector), True: _map(detector, square=True)}


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("kind,square", [("onnx-static", True), ("onnx-dynamic", False), ("onnx-nms-val", False),
                                         ("torchscript", False)])
def test_val_map_matches_torch(kind, square, exports, torch_map):
    assert torch_map[False] == pytest.approx(0.3056, abs=0.003)  # the reference multi-label figure at 320
    det = leyolo.load(exports[kind])
    assert _map(det) == pytest.approx(torch_map[square], abs=0.002)
