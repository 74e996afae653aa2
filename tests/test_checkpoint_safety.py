"""Crafted ``.pt`` files against the restricted unpickler: each attack is refused quickly, in little
memory, with one ``LeyoloError`` line naming the file, and leaves nothing planted in the process.

The pickles are assembled opcode by opcode (protocol 2), so each test says exactly what the file
asks for; the guards at the top show that the assembler makes loadable files and that the BUILD
technique really does plant state under a stock unpickler.
"""

from __future__ import annotations

import collections
import copyreg
import pickle
import random
import resource
import struct
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from shared_data import NANO

import leyolo
from leyolo import LeyoloError, UnsafeCheckpointError
from leyolo.cli import main as cli_main
from leyolo.weights import published
from leyolo.weights.published import load_published, read_pickle_archive

GIB = 1 << 30

# -- a tiny pickle assembler ----------------------------------------------------------------


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _data(value: object) -> bytes:
    """Opcodes pushing a plain value (numbers, strings, tuples, lists, dicts); memo slots < 256."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _call(func: bytes, *args: bytes) -> bytes:
    return func + b"(" + b"".join(args) + b"tR"


def _dict(**items: bytes) -> bytes:
    return b"}(" + b"".join(_data(k) + v for k, v in items.items()) + b"u"


def _record(cls: str = "DetectionModel", **attrs: bytes) -> bytes:
    """An ``ultralytics.nn.tasks`` object as torch.save writes it: NEWOBJ, then BUILD with its ``__dict__``."""
    return _global("ultralytics.nn.tasks", cls) + b")\x81" + _dict(**attrs) + b"b"


def _storage(numel: object) -> bytes:
    """The persistent id of float storage "0" declaring ``numel`` elements."""
    return b"(" + _data("storage") + _global("torch", "FloatStorage") + _data("0") + _data("cpu") + _data(numel) + b"tQ"


def _tensor(numel: object = 4, offset: object = 0, size: object = (4,), stride: object = (1,)) -> bytes:
    """A tensor record over storage "0", as torch.save writes it."""
    return _call(_global("torch._utils", "_rebuild_tensor_v2"), _storage(numel), _data(offset), _data(size),
                 _data(stride), _data(False), _call(_global("collections", "OrderedDict")))


def _nested_list(depth: int) -> bytes:
    return b"]" * depth + b"a" * (depth - 1)


def _nested_tuple(depth: int) -> bytes:
    return b"N" + b"\x85" * depth


def _pt(path: Path, body: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A torch-zip-like file: ``archive/data.pkl`` holding ``body`` + ``archive/data/<key>`` members."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02" + body + b".")
        for key, raw in (storages if storages is not None else {"0": bytes(16)}).items():
            zf.writestr(f"archive/data/{key}", raw)
        zf.writestr("archive/version", "3\n")
    return path


VALID = _record(_parameters=_dict(w=_tensor()), names=_data(["a"]))


def _deflated_zeros(size: int, chunk: int = 1 << 20) -> bytes:
    """A raw deflate stream of ``size`` zero bytes, made without inflating them: after a full flush
    the compressor's output for the next identical chunk repeats byte for byte."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(bytes(chunk)) + comp.flush(zlib.Z_FULL_FLUSH)
    return block * (size // chunk) + comp.flush()


def _raw_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip written by hand: (name, payload as stored, method, declared size, declared crc) each."""
    out, central = bytearray(), bytearray()
    for name, payload, method, size, crc in members:
        fields = (20, 0, method, 0, 0, crc, len(payload), size, len(name.encode()), 0)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, *fields, 0, 0, 0, 0, len(out)) + name.encode()
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields) + name.encode() + payload
    n = len(members)
    path.write_bytes(bytes(out + central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), len(out), 0)))
    return path


def _stored(name: str, data: bytes) -> tuple[str, bytes, int, int, int]:
    return name, data, zipfile.ZIP_STORED, len(data), zlib.crc32(data)


# -- what every refusal must look like -------------------------------------------------------


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.fixture(scope="module", autouse=True)
def _warm(tmp_path_factory):
    """Import whatever ``leyolo.load`` imports lazily, so the timings below measure the refusal only."""
    path = _pt(tmp_path_factory.mktemp("warm") / "warm.pt", VALID)
    with pytest.raises(LeyoloError):
        leyolo.load(path)


def _refused(path: Path, capsys, error: type[LeyoloError] = LeyoloError, match: str = "") -> None:
    """``leyolo.load`` and ``leyolo info`` both refuse ``path``: one line naming it, < 1 s, little memory."""
    rss = _max_rss_bytes()
    start = time.perf_counter()
    with pytest.raises(error) as info:
        leyolo.load(path)
    elapsed = time.perf_counter() - start
    tracemalloc.start()
    with pytest.raises(error):
        load_published(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    assert match in message, message
    assert elapsed < 3.0, f"took {elapsed:.2f} s to refuse"  # measured 0.1 ms - 0.2 s; generous for busy CI
    assert peak < 64 << 20, f"Python allocations peaked at {peak >> 20} MiB"
    assert _max_rss_bytes() - rss < 256 << 20, "resident memory grew by more than 256 MiB"
    capsys.readouterr()
    assert cli_main(["info", "--model", str(path)]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(path) in err, err
    assert "Traceback" not in err and "unexpected" not in err, err


# -- guards: the assembler and the attack technique are real ---------------------------------


def test_assembled_files_load(tmp_path):
    ck = load_published(_pt(tmp_path / "valid.pt", VALID, {"0": struct.pack("<4f", 0, 1, 2, 3)}))
    assert ck.state_dict["w"].tolist() == [0.0, 1.0, 2.0, 3.0] and ck.names == ["a"]
    view = read_pickle_archive(_pt(tmp_path / "view.pt", _tensor(8, 1, (2, 3), (3, 1)), {"0": bytes(32)}))
    assert view.shape == (2, 3)


def _victim(x=1):
    return x


def test_build_really_plants_state_under_a_stock_unpickler():
    """Guard: BUILD onto a global function rewrites it for the whole process, so the refusals matter."""
    body = _global(__name__, "_victim") + _data((None, {"__defaults__": (42,)})) + b"b"
    try:
        pickle.loads(b"\x80\x02" + body + b".")
        assert _victim() == 42
    finally:
        _victim.__defaults__ = (1,)


# -- (a) BUILD on objects the unpickler did not make -----------------------------------------


def _process_state() -> dict[str, object]:
    """What a BUILD could plant: the stand-ins' defaults and dicts, classes' and dtypes' attributes."""
    unpickler = published._RestrictedUnpickler
    funcs = [getattr(unpickler, name) for name in sorted(set(published._CALLABLES.values()))]
    funcs += [unpickler.find_class, unpickler.persistent_load, unpickler._load_build, _victim]
    state: dict[str, object] = {f.__qualname__: (f.__defaults__, f.__kwdefaults__, dict(f.__dict__)) for f in funcs}
    for obj in (published.InertRecord, unpickler, collections.OrderedDict, torch.Size, torch.float16, torch.Tensor,
                set, frozenset, str, published, pickle._Unpickler):
        state[repr(obj)] = (sorted(dir(obj)), {k: id(v) for k, v in getattr(obj, "__dict__", {}).items()})
    state["dispatch"] = {k: id(v) for k, v in unpickler.dispatch.items()}
    state["stock dispatch"] = {k: id(v) for k, v in pickle._Unpickler.dispatch.items()}
    return state


_PLANT = _data({"planted": 1})
_BUILD_TARGETS = {
    "function_defaults_via_slot_state": _global("torch._utils", "_rebuild_tensor_v2")
    + _data((None, {"__defaults__": (1, 2)})) + b"b",
    "function_dict": _global("torch._utils", "_rebuild_parameter") + _PLANT + b"b",
    "set_function_slot_state": _global("builtins", "set") + _data((None, {"__defaults__": ((1,),)})) + b"b",
    "device_function": _global("torch", "device") + _data((None, {"__kwdefaults__": {"x": 1}})) + b"b",
    "ordered_dict_class": _global("collections", "OrderedDict") + _PLANT + b"b",
    "size_class": _global("torch", "Size") + _data((None, {"__len__": 1})) + b"b",
    "dtype": _global("torch", "float16") + _PLANT + b"b",
    "storage_type": _global("torch", "HalfStorage") + _data((None, {"is_floating_point": 1})) + b"b",
    "record_class": _global("ultralytics.nn.tasks", "DetectionModel") + _data((None, {"__init__": 1})) + b"b",
    "tensor": _tensor() + _data((None, {"shape": 1})) + b"b",
    "string": _data("abc") + _PLANT + b"b",
    "plain_dict": _data({}) + _PLANT + b"b",
}
_SHADOWING = {  # BUILD on objects made here, but setting what their type defines
    "record_class_attr": _global("ultralytics.nn.tasks", "DetectionModel") + b")\x81"
    + _data((None, {"__class__": 1})) + b"b",
    "record_qualname": _global("ultralytics.nn.tasks", "DetectionModel") + b")\x81" + _data({"_qualname": 1}) + b"b",
    "ordered_dict_items": _call(_global("collections", "OrderedDict")) + _data(({}, {"items": 1})) + b"b",
    "ordered_dict_tuple_state": _call(_global("collections", "OrderedDict")) + _data((1, 2, 3)) + b"b",
}


@pytest.mark.parametrize("target", [*_BUILD_TARGETS, *_SHADOWING])
def test_build_is_refused_on_anything_not_made_for_this_file(tmp_path, capsys, target):
    before = _process_state()
    body = {**_BUILD_TARGETS, **_SHADOWING}[target]
    path = _pt(tmp_path / f"{target}.pt", _dict(model=body))
    _refused(path, capsys, UnsafeCheckpointError, "refusing checkpoint: its pickle sets")
    assert _process_state() == before
    assert load_published(_pt(tmp_path / "valid.pt", VALID)).state_dict["w"].shape == (4,)
    if NANO.is_file():
        assert len(load_published(NANO).state_dict) == 651


def test_extension_registry_is_refused(tmp_path, capsys, monkeypatch):
    """EXT1 would resolve a registered code through find_class and cache the result process-wide."""
    monkeypatch.setitem(copyreg._extension_registry, 240, ("collections", "OrderedDict"))
    monkeypatch.setitem(copyreg._inverted_registry, ("collections", "OrderedDict"), 240)
    _refused(_pt(tmp_path / "ext.pt", b"\x82\xf0"), capsys, UnsafeCheckpointError, "extension registry")
    assert 240 not in copyreg._extension_cache


def test_container_opcodes_only_touch_containers(tmp_path, capsys):
    before = _process_state()
    for name, body in {"setitem_on_function": _global("torch", "device") + _data("k") + _data(1) + b"s",
                       "append_on_record": _record() + _data(1) + b"a",
                       "additems_on_list": _data([]) + b"(" + _data(1) + b"\x90"}.items():
        _refused(_pt(tmp_path / f"{name}.pt", body), capsys, UnsafeCheckpointError, "adds items to")
    assert _process_state() == before


# -- (b) sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "tensor", "match"), [
    ("stride0_4gib", _tensor(4, 0, (GIB,), (0,)), "needs more than the 4 elements"),
    ("stride0_2d", _tensor(4, 0, (1 << 20, 1 << 20), (0, 0)), "needs more than"),
    ("extent_past_end", _tensor(4, 2, (4,), (1,)), "needs more than"),
    ("stride_past_end", _tensor(4, 0, (2, 2), (3, 1)), "needs more than"),
    ("negative_size", _tensor(4, 0, (-4,), (1,)), "not a short list of non-negative integers"),
    ("negative_stride", _tensor(4, 3, (4,), (-1,)), "not a short list"),
    ("float_size", _tensor(4, 0, (4.0,), (1,)), "not a short list"),
    ("huge_size_times_zero", _tensor(4, 0, (0, 1 << 62), (1, 1)), "not a short list"),
    ("too_many_dims", _tensor(4, 0, (1,) * 40, (1,) * 40), "not a short list"),
    ("rank_mismatch", _tensor(4, 0, (2, 2), (1,)), "differ in length"),
    ("negative_offset", _tensor(4, -1, (4,), (1,)), "malformed tensor record"),
    ("string_offset", _tensor(4, "0", (4,), (1,)), "malformed tensor record"),
])
def test_tensor_records_cannot_outgrow_their_storage(tmp_path, capsys, case, tensor, match):
    _refused(_pt(tmp_path / f"{case}.pt", tensor), capsys, LeyoloError, match)


