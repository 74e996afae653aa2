"""``leyolo ablate``: one-at-a-time ablations around a baseline training configuration.

Why one-at-a-time and not a grid: each row then differs from the baseline row in exactly one
key, so its change in mAP/latency is attributable to that key, and the cost grows with the
sum of the value lists rather than their product. Every run uses the baseline's seed.

How "one key" is kept honest:

* The baseline's recipe-dependent fields (``lr0``, ``mosaic``, ``warmup_*``, ``close_mosaic``,
  ``recipe`` itself) are resolved once and pinned into every variant, so varying e.g.
  ``model`` to a weights file does not silently switch the recipe to ``finetune`` as well.
  Varying ``recipe`` is the exception: that variant lets its recipe fill those fields.
* A variant whose resolved configuration equals the baseline's (e.g. ``mosaic=1`` when the
  scratch recipe already uses mosaic 1.0) is not trained twice: it *is* the baseline row. So
  ``--vary mosaic=0,1`` on a registered model gives 2 rows, ``--vary mosaic=0,0.5`` gives 3.

Each run trains in-process (``leyolo.engine.trainer.train``) in its own folder under ``out``.
mAP is that of ``best.safetensors`` (the final validation is reused when it scored the best
epoch), latency is torch on one thread, one image: rows are compared with each other, and one
thread stays steady on a busy machine. The table (``ablation.md`` / ``.csv``) is rewritten
after every run, and a run that fails (e.g. diverges) becomes a row with a ``note``, so one bad
value neither loses nor stops the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from ..engine.config import RECIPES, TrainConfig
from ..errors import LeyoloError, first_line

log = logging.getLogger("leyolo")

RESERVED = ("data", "project", "name", "exist_ok")  # set by the ablation itself
COLUMNS = ("variant", "key", "value", "mAP50", "mAP50-95", "params", "gflops", "latency_ms", "file_mb", "epochs",
           "train_s", "run_dir", "note")
DIGITS = {"mAP50": 4, "mAP50-95": 4, "gflops": 3, "latency_ms": 2, "file_mb": 2, "train_s": 1}


@dataclass(frozen=True)
class Variant:
    """One training run of the ablation: ``key=value`` on top of the baseline (``key`` None: the baseline)."""

    name: str
    key: str | None
    value: Any
    config: dict[str, Any]  # TrainConfig fields, without data/project/name


def valid_keys() -> list[str]:
    """TrainConfig fields an ablation may set or vary."""
    return [f.name for f in fields(TrainConfig) if f.name not in RESERVED]


def _check_key(key: str, where: str) -> None:
    if key in RESERVED:
        raise LeyoloError(f"{where}: {key!r} is set by the ablation itself (--data, --out), not per run")
    if key not in valid_keys():
        raise LeyoloError(f"{where}: unknown key {key!r}; valid keys: {', '.join(sorted(valid_keys()))}")


def coerce(key: str, value: Any) -> Any:
    """Fit a YAML-parsed value to the TrainConfig field's type, or a one-line error.

    PyYAML reads ``1e-3`` as a string and ``1`` as an int; both become floats for float fields.
    """
    kind = str(next(f.type for f in fields(TrainConfig) if f.name == key))
    numeric = kind.startswith(("int", "float"))
    if value is None:
        return value
    if isinstance(value, str) and numeric:
        try:
            value = float(value)
        except ValueError:
            raise LeyoloError(f"{key} expects a number, got {value!r}") from None
    if numeric and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise LeyoloError(f"{key} expects a number, got {value!r}")
    if kind.startswith("float"):
        return float(value)
    if kind.startswith("int"):
        if not float(value).is_integer():
            raise LeyoloError(f"{key} expects an integer, got {value!r}")
        return int(value)
    if kind.startswith("bool") and not isinstance(value, bool):
        raise LeyoloError(f"{key} expects true or false, got {value!r}")
    return value


def show(value: Any) -> str:
    """A value as a short label: ``0.0`` -> ``0``, ``0.001`` -> ``0.001``."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def load_base(base: str | Path) -> dict[str, Any]:
    """The baseline: a YAML/JSON file of TrainConfig fields, or a model name / weights file."""
    import yaml

    path = Path(str(base))
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        return {"model": str(base)}
    if not path.is_file():
        raise LeyoloError(f"{path}: no such config file")
    try:
        config = yaml.safe_load(path.read_text()) or {}  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise LeyoloError(f"{path}: not valid YAML/JSON ({first_line(exc)})") from None
    if not isinstance(config, dict):
        raise LeyoloError(f"{path}: expected a mapping of TrainConfig fields")
    for key in config:
        _check_key(str(key), str(path))
    return {str(k): coerce(str(k), v) for k, v in config.items()}


def parse_vary(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["mosaic=0,1", "lr0=1e-3"]`` -> ``{"mosaic": [0.0, 1.0], "lr0": [0.001]}``: yaml.safe_load, then ``coerce``."""
    import yaml

    vary: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise LeyoloError(f"--vary {item!r}: expected key=value1,value2")
        _check_key(key, f"--vary {item}")
        if key in vary:
            raise LeyoloError(f"--vary {key} given twice; list all its values once")
        try:
            vary[key] = [coerce(key, yaml.safe_load(v.strip())) for v in values.split(",") if v.strip()]
        except yaml.YAMLError:
            raise LeyoloError(f"--vary {item!r}: a value is not valid YAML") from None
    if not vary:
        raise LeyoloError("give at least one --vary key=value1,value2")
    return vary


def _resolved(config: dict[str, Any], where: str) -> TrainConfig:
    """Resolve a configuration as the trainer will (recipe defaults, value checks), or a one-line error."""
    from ..engine.trainer import recipe_family
    from ..models.registry import list_models

    model = str(config.get("model", "leyolo-n"))
    if model not in list_models() and not Path(model).is_file():
        raise LeyoloError(f"{where}: model {model!r} is neither a registered name ({', '.join(list_models())}) "
                          f"nor a weights file")
    try:
        return TrainConfig(**config).resolved(pretrained=Path(model).exists(), family=recipe_family(model))
    except (TypeError, ValueError) as exc:
        raise LeyoloError(f"{where}: invalid value ({exc})") from None


def plan_variants(base: dict[str, Any], vary: dict[str, list[Any]]) -> list[Variant]:
    """The baseline plus one variant per (key, value), minus any whose resolved config equals one already planned."""
    resolved = _resolved(base, "baseline")
    pinned = dict(base, recipe=resolved.recipe)
    pinned.update({k: getattr(resolved, k) for k in RECIPES[resolved.recipe] if base.get(k) is None})
    variants = [Variant("baseline", None, None, pinned)]
    seen = [resolved.to_dict()]
    for key, values in vary.items():
        for value in values:
            config = dict(base, recipe=value) if key == "recipe" else dict(pinned, **{key: value})
            final = _resolved(config, f"{key}={show(value)}").to_dict()
            if final in seen:
                log.info("%s=%s equals a configuration already planned; not trained twice", key, value)
                continue
            seen.append(final)
            variants.append(Variant(f"{key}={show(value)}", key, value, config))
    return variants


def _measure(best: Path, imgsz: int, runs: int, threads: int) -> dict[str, Any]:
    """params, GFLOPs, torch latency (1 image, median ms) and deployable safetensors size of a trained model.

    Latency runs on ``threads`` torch threads (restored afterwards): the rows are compared with
    each other, and one thread is what stays steady on a busy machine.
    """
    import torch

    from ..api import load
    from .measure import latency_stats, random_batch, time_calls

    detector = load(best)
    info = detector.info(imgsz)
    image = random_batch(imgsz)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = time_calls(detector.backend("torch"), image, runs, warmup=max(runs // 10, 2))
    finally:
        torch.set_num_threads(previous)
    with tempfile.TemporaryDirectory(prefix="leyolo-ablate-") as tmp:
        size = detector.save(Path(tmp) / "model.safetensors").stat().st_size
    return {"params": info["params"], "gflops": info["gflops"], "latency_ms": latency_stats(times)["latency_ms"],
            "file_mb": size / 1e6}


def run_ablation(base: str | Path | dict[str, Any], vary: dict[str, list[Any]], data: str | Path, *,
                 out: str | Path = "runs/ablate", overrides: dict[str, Any] | None = None,
                 latency_runs: int = 20, latency_threads: int = 1) -> list[dict[str, Any]]:
    """Train, validate and measure the baseline and each one-key variant; returns the table rows.

    ``base`` is a model name, weights file, YAML/JSON of TrainConfig fields, or such a dict;
    ``overrides`` (e.g. ``epochs``, ``imgsz``, ``batch``) apply to the baseline, hence to all.
    """
    from ..data.datasets import load_data_yaml
    from ..engine.trainer import fitness, train
    from .tables import write_table

    config = dict(base) if isinstance(base, dict) else load_base(base)
    for key in list(config) + list(overrides or {}):
        _check_key(key, "baseline")
    config.update({k: coerce(k, v) for k, v in (overrides or {}).items() if v is not None})
    load_data_yaml(data)  # a bad data.yaml fails before any training
    variants = plan_variants(config, vary)
    out = Path(out)
    header = (f"# leyolo ablate\n\ndata: {data}; baseline: {json.dumps(variants[0].config, default=str)}; "
              f"one key changed per row, same seed; latency: torch, {latency_threads} thread(s), 1 image, "
              f"median of {latency_runs}")
    pinned = variants[0].config
    if "mosaic" in vary and (pinned.get("close_mosaic") or 0) >= (pinned.get("epochs") or TrainConfig.epochs):
        caveat = (f"close_mosaic={pinned.get('close_mosaic')} >= epochs={pinned.get('epochs') or TrainConfig.epochs}: "
                  "mosaic is switched off for every epoch, so the mosaic variants train alike")
        log.warning(caveat)
        header += f"\n\nwarning: {caveat}"
    rows: list[dict[str, Any]] = []
    for variant in variants:
        log.info("ablation run %d/%d: %s", len(rows) + 1, len(variants), variant.name)
        settings = dict(variant.config)
        model = str(settings.pop("model", "leyolo-n"))
        name = re.sub(r"[^\w.=+-]", "_", variant.name)[:80]
        row = {"variant": variant.name, "key": variant.key or "",
               "value": "" if variant.key is None else show(variant.value), "note": ""}
        try:
            result = train(model, str(data), project=str(out), name=name, exist_ok=False, **settings)
        except LeyoloError as exc:
            log.warning("%s failed: %s", variant.name, exc)
            rows.append({**row, "note": f"failed: {exc}"})
            write_table(rows, COLUMNS, out, "ablation", header, DIGITS)
            continue
        imgsz = int(settings.get("imgsz") or TrainConfig.imgsz)
        metrics = result["metrics"]
        if not metrics or fitness(metrics) != result["best_fitness"]:  # best.safetensors is an earlier epoch
            from ..api import load

            metrics = load(result["best"]).val(data, imgsz=imgsz)
        rows.append({**row, "mAP50": metrics.get("mAP50"), "mAP50-95": metrics.get("mAP50-95"),
                     **_measure(Path(result["best"]), imgsz, latency_runs, latency_threads),
                     "epochs": result["epochs"], "train_s": result["seconds"], "run_dir": result["save_dir"]})
        write_table(rows, COLUMNS, out, "ablation", header, DIGITS)
    return rows


def add_cli(subparsers: Any) -> None:
    """Register ``leyolo ablate``."""
    p = subparsers.add_parser("ablate", help="one-at-a-time training ablations around a baseline",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="model name, weights file, or YAML/JSON of TrainConfig fields")
    p.add_argument("--vary", action="append", required=True, metavar="KEY=V1,V2",
                   help="a TrainConfig field and the values to try (repeatable; one key changes per run)")
    p.add_argument("--data", required=True, type=Path, help="data.yaml")
    for option, kind in (("epochs", int), ("imgsz", int), ("batch", int), ("workers", int), ("seed", int),
                         ("device", str)):
        p.add_argument(f"--{option}", type=kind, help=f"baseline {option} (overrides --base)")
    p.add_argument("--out", type=Path, default=Path("runs/ablate"), help="runs and table go here (default runs/ablate)")
    p.set_defaults(handler=cmd_ablate)


def cmd_ablate(args: argparse.Namespace) -> int:
    from .tables import markdown_table

    logging.getLogger("leyolo").setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    overrides = {k: getattr(args, k) for k in ("epochs", "imgsz", "batch", "workers", "seed", "device")}
    rows = run_ablation(args.base, parse_vary(args.vary), args.data, out=args.out, overrides=overrides)
    print(markdown_table(rows, COLUMNS, DIGITS))
    print(f"table: {args.out / 'ablation.md'}, {args.out / 'ablation.csv'}")
    return 1 if any(r["note"] for r in rows) else 0
