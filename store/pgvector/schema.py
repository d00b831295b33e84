"""The pgvector tables: segment vectors (with the rows a search result shows) and the published versions.

    vector_segments  one row per segment of a published version: id (= segments.id), video_id, seg_index,
                     start_s, end_s, thumbnail, preview, path (COLLATE "C"), duration_s, added_in,
                     removed_in, embedding vector(dim); HNSW index (vector_ip_ops) on the embedding,
                     btree indexes on path and duration_s for the filters
    vector_versions  one row per retained version: version, created_at, num_vectors, num_videos, manifest
                     (IndexManifest as JSON); the newest row is the published version

Versions without copies: a row is visible to version V when `added_in <= V AND (removed_in IS NULL OR
removed_in > V)`. A publish inserts the added rows (added_in = V), stamps the removed ones (removed_in = V)
and inserts the version row, all in one transaction: a reader sees the old version or the new, never half,
and a reader still on the old version keeps seeing exactly its rows (until retention purges them). The
rows' path, duration and preview are updated in place (a rename is not a new vector): every version shows a
video's current path. No foreign key to `segments`: the indexer deletes a dropped video's metadata right
after the publish, and readers of the older version still need its vector rows.

Inner product of L2-normalised vectors is the cosine, as in the FAISS backend; `<#>` is its negative.
Vectors are stored as `vector` (float32), not `halfvec`: halfvec halves the table and the index but moves
every score by up to about 1e-3, and the service's answers are to match the FAISS backend's (see
store/pgvector/README.md, "halfvec").
"""

from __future__ import annotations

import logging

from sqlalchemy import (BigInteger, Boolean, Column, DateTime, Engine, Float, Index, Integer, MetaData, String,
                        Table, Text, create_engine, event, text)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError

logger = logging.getLogger(__name__)

SEGMENTS = "vector_segments"
VERSIONS = "vector_versions"
HNSW_INDEX = "vector_segments_hnsw"
# pgvector's defaults (m 16, ef_construction 64): measured here they reach recall@10 0.95 with a larger
# ef_search at about a fifth of the build time of m 32 / ef_construction 128 (README.md, "Figures")
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
# Memory for building the HNSW index in one go (the first publish): the graph of 1M 256-d vectors fits; a
# graph that does not fit is built much more slowly on disk
BUILD_MEMORY = "1GB"
# Filtered HNSW scans go on past the first ef_search candidates until the LIMIT is met (pgvector >= 0.8)
ITERATIVE_SCAN = "relaxed_order"


class VectorStoreError(RuntimeError):
    """The database cannot hold the vectors as configured (not PostgreSQL, no pgvector, another width)."""


def vector_tables(dim: int) -> tuple[MetaData, Table, Table]:
    """The two tables for vectors of width `dim` (their own MetaData: `store.tables.init_db` never makes them)."""
    from pgvector.sqlalchemy import VECTOR

    metadata = MetaData()
    segments = Table(
        SEGMENTS, metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("video_id", String(64), nullable=False),
        Column("seg_index", Integer, nullable=False),
        Column("start_s", Float, nullable=False),
        Column("end_s", Float, nullable=False),
        Column("thumbnail", Boolean, nullable=False),
        Column("preview", Boolean, nullable=False),
        # byte order, so a folder's files are the range [folder + "/", folder + "0") whatever the locale
        Column("path", Text(collation="C"), nullable=False),
        Column("duration_s", Float, nullable=True),
        Column("added_in", Integer, nullable=False),
        Column("removed_in", Integer, nullable=True),
        Column("embedding", VECTOR(dim), nullable=False),
        Index("vector_segments_path", "path"),
        Index("vector_segments_duration", "duration_s"),
        Index("vector_segments_video", "video_id"),
    )
    versions = Table(
        VERSIONS, metadata,
        Column("version", Integer, primary_key=True, autoincrement=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("num_vectors", Integer, nullable=False),
        Column("num_videos", Integer, nullable=False),
        Column("manifest", Text, nullable=False),
    )
    return metadata, segments, versions


def hnsw_index_sql() -> str:
    return (f"CREATE INDEX IF NOT EXISTS {HNSW_INDEX} ON {SEGMENTS} USING hnsw (embedding vector_ip_ops) "
            f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})")


def is_postgresql(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def create_vector_engine(url: str) -> Engine:
    """An engine for searching: autocommit (a search is one statement, one round trip), no pre-ping (a dead
    connection fails one request and is replaced), filtered HNSW scans iterative."""
    if not is_postgresql(url):
        raise VectorStoreError(f"the pgvector backend needs a PostgreSQL database, not {make_url(url).drivername}")
    engine = create_engine(url, isolation_level="AUTOCOMMIT", pool_size=8, max_overflow=8)

    @event.listens_for(engine, "connect")
    def _session_settings(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API types
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET hnsw.iterative_scan = {ITERATIVE_SCAN}")

    return engine


def install_extension(conn: Connection) -> None:
    """CREATE EXTENSION vector where it is missing; a clear error where the server lacks it or the role may not."""
    if conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).scalar():
        return
    try:
        with conn.begin_nested():
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    except DBAPIError as e:
        raise VectorStoreError(
            f"the pgvector extension is not installed in this database and cannot be created here "
            f"({type(e.orig).__name__}: {e.orig}); use a PostgreSQL server with pgvector (the compose stack's "
            f"postgres image has it) and run CREATE EXTENSION vector as a superuser") from e


def stored_dim(conn: Connection) -> int | None:
    """The vector width of the existing table, or None where there is no table yet."""
    found = conn.execute(text(
        "SELECT a.atttypmod FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE c.relname = :table AND a.attname = 'embedding' AND NOT a.attisdropped "
        "AND c.relnamespace = to_regnamespace(current_schema())::oid"), {"table": SEGMENTS}).scalar()
    return None if found is None else int(found)


def has_hnsw_index(conn: Connection) -> bool:
    return conn.execute(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": HNSW_INDEX}).scalar()


def has_tables(conn: Connection) -> bool:
    return bool(conn.execute(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": VERSIONS}).scalar())


def ensure_tables(conn: Connection, dim: int) -> tuple[Table, Table]:
    """Create the extension and the tables where missing (inside the caller's transaction); an existing table
    of another width is dropped (a re-index with a checkpoint of another embedding width: every vector is
    new anyway). The HNSW index is made by the first publish, after its rows: built in one go it is many
    times faster than row by row."""
    install_extension(conn)
    metadata, segments, versions = vector_tables(dim)
    current = stored_dim(conn)
    if current is not None and current != dim:
        logger.warning("vector table holds %d-d vectors, the checkpoint makes %d-d ones: starting it afresh",
                       current, dim)
        conn.execute(text(f"DROP TABLE {SEGMENTS}"))
        conn.execute(text(f"DELETE FROM {VERSIONS}"))
    metadata.create_all(conn)
    return segments, versions


__all__ = ["BUILD_MEMORY", "HNSW_EF_CONSTRUCTION", "HNSW_INDEX", "HNSW_M", "ITERATIVE_SCAN", "SEGMENTS", "VERSIONS",
           "VectorStoreError", "create_vector_engine", "ensure_tables", "has_hnsw_index", "has_tables",
           "hnsw_index_sql", "install_extension", "is_postgresql", "stored_dim", "vector_tables"]
