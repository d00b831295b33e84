"""Read-only queries on the indexer's metadata database (SQLAlchemy Core over its ORM tables: few objects
per search, so the lookup stays well under a millisecond)."""

from __future__ import annotations

import enum
import functools
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Any, Iterable, Optional, Sequence

from sqlalchemy import bindparam, func, inspect, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, NoSuchTableError

from store.tables import Failure, LibraryRoot, Segment, Video

from .errors import UnavailableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentRow:
    """A segment (one FAISS vector) with what a search result needs of its video."""

    segment_id: int
    video_id: str
    index: int
    start_s: float
    end_s: float
    thumbnail: Optional[str]  # relative to the data dir
    path: str  # the video file
    duration_s: Optional[float]
    preview: Optional[bool] = None  # a browser preview was made (None: not recorded here; look at the file)


@dataclass(frozen=True)
class VideoFileRecord:
    """What the indexer recorded of a video's file."""

    path: str  # absolute, as found (links not resolved)
    size_bytes: int
    mtime: float  # st_mtime, seconds since the epoch


class FileCheck(enum.Enum):
    """Whether a video's file may be served, and if not, why."""

    SERVABLE = "servable"
    MISSING = "missing"  # no regular file there any more
    NO_ROOTS = "no_roots"  # the database records no library folder (indexed before they were recorded)
    OUTSIDE = "outside"  # resolves outside every recorded library folder
    CHANGED = "changed"  # size or mtime differ from the indexed file's


@dataclass(frozen=True)
class LibraryFile:
    check: FileCheck
    path: Optional[Path] = None  # the resolved file, when servable
    stat: Optional[os.stat_result] = None  # its stat, when servable


MTIME_TOLERANCE_S = 1e-6  # as indexer.catalog: a few float64 ulps of a Unix time


def check_library_file(record: VideoFileRecord, roots: Sequence[str]) -> LibraryFile:
    """Resolve the recorded path (all links) and serve it only inside a recorded root, unchanged since indexing.

    Blocking (file system). Roots are the resolved folders the indexer walked; containment is by whole path
    components. The file served is the resolved one, so a link swapped after this check changes nothing.
    """
    real = os.path.realpath(record.path)
    try:
        st = os.stat(real)
    except OSError:
        return LibraryFile(FileCheck.MISSING)
    if not S_ISREG(st.st_mode):
        return LibraryFile(FileCheck.MISSING)
    if not roots:
        return LibraryFile(FileCheck.NO_ROOTS)
    if not any(Path(real).is_relative_to(root) for root in roots):
        return LibraryFile(FileCheck.OUTSIDE)
    if st.st_size != record.size_bytes or abs(st.st_mtime_ns / 1e9 - record.mtime) > MTIME_TOLERANCE_S:
        return LibraryFile(FileCheck.CHANGED)
    return LibraryFile(FileCheck.SERVABLE, Path(real), st)


class CatalogUnavailableError(UnavailableError):
    code = "database_unavailable"


def _unavailable_on_db_error(method):
    """A missing, locked or schema-less database is a 503 with its reason, not a 500."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except DBAPIError as e:
            logger.warning("metadata database error: %s", e.orig)
            raise CatalogUnavailableError(f"the metadata database cannot be read ({type(e.orig).__name__}: "
                                          f"{e.orig}); has the data dir been indexed?") from e

    return wrapper


class RowCache:
    """Segment rows by id, LRU, for one index version at a time. Rows are never edited once written (store.tables),
    so only a new version (which may drop videos) makes the cache stale; it empties itself then."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._rows: OrderedDict[int, SegmentRow] = OrderedDict()
        self._version: Optional[int] = None
        self._lock = threading.Lock()

    def get_many(self, version: int, ids: Iterable[int]) -> dict[int, SegmentRow]:
        with self._lock:
            if version != self._version:
                self._rows.clear()
                self._version = version
            found = {}
            for segment_id in ids:
                row = self._rows.get(segment_id)
                if row is not None:
                    self._rows.move_to_end(segment_id)
                    found[segment_id] = row
            return found

    def put_many(self, version: int, rows: Iterable[SegmentRow]) -> None:
        if self.max_rows <= 0:
            return
        with self._lock:
            if version != self._version:
                return  # a request of an older version finishing late
            for row in rows:
                self._rows[row.segment_id] = row
            while len(self._rows) > self.max_rows:
                self._rows.popitem(last=False)

    def __len__(self) -> int:
        return len(self._rows)


