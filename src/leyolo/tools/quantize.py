"""Post-training quantization with ONNX Runtime's tools: static INT8 (QDQ), dynamic INT8, FP16.

Why the choices:

- Static INT8 calibrates on real dataset images put through the *same* letterbox as inference
  (``Predictor.prepare``, square ``imgsz`` padding), on the static square export: calibration
  ranges are per tensor, so the shapes seen at calibration are the shapes served. Images come
  from the train split first; the val split tops up only when train has too few, with a
  warning, because the reported mAP is measured on val.
- The float model is pre-processed with ``quant_pre_process`` (shape inference + ORT's basic
  optimisations), as ONNX Runtime recommends before quantizing.
- The decode tail (DFL, anchors, box math, sigmoid scores, final concat) always stays float,
  see ``quant_graph``. ``--exclude auto`` also keeps the head's output convs in float and runs
  a sensitivity scan: each layer is quantized alone (ranges from one shared calibration) and
  the ``float_layers`` whose isolated quantization hurts the output most stay float. On the
  published nano the stem (layers 1-3) dominates: quantizing layers 0-1 alone costs ~0.05 mAP.
- Activations are uint8, weights int8 (U8S8), per-channel: ONNX Runtime's x86 CPU kernels fuse
  QDQ convs into ``QLinearConv`` for U8S8 (all 94 quantized convs here), but only for 16 of
  them with int8 activations, leaving the rest as float convs behind dequantized weights (2x
  slower than fp32). Asymmetric uint8 and int8 give the same grid, so accuracy is unchanged.
- Calibration defaults to the 99.99th percentile of |x|: on the published nano at 640 it kept
  mAP50-95 within 0.003 of fp32 where minmax lost 0.02-0.03 (entropy: -0.006). It is the
  slowest (histograms of every tensor; ~3 min for 80 images at 640 on 2 cores).
- fp16 keeps fp32 inputs/outputs and the decode tail in fp32 (``keep_io_types``).
- Metadata (names, imgsz, letterbox facts) is re-stamped after quantization, plus a
  ``quantization`` record, so ``leyolo.load`` serves the file like any export.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..deploy import quant_graph
from ..errors import LeyoloError
from ..ops import check_imgsz
from .measure import onnx_latency_ms
from .tables import markdown_table

log = logging.getLogger("leyolo")

METHODS = ("static", "dynamic", "fp16")
CALIBRATIONS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
SUFFIX = {"static": "int8", "dynamic": "dynint8", "fp16": "fp16"}
PERCENTILE = 99.99  # of |activation|, for --calibration percentile
CHUNK = 8  # calibration images per ORT collect pass: bounds the memory of the intermediate tensors


def _ort_quantization():
    try:
        import onnxruntime.quantization as ortq
    except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
        raise LeyoloError("quantization needs onnxruntime>=1.17 with its quantization tools: "
                          "pip install -U onnxruntime") from exc
    return ortq


# ---------------------------------------------------------------------------------- calibration
def calibration_images(data: str | Path, n: int) -> tuple[list[Path], dict[str, int]]:
    """Up to ``n`` image paths (evenly spaced): the train split first, then val; how many came from each."""
    from ..data.datasets import load_data_yaml, split_images

    spec = load_data_yaml(data)
    picked: list[Path] = []
    counts: dict[str, int] = {}
    for split in ("train", "val"):
        if len(picked) >= n or split not in spec.splits:
            continue
        files = split_images(spec, split)
        want = min(n - len(picked), len(files))  # evenly spaced: sorted names can group similar scenes
        take = [files[int(i)] for i in np.linspace(0, len(files) - 1, want)] if want < len(files) else files
        picked += take
        counts[split] = len(take)
    if not picked:
        raise LeyoloError(f"{data}: no train or val images to calibrate on")
    if counts.get("val"):
        log.warning("calibrating on %d val images (train has only %d): val mAP below is optimistic; "
                    "use --calib-images %d to calibrate on train only", counts["val"], counts.get("train", 0),
                    counts.get("train", 0) or 1)
    return picked, counts


def letterboxed_blobs(paths: Sequence[Path], imgsz: int, stride: int = 32,
                      pad_value: int = 114) -> Callable[[int], np.ndarray]:
    """A loader ``i -> [1, 3, imgsz, imgsz]`` float blob, through the inference letterbox (square pad)."""
    from ..data.images import read_image
    from ..inference.predictor import PredictConfig, Predictor

    prep = Predictor(lambda batch: batch, ["x"], PredictConfig(imgsz=imgsz, stride=stride, pad_value=pad_value,
                                                                 square=True))
    return lambda i: prep.prepare(read_image(paths[i]))[0]


def _reader(load: Callable[[int], np.ndarray], count: int, input_name: str):
    """An ORT ``CalibrationDataReader`` over ``count`` images, with the range API ORT uses to chunk."""
    ortq = _ort_quantization()

    class Reader(ortq.CalibrationDataReader):
        def __init__(self) -> None:
            self.i, self.end = 0, count

        def __len__(self) -> int:
            return count

        def set_range(self, start_index: int, end_index: int) -> None:
            self.i, self.end = start_index, min(end_index, count)

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= self.end:
                return None
            self.i += 1
            return {input_name: load(self.i - 1)}

    return Reader()


def _chunk(count: int) -> int:
    """Largest divisor of ``count`` up to ``CHUNK`` (ORT requires the stride to divide the total)."""
    return max(d for d in range(1, min(CHUNK, count) + 1) if count % d == 0)


# ------------------------------------------------------------------------------------ the scan
def sensitivity_scan(pre: Path, groups: dict[str, list[str]], always: list[str], blobs: list[np.ndarray],
                     input_name: str, quant_kwargs: dict[str, Any], work: Path) -> list[tuple[float, str]]:
    """(error, group) for every group quantized alone, worst first.

    The error is the relative squared error of the decoded output against fp32 (boxes and
    scores each normalised by their own energy) on ``blobs``. Uses the calibration cache in
    ``quant_kwargs``, so each group costs one quantization pass and a few inferences.
    """
    import onnxruntime as ort

    ortq = _ort_quantization()

    def outputs(path: Path) -> np.ndarray:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {input_name: b})[0] for b in blobs])

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(((a - b) ** 2).sum() / max((a**2).sum(), 1e-12))

    ref = outputs(pre)
    scores = []
    for name, nodes in groups.items():
        path = work / "scan.onnx"
        ortq.quantize_static(pre, path, None, nodes_to_quantize=nodes, nodes_to_exclude=always, **quant_kwargs)
        out = outputs(path)
        scores.append((rel(ref[:, :4], out[:, :4]) + rel(ref[:, 4:], out[:, 4:]), name))
    return sorted(scores, reverse=True)


def _static_kwargs(calibration: str, per_channel: bool, reduce_range: bool, count: int, cache: Path) -> dict[str, Any]:
    """``quantize_static`` settings shared by the scan and the final pass (same cached ranges)."""
    ortq = _ort_quantization()
    extra: dict[str, Any] = {"CalibStridedMinMax": _chunk(count)}  # ORT's chunked collection, any calibrator
    if calibration == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    return dict(quant_format=ortq.QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                activation_type=ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QInt8,
                calibrate_method=getattr(ortq.CalibrationMethod, CALIBRATIONS[calibration]),
                calibration_cache_path=str(cache), extra_options=extra)


def _scan_and_exclude(pre: Path, proto: Any, scratch: Path, always: list[str], load_blob: Callable[[int], np.ndarray],
                      count: int, kwargs: dict[str, Any], float_layers: int, scan_images: int):
    """Calibrate once (filling the range cache), scan every layer, add the worst ``float_layers`` to ``always``."""
    ortq = _ort_quantization()
    input_name = proto.graph.input[0].name
    ortq.quantize_static(pre, scratch, _reader(load_blob, count, input_name), nodes_to_exclude=always, **kwargs)
    groups = quant_graph.layer_groups(proto, skip=always)
    sample = [load_blob(i) for i in range(min(scan_images, count))]
    scan = sensitivity_scan(pre, groups, always, sample, input_name, kwargs, scratch.parent)
    worst = [name for _, name in scan[:float_layers]]
    return scan, worst, sorted(set(always) | {n for g in worst for n in groups[g]})


# ------------------------------------------------------------------------------------ pipeline
def to_fp16(proto: Any, block: Sequence[str]) -> Any:
    """FP16 weights and compute, FP32 inputs/outputs, nodes in ``block`` kept FP32.

    Uses the converter that ships with onnxruntime. It inserts one Cast per blocked consumer
    of a shared tensor, all with the same name and output (an invalid graph); identical
    duplicates are dropped here.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(proto, keep_io_types=True, node_block_list=list(block))
    seen: set[tuple] = set()
    nodes = []
    for node in half.graph.node:
        key = (node.name, node.op_type, tuple(node.input), tuple(node.output))
        if key not in seen:
            seen.add(key)
            nodes.append(node)
    del half.graph.node[:]
    half.graph.node.extend(nodes)
    return half


