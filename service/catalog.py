"""Read-only queries on the indexer's metadata database (SQLAlchemy Core over its ORM tables: few objects
per search, so the lookup stays well under a millisecond)."""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from indexer.store import Failure, Segment, Video

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
    """Segment rows by id, LRU, for one index version at a time. Rows are never edited once written (store.py),
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
                "indexed_at", "checkpoint_fingerprint")


class Catalog:
    """Segment, video and count look-ups; every method is blocking (call it from a worker thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._segment_columns = (Segment.id, Segment.video_id, Segment.index, Segment.start_s, Segment.end_s,
                                 Segment.thumbnail, Video.path, Video.duration_s)
        self._by_ids = (select(*self._segment_columns).join(Video, Segment.video_id == Video.id)
                        .where(Segment.id.in_(bindparam("ids", expanding=True))))
        self._video_columns = [getattr(Video, name) for name in VIDEO_FIELDS if hasattr(Video, name)]
        self._fast_sql = self._segments_sql(engine)

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

    @_unavailable_on_db_error
    def video(self, video_id: str) -> Optional[dict[str, Any]]:
        """The video's columns, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(*self._video_columns).where(Video.id == video_id)).first()
        return None if row is None else dict(row._mapping)

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
    def counts(self) -> tuple[int, int, int]:
        """(videos, segments, failures)."""
        with self.engine.connect() as conn:
            videos = conn.execute(select(func.count()).select_from(Video)).scalar_one()
            segments = conn.execute(select(func.count()).select_from(Segment)).scalar_one()
            failures = conn.execute(select(func.count()).select_from(Failure)).scalar_one()
        return int(videos), int(segments), int(failures)

    @_unavailable_on_db_error
    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(func.count()).select_from(select(Video.id).limit(1).subquery())).scalar_one()
