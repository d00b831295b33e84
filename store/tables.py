"""SQL metadata of an index: videos, their segments (one FAISS vector each), failures, published versions.

SQLAlchemy 2 ORM, portable SQL only (SQLite by default, PostgreSQL by URL). Identity rules the rest of the
package relies on:
- `Video.id` is a content hash, so a renamed file keeps its id and rows; changed content is a new video.
- `Segment.id` is the FAISS vector id. Ids are never reused (SQLite AUTOINCREMENT, PostgreSQL sequences) and
  a row is never edited after insert, so an older, still-open index version can only miss rows, never map
  a vector to the wrong segment.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from sqlalchemy import (BigInteger, Boolean, DateTime, Engine, Float, ForeignKey, Integer, String, Text,
                        UniqueConstraint, create_engine, event, inspect)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.schema import CreateColumn

logger = logging.getLogger(__name__)

# SQLite only turns a column into the rowid alias when it is spelled INTEGER; PostgreSQL wants 64 bits.
_BigId = BigInteger().with_variant(Integer, "sqlite")
SQLITE_BUSY_TIMEOUT_MS = 60_000  # readers (the service) and the writer share the file


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of the indexer's tables."""


class Video(Base):
    """One distinct video content; `path` is where it was last seen."""

    __tablename__ = "videos"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # content hash (hex), see discover.content_id
    path: Mapped[str] = mapped_column(Text, index=True)  # absolute path at the last sighting
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Float)  # st_mtime of that file, seconds since the epoch
    duration_s: Mapped[float] = mapped_column(Float)
    fps: Mapped[float] = mapped_column(Float)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    num_frames: Mapped[int] = mapped_column(Integer)
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    checkpoint_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    # fingerprint + pre-processing + segmentation that made the embeddings (indexer.embedder.pipeline_key)
    pipeline_key: Mapped[str] = mapped_column(String(64), default="")
    codec: Mapped[str] = mapped_column(String(32), default="")
    # only part of the file decodes (cut short, garbage in the middle): its segments cover that span;
    # NULL where indexed before this was recorded (older databases gain the columns in `init_db`)
    partial: Mapped[Optional[bool]] = mapped_column(Boolean, nullable=True)
    partial_reason: Mapped[Optional[str]] = mapped_column(Text, nullable=True)  # "decodable to 12.4 s of 30.0 s: .."
    # Browser previews (indexer.preview; the file is DataDir.preview_path(id)). `container`: FFmpeg's format
    # name of the file ("avi", "mov,mp4,m4a,3gp,3g2,mj2"; "" until probed); `playable`: a browser plays the
    # original (NULL until probed); `preview_bytes`: the preview's size, NULL where there is none (the
    # original plays, previews were off, or making one failed: `preview_error` says why)
    container: Mapped[str] = mapped_column(String(64), default="", server_default="")
    playable: Mapped[Optional[bool]] = mapped_column(Boolean, nullable=True)
    preview_bytes: Mapped[Optional[int]] = mapped_column(BigInteger, nullable=True)
    preview_error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)

    segments: Mapped[list["Segment"]] = relationship(
        back_populates="video", cascade="all, delete-orphan", passive_deletes=True, order_by="Segment.index"
    )

    def __repr__(self) -> str:
        return f"Video(id={self.id!r}, path={self.path!r})"


