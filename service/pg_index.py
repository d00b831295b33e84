"""The index version being served from PostgreSQL (ALPRO_VECTOR_STORE=pgvector), and filtered search in SQL.

The same interface as service.index (holder, lease, selection), over store.pgvector: a snapshot is a
published version of the vector table, a lease names it, a selection is a set of SQL conditions with its
count. Replicas share nothing but the database: each polls the published version (one indexed query per
`index_poll_s`) and swaps to a newer one. A snapshot holds no files, so there is nothing to lease against
retention; a request that outlives several publishes sees the rows retention dropped vanish (a 503).
A database fault on the search path is a 503 `database_unavailable`, as on the catalog's paths.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from store.layout import DataDir
from store.manifest import IndexManifest, IndexNotFoundError
from store.pgvector import RowFilter, VectorSnapshot, create_vector_engine, read_current_version

from . import schemas
from .catalog import CatalogUnavailableError
from .errors import IndexUnavailableError
from .index import VersionHolder
from .metrics import Metrics
from .ranking import prefix_folder

logger = logging.getLogger(__name__)

_SELECTIONS_KEPT = 32  # filter sets (with their counts) kept per served version


def _unavailable_on_db_error(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except DBAPIError as e:
            logger.warning("vector database error: %s", e.orig)
            raise CatalogUnavailableError(f"the vector database cannot be read ({type(e.orig).__name__}: "
                                          f"{e.orig})") from e

    return wrapper


class ServedSnapshot(VectorSnapshot):
    """A published version as the engine uses it: database faults are 503s."""

    search = _unavailable_on_db_error(VectorSnapshot.search)
    count = _unavailable_on_db_error(VectorSnapshot.count)
    segment_rows = _unavailable_on_db_error(VectorSnapshot.segment_rows)
    vectors = _unavailable_on_db_error(VectorSnapshot.vectors)


def row_filter(filters: schemas.SearchFilters) -> RowFilter:
    folder = prefix_folder(filters.path_prefix) if filters.path_prefix is not None else None
    return RowFilter(folder, filters.min_duration, filters.max_duration)


@dataclass(frozen=True, eq=False)
class PgSelection:
    """The vectors of one version that pass one set of filters (SQL conditions; `count` of them)."""

    snapshot: ServedSnapshot
    where: RowFilter
    count: int

    def search(self, queries, k: int):
        """As the snapshot's search, over the passing vectors only. Blocking."""
        return self.snapshot.search(queries, k, self.where, self.count)


@dataclass(eq=False)
class _Entry:
    snapshot: ServedSnapshot
    _selections: "OrderedDict[RowFilter, PgSelection]" = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def selection(self, filters: schemas.SearchFilters) -> PgSelection:
        where = row_filter(filters)
        with self._lock:
            found = self._selections.get(where)
            if found is not None:
                self._selections.move_to_end(where)
                return found
        found = PgSelection(self.snapshot, where, self.snapshot.count(where))  # outside the lock: a query
        with self._lock:
            self._selections[where] = found
            if len(self._selections) > _SELECTIONS_KEPT:
                self._selections.popitem(last=False)
        return found


@dataclass(eq=False)
class PgLease:
    """One request's hold on one version (a name, not a resource: the rows stay until retention)."""

    snapshot: ServedSnapshot
    _entry: _Entry = field(repr=False)

    @property
    def version(self) -> int:
        return self.snapshot.version

    @property
    def manifest(self) -> IndexManifest:
        return self.snapshot.manifest

    def selection(self, filters: schemas.SearchFilters) -> PgSelection:
        """The segments of this version that pass `filters`. Blocking (a count query, cached per filter set)."""
        return self._entry.selection(filters)

    def release(self) -> None:
        pass

    def __enter__(self) -> "PgLease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def open_published(data_dir: DataDir, engine: Optional[Engine] = None) -> Optional[ServedSnapshot]:
    """The published version (start-up), or None before the first publish or while the database is down."""
    engine = engine or create_vector_engine(data_dir.database_url)
    try:
        return ServedSnapshot.open(engine)
    except IndexNotFoundError:
        return None
    except DBAPIError as e:
        logger.warning("the vector database cannot be read (%s); serving once it can", e.orig)
        return None


class PgIndexHolder(VersionHolder):
    """Holds the served version; `refresh` switches to the published one if it changed (service.index's API)."""

    _OPEN_FAILED = "pgvector index version %s cannot be opened: %s"

    def __init__(self, data_dir: DataDir, check: Callable[[IndexManifest], None],
                 metrics: Optional[Metrics] = None) -> None:
        super().__init__(data_dir, check, metrics)
        self._engine: Optional[Engine] = None

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = create_vector_engine(self.data_dir.database_url)
            return self._engine

    def acquire(self) -> PgLease:
        entry = self._current
        if entry is None:
            raise IndexUnavailableError(
                "no index is published in the vector database yet; run `alpro-index` on a video folder "
                "(with ALPRO_VECTOR_STORE=pgvector)" + (f" ({self.error})" if self.error else ""))
        return PgLease(entry.snapshot, entry)

    def _published_version(self) -> Optional[int]:
        with self.engine.connect() as conn:
            return read_current_version(conn)

    def _open(self, version: int) -> ServedSnapshot:
        return ServedSnapshot.open(self.engine, version)

    def install(self, snapshot: VectorSnapshot) -> None:
        """Serve an already opened and checked snapshot (start-up); its engine becomes this holder's."""
        with self._refresh_lock:
            with self._lock:
                if self._engine is None:
                    self._engine = snapshot.engine
            if not isinstance(snapshot, ServedSnapshot):
                snapshot = ServedSnapshot(snapshot.engine, snapshot.manifest)
            self._swap(snapshot)

    def _swap(self, snapshot: ServedSnapshot) -> None:
        with self._lock:
            old, self._current = self._current, _Entry(snapshot)
        self.error = None
        if self.metrics is not None:
            self.metrics.index_version.set(snapshot.version)
            if old is not None:
                self.metrics.index_swaps.inc()
        logger.info("serving pgvector index version %d (%d vectors, %s)%s", snapshot.version,
                    snapshot.manifest.num_vectors, snapshot.manifest.index_type,
                    f", replacing version {old.snapshot.version}" if old is not None else "")
        if old is not None:
            old.snapshot.close()  # its row cache only: requests still on it query by its version

    def _poll_failed(self, error: Exception) -> None:
        if isinstance(error, DBAPIError):
            logger.warning("checking the vector database for a new index version failed: %s", error.orig)
        else:
            logger.exception("checking the vector database for a new index version failed")

    def close(self) -> None:
        with self._lock:
            entry, self._current = self._current, None
            engine, self._engine = self._engine, None
        if entry is not None:
            entry.snapshot.close()
        if engine is not None:
            engine.dispose()


__all__ = ["PgIndexHolder", "PgLease", "PgSelection", "ServedSnapshot", "open_published", "row_filter"]
