"""Prometheus metrics of one app, in its own ``CollectorRegistry``.

A registry per app, not ``prometheus_client``'s global one: several apps in one process (the
tests build many) would otherwise collide on metric names, and nothing here is global state.
With ``--workers N`` each process answers ``/metrics`` with its own numbers (scrape each
worker, or sum them: there is no shared-memory aggregation here).
"""

from __future__ import annotations

from typing import Callable

from ...optional import require

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


class Metrics:
    """The ``leyolo_*`` metrics: requests, latencies, queue wait, batch sizes, requests in flight."""

    def __init__(self) -> None:
        prom = require("prometheus_client", "leyolo serve metrics")
        self._prom = prom
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = prom.Counter("leyolo_requests", "HTTP requests by endpoint and status code",
                                     ["endpoint", "status"], registry=r)
        self.request_seconds = prom.Histogram("leyolo_request_duration_seconds", "HTTP request latency",
                                              ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = prom.Gauge("leyolo_requests_in_flight", "HTTP requests being served", registry=r)
        self.images = prom.Counter("leyolo_images", "images run through the model", registry=r)
        self.inference_seconds = prom.Histogram("leyolo_inference_duration_seconds",
                                                "backend call latency (one call per batch)",
                                                buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait_seconds = prom.Histogram("leyolo_queue_wait_seconds",
                                                 "time an image waited in the batching queue",
                                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = prom.Histogram("leyolo_batch_size", "images per backend call", buckets=BATCH_BUCKETS,
                                         registry=r)
        self.rejected = prom.Counter("leyolo_rejected", "images refused by the batcher: queue full or timed out",
                                     ["reason"], registry=r)
        self.queue_depth = prom.Gauge("leyolo_queue_depth", "images waiting for the backend", registry=r)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST

    def bind_queue(self, depth: Callable[[], float]) -> None:
        """Read the queue depth at scrape time instead of tracking it."""
        self.queue_depth.set_function(depth)