def test_repeated_views_are_counted(tmp_path, capsys, monkeypatch):
    """Tensors rebuilt from one storage add up: 1000 records cloning a 4 KiB storage, under a 1 MiB cap."""
    func, storage = b"j\x00\x10\x00\x00", b"j\x01\x10\x00\x00"  # LONG_BINGET 4096 / 4097, put below
    body = (_data([]) + b"(" + _global("torch._utils", "_rebuild_tensor_v2") + b"r\x00\x10\x00\x00" + _storage(1024)
            + b"r\x01\x10\x00\x00" + b"0" * 2)  # memoize the function and the storage, then pop both
    view = func + b"(" + storage + _data(0) + _data((1024,)) + _data((1,)) + _data(False) + b"N" + b"tR"
    body += view * 1000 + b"e"
    path = _pt(tmp_path / "views.pt", body, {"0": bytes(4096)})
    monkeypatch.setattr(published, "MAX_TENSOR_BYTES", 1 << 20)
    _refused(path, capsys, UnsafeCheckpointError, "add up to over")
    monkeypatch.undo()
    assert len(read_pickle_archive(path)) == 1000


@pytest.mark.parametrize(("case", "numel", "member", "match"), [
    ("member_shorter", 4, bytes(8), "holds 8 bytes, its record declares 16"),
    ("member_longer", 4, bytes(20), "holds 20 bytes, its record declares 16"),
    ("record_declares_more", 1000, bytes(16), "holds 16 bytes, its record declares 4000"),
    ("record_declares_2gib", 1 << 29, bytes(16), "declares over"),
    ("record_declares_huge", 1 << 200, bytes(16), "declares over"),
    ("negative_numel", -4, bytes(16), "malformed storage record"),
    ("string_numel", "4", bytes(16), "malformed storage record"),
    ("missing", 4, None, "storage '0' is missing"),
])
def test_storage_member_must_match_its_record(tmp_path, capsys, case, numel, member, match):
    storages = {} if member is None else {"0": member}
    _refused(_pt(tmp_path / f"{case}.pt", _tensor(numel), storages), capsys, LeyoloError, match)


