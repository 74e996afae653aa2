"""``ServeConfig``: everything one ``leyolo serve`` process needs, as plain data.

Plain data because ``--workers N`` starts N uvicorn processes that each build their own app:
the parent hands the config over as JSON in one environment variable (``ENV_CONFIG``), the
one channel uvicorn's multi-process mode leaves to an app factory.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from ...errors import LeyoloError

ENV_CONFIG = "LEYOLO_SERVE_CONFIG"
MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """Model, defaults of a request, micro-batching and limits of one server process."""

    model: str = "leyolo-n"
    backend: str = "auto"
    device: str = "cpu"
    threads: int | None = None  # runtime threads per process (None: the CPUs this process may use)
    imgsz: int | None = None  # default input size (None: the model's)
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    max_batch: int = 8  # images per backend call
    max_wait_ms: float = 5.0  # how long the oldest queued image waits for others of its shape
    queue_size: int = 64  # images waiting for the backend; beyond that: 503 + Retry-After
    timeout_s: float = 10.0  # from queueing to result; beyond that: 504
    max_body_mb: float = 16.0  # request body limit (413), checked before the body is read
    max_pixels: int = 40_000_000  # width x height limit per image (413), read from the file header
    max_imgsz: int = 1280  # largest imgsz a request may ask for
    max_images: int = 16  # images per /v1/detect/batch request
    decode_threads: int | None = None  # concurrent decodes (None: the CPUs this process may use)
    # Load in the background so /healthz answers while loading (one process); --workers children load
    # before they accept connections instead, so the shared socket only hands requests to warm ones.
    background_load: bool = True
    # onnxruntime's idle workers spin by default: the fastest for one process alone on its cores, but here
    # the decode and NMS threads share those cores with inference (see tools/serve/service.py)
    spinning: bool = False

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MIB)

    def validate(self) -> "ServeConfig":
        positive = {"max_batch": self.max_batch, "queue_size": self.queue_size, "max_images": self.max_images,
                    "max_pixels": self.max_pixels, "max_imgsz": self.max_imgsz, "max_det": self.max_det}
        for name, value in positive.items():
            if value < 1:
                raise LeyoloError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.max_images > self.queue_size:
            raise LeyoloError(f"--max-images ({self.max_images}) cannot exceed --queue-size ({self.queue_size}): "
                              "such batch requests could never be queued")
        if self.max_wait_ms < 0:
            raise LeyoloError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if self.timeout_s <= 0 or self.max_body_mb <= 0:
            raise LeyoloError("--timeout and --max-body-mb must be positive")
        if not (0 <= self.conf <= 1 and 0 <= self.iou <= 1):
            raise LeyoloError(f"--conf and --iou must be in [0, 1], got {self.conf} and {self.iou}")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeConfig":
        data: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}).validate()

    @classmethod
    def from_env(cls) -> "ServeConfig":
        text = os.environ.get(ENV_CONFIG)
        if not text:
            raise LeyoloError(f"{ENV_CONFIG} is not set (it is set by 'leyolo serve --workers N')")
        return cls.from_json(text)
