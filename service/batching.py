"""One thread that owns the model: the event loop never runs a model call, and concurrent text queries are
micro-batched into one encoder call.

Queued queries are batched greedily (whatever waits when the thread gets free, up to `max_batch`); a
`window_s` > 0 also waits that long for more (worth it on a GPU, where a batch of 32 costs about what one
query does). Other model jobs (re-ranking, QA) run one at a time, alternating with batches. The queue is
bounded: past `max_queue` waiting jobs, a request fails at once with 503 + Retry-After instead of waiting
without limit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar

from .errors import OverloadedError, UnavailableError
from .metrics import Metrics

logger = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


@dataclass
class _Pending:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    payload: Any = None
    fn: Optional[Callable[[], Any]] = None


def _resolve(future: asyncio.Future, result: Any, error: Optional[BaseException]) -> None:
    if future.done():  # cancelled: the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _deliver(item: _Pending, result: Any = None, error: Optional[BaseException] = None) -> None:
    try:
        item.loop.call_soon_threadsafe(_resolve, item.future, result, error)
    except RuntimeError:  # the loop is closed (shutdown); nobody is waiting any more
        pass


class ModelWorker(Generic[P, R]):
    """A model-owning thread with a bounded queue; `submit` is batched through `batch_fn`, `run` is not."""

    def __init__(self, batch_fn: Callable[[Sequence[P]], Sequence[R]], *, max_batch: int = 32,
                 window_s: float = 0.0, max_queue: int = 64, retry_after_s: int = 1,
                 metrics: Optional[Metrics] = None, name: str = "model-worker") -> None:
        self.batch_fn = batch_fn
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.name = name
        self._cond = threading.Condition()
        self._batched: deque[_Pending] = deque()
        self._jobs: deque[_Pending] = deque()
        self._stopped = False
        self._thread: Optional[threading.Thread] = None

    # --- lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def depth(self) -> int:
        return len(self._batched) + len(self._jobs)

    # --- submitting (event loop side)

    async def submit(self, payload: P) -> R:
        """Run `payload` through `batch_fn` together with whatever else is queued."""
        loop = asyncio.get_running_loop()
        item = _Pending(loop, loop.create_future(), payload=payload)
        self._enqueue(self._batched, item)
        return await item.future

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the model thread, after the jobs queued before it."""
        loop = asyncio.get_running_loop()
        item = _Pending(loop, loop.create_future(), fn=lambda: fn(*args))
        self._enqueue(self._jobs, item)
        return await item.future

    def _enqueue(self, queue: deque, item: _Pending) -> None:
        with self._cond:
            if self._stopped:
                raise UnavailableError("the service is shutting down")
            if self.depth >= self.max_queue:
                if self.metrics is not None:
                    self.metrics.rejected.inc()
                raise OverloadedError(f"overloaded: {self.depth} model jobs are waiting; retry shortly",
                                      self.retry_after_s)
            queue.append(item)
            if self.metrics is not None:
                self.metrics.queue_depth.set(self.depth)
            self._cond.notify()

    # --- the thread

    def _next(self, jobs_first: bool) -> tuple[Optional[_Pending], list[_Pending]]:
        """Under the lock: one job, or a batch (waiting up to window_s to fill it). (None, []) = stop."""
        while not self._batched and not self._jobs:
            if self._stopped:
                return None, []
            self._cond.wait()
        if self._jobs and (jobs_first or not self._batched):
            return self._jobs.popleft(), []
        batch = [self._batched.popleft()]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            if self._batched:
                batch.append(self._batched.popleft())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stopped:
                break
            self._cond.wait(remaining)
        return None, batch

    def _loop(self) -> None:
        jobs_first = False
        while True:
            with self._cond:
                job, batch = self._next(jobs_first)
                if self.metrics is not None:
                    self.metrics.queue_depth.set(self.depth)
            if job is None and not batch:
                break
            if job is not None:
                jobs_first = False
                try:
                    _deliver(job, job.fn())
                except BaseException as e:  # delivered to the awaiting request, which maps it
                    _deliver(job, error=e)
                continue
            jobs_first = True  # alternate, so neither kind starves the other
            batch = [item for item in batch if not item.future.cancelled()]
            if not batch:
                continue
            if self.metrics is not None:
                self.metrics.batch_size.observe(len(batch))
            try:
                results = self.batch_fn([item.payload for item in batch])
                if len(results) != len(batch):
                    raise AssertionError(f"batch_fn returned {len(results)} results for {len(batch)} inputs")
            except BaseException as e:
                logger.exception("model batch of %d failed", len(batch))
                for item in batch:
                    _deliver(item, error=e)
                continue
            for item, result in zip(batch, results):
                _deliver(item, result)
        with self._cond:  # fail whatever is left after a stop
            leftovers = list(self._batched) + list(self._jobs)
            self._batched.clear()
            self._jobs.clear()
        for item in leftovers:
            _deliver(item, error=UnavailableError("the service is shutting down"))
