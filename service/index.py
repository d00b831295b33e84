"""The index version being served, and switching to a newly published one without a restart.

Requests hold a lease on the snapshot they started with. A watcher polls `index/CURRENT`; a new version is
opened and checked off the request path, then swapped in; the old snapshot is closed when its last lease
is released, so no in-flight request ever sees a closed index.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

from indexer.datadir import DataDir, IndexManifest, IndexNotFoundError, IndexSnapshot

from .errors import IndexUnavailableError
from .metrics import Metrics

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class IndexLease:
    """One request's hold on one snapshot; release exactly once (it is a context manager)."""

    snapshot: IndexSnapshot
    _entry: "_Entry" = field(repr=False)
    _holder: "IndexHolder" = field(repr=False)
    _released: bool = False

    @property
    def version(self) -> int:
        return self.snapshot.version

    @property
    def manifest(self) -> IndexManifest:
        return self.snapshot.manifest

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._holder._release(self._entry)

    def __enter__(self) -> "IndexLease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(eq=False)
class _Entry:
    snapshot: IndexSnapshot
    refs: int = 0
    retired: bool = False


class IndexHolder:
    """Holds the current snapshot; `refresh` switches to the published version if it changed."""

    def __init__(self, data_dir: DataDir, check: Callable[[IndexManifest], None],
                 metrics: Optional[Metrics] = None) -> None:
        self.data_dir = data_dir
        self._check = check  # raises when a version cannot be served with the loaded model
        self.metrics = metrics
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._current: Optional[_Entry] = None
        self._rejected: dict[int, str] = {}  # version -> why it is not served (not retried)
        self.error: Optional[str] = None  # why the newest published version is not served

    @property
    def version(self) -> Optional[int]:
        entry = self._current
        return entry.snapshot.version if entry is not None else None

    @property
    def manifest(self) -> Optional[IndexManifest]:
        entry = self._current
        return entry.snapshot.manifest if entry is not None else None

    def acquire(self) -> IndexLease:
        """A lease on the current snapshot; 503 when there is none yet."""
        with self._lock:
            entry = self._current
            if entry is None:
                raise IndexUnavailableError(
                    f"no index is published in {self.data_dir.root} yet; run `alpro-index` on a video folder"
                    + (f" ({self.error})" if self.error else ""))
            entry.refs += 1
        return IndexLease(entry.snapshot, entry, self)

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.refs -= 1
            close = entry.retired and entry.refs == 0
        if close:
            self._close(entry)

    def refresh(self) -> bool:
        """Serve the version index/CURRENT names, if new and servable; True when it switched. Blocking."""
        with self._refresh_lock:
            version = self.data_dir.current_version()
            if version is None or version == self.version:
                return False
            if version in self._rejected:
                return False
            try:
                snapshot = self.data_dir.open_index(version)
            except IndexNotFoundError as e:  # CURRENT moved past a version being written, or a race
                logger.warning("index version %s named by CURRENT cannot be opened: %s", version, e)
                return False
            try:
                self._check(snapshot.manifest)
            except Exception as e:
                snapshot.close()
                self._rejected[version] = str(e)
                self.error = f"index version {version} not served: {e}"
                logger.error("%s", self.error)
                return False
            self._swap(snapshot)
            return True

    def install(self, snapshot: IndexSnapshot) -> None:
        """Serve an already opened and checked snapshot (start-up)."""
        with self._refresh_lock:
            self._swap(snapshot)

    def _swap(self, snapshot: IndexSnapshot) -> None:
        new = _Entry(snapshot)
        with self._lock:
            old, self._current = self._current, new
            if old is not None:
                old.retired = True
            close_old = old is not None and old.refs == 0
        self.error = None
        if self.metrics is not None:
            self.metrics.index_version.set(snapshot.version)
            if old is not None:
                self.metrics.index_swaps.inc()
        logger.info("serving index version %d (%d vectors)%s", snapshot.version, snapshot.manifest.num_vectors,
                    f", replacing version {old.snapshot.version}" if old is not None else "")
        if close_old:
            self._close(old)

    def _close(self, entry: _Entry) -> None:
        try:
            entry.snapshot.close()
        except Exception:
            logger.exception("closing index version %d failed", entry.snapshot.version)
        else:
            logger.debug("closed index version %d", entry.snapshot.version)

    async def watch(self, interval_s: float) -> None:
        """Poll CURRENT forever (cancel to stop); opening a new version happens in a worker thread."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.refresh)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("checking %s for a new index version failed", self.data_dir.root)

    def close(self) -> None:
        with self._lock:
            entry, self._current = self._current, None
            if entry is not None:
                entry.retired = True
            close = entry is not None and entry.refs == 0
        if close:
            self._close(entry)