def _float_onnx(detector: Any, imgsz: int, work: Path) -> Path:
    """The fp32 static square export to quantize (or the given ONNX file, checked)."""
    import onnx

    if detector.model is not None:
        from ..deploy.onnx_export import export_onnx

        return export_onnx(detector.model, work / "fp32.onnx", imgsz, dynamic=False)
    if getattr(detector, "export_format", "onnx") != "onnx" or detector.onnx_path is None:
        raise LeyoloError("quantize needs PyTorch weights (.pt/.safetensors) or an fp32 ONNX export")
    proto = onnx.load(str(detector.onnx_path))
    if quant_graph.is_quantized(proto):
        raise LeyoloError(f"{detector.onnx_path} is already quantized; start from the fp32 model")
    if any(o.name == "num_dets" for o in proto.graph.output):
        raise LeyoloError(f"{detector.onnx_path} has NMS in its graph; quantize an export without --nms")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    fixed = [d.dim_value for d in dims[2:] if d.dim_value > 0]
    if len(fixed) == 2 and fixed != [imgsz, imgsz]:
        raise LeyoloError(f"{detector.onnx_path} was exported for {fixed[0]}x{fixed[1]}; pass --imgsz {fixed[0]}")
    return Path(detector.onnx_path)


def _pre_process(src: Path, dst: Path) -> None:
    """ORT's recommended pre-processing.

    Symbolic shape inference is skipped for dynamic-shape inputs, and retried without when it
    cannot complete (YOLOv12's area-attention reshapes defeat it; ONNX's own shape inference and
    ORT's optimisations still run). It runs in ``src``'s folder because, when it fails, ORT drops
    debug files into the working directory.
    """
    import contextlib

    import onnx

    ortq = _ort_quantization()
    dims = onnx.load(str(src), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    dynamic = any(d.dim_param or d.dim_value <= 0 for d in dims)
    src, dst = Path(src).resolve(), Path(dst).resolve()
    with contextlib.chdir(src.parent):
        for skip_symbolic in dict.fromkeys((dynamic, True)):
            try:
                ortq.shape_inference.quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic)
                return
            except Exception as exc:  # ORT raises assorted errors on graphs it cannot infer
                error = exc
                log.debug("quant_pre_process (skip_symbolic_shape=%s) failed: %s", skip_symbolic, exc)
    raise LeyoloError(f"quant_pre_process failed on the fp32 model ({type(error).__name__}: {error})") from error


