"""Checkpoints: the restricted unpickler for published .pt files, and the native safetensors format."""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from shared_data import NANO as NANO_PT

import leyolo
from leyolo import Detector, LeyoloError, UnsafeCheckpointError
from leyolo.cli import main as cli_main
from leyolo.weights import atomic_write, load_published, read_native_metadata
from leyolo.weights.native import METADATA_KEY
from leyolo.weights.published import read_pickle_archive


def _require_nano() -> Path:
    if not NANO_PT.is_file():
        pytest.skip(f"published checkpoint not available at {NANO_PT}")
    return NANO_PT


# -- hostile pickles ----------------------------------------------------------------------

class _Payload:
    """Unpickling this calls ``func(*args)``."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, tuple[object, tuple[str, ...]]]:
    """name -> (object whose unpickling touches ``marker``, substrings the refusal must name)."""
    return {
        "os.system": (_Payload(os.system, (f"touch {marker}",)), ("system",)),
        "builtins.eval": (_Payload(builtins.eval, (f"open({str(marker)!r}, 'w').close()",)), ("builtins.eval", "__builtin__.eval")),
        "subprocess.Popen": (_Payload(subprocess.Popen, (["touch", str(marker)],)), ("subprocess.Popen", "commands.Popen")),  # protocol 2 maps to py2 names
    }


def _hand_made_archive(path: Path, obj: object, protocol: int = 2) -> Path:
    """A torch-zip-like file: ``archive/data.pkl`` + ``archive/version``."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(obj, protocol=protocol))
        zf.writestr("archive/version", "3\n")
    return path


def _assert_marker_never_created(marker: Path) -> None:
    assert not marker.exists(), f"the pickle's payload ran: {marker} exists"


