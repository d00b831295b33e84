"""Writer stage: per finished video, thumbnails, then the cache entry (durable), then its SQL rows.

Runs in its own thread behind a bounded queue, so file and database I/O overlap encoding and a slow
disk pushes back on the embedder instead of growing memory. The order makes a crash harmless: a
video whose cache entry exists is re-committed from the cache on the next run without decoding, and
a video whose cache entry does not exist is simply embedded again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from sqlalchemy.exc import DBAPIError

from .cache import CacheEntry, EmbeddingCache, atomic_write
from .catalog import record_failure, record_video
from store.layout import DataDir
from .discover import FoundFile
from .errors import DiskFullError, MetadataDatabaseError, database_reason, is_disk_full
from .reader import WorkItem

logger = logging.getLogger(__name__)

_STOP = object()


@dataclass
class VideoResult:
    """A fully embedded video."""

    item: WorkItem
    files: Sequence[FoundFile]  # every path with this content; files[0] is where the row points
    info: dict  # VideoInfo's fields, and `partial_reason` (None: the whole file decodes)
    windows: list[tuple[float, float]]
    embeddings: np.ndarray  # float32 (S, D)
    tokens: np.ndarray | None  # float16 (S, 1 + N, D)
    thumbnails: list[bytes | None]


@dataclass
class VideoFailure:
    item: WorkItem
    files: Sequence[FoundFile]
    error_type: str
    reason: str


@dataclass
class WriterStats:
    written: int = 0
    failed: int = 0
    partial: int = 0  # of written: videos that decode only in part
    segments: int = 0
    write_s: float = 0.0  # busy time
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (path, error type, reason)


class Writer:
    """A thread that stores results; `database=False` (non-zero ranks) writes files only."""

    def __init__(self, datadir: DataDir, cache: EmbeddingCache, *, fingerprint: str, key: str,
                 database: bool = True, max_pending: int = 16,
                 on_done: Callable[[str, bool], None] | None = None) -> None:
        self.datadir = datadir
        self.cache = cache
        self.fingerprint = fingerprint
        self.key = key
        self.database = database
        self.on_done = on_done
        self.stats = WriterStats()
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self.put_wait_s = 0.0  # time the embedder was blocked on a full queue

    def start(self) -> None:
        self._thread.start()

    def put(self, message: VideoResult | VideoFailure) -> None:
        if self.error is not None:
            self._raise()
        start = time.perf_counter()
        while True:
            try:
                self._queue.put(message, timeout=1.0)
                break
            except queue.Full:
                if self.error is not None:
                    self._raise()
        self.put_wait_s += time.perf_counter() - start

    def close(self) -> WriterStats:
        """Flush everything queued, stop the thread, and raise if it failed."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        if self.error is not None:
            self._raise()
        return self.stats

    # ----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                message = self._queue.get()
                if message is _STOP:
                    return
                start = time.perf_counter()
                if isinstance(message, VideoResult):
                    self.write_result(message)
                else:
                    self.write_failure(message)
                self.stats.write_s += time.perf_counter() - start
        except DBAPIError as e:  # the database went away: one line, the run ends with a clear error
            logger.error("index writer: the metadata database failed: %s", database_reason(e))
            self.error = e
        except OSError as e:
            if not is_disk_full(e):
                logger.exception("index writer failed")
            self.error = e
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises it
            logger.exception("index writer failed")
            self.error = e

    def _raise(self) -> None:
        assert self.error is not None
        if isinstance(self.error, DBAPIError):
            raise MetadataDatabaseError(f"the metadata database failed while writing: "
                                        f"{database_reason(self.error)}") from self.error
        if is_disk_full(self.error):
            raise DiskFullError(self.error.errno, f"writing {self.error.filename or 'the data dir'}: "
                                f"{self.error.strerror}") from self.error
        raise RuntimeError(f"the index writer failed: {self.error}") from self.error

    def write_result(self, result: VideoResult) -> None:
        video_id = result.item.video_id
        relpaths: list[str | None] = []
        for i, jpeg in enumerate(result.thumbnails):
            if jpeg is None:
                relpaths.append(None)
                continue
            path = self.datadir.thumbnail_path(video_id, i)
            path.parent.mkdir(parents=True, exist_ok=True)
            # thumbnails are not fsynced: after a power loss a missing one is cosmetic
            atomic_write(path, lambda f, data=jpeg: f.write(data), fsync=False)
            relpaths.append(self.datadir.thumbnail_relpath(video_id, i))
        starts = np.array([w[0] for w in result.windows], dtype=np.float64)
        ends = np.array([w[1] for w in result.windows], dtype=np.float64)
        entry = CacheEntry(video_id=video_id, embeddings=result.embeddings, starts=starts, ends=ends,
                           info=result.info, has_tokens=result.tokens is not None,
                           thumbnails=tuple(r is not None for r in relpaths))
        self.cache.put(entry, result.tokens)
        if self.database:
            with self.datadir.session() as session:
                record_video(session, video_id=video_id, file=result.files[0],
                             all_paths=[f.path for f in result.files], info=result.info, starts=starts,
                             ends=ends, thumbnails=relpaths, fingerprint=self.fingerprint, key=self.key)
        self.stats.written += 1
        self.stats.segments += len(result.windows)
        partial = result.info.get("partial_reason")
        self.stats.partial += bool(partial)
        logger.info("indexed %s %s (%d segments%s)", video_id, result.files[0].path, len(result.windows),
                    f"; partial: {partial}" if partial else "")
        if self.on_done is not None:
            self.on_done(video_id, True)

    def write_failure(self, failure: VideoFailure) -> None:
        for file in failure.files:
            self.stats.failures.append((file.path, failure.error_type, failure.reason))
            if self.database:
                with self.datadir.session() as session:
                    record_failure(session, file, failure.error_type, failure.reason)
        self.stats.failed += len(failure.files)
        logger.warning("failed %s: %s: %s", failure.files[0].path, failure.error_type, failure.reason)
        if self.on_done is not None:
            self.on_done(failure.item.video_id, False)


def thumbnail_relpaths(datadir: DataDir, entry: CacheEntry) -> list[str | None]:
    """Thumbnail paths (relative to the data dir) recorded in a cache entry."""
    return [datadir.thumbnail_relpath(entry.video_id, i) if has else None for i, has in enumerate(entry.thumbnails)]


def remove_thumbnails(datadir: DataDir, video_id: str) -> None:
    directory = datadir.root / Path(datadir.thumbnail_relpath(video_id, 0)).parent
    if directory.is_dir():
        for path in directory.iterdir():
            path.unlink(missing_ok=True)
        directory.rmdir()


__all__ = ["VideoFailure", "VideoResult", "Writer", "WriterStats", "remove_thumbnails", "thumbnail_relpaths"]