VIDEO_FIELDS = ("id", "path", "size_bytes", "mtime", "duration_s", "fps", "width", "height", "num_frames",
                "indexed_at", "checkpoint_fingerprint", "codec", "container", "partial", "partial_reason",
                "preview_bytes")
_SORT_COLUMNS = {"path": Video.path, "indexed_at": Video.indexed_at, "mtime": Video.mtime, "duration": Video.duration_s,
                 "size": Video.size_bytes}


@dataclass(frozen=True)
class VideoListing:
    """One page of videos: each video's columns (those the database has) and its segment and thumbnail counts."""

    total: int
    videos: list[dict[str, Any]]


def path_condition(prefix: str) -> Any:
    """SQL for `ranking.under_path(Video.path, prefix)`: the file or folder, by whole path components."""
    folder = prefix.rstrip("/")
    return or_(Video.path == folder, Video.path.startswith(folder + "/", autoescape=True))


class Catalog:
    """Segment, video and count look-ups; every method is blocking (call it from a worker thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._segment_columns = (Segment.id, Segment.video_id, Segment.index, Segment.start_s, Segment.end_s,
                                 Segment.thumbnail, Video.path, Video.duration_s)
        self._by_ids = (select(*self._segment_columns).join(Video, Segment.video_id == Video.id)
                        .where(Segment.id.in_(bindparam("ids", expanding=True))))
        self._video_columns = [getattr(Video, name) for name in VIDEO_FIELDS if hasattr(Video, name)]
        self._has_video_columns = False  # the database has every one of them (see _present_video_columns)
        self._fast_sql = self._segments_sql(engine)
        self._has_roots_table = False

    @staticmethod
    def _segments_sql(engine: Engine) -> Optional[tuple[str, str]]:
        """The per-search look-up as driver SQL with `{}` for the placeholders, where the paramstyle allows.

        Compiling the Core statement costs about 0.3 ms a search, several times the query itself.
        """
        marker = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(engine.dialect.paramstyle)
        if marker is None or engine.dialect.name not in ("sqlite", "postgresql"):
            return None
        s, v = Segment.__table__, Video.__table__
        return (f'SELECT s.id, s.video_id, s."index", s.start_s, s.end_s, s.thumbnail, v.path, v.duration_s '
                f"FROM {s.name} AS s JOIN {v.name} AS v ON s.video_id = v.id WHERE s.id IN ({{}})", marker)

    @staticmethod
    def _segment_row(row: Any) -> SegmentRow:
        return SegmentRow(int(row[0]), str(row[1]), int(row[2]), float(row[3]), float(row[4]), row[5], str(row[6]),
                          None if row[7] is None else float(row[7]))

    @_unavailable_on_db_error
    def segments(self, ids: Iterable[int]) -> dict[int, SegmentRow]:
        """Rows of the given segment ids that exist (a vector whose row is gone is simply absent)."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        if self._fast_sql is not None:
            sql, marker = self._fast_sql
            connection = self.engine.raw_connection()
            try:
                cursor = connection.cursor()
                cursor.execute(sql.format(", ".join([marker] * len(ids))), tuple(ids))
                rows = cursor.fetchall()
                cursor.close()
            except self.engine.dialect.loaded_dbapi.Error as e:  # what Core would have wrapped in DBAPIError
                raise CatalogUnavailableError(f"the metadata database cannot be read ({type(e).__name__}: {e}); "
                                              "has the data dir been indexed?") from e
            finally:
                connection.close()  # back to the pool
        else:
            with self.engine.connect() as conn:
                rows = conn.execute(self._by_ids, {"ids": ids}).all()
        return {int(row[0]): self._segment_row(row) for row in rows}

    def _present_video_columns(self) -> list:
        """The VIDEO_FIELDS columns the database has: one from before a column was added (store.tables.
        ADDED_COLUMNS) lacks it until the indexer's next run, which may come while this service runs."""
        if self._has_video_columns:
            return self._video_columns
        try:
            present = {c["name"] for c in inspect(self.engine).get_columns(Video.__tablename__)}
        except NoSuchTableError:
            return self._video_columns  # the query fails as a missing table does: "has it been indexed?"
        columns = [c for c in self._video_columns if c.key in present]
        self._has_video_columns = len(columns) == len(self._video_columns)
        return columns

    @_unavailable_on_db_error
    def video(self, video_id: str) -> Optional[dict[str, Any]]:
        """The video's columns (those the database has), or None."""
        columns = self._present_video_columns()
        with self.engine.connect() as conn:
            row = conn.execute(select(*columns).where(Video.id == video_id)).first()
        return None if row is None else dict(row._mapping)

    @_unavailable_on_db_error
    def partial_count(self) -> int:
        """Videos that decode only in part (0 in a database from before that was recorded)."""
        if "partial" not in {c.key for c in self._present_video_columns()}:
            return 0
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Video).where(Video.partial.is_(True)))
                       .scalar_one())

    @_unavailable_on_db_error
    def video_segments(self, video_id: str) -> list[SegmentRow]:
        stmt = (select(*self._segment_columns).join(Video, Segment.video_id == Video.id)
                .where(Segment.video_id == video_id).order_by(Segment.index))
        with self.engine.connect() as conn:
            return [self._segment_row(row) for row in conn.execute(stmt)]

    @_unavailable_on_db_error
    def segment(self, video_id: str, index: int) -> Optional[SegmentRow]:
        stmt = (select(*self._segment_columns).join(Video, Segment.video_id == Video.id)
                .where(Segment.video_id == video_id, Segment.index == index).order_by(Segment.id.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else self._segment_row(row)

    @_unavailable_on_db_error
    def video_path(self, video_id: str) -> Optional[Path]:
        with self.engine.connect() as conn:
            path = conn.execute(select(Video.path).where(Video.id == video_id)).scalar_one_or_none()
        return None if path is None else Path(path)

    @_unavailable_on_db_error
    def video_file(self, video_id: str) -> Optional[VideoFileRecord]:
        """Path, size and mtime the indexer recorded of the video's file, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(Video.path, Video.size_bytes, Video.mtime).where(Video.id == video_id)).first()
        return None if row is None else VideoFileRecord(str(row[0]), int(row[1]), float(row[2]))

    @_unavailable_on_db_error
    def library_roots(self) -> tuple[str, ...]:
        """The resolved folders the indexer walked; none in a database from before it recorded them."""
        if not self._has_roots_table:
            # the indexer adds the table on its next run, while this service runs: look again each time until then
            if not inspect(self.engine).has_table(LibraryRoot.__tablename__):
                return ()
            self._has_roots_table = True
        with self.engine.connect() as conn:
            return tuple(conn.execute(select(LibraryRoot.path)).scalars())

    @_unavailable_on_db_error
    def counts(self) -> tuple[int, int, int]:
        """(videos, segments, failures)."""
        with self.engine.connect() as conn:
            videos = conn.execute(select(func.count()).select_from(Video)).scalar_one()
            segments = conn.execute(select(func.count()).select_from(Segment)).scalar_one()
            failures = conn.execute(select(func.count()).select_from(Failure)).scalar_one()
        return int(videos), int(segments), int(failures)

    @_unavailable_on_db_error
    def list_videos(self, *, offset: int, limit: int, sort: str, descending: bool, path_prefix: Optional[str],
                    min_duration: Optional[float], max_duration: Optional[float]) -> VideoListing:
        """A page of videos that pass the filters, ordered by `sort` (then id, so pages never overlap)."""
        conditions = []
        if path_prefix is not None:
            conditions.append(path_condition(path_prefix))
        if min_duration is not None:
            conditions.append(Video.duration_s >= min_duration)
        if max_duration is not None:
            conditions.append(Video.duration_s <= max_duration)
        counts = (select(Segment.video_id, func.count().label("segments"),
                         func.count(Segment.thumbnail).label("thumbnails"))
                  .group_by(Segment.video_id).subquery())
        key = _SORT_COLUMNS[sort]
        order = [key.desc(), Video.id.desc()] if descending else [key.asc(), Video.id.asc()]
        stmt = (select(*self._present_video_columns(), counts.c.segments, counts.c.thumbnails)
                .outerjoin(counts, counts.c.video_id == Video.id).where(*conditions)
                .order_by(*order).offset(offset).limit(limit))
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(Video).where(*conditions)).scalar_one()
            rows = [dict(row._mapping) for row in conn.execute(stmt)]
        return VideoListing(int(total), rows)

    @_unavailable_on_db_error
    def failures(self, *, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """(how many, a page of them newest first) of the files the indexer could not index."""
        stmt = (select(Failure.path, Failure.reason, Failure.error_type, Failure.size_bytes, Failure.recorded_at)
                .order_by(Failure.recorded_at.desc(), Failure.id.desc()).offset(offset).limit(limit))
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(Failure)).scalar_one()
            rows = [dict(row._mapping) for row in conn.execute(stmt)]
        return int(total), rows

    @_unavailable_on_db_error
    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(func.count()).select_from(select(Video.id).limit(1).subquery())).scalar_one()