def _stamp(src: Path, dst: Path, float_path: Path, record: dict[str, Any], half: bool) -> Path:
    """Copy ``src`` to ``dst`` atomically with the float model's leyolo metadata plus ``quantization``."""
    import onnx

    from ..deploy.onnx_export import read_onnx_metadata, stamp_metadata
    from ..fileio import atomic_write

    info = read_onnx_metadata(float_path) | {"quantization": record, "half": half, "format": "onnx"}
    proto = stamp_metadata(onnx.load(str(src)), info)
    return atomic_write(dst, lambda tmp: onnx.save(proto, tmp))


def _check(method: str, calibration: str, calib_images: int, imgsz: int, data: Any, float_layers: int) -> None:
    if method not in METHODS:
        raise LeyoloError(f"unknown quantization method {method!r} (choose from {', '.join(METHODS)})")
    if calibration not in CALIBRATIONS:
        raise LeyoloError(f"unknown calibration {calibration!r} (choose from {', '.join(CALIBRATIONS)})")
    if calib_images < 1:
        raise LeyoloError(f"--calib-images must be at least 1, got {calib_images}")
    check_imgsz(imgsz)
    if float_layers < 0:
        raise LeyoloError(f"--float-layers must be >= 0, got {float_layers}")
    if method == "static" and data is None:
        raise LeyoloError("static quantization needs --data (a data.yaml) for calibration images")
    if data is not None and not Path(data).is_file():
        raise LeyoloError(f"{data}: no such dataset description")


