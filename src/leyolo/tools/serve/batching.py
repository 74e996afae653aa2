"""Micro-batching: images of concurrent requests share one backend call.

Policy, and why:

* **One worker thread per process** runs the backend, so inference never blocks the event loop
  and the runtime's own thread pool is not oversubscribed by competing calls; more cores are
  used by more processes (``--workers``).
* **Group by letterbox shape, never pad to a common square.** ``leyolo predict`` letterboxes
  each image to its own rectangle (the next multiple of the stride); padding a 640x480 image to
  640x640 to share a tensor with a portrait one changes its detections slightly. A batch is
  therefore the oldest queued image plus the queued images of *its* shape: answers stay equal
  to ``leyolo predict``'s, and at one ``imgsz`` a photo stream has only a few shapes (640x480,
  480x640, ...), so batches still fill under load.
* **Wait at most ``max_wait`` for company, counted from the oldest image's arrival, and only
  while company is on its way** (``incoming``: requests being decoded right now): an image that
  already waited behind the previous batch does not wait again, and a lone request on an idle
  server does not wait at all (measured: a fixed 5 ms wait cost one client a third of its
  throughput at 320 px), while under load batches form at once.
* **Bounded queue**: past ``queue_size`` waiting images ``submit`` raises ``QueueFull`` (the
  app answers 503 with ``Retry-After``); an image not done by its deadline is abandoned (504)
  and skipped if the worker has not started it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .metrics import Metrics

log = logging.getLogger("leyolo.serve")


class QueueFull(Exception):
    """The queue holds ``queue_size`` images already."""


class BatcherClosed(Exception):
    """The server is shutting down."""


@dataclass(eq=False)
class Job:
    blob: np.ndarray  # [1, 3, H, W]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float
    deadline: float
    abandoned: bool = False

    @property
    def key(self) -> tuple[int, ...]:
        return tuple(self.blob.shape)


@dataclass
class BatchResult:
    """One image's share of a backend call: the whole output, its row, and what the call cost."""

    raw: Any
    index: int
    size: int
    queue_s: float
    infer_s: float


@dataclass
class MicroBatcher:
    """Queue + worker thread around ``run`` (a backend: ``[B, 3, H, W]`` float32 -> output)."""

    run: Callable[[np.ndarray], Any]
    max_batch: int = 8
    max_wait_s: float = 0.005
    queue_size: int = 64
    metrics: Metrics | None = None
    incoming: Callable[[], int] | None = None  # images about to be submitted (None: always wait max_wait)
    _jobs: deque = field(default_factory=deque, init=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False)
    _closing: bool = field(default=False, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="leyolo-batcher", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        return len(self._jobs)

    # -- the event-loop side ---------------------------------------------------------------
    def submit_many(self, blobs: Sequence[np.ndarray], timeout_s: float) -> list[Job]:
        """Queue all of ``blobs`` or none of them (``QueueFull``, ``BatcherClosed``)."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        jobs = [Job(b, loop.create_future(), loop, now, now + timeout_s) for b in blobs]
        with self._cond:
            if self._closing:
                raise BatcherClosed()
            if len(self._jobs) + len(jobs) > self.queue_size:
                raise QueueFull()
            self._jobs.extend(jobs)
            self._cond.notify()
        return jobs

    async def wait(self, jobs: Sequence[Job]) -> list[BatchResult]:
        """Results in order; ``asyncio.TimeoutError`` past the jobs' deadline (they are abandoned)."""
        remaining = max(0.0, max(j.deadline for j in jobs) - time.monotonic())
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)), remaining))
        except BaseException:  # timeout, cancellation (client gone) or a backend error: stop the rest
            self.abandon(jobs)
            raise

    async def infer(self, blobs: Sequence[np.ndarray], timeout_s: float) -> list[BatchResult]:
        return await self.wait(self.submit_many(blobs, timeout_s))

    def notify(self) -> None:
        """Wake the worker: ``incoming`` changed without a submission (a decode failed)."""
        with self._cond:
            self._cond.notify()

    def abandon(self, jobs: Sequence[Job]) -> None:
        with self._cond:
            for job in jobs:
                job.abandoned = True
                try:
                    self._jobs.remove(job)
                except ValueError:
                    pass  # already taken by the worker

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Refuse new images, finish the queued ones, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- the worker side -----------------------------------------------------------------
    def _take(self) -> list[Job] | None:
        """The next batch (oldest job + queued jobs of its shape), or None once closed and empty."""
        with self._cond:
            while not self._jobs:
                if self._closing:
                    return None
                self._cond.wait()
            first = self._jobs[0]
            wait_until = first.enqueued + self.max_wait_s
            while True:
                same = [j for j in self._jobs if j.key == first.key][: self.max_batch]
                remaining = wait_until - time.monotonic()
                alone = self.incoming is not None and self.incoming() == 0
                if len(same) >= self.max_batch or remaining <= 0 or alone or self._closing or first.abandoned:
                    break
                self._cond.wait(remaining)
            taken = set(map(id, same))
            self._jobs = deque(j for j in self._jobs if id(j) not in taken)
            return same

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            now = time.monotonic()
            live = [j for j in batch if not j.abandoned and now < j.deadline]
            for job in batch:
                if job not in live:
                    _deliver(job, asyncio.TimeoutError())
            if live:
                self._run(live, now)

    def _run(self, jobs: list[Job], now: float) -> None:
        blob = jobs[0].blob if len(jobs) == 1 else np.concatenate([j.blob for j in jobs])
        start = time.perf_counter()
        try:
            raw = self.run(blob)
        except Exception as exc:  # handed to each request; the worker lives on
            log.exception("backend failed on a batch of %d", len(jobs))
            for job in jobs:
                _deliver(job, exc)
            return
        infer = time.perf_counter() - start
        if self.metrics is not None:
            self.metrics.inference_seconds.observe(infer)
            self.metrics.batch_size.observe(len(jobs))
            self.metrics.images.inc(len(jobs))
            for job in jobs:
                self.metrics.queue_wait_seconds.observe(now - job.enqueued)
        for i, job in enumerate(jobs):
            _deliver(job, BatchResult(raw, i, len(jobs), now - job.enqueued, infer))


def _deliver(job: Job, value: Any) -> None:
    """Resolve a job's future on its own event loop (the worker is another thread)."""

    def resolve() -> None:
        if job.future.done():
            return
        if isinstance(value, BaseException):
            job.future.set_exception(value)
        else:
            job.future.set_result(value)

    try:
        job.loop.call_soon_threadsafe(resolve)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass
