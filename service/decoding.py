"""Decoding video on demand (VTM re-ranking, QA) with bounded work: a fixed pool of decode threads and a
bounded number of decode jobs admitted at once. A job beyond the bound is refused at once with 503 and
Retry-After, like the model queue; a job nobody waits for any more (its request timed out or its client
left) is cancelled if it has not started, and a started one finishes its file and frees its slot.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from .errors import OverloadedError
from .metrics import Metrics

T = TypeVar("T")


DECODE_NICENESS = 10  # decode threads (and FFmpeg's threads they start) give way to search under load


def _yield_to_search() -> None:
    """Lower this decode thread's CPU priority (Linux: niceness is per thread and inherited by the threads it
    starts), so long decodes for QA fill idle cores instead of taking them from /search."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODE_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: decode at normal priority
        pass


class DecodePool:
    """`run(fn, *args)` on one of `workers` threads, at most `max_jobs` admitted (queued or running) at once."""

    def __init__(self, workers: int, max_jobs: int, retry_after_s: int, metrics: Metrics) -> None:
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="decode", initializer=_yield_to_search)
        self.max_jobs = max_jobs
        self._retry_after_s = retry_after_s
        self._metrics = metrics
        self._jobs = 0  # admitted and not finished (queued or running)
        self._lock = threading.Lock()

    @property
    def jobs(self) -> int:
        return self._jobs

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._jobs >= self.max_jobs:
                self._metrics.rejected.inc()
                raise OverloadedError(f"overloaded: {self._jobs} video decodes are admitted already; retry shortly",
                                      self._retry_after_s)
            self._jobs += 1
            self._metrics.decode_jobs.set(self._jobs)
        future = self._executor.submit(fn, *args)
        future.add_done_callback(self._done)  # the slot is freed when the work ends, not when the waiter leaves
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # not started yet: it never runs; running: it finishes, unread
            raise

    def _done(self, _: object) -> None:
        with self._lock:
            self._jobs -= 1
            self._metrics.decode_jobs.set(self._jobs)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
