"""``leyolo serve``: an HTTP detection service (FastAPI + uvicorn) with a web page and metrics.

The modules: ``config`` (``ServeConfig``), ``app`` (routes, ``create_app``), ``service`` (model,
predictors, decode -> batch -> postprocess), ``batching`` (the micro-batcher and its policy),
``uploads`` (header checks, decoding, in-memory multipart), ``limits`` (request id, body limit,
access log, no tracebacks), ``metrics`` (Prometheus). This module only registers the command;
its dependencies load when it runs (``pip install 'leyolo[serve]'``).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import logging.config
import os
from typing import Any

from ...errors import LeyoloError
from ...optional import require
from .config import ENV_CONFIG, ServeConfig

log = logging.getLogger("leyolo.serve")


def _log_config(level: str) -> dict[str, Any]:
    """Logging for every server process (``--workers`` children configure theirs from it too)."""
    handler = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"}},
            "handlers": {"stderr": handler},
            "loggers": {"leyolo": {"handlers": ["stderr"], "level": level, "propagate": False},
                        "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False}}}


def add_cli(subparsers: Any) -> None:
    """Register ``leyolo serve``."""
    d = ServeConfig()
    p = subparsers.add_parser("serve", help="HTTP detection service with a web page, metrics and micro-batching",
                              description="Serve a model over HTTP: POST /v1/detect, /v1/detect/batch, GET /v1/info, "
                                          "/healthz, /readyz, /metrics and a web page at /. "
                                          "Needs pip install 'leyolo[serve]'.")
    p.add_argument("--model", "-m", required=True, help="registered name, .pt, .safetensors or an export")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--backend", default=d.backend, help="auto (default: onnxruntime on CPU), torch, onnxruntime, ...")
    p.add_argument("--device", default=d.device, help="torch device (default cpu)")
    p.add_argument("--threads", type=int, help="runtime threads per process (default: the runtime's, or the CPUs "
                                               "divided by --workers)")
    p.add_argument("--imgsz", type=int, help="default input size (default: the model's)")
    p.add_argument("--conf", type=float, default=d.conf, help="default score threshold (default 0.25)")
    p.add_argument("--iou", type=float, default=d.iou, help="default NMS IoU (default 0.7)")
    p.add_argument("--max-det", type=int, default=d.max_det, help="default detections per image (default 300)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="images per backend call (default 8; 1 = off)")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help="how long the oldest image waits for others of its shape (default 5)")
    p.add_argument("--queue-size", type=int, default=d.queue_size, help="images waiting before 503 (default 64)")
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds until a queued image gets 504 "
                                                                     "(default 10)")
    p.add_argument("--max-body-mb", type=float, default=d.max_body_mb, help="request body limit, MiB (default 16)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="pixels per image (default 40000000)")
    p.add_argument("--max-imgsz", type=int, default=d.max_imgsz, help="largest imgsz a request may ask (default 1280)")
    p.add_argument("--max-images", type=int, default=d.max_images, help="images per batch request (default 16)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn processes, each with its own model (default 1)")
    p.add_argument("--limit-concurrency", type=int, default=256,
                   help="connections + requests at once before uvicorn answers 503 (default 256)")
    p.add_argument("--spinning", action="store_true",
                   help="let onnxruntime's idle threads spin (faster only when nothing else needs the cores)")
    p.add_argument("--graceful-timeout", type=int, default=30,
                   help="seconds to finish in-flight requests on shutdown (default 30)")
    p.set_defaults(handler=cmd_serve)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    threads = args.threads
    if threads is None and args.workers > 1:
        from ...inference.cpus import usable_cpus

        threads = max(1, usable_cpus() // args.workers)
    return ServeConfig(model=args.model, backend=args.backend, device=args.device, threads=threads,
                       imgsz=args.imgsz, conf=args.conf, iou=args.iou, max_det=args.max_det, max_batch=args.max_batch,
                       max_wait_ms=args.max_wait_ms, queue_size=args.queue_size, timeout_s=args.timeout,
                       max_body_mb=args.max_body_mb, max_pixels=args.max_pixels, max_imgsz=args.max_imgsz,
                       max_images=args.max_images, spinning=args.spinning).validate()


def _preflight(detector: Any, config: ServeConfig) -> None:
    """The settings a loaded model can refuse, checked before serving rather than in an unready server."""
    from ...ops import check_imgsz

    meta = detector.meta
    imgsz = check_imgsz(config.imgsz or meta.imgsz, meta.stride)
    if meta.extra.get("dynamic") is False and imgsz != meta.imgsz:
        raise LeyoloError(f"{config.model} was exported for --imgsz {meta.imgsz} (fixed shape), not {imgsz}")
    detector.resolve_backend(config.backend, config.device)


def cmd_serve(args: argparse.Namespace) -> int:
    uvicorn = require("uvicorn", "leyolo serve")
    require("fastapi", "leyolo serve")
    if args.workers < 1:
        raise LeyoloError(f"--workers must be at least 1, got {args.workers}")
    config = config_from_args(args)
    level = "WARNING" if getattr(args, "quiet", False) else "INFO"
    logging.config.dictConfig(_log_config(level))
    from ...api import load
    from .app import create_app

    detector = load(config.model)  # fails fast, in one line, before any process is started
    _preflight(detector, config)
    options = dict(host=args.host, port=args.port, log_config=_log_config(level), access_log=False,
                   limit_concurrency=args.limit_concurrency, timeout_graceful_shutdown=args.graceful_timeout)
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
        # the supervisor's liveness ping: a child importing torch and loading the model can be
        # silent for longer than the 5 s default on a busy machine, and is then killed and restarted
        options["timeout_worker_healthcheck"] = 120
    log.info("serving %s on http://%s:%d (%d process%s); /readyz says when it is warm", config.model, args.host,
             args.port, args.workers, "es" if args.workers > 1 else "")
    if args.workers == 1:
        uvicorn.run(create_app(config, detector), **options)
    else:
        del detector
        config = dataclasses.replace(config, background_load=False)
        os.environ[ENV_CONFIG] = config.to_json()  # read by app_from_env in each worker process
        uvicorn.run("leyolo.tools.serve.app:app_from_env", factory=True, workers=args.workers, **options)
    return 0


__all__ = ["ServeConfig", "add_cli", "cmd_serve"]