class Segment(Base):
    """A time window of a video with its own embedding; `id` is its FAISS vector id."""

    __tablename__ = "segments"
    __table_args__ = (
        UniqueConstraint("video_id", "index", name="uq_segment_video_index"),
        {"sqlite_autoincrement": True},  # never reuse a deleted id (older index versions still hold it)
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    video_id: Mapped[str] = mapped_column(String(64), ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)  # 0-based position within the video
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    thumbnail: Mapped[Optional[str]] = mapped_column(Text, nullable=True)  # relative to DATA_DIR

    video: Mapped[Video] = relationship(back_populates="segments")

    def __repr__(self) -> str:
        return f"Segment(id={self.id}, video_id={self.video_id!r}, index={self.index})"


class Failure(Base):
    """A file that could not be indexed, the last time it was tried."""

    __tablename__ = "failures"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    reason: Mapped[str] = mapped_column(Text)
    error_type: Mapped[str] = mapped_column(String(128))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IndexVersion(Base):
    """One published (or since deleted) index version."""

    __tablename__ = "index_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    checkpoint_fingerprint: Mapped[str] = mapped_column(String(64))
    num_videos: Mapped[int] = mapped_column(Integer)
    num_segments: Mapped[int] = mapped_column(Integer)
    index_type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # "published" | "deleted"
    recall_at_10: Mapped[Optional[float]] = mapped_column(Float, nullable=True)


class LibraryRoot(Base):
    """A videos folder the indexer walked, resolved: the service streams only files that resolve inside one."""

    __tablename__ = "library_roots"

    path: Mapped[str] = mapped_column(Text, primary_key=True)  # os.path.realpath of the run's videos folder
    first_indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FileHash(Base):
    """Content-hash cache: a file whose (path, size, mtime) is unchanged is not hashed again."""

    __tablename__ = "file_hashes"

    path: Mapped[str] = mapped_column(Text, primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)  # exact, unlike a float of seconds
    video_id: Mapped[str] = mapped_column(String(64))
    hashed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def sqlite_path(url: str) -> Path | None:
    """The file of a file-backed SQLite URL, else None."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def create_engine_for(url: str, *, create: bool = True) -> Engine:
    """An engine for any SQLAlchemy URL; SQLite gets foreign keys, a busy timeout and cross-thread use.

    With `create=False` a missing SQLite file is an error on first use instead of an empty new file
    (read-only callers such as the service must not create a data dir).
    """
    path = sqlite_path(url)
    if path is None:
        return create_engine(url, pool_pre_ping=True)
    mode = "rwc" if create else "rw"
    target = path.resolve()

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(f"file:{target}?mode={mode}", uri=True, check_same_thread=False,
                               timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)

    engine = create_engine("sqlite://", creator=connect)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API types
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")  # cascades segments with their video
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    return engine


# Columns added to existing tables after their first release, each nullable or with a server default:
# `create_all` makes only missing tables, so a database made before gains these in `init_db`.
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {
    "videos": ("partial", "partial_reason", "container", "playable", "preview_bytes", "preview_error"),
}


def init_db(engine: Engine) -> None:
    """Create missing tables; on SQLite switch to WAL so the service reads while the indexer writes.

    Tables are added, and columns only added (nullable or with a default, ADDED_COLUMNS), never altered, so
    creating the missing tables and columns is the whole migration: a database from before `library_roots`,
    `videos.partial` or `videos.preview_bytes` gets them on the indexer's next run.
    """
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    Base.metadata.create_all(engine)
    add_missing_columns(engine)


def add_missing_columns(engine: Engine) -> list[str]:
    """ALTER TABLE ... ADD COLUMN for each of ADDED_COLUMNS its table lacks (portable DDL: SQLite and
    PostgreSQL; a NOT NULL column comes with its default, so existing rows take it); returns the
    "table.column" names added."""
    added = []
    preparer = engine.dialect.identifier_preparer
    for table_name, names in ADDED_COLUMNS.items():
        table = Base.metadata.tables[table_name]
        for name in names:
            column = table.c[name]
            assert column.nullable or column.server_default is not None, \
                f"{table_name}.{name}: an added column must be nullable or have a server default"
            with engine.begin() as conn:
                if engine.dialect.name == "postgresql":  # another process adding it at the same time waits here
                    conn.exec_driver_sql(f"LOCK TABLE {preparer.quote(table_name)} IN SHARE ROW EXCLUSIVE MODE")
                if name in {c["name"] for c in inspect(conn).get_columns(table_name)}:
                    continue
                # the column as CREATE TABLE spells it: name, type, DEFAULT, NOT NULL
                spec = CreateColumn(column).compile(dialect=engine.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {preparer.quote(table_name)} ADD COLUMN {spec}")
            added.append(f"{table_name}.{name}")
    if added:
        logger.info("added columns to an older metadata database: %s", ", ".join(added))
    return added


def has_schema(engine: Engine) -> bool:
    """Whether the tables exist (a data dir that was indexed at least once)."""
    return inspect(engine).has_table(Video.__tablename__)


__all__ = ["ADDED_COLUMNS", "Base", "FileHash", "Failure", "IndexVersion", "LibraryRoot", "Segment", "Video",
           "add_missing_columns", "create_engine_for", "has_schema", "init_db", "sqlite_path", "utcnow"]