def test_payload_really_is_hostile(tmp_path):
    """Guard: a plain unpickler does run the payload, so the refusals below mean something."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Payload(os.system, (f"touch {marker}",))))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess.Popen"])
@pytest.mark.parametrize("writer", ["hand_made_zip", "hand_made_zip_protocol5", "torch_save", "torch_save_nested"])
def test_hostile_pickle_is_refused(tmp_path, kind, writer):
    marker = tmp_path / "pwned"
    obj, expected = _payloads(marker)[kind]
    path = tmp_path / "evil.pt"
    if writer == "hand_made_zip":
        _hand_made_archive(path, obj)
    elif writer == "hand_made_zip_protocol5":
        _hand_made_archive(path, obj, protocol=5)
    elif writer == "torch_save":
        torch.save(obj, path)
    else:  # hidden among real tensors and records, as a real attack would be
        torch.save({"model": obj, "ema": None, "w": torch.zeros(3), "train_args": {"imgsz": 640}}, path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(UnsafeCheckpointError) as info:
        leyolo.load(path)
    assert isinstance(info.value, LeyoloError)
    message = str(info.value)
    assert "refusing" in message and str(path) in message
    assert any(e in message for e in expected), message
    if kind == "os.system":
        assert "posix.system" in message or "os.system" in message, message
    _assert_marker_never_created(marker)
    with pytest.raises(UnsafeCheckpointError):
        load_published(path)
    _assert_marker_never_created(marker)


def test_hostile_pickle_via_cli(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = _hand_made_archive(tmp_path / "evil.pt", _Payload(os.system, (f"touch {marker}",)))
    code = cli_main(["info", "--model", str(path)])
    assert code != 0
    _assert_marker_never_created(marker)
    err = capsys.readouterr().err
    assert "system" in err and "Traceback" not in err
    marker2 = tmp_path / "pwned2"
    path2 = tmp_path / "evil2.pt"
    torch.save(_Payload(subprocess.Popen, (["touch", str(marker2)],)), path2)
    assert cli_main(["convert", str(path2), str(tmp_path / "out.safetensors")]) != 0
    _assert_marker_never_created(marker2)
    assert not (tmp_path / "out.safetensors").exists()


def test_unknown_persistent_id_is_refused(tmp_path):
    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("evil", "x") if isinstance(obj, str) and obj == "ref" else None

    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({"model": "ref"})
    path = tmp_path / "pid.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
    with pytest.raises(UnsafeCheckpointError):
        leyolo.load(path)


# -- malformed files ----------------------------------------------------------------------

def _small_torch_checkpoint(path: Path) -> Path:
    torch.save({"w": torch.arange(1000, dtype=torch.float32), "names": ["a"]}, path)
    return path


@pytest.mark.parametrize("case", ["empty", "random", "truncated", "text", "zip_without_pickle", "garbage_pickle",
                                  "no_model", "tensor_only"])
def test_malformed_pt_files(tmp_path, case):
    path = tmp_path / f"{case}.pt"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif case == "truncated":
        full = _small_torch_checkpoint(tmp_path / "full.pt").read_bytes()
        path.write_bytes(full[: len(full) // 2])
    elif case == "text":
        path.write_text("this is not a checkpoint\n")
    elif case == "zip_without_pickle":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/version", "3\n")
    elif case == "garbage_pickle":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", b"\x80\x02garbage that is not a pickle")
    elif case == "no_model":
        _small_torch_checkpoint(path)
    elif case == "tensor_only":
        torch.save(torch.zeros(3), path)
    with pytest.raises(LeyoloError) as info:
        leyolo.load(path)
    assert str(path) in str(info.value) or "checkpoint" in str(info.value)
    assert cli_main(["info", "--model", str(path)]) == 1


@pytest.mark.parametrize("storage", [b"", b"\0" * 8, b"\0" * 7, None])
def test_corrupt_tensor_storage(tmp_path, storage):
    """A storage record that is empty, too short, ragged or missing: an error, never garbage memory."""
    src = tmp_path / "src.pt"
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, src)
    path = tmp_path / "bad.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for name in zin.namelist():
            if name.endswith("/data/0"):
                if storage is not None:
                    zout.writestr(name, storage)
            else:
                zout.writestr(name, zin.read(name))
    assert read_pickle_archive(src)["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(LeyoloError, match="corrupt") as info:
        read_pickle_archive(path)
    assert str(path) in str(info.value)


def test_truncated_published_checkpoint(tmp_path):
    data = _require_nano().read_bytes()
    for cut in (len(data) // 2, len(data) - 100):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(LeyoloError):
            leyolo.load(path)


def test_missing_and_wrong_suffix(tmp_path):
    with pytest.raises(LeyoloError, match="no such file"):
        leyolo.load(tmp_path / "absent.pt")
    with pytest.raises(LeyoloError, match="directory"):
        leyolo.load(tmp_path)
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(LeyoloError, match="unknown model format"):
        leyolo.load(other)


# -- the published checkpoint -------------------------------------------------------------

@pytest.fixture(scope="module")
def published():
    return load_published(_require_nano())


@pytest.fixture(scope="module")
def nano_detector():
    return leyolo.load(_require_nano())


def _is_param(name: str) -> bool:
    return not name.endswith(("running_mean", "running_var", "num_batches_tracked"))


def test_published_tensors(published):
    sd = published.state_dict
    assert len(sd) == 651
    assert all(k.startswith("model.") for k in sd)
    assert sum(t.numel() for k, t in sd.items() if _is_param(k)) == 1_120_480
    assert {t.dtype for k, t in sd.items() if _is_param(k)} == {torch.float16}
    assert all(t.dtype == torch.int64 for k, t in sd.items() if k.endswith("num_batches_tracked"))
    assert len(published.names) == 80
    assert published.names[:3] == ["person", "bicycle", "car"]
    assert published.names[-1] == "toothbrush"
    assert published.bn_eps == pytest.approx(1e-3)


def test_published_loads_as_nano(published, nano_detector):
    det = nano_detector
    assert isinstance(det, Detector)
    assert det.meta.arch == "leyolo-n"
    assert det.model.nc == 80 and det.names[0] == "person"
    assert det.meta.imgsz == 640
    assert not det.model.training
    own = det.model.state_dict()
    assert all(v.dtype == torch.float32 for k, v in own.items() if _is_param(k))
    # spot-check the name mapping: stem conv, a bottleneck's depthwise conv, the head, the DFL
    pairs = {
        "model.0.c.weight": "layers.0.conv.weight",
        "model.0.bn.running_var": "layers.0.bn.running_var",
        "model.34.layers.0.c.weight": "layers.34.expand.conv.weight",
        "model.34.layers.1.c.bias": "layers.34.depthwise.conv.bias",
        "model.34.layers.2.weight": "layers.34.project.weight",
        "model.34.layers.3.running_mean": "layers.34.project_bn.running_mean",
        "model.35.cv2.0.0.conv.weight": "head.box.0.0.conv.weight",
        "model.35.cv3.2.3.bias": "head.cls.2.3.bias",
    }
    for theirs, ours in pairs.items():
        assert torch.equal(own[ours], published.state_dict[theirs].float()), theirs
    assert torch.equal(own["head.dfl.conv.weight"].flatten(), torch.arange(16, dtype=torch.float32))
    params = sum(p.numel() for p in det.model.parameters())
    assert params == 1_120_480
    # trained weights: the checkpoint's tensors, not the random init
    fresh = leyolo.create_model("leyolo-n").state_dict()
    assert not torch.equal(own["layers.0.conv.weight"], fresh["layers.0.conv.weight"])
    total = {k: v.float() for k, v in published.state_dict.items()}
    assert sorted(t.numel() for t in total.values()) == sorted(v.numel() for v in own.values())


def test_published_into_wrong_arch(published):
    with pytest.raises(LeyoloError, match="shape") as info:
        leyolo.load(_require_nano(), arch="leyolo-s")
    assert "leyolo-s" in str(info.value)
    with pytest.raises(LeyoloError):
        leyolo.load(_require_nano(), arch="leyolo-m")
    with pytest.raises(LeyoloError):
        leyolo.load(_require_nano(), arch="leyolo-nope")


# -- native format --------------------------------------------------------------------------

def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_native_round_trip(tmp_path):
    torch.manual_seed(1)
    model = leyolo.create_model("leyolo-s", names=["cat", "dog", "bird"])
    with torch.no_grad():  # make BN buffers non-default so the round trip covers them
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.num_batches_tracked.fill_(7)
    model.meta.imgsz = 320
    model.meta.extra = {"note": "round trip"}
    det = Detector(model.eval())
    path = det.save(tmp_path / "m.safetensors")
    assert path == tmp_path / "m.safetensors" and path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp files left
    meta = read_native_metadata(path)
    assert meta["arch"] == "leyolo-s" and meta["names"] == ["cat", "dog", "bird"] and meta["nc"] == 3
    back = leyolo.load(path)
    assert back.meta.arch == "leyolo-s"
    assert back.names == ["cat", "dog", "bird"]
    assert back.meta.imgsz == 320
    assert back.meta.extra == {"note": "round trip"}
    _assert_same_state(back.model.state_dict(), model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(back.model(x), model(x)):
            assert torch.equal(a, b)


def test_convert_published(tmp_path, nano_detector):
    out = leyolo.convert(_require_nano(), tmp_path / "nano.safetensors")
    back = leyolo.load(out)
    assert back.meta.arch == "leyolo-n" and back.names == nano_detector.names
    assert back.meta.imgsz == nano_detector.meta.imgsz
    _assert_same_state(back.model.state_dict(), nano_detector.model.state_dict())
    # and through the CLI
    out2 = tmp_path / "cli.safetensors"
    assert cli_main(["convert", str(_require_nano()), str(out2)]) == 0
    _assert_same_state(load_file(str(out2)), load_file(str(out)))
    assert cli_main(["convert", str(_require_nano()), str(tmp_path / "x.onnx")]) == 1


def _saved_nano(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor], dict]:
    path = Detector(leyolo.create_model("leyolo-n").eval()).save(tmp_path / "n.safetensors")
    return path, load_file(str(path)), read_native_metadata(path)


def test_safetensors_without_metadata(tmp_path):
    _, tensors, _ = _saved_nano(tmp_path)
    bare = tmp_path / "bare.safetensors"
    save_file(tensors, str(bare))
    with pytest.raises(LeyoloError, match="metadata"):
        leyolo.load(bare)
    other = tmp_path / "other.safetensors"
    save_file(tensors, str(other), metadata={"format": "pt"})
    with pytest.raises(LeyoloError, match="metadata"):
        leyolo.load(other)


@pytest.mark.parametrize("case", ["random", "empty", "truncated"])
def test_corrupt_safetensors(tmp_path, case):
    path = tmp_path / f"{case}.safetensors"
    if case == "random":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 10_000, dtype=np.uint8).tobytes())
    elif case == "empty":
        path.write_bytes(b"")
    else:
        good, _, _ = _saved_nano(tmp_path)
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LeyoloError):
        leyolo.load(path)


@pytest.mark.parametrize("edit", ["three_names", "unknown_arch", "other_arch", "no_names", "bad_json"])
def test_native_metadata_mismatch(tmp_path, edit):
    _, tensors, meta = _saved_nano(tmp_path)
    if edit == "three_names":
        meta["names"], meta["nc"] = ["a", "b", "c"], 3
    elif edit == "unknown_arch":
        meta["arch"] = "leyolo-zz"
    elif edit == "other_arch":
        meta["arch"] = "leyolo-s"
    elif edit == "no_names":
        meta["names"] = []
    header = {METADATA_KEY: "{not json" if edit == "bad_json" else json.dumps(meta)}
    path = tmp_path / f"{edit}.safetensors"
    save_file(tensors, str(path), metadata=header)
    with pytest.raises(LeyoloError) as info:
        leyolo.load(path)
    if edit == "three_names":
        assert "3 classes" in str(info.value) or "shape" in str(info.value)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old contents")

    def failing(tmp: str) -> None:
        Path(tmp).write_bytes(b"half-written new contents")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]

    assert atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"new")) == target
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_save_failure_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path, tensors, _ = _saved_nano(tmp_path)
    before = path.read_bytes()
    import leyolo.weights.native as native

    def broken_save(*_a, **_k):
        raise OSError("no space left on device")

    monkeypatch.setattr(native, "save_file", broken_save)
    with pytest.raises(OSError):
        Detector(leyolo.create_model("leyolo-n")).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.safetensors"]


@pytest.fixture(scope="module")
def native_parts(tmp_path_factory) -> tuple[dict[str, torch.Tensor], dict]:
    _, tensors, meta = _saved_nano(tmp_path_factory.mktemp("native"))
    return tensors, meta


@pytest.mark.parametrize(("key", "value"), [
    ("arch", 5), ("arch", ""), ("names", "person"), ("names", [1, 2]), ("names", [{"a": 1}]), ("nc", "80"),
    ("nc", 3), ("nc", True), ("imgsz", "640"), ("imgsz", 0), ("imgsz", True), ("imgsz", 640.0), ("stride", -32),
    ("pad_value", 300), ("extra", [1]), ("extra", "pruned"), ("train", 3), ("format_version", 99),
    ("format_version", "1"),
])
def test_native_metadata_wrong_types(tmp_path, capsys, native_parts, key, value):
    """A hand-edited header: one LeyoloError line naming the file and the field, never a TypeError later."""
    tensors, meta = native_parts
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps({**meta, key: value})})
    for load in (leyolo.load, read_native_metadata):
        with pytest.raises(LeyoloError) as info:
            load(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message and (key in message or "class names" in message), message
    assert cli_main(["info", "--model", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "unexpected" not in err, err


@pytest.mark.parametrize("header", ["[1, 2]", "null", "[" * 100_000 + "]" * 100_000, '{"arch": 1' + "0" * 5000 + "}"])
def test_native_metadata_not_an_object(tmp_path, native_parts, header):
    path = tmp_path / "bad.safetensors"
    save_file(native_parts[0], str(path), metadata={METADATA_KEY: header})
    with pytest.raises(LeyoloError, match="metadata") as info:
        leyolo.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_validate_metadata_returns_a_clean_copy(native_parts):
    from leyolo.weights.native import validate_metadata

    meta = native_parts[1]
    clean = validate_metadata(meta, "m.safetensors")
    assert clean == meta and clean is not meta and clean["names"] is not meta["names"]
    extra = validate_metadata({"arch": "leyolo-n", "names": ["a"], "train": {"epoch": 1}, "note": 1}, "x")
    assert extra["train"] == {"epoch": 1} and extra["note"] == 1