def test_zip_bomb_is_refused_unread(tmp_path, capsys, monkeypatch):
    """A 2 MiB file whose storage member declares 2 GiB of deflated zeros (numel matching the record)."""
    assert zlib.decompress(_deflated_zeros(8 << 20), -15) == bytes(8 << 20)  # guard: the stream construction
    bomb = _deflated_zeros(2 * GIB)
    assert len(bomb) < 4 << 20
    numel = 2 * GIB // 4
    body = b"\x80\x02" + _tensor(numel, 0, (numel,), (1,)) + b"."
    path = _raw_zip(tmp_path / "bomb.pt", [_stored("archive/data.pkl", body),
                                             ("archive/data/0", bomb, zipfile.ZIP_DEFLATED, 2 * GIB, 0)])
    with zipfile.ZipFile(path) as zf:  # guard: a well-formed member that really inflates to zeros
        assert zf.getinfo("archive/data/0").file_size == 2 * GIB
        with zf.open("archive/data/0") as fh:
            assert fh.read(1 << 20) == bytes(1 << 20)
    _refused(path, capsys, UnsafeCheckpointError, "inflate")
    monkeypatch.setattr(published, "MAX_COMPRESSION_RATIO", 1 << 40)  # the total-size cap alone also stops it
    _refused(path, capsys, UnsafeCheckpointError, "storages declare 2147483648 B")


