"""The index version being served, switching to a newly published one without a restart, and filtered search.

Requests hold a lease on the snapshot they started with. A watcher polls `index/CURRENT`; a new version is
opened and checked off the request path, then swapped in; the old snapshot is closed when its last lease
is released, so no in-flight request ever sees a closed index.

Filters are applied inside the FAISS search (a search over the passing vectors only, whatever their share),
so a selective filter still finds the best passing moments: the rows a version carries (each segment's
video path and duration) give the passing rows, and the store searches each part of the version over them
with an ID selector (store/search.py: effort scaled to the passing share, or exhaustive where few pass).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from store.layout import DataDir
from store.manifest import IndexManifest, IndexNotFoundError
from store.search import RowSelection
from store.snapshot import IndexSnapshot

from . import schemas
from .errors import IndexUnavailableError
from .metrics import Metrics
from .ranking import prefix_folder

logger = logging.getLogger(__name__)

_SELECTIONS_KEPT = 32  # filter sets kept per served version (a bitmap of one bit per vector each)


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

    def selection(self, filters: schemas.SearchFilters) -> Optional["Selection"]:
        """The segments of this version that pass `filters`; None when the version carries no rows (versions
        written before the row columns: the caller filters the hits instead). Blocking (first use builds a
        per-version table)."""
        return self._entry.selection(filters)

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
    _table: Optional["RowTable"] = None
    _table_built: bool = False
    _selections: "OrderedDict[tuple, Selection]" = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def selection(self, filters: schemas.SearchFilters) -> Optional["Selection"]:
        key = (prefix_folder(filters.path_prefix) if filters.path_prefix is not None else None,
               filters.min_duration, filters.max_duration)
        with self._lock:
            if not self._table_built:
                self._table = RowTable.of(self.snapshot)
                self._table_built = True
            if self._table is None:
                return None
            found = self._selections.get(key)
            if found is not None:
                self._selections.move_to_end(key)
                return found
            table = self._table
        found = table.select(filters)  # outside the lock: other filters need not wait
        with self._lock:
            self._selections[key] = found
            if len(self._selections) > _SELECTIONS_KEPT:
                self._selections.popitem(last=False)
        return found

    def forget(self) -> None:
        """Drop the filter tables (they hold the snapshot) once it is closed."""
        with self._lock:
            self._table, self._table_built = None, True
            self._selections.clear()


@dataclass(frozen=True, eq=False)
class Selection:
    """The rows of one index version that pass one set of filters (and that the version serves)."""

    table: "RowTable"
    rows: RowSelection  # per part of the version, the passing rows

    @property
    def count(self) -> int:
        """Passing vectors."""
        return self.rows.count

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """As `IndexSnapshot.search`, over the passing vectors only (store/search.py). Blocking."""
        return self.table.snapshot.search(queries, k, self.rows)


class RowTable:
    """Which rows of an index version pass search filters, from the rows the version carries (over the rows of
    all its parts: the snapshot leaves out those it does not serve)."""

    def __init__(self, snapshot: IndexSnapshot, video_pos: np.ndarray, paths: list[str],
                 durations: list[Optional[float]]) -> None:
        self.snapshot = snapshot
        self.video_pos = video_pos  # int (n,) video of each row
        self.durations = np.array([np.nan if d is None else d for d in durations], dtype=np.float64)  # per video
        self._order = np.array(sorted(range(len(paths)), key=paths.__getitem__), dtype=np.int64)
        self._sorted_paths = [paths[v] for v in self._order.tolist()]

    @classmethod
    def of(cls, snapshot: IndexSnapshot) -> Optional["RowTable"]:
        """The table of a snapshot, or None when it carries no rows or its index cannot take a selector."""
        columns = snapshot.video_columns()
        if columns is None or not snapshot.supports_selection:
            return None  # no rows, or a GPU index: filter the hits after the search
        return cls(snapshot, *columns)

    def passing_videos(self, filters: schemas.SearchFilters) -> np.ndarray:
        """bool per video: the same test as `ranking.passes` (a duration filter fails an unknown duration)."""
        keep = np.ones(len(self.durations), dtype=bool)
        if filters.path_prefix is not None:
            folder = prefix_folder(filters.path_prefix)
            paths = self._sorted_paths
            within = np.zeros(len(paths), dtype=bool)
            # sorted, the path equal to the folder and those below it ("folder/...", up to "folder0": "0" follows
            # "/") are two runs
            within[bisect.bisect_left(paths, folder):bisect.bisect_right(paths, folder)] = True
            within[bisect.bisect_left(paths, folder + "/"):bisect.bisect_left(paths, folder + "0")] = True
            keep[self._order[~within]] = False
        with np.errstate(invalid="ignore"):
            if filters.min_duration is not None:
                keep &= self.durations >= filters.min_duration  # NaN (unknown) compares False
            if filters.max_duration is not None:
                keep &= self.durations <= filters.max_duration
        return keep

    def select(self, filters: schemas.SearchFilters) -> Selection:
        return Selection(self, self.snapshot.select(self.passing_videos(filters)[self.video_pos]))


class VersionHolder:
    """What the FAISS and pgvector holders share: the served entry (its `.snapshot`), the versions refused and
    why, the switch to a newly published version and the loop that polls for one. A holder says how to read
    the published version (`_published_version`), open it (`_open`), serve it (`_swap`) and what a failed poll
    logs (`_poll_failed`)."""

    _OPEN_FAILED = "index version %s named by CURRENT cannot be opened: %s"

    def __init__(self, data_dir: DataDir, check: Callable[[IndexManifest], None],
                 metrics: Optional[Metrics] = None) -> None:
        self.data_dir = data_dir
        self._check = check  # raises when a version cannot be served with the loaded model
        self.metrics = metrics
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._current = None  # the served entry
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

    def refresh(self) -> bool:
        """Serve the published version, if new and servable; True when it switched. Blocking."""
        with self._refresh_lock:
            version = self._published_version()
            if version is None or version == self.version or version in self._rejected:
                return False
            try:
                snapshot = self._open(version)
            except IndexNotFoundError as e:  # the published version moved on, or retention raced us
                logger.warning(self._OPEN_FAILED, version, e)
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

    async def watch(self, interval_s: float) -> None:
        """Poll for a new published version forever (cancel to stop); each check runs in a worker thread."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.refresh)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._poll_failed(e)

    def _poll_failed(self, error: Exception) -> None:
        logger.exception("checking %s for a new index version failed", self.data_dir.root)


class IndexHolder(VersionHolder):
    """Holds the current snapshot; `refresh` switches to the version index/CURRENT names if it changed."""

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

    def _published_version(self) -> Optional[int]:
        return self.data_dir.current_version()

    def _open(self, version: int) -> IndexSnapshot:
        return self.data_dir.open_index(version)

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
        entry.forget()
        try:
            entry.snapshot.close()
        except Exception:
            logger.exception("closing index version %d failed", entry.snapshot.version)
        else:
            logger.debug("closed index version %d", entry.snapshot.version)

    def close(self) -> None:
        with self._lock:
            entry, self._current = self._current, None
            if entry is not None:
                entry.retired = True
            close = entry is not None and entry.refs == 0
        if close:
            self._close(entry)