def quantize(model: Any, data: str | Path | None = None, *, method: str = "static", calib_images: int = 200,
             calibration: str = "percentile", per_channel: bool = True, exclude: str = "auto", float_layers: int = 3,
             imgsz: int | None = None, out: str | Path | None = None, runs: int = 50, evaluate: bool = True,
             scan_images: int = 4, reduce_range: bool = False) -> dict[str, Any]:
    """Quantize ``model`` (name, weights file, fp32 ONNX or ``Detector``) and compare it with fp32.

    ``reduce_range`` (7-bit weights) is ORT's remedy for U8S8 saturation on CPUs without VNNI;
    it is off because it cost 0.015 mAP50-95 here and the 8-bit model showed no saturation loss.

    Returns a dict with ``out`` (the written file), ``rows`` (fp32 and quantized: size, latency,
    mAP when ``data`` is given and ``evaluate``), ``table`` (the same as Markdown), and the
    settings used (``calibration_images`` per split, ``excluded`` nodes, ``float_groups``).
    """
    from ..api import Detector, load

    detector = model if isinstance(model, Detector) else load(model)
    imgsz = int(imgsz or detector.meta.imgsz)
    _check(method, calibration, calib_images, imgsz, data, float_layers)
    ortq = _ort_quantization()
    import onnx

    out = Path(out) if out is not None else Path(f"{detector.meta.arch}-{imgsz}-{SUFFIX[method]}.onnx")
    with tempfile.TemporaryDirectory(prefix="leyolo-quant-") as tmp:
        work = Path(tmp)
        fp32 = _float_onnx(detector, imgsz, work)
        pre = work / "pre.onnx"
        _pre_process(fp32, pre)
        proto = onnx.load(str(pre))
        input_name = proto.graph.input[0].name
        heads = quant_graph.head_output_convs(proto)
        tail = quant_graph.decode_tail(proto, heads)
        if exclude == "auto":
            user = heads
        elif exclude == "none":
            user = []
        else:
            user = quant_graph.match_nodes(proto, exclude.split(","))
        always = sorted(set(tail) | set(user))
        record: dict[str, Any] = {"method": method, "tool": f"onnxruntime {_ort_version()}", "imgsz": imgsz,
                                  "per_channel": per_channel if method != "fp16" else None}
        float_groups: list[str] = []
        scan: list[tuple[float, str]] = []
        quantized = work / "quantized.onnx"
        start = time.perf_counter()
        if method == "static":
            paths, counts = calibration_images(data, calib_images)
            load_blob = letterboxed_blobs(paths, imgsz, detector.meta.stride, detector.meta.pad_value)
            kwargs = _static_kwargs(calibration, per_channel, reduce_range, len(paths), work / "ranges.json")
            if exclude == "auto" and float_layers:
                scan, float_groups, always = _scan_and_exclude(pre, proto, quantized, always, load_blob, len(paths),
                                                               kwargs, float_layers, scan_images)
            reader = _reader(load_blob, len(paths), input_name)  # a cache hit after a scan: no second pass
            ortq.quantize_static(pre, quantized, reader, nodes_to_exclude=always, **kwargs)
            record.update(calibration=calibration, calibration_images=counts, format="QDQ", activations="uint8",
                          weights="int7" if reduce_range else "int8")
        elif method == "dynamic":
            ortq.quantize_dynamic(pre, quantized, per_channel=per_channel, weight_type=ortq.QuantType.QInt8,
                                  nodes_to_exclude=always)
            record.update(weights="int8", activations="int8 per inference (dynamic)")
        else:
            onnx.save(to_fp16(proto, always), str(quantized))
            record.update(weights="fp16", activations="fp16", io="fp32")
        seconds = time.perf_counter() - start
        record.update(float_nodes=len(always), float_groups=float_groups)
        result_path = _stamp(quantized, out, fp32, record, half=method == "fp16")
        rows = _compare(fp32, result_path, method, data if evaluate else None, imgsz, runs)
    label = {"static": f"static INT8 ({calibration}{', per-channel' if per_channel else ''})",
             "dynamic": "dynamic INT8", "fp16": "FP16"}[method]
    rows[1]["model"] = label
    columns = [("model", "model", ""), ("size_mb", "size MB", ".2f"),
               ("latency_ms", f"onnxruntime ms ({imgsz}, median of {runs})", ".1f"), ("mAP50-95", "mAP50-95", ".4f"),
               ("mAP50", "mAP50", ".4f")]
    return {"out": str(result_path), "method": method, "imgsz": imgsz, "seconds": seconds, "rows": rows,
            "table": markdown_table(rows, columns), "excluded": always, "head_convs": heads,
            "float_groups": float_groups, "scan": [(round(e, 5), g) for e, g in scan],
            "calibration_images": record.get("calibration_images"), "record": record}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _compare(fp32: Path, quantized: Path, method: str, data: Any, imgsz: int, runs: int) -> list[dict[str, Any]]:
    """Size, latency and (with ``data``) val mAP of the fp32 and the quantized file."""
    from ..api import load

    rows = []
    for name, path in (("fp32 (ONNX)", fp32), (method, quantized)):
        row: dict[str, Any] = {"model": name, "size_mb": path.stat().st_size / 1e6}
        try:
            row["latency_ms"] = onnx_latency_ms(path, imgsz, runs)
        except LeyoloError as exc:
            if method != "fp16" or path != quantized:
                raise
            raise LeyoloError(f"fp16 model written to {quantized}, but onnxruntime's CPU provider cannot run it here "
                              f"({exc}); serve it with a GPU execution provider") from exc
        if data is not None:
            metrics = load(path).val(data, imgsz=imgsz)
            row.update({"mAP50-95": metrics["mAP50-95"], "mAP50": metrics["mAP50"]})
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------- CLI
def add_cli(subparsers: Any) -> None:
    """``leyolo quantize``."""
    p = subparsers.add_parser("quantize", help="INT8/FP16 ONNX model with onnxruntime's quantization tools",
                              description="Quantize to ONNX and compare with fp32 (size, latency, mAP).")
    p.add_argument("--model", "-m", required=True, help="model name, .pt/.safetensors weights or an fp32 .onnx")
    p.add_argument("--data", type=Path, help="data.yaml: calibration images (train split first) and val mAP")
    p.add_argument("--method", default="static", help="static | dynamic | fp16 (default static)")
    p.add_argument("--calib-images", type=int, default=200, help="calibration images (default 200)")
    p.add_argument("--calibration", default="percentile",
                   help="percentile (99.99%% of |x|, default; most accurate, slowest) | entropy | minmax (fastest)")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="per-output-channel weight scales (default on)")
    p.add_argument("--exclude", default="auto",
                   help="auto (head output convs + sensitivity scan), none, or comma-separated node/layer names "
                        "kept in float, e.g. layers.1,layers.3 (the decode tail always stays float)")
    p.add_argument("--float-layers", type=int, default=3,
                   help="with --exclude auto: how many most sensitive layers stay float (default 3; 0 = no scan)")
    p.add_argument("--imgsz", type=int, help="square input size (default: the model's)")
    p.add_argument("--out", type=Path, help="output .onnx (default <arch>-<imgsz>-<int8|dynint8|fp16>.onnx)")
    p.add_argument("--runs", type=int, default=50, help="timed runs for the median latency (default 50)")
    p.add_argument("--no-val", action="store_true", help="skip the mAP comparison")
    p.set_defaults(handler=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    result = quantize(args.model, args.data, method=args.method, calib_images=args.calib_images,
                      calibration=args.calibration, per_channel=args.per_channel, exclude=args.exclude,
                      float_layers=args.float_layers, imgsz=args.imgsz, out=args.out, runs=args.runs,
                      evaluate=not args.no_val)
    print(result["table"])
    notes = []
    if result["calibration_images"]:
        notes.append("calibrated on " + " + ".join(f"{n} {s}" for s, n in result["calibration_images"].items())
                     + " images")
    if result["float_groups"]:
        notes.append("kept float by the scan: " + ", ".join(result["float_groups"]))
    notes.append(f"{len(result['excluded'])} nodes float (head output convs and decode)")
    print("; ".join(notes))
    print(f"wrote {result['out']}")
    return 0