def test_zip_bomb_behind_a_small_declared_size_is_read_bounded(tmp_path, capsys):
    """The member declares 16 bytes but its stream would inflate to 2 GiB: only 16 bytes are inflated."""
    bomb = _deflated_zeros(2 * GIB)
    body = b"\x80\x02" + _tensor() + b"."
    path = _raw_zip(tmp_path / "liar.pt", [_stored("archive/data.pkl", body),
                                            ("archive/data/0", bomb, zipfile.ZIP_DEFLATED, 16, zlib.crc32(bytes(16)))])
    assert read_pickle_archive(path).tolist() == [0.0] * 4
    _refused(path, capsys, LeyoloError, "no model object")


def test_oversized_pickle_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(published, "MAX_PICKLE_BYTES", 1024)
    _refused(_pt(tmp_path / "big.pt", _data("x" * 2000)), capsys, UnsafeCheckpointError, "data.pkl declares")


# -- (c) malformed structure ends in LeyoloError ---------------------------------------------


def _module_checkpoint(path: Path, edit=None) -> Path:
    """torch.save of real modules, which the unpickler turns into records (``torch.nn.modules.*``)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, eps=1e-3))
    model.names = {0: "a", 1: "b"}
    ckpt = {"model": model, "train_args": {"imgsz": 320}}
    if edit is not None:
        edit(model, ckpt)
    torch.save(ckpt, path)
    return path


def _deep(model, ckpt, levels: int = 100, shared: bool = False):
    """Nested containers; ``shared``: each holds the next one twice (2**levels paths, levels + 1 objects)."""
    inner = model
    for _ in range(levels):
        child = torch.nn.Sequential()
        inner.add_module("x", child)
        if shared:
            inner.add_module("y", child)
        inner = child


_EDITS = {  # name -> (edit of the model / checkpoint dict, what the refusal says)
    "cyclic": (lambda m, c: m.__dict__["_modules"].__setitem__("self", m), "module 'self' contains itself"),
    "cyclic_deeper": (lambda m, c: m[1].__dict__["_modules"].__setitem__("up", m), "module '1.up' contains itself"),
    "too_deep": (_deep, "nest over 32 levels deep"),
    "shared_exponentially": (lambda m, c: _deep(m, c, 24, shared=True), "module records hold over 20000 entries"),
    "long_name": (lambda m, c: m.add_module("x" * 200, torch.nn.ReLU()), "_modules of module ''"),
    "eps_string": (lambda m, c: setattr(m[1], "eps", "0.001"), "eps of module '1'"),
    "eps_nan": (lambda m, c: setattr(m[1], "eps", float("nan")), "eps of module '1'"),
    "eps_tensor": (lambda m, c: m[1].__dict__.__setitem__("eps", torch.ones(2)), "eps of module '1'"),
    "names_list_of_dicts": (lambda m, c: setattr(m, "names", [{"a": 1}]), "class names"),
    "names_sparse_dict": (lambda m, c: setattr(m, "names", {0: "a", 5: "b"}), "class names"),
    "names_string_keys": (lambda m, c: setattr(m, "names", {"0": "a"}), "class names"),
    "names_tensor": (lambda m, c: m.__dict__.__setitem__("names", torch.zeros(3)), "class names"),
    "names_int": (lambda m, c: setattr(m, "names", 80), "class names"),
    "parameters_list": (lambda m, c: m[0].__dict__.__setitem__("_parameters", [torch.zeros(1)]), "_parameters of"),
    "parameter_string": (lambda m, c: m[0].__dict__.__setitem__("_parameters", {"weight": "abc"}), "'0.weight' is of"),
    "buffers_int_keys": (lambda m, c: m[1].__dict__.__setitem__("_buffers", {0: torch.zeros(1)}), "_buffers of"),
    "modules_list": (lambda m, c: m.__dict__.__setitem__("_modules", [m[0]]), "_modules of"),
    "child_not_module": (lambda m, c: m.__dict__["_modules"].__setitem__("2", 5), "module '2' is of type int"),
    "train_args_list": (lambda m, c: c.__setitem__("train_args", [1, 2]), "train_args is of type list"),
    "train_args_string": (lambda m, c: c.__setitem__("train_args", "imgsz=640"), "train_args is of type str"),
    "train_args_tensor": (lambda m, c: c.__setitem__("train_args", torch.zeros(2)), "train_args is of type Tensor"),
    "imgsz_string": (lambda m, c: c.__setitem__("train_args", {"imgsz": "640"}), "imgsz"),
    "imgsz_negative": (lambda m, c: c.__setitem__("train_args", {"imgsz": [-640]}), "imgsz"),
    "imgsz_bool": (lambda m, c: c.__setitem__("train_args", {"imgsz": True}), "imgsz"),
    "yaml_list": (lambda m, c: setattr(m, "yaml", [1]), "yaml is of type list"),
    "model_tensor": (lambda m, c: c.__setitem__("model", torch.zeros(3)), "no model object"),
}


def test_module_checkpoint_baseline(tmp_path):
    """Guard: the unedited file loads, so each edit below is what gets refused."""
    ck = load_published(_module_checkpoint(tmp_path / "ok.pt"))
    assert sorted(ck.state_dict) == ["0.bias", "0.weight", "1.bias", "1.num_batches_tracked", "1.running_mean",
                                     "1.running_var", "1.weight"]
    assert ck.names == ["a", "b"] and ck.bn_eps == pytest.approx(1e-3) and ck.train_args["imgsz"] == 320


@pytest.mark.parametrize("edit", list(_EDITS))
def test_wrong_typed_or_cyclic_records(tmp_path, capsys, edit):
    change, match = _EDITS[edit]
    _refused(_module_checkpoint(tmp_path / f"{edit}.pt", change), capsys, LeyoloError, match)


DEPTH = 100_000  # far past the recursion limit; a deeply nested tuple key near 1e6 levels crashes CPython


@pytest.mark.parametrize(("place", "body", "match"), [
    ("top", _nested_list(DEPTH), "no model object"),
    ("names", _record(_parameters=_dict(w=_tensor()), names=_nested_list(DEPTH)), "class names"),
    ("train_args", _dict(model=VALID, train_args=_nested_list(DEPTH)), "train_args is of type list"),
    ("persistent_id", _nested_list(DEPTH) + b"Q", "unknown persistent id"),
    ("dict_key", b"}" + _nested_tuple(DEPTH) + _data(1) + b"s", "neither a scalar nor a flat tuple"),
    ("ordered_dict_key", _call(_global("collections", "OrderedDict"), b"(" + _nested_tuple(DEPTH) + _data(1)
                               + b"\x86l"), "neither a scalar nor a flat tuple"),
    ("set_member", _call(_global("builtins", "set"), b"(" + _nested_tuple(DEPTH) + b"l"), "neither a scalar"),
    ("frozenset_member", b"(" + _nested_tuple(DEPTH) + b"\x91", "neither a scalar"),
    ("device", _call(_global("torch", "device"), _nested_list(DEPTH)), "malformed device"),
    ("size", _call(_global("torch", "Size"), _nested_list(DEPTH)), "not a short list"),
])
def test_deeply_nested_pickles(tmp_path, capsys, place, body, match):
    _refused(_pt(tmp_path / f"{place}.pt", body), capsys, LeyoloError, match)


@pytest.mark.parametrize(("case", "body", "match"), [
    ("unknown_opcode", b"\xff", "corrupt checkpoint"),
    ("empty_stack_build", b"b", "corrupt checkpoint"),
    ("no_stop", _data([1, 2]), "corrupt checkpoint"),
    ("memo_miss", b"h\x07", "corrupt checkpoint"),
    ("odd_setitems", b"}(" + _data("k") + b"u", "corrupt checkpoint"),
    ("reduce_non_callable", _data("abc") + _data(()) + b"R", "corrupt checkpoint"),
    ("newline_in_global", b"\x8c\x02o\n\x8c\x0csystem\nrm -r\x93", "refusing checkpoint"),
])
def test_malformed_streams(tmp_path, capsys, case, body, match):
    if case == "no_stop":
        path = tmp_path / "no_stop.pt"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", b"\x80\x02" + body)
    else:
        path = _pt(tmp_path / f"{case}.pt", body)
    _refused(path, capsys, LeyoloError, match)


def test_truncated_zip_members(tmp_path, capsys):
    full = _pt(tmp_path / "full.pt", VALID).read_bytes()
    for cut in (len(full) - 30, len(full) // 2, 40):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(full[:cut])
        _refused(path, capsys)


# -- fuzzing ----------------------------------------------------------------------------------


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:
        del data[rng.randrange(len(data)):]
    elif kind == 2:
        start = rng.randrange(len(data))
        del data[start:start + rng.randint(1, 16)]
    else:
        start = rng.randrange(len(data))
        data[start:start] = data[start:start + rng.randint(1, 16)]
    return bytes(data)


def test_fuzzed_checkpoints_load_or_fail_cleanly(tmp_path):
    """Seeded mutations of a small real checkpoint: of its data.pkl (inside a sound zip), then of the
    whole file (zip structure too). Every outcome is a load or one LeyoloError line, never another type."""
    source = _module_checkpoint(tmp_path / "source.pt")
    with zipfile.ZipFile(source) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    rng = random.Random(0)
    outcomes: collections.Counter[str] = collections.Counter()
    path = tmp_path / "fuzzed.pt"
    start = time.perf_counter()
    for i in range(800):
        if i < 400:
            with zipfile.ZipFile(path, "w") as zf:
                for name, data in members.items():
                    zf.writestr(name, _mutate(rng, data) if name.endswith("data.pkl") else data)
        else:
            path.write_bytes(_mutate(rng, source.read_bytes()))
        try:
            load_published(path)
            outcomes["loaded"] += 1
        except LeyoloError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc), exc
            outcomes["refused"] += 1
    elapsed = time.perf_counter() - start
    assert outcomes["refused"] > 400 and outcomes["loaded"] > 10, outcomes
    assert elapsed < 10, f"{elapsed:.1f} s"


def test_fuzzed_published_checkpoint(tmp_path):
    if not NANO.is_file():
        pytest.skip(f"published checkpoint not available at {NANO}")
    with zipfile.ZipFile(NANO) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    rng = random.Random(1)
    path = tmp_path / "fuzzed.pt"
    for _ in range(12):
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, _mutate(rng, data) if name.endswith("data.pkl") else data)
        try:
            load_published(path)
        except LeyoloError as exc:
            assert "\n" not in str(exc)
