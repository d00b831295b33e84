"""Publishing a version into PostgreSQL: the change since the published version, in one transaction.

A publish inserts the added segments' rows and vectors (COPY, binary), stamps the removed ones with the new
version, updates rows whose video moved or got a preview, records the version (vector_versions, and
index_versions as the FAISS backend does) and applies retention, then commits: readers see all of it or
none. Its cost is that of the change (HNSW indexes take inserts; nothing is rebuilt), but for the first
publish, which builds the HNSW index over its rows in one go, and a re-tuning of ef_search when the
library has grown or shrunk by more than tuning.RETUNE_GROWTH since it was last measured.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, NamedTuple, Sequence

import numpy as np
from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

from ..manifest import IndexManifest
from ..tables import IndexVersion
from .schema import BUILD_MEMORY, SEGMENTS, VERSIONS, ensure_tables, has_hnsw_index, has_tables, hnsw_index_sql
from .snapshot import read_manifest
from .tuning import SearchPlan, tune

logger = logging.getLogger(__name__)

_LOCK_KEY = 0x616C70726F  # pg_advisory_xact_lock key of publishers ("alpro"): one at a time per database
_COPY_COLUMNS = ("id", "video_id", "seg_index", "start_s", "end_s", "thumbnail", "preview", "path", "duration_s",
                 "added_in", "embedding")
_COPY_TYPES = ("int8", "varchar", "int4", "float8", "float8", "bool", "bool", "text", "float8", "int4", "vector")


class SegmentRecord(NamedTuple):
    """A segment as a version shows it (everything but its vector)."""

    id: int
    video_id: str
    seg_index: int
    start_s: float
    end_s: float
    thumbnail: bool
    preview: bool
    path: str
    duration_s: float | None


@dataclass
class VersionChange:
    """What a new version changes: rows to add (with their vectors, in order), ids to remove, rows to rewrite."""

    added: list[SegmentRecord] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (len(added), dim)
    removed: list[int] = field(default_factory=list)
    updated: list[SegmentRecord] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.updated)

    def describe(self) -> str:
        return f"+{len(self.added)} -{len(self.removed)} ~{len(self.updated)}"


@dataclass
class StoreState:
    """The published version as the database holds it."""

    manifest: IndexManifest | None
    rows: dict[int, SegmentRecord]  # its live segments (removed_in IS NULL) by id


@dataclass
class PublishedVersion:
    manifest: IndexManifest
    removed_versions: list[int]
    seconds: dict[str, float]  # copy, update, index (HNSW build), tune, commit, total


def read_state(engine: Engine) -> StoreState:
    """The published manifest and live rows (no vectors); empty before the first publish."""
    with engine.connect() as conn:
        if not has_tables(conn):
            return StoreState(None, {})
        manifest = read_manifest(conn)
        rows = conn.exec_driver_sql(
            f"SELECT id, video_id, seg_index, start_s, end_s, thumbnail, preview, path, duration_s FROM {SEGMENTS} "
            f"WHERE removed_in IS NULL").all()
    return StoreState(manifest, {int(r[0]): SegmentRecord(*r) for r in rows})


def plan_change(current: dict[int, SegmentRecord], wanted: Sequence[SegmentRecord]) -> VersionChange:
    """The change from the current rows to the wanted ones (vectors of the added rows are the caller's to add)."""
    wanted_ids = set()
    change = VersionChange()
    for record in wanted:
        wanted_ids.add(record.id)
        now = current.get(record.id)
        if now is None:
            change.added.append(record)
        elif now != record:
            change.updated.append(record)
    change.removed = sorted(i for i in current if i not in wanted_ids)
    return change


def _copy_rows(conn: Connection, version: int, records: Sequence[SegmentRecord], vectors: np.ndarray) -> None:
    from pgvector.psycopg import register_vector

    raw = conn.connection.driver_connection
    register_vector(raw)  # the binary dumper of `vector` on this connection (a type look-up, once per connection)
    columns = ", ".join(_COPY_COLUMNS)
    with raw.cursor() as cursor, cursor.copy(f"COPY {SEGMENTS} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(list(_COPY_TYPES))
        for record, vector in zip(records, vectors):
            copy.write_row((*record, version, vector))


def _update_rows(conn: Connection, records: Sequence[SegmentRecord]) -> None:
    columns = list(zip(*records))
    conn.exec_driver_sql(
        f"UPDATE {SEGMENTS} s SET video_id = u.video_id, seg_index = u.seg_index, start_s = u.start_s, "
        f"end_s = u.end_s, thumbnail = u.thumbnail, preview = u.preview, path = u.path, duration_s = u.duration_s "
        f"FROM unnest(%(id)s::bigint[], %(video_id)s::varchar[], %(seg_index)s::int[], %(start_s)s::float8[], "
        f"%(end_s)s::float8[], %(thumbnail)s::bool[], %(preview)s::bool[], %(path)s::text[], "
        f"%(duration_s)s::float8[]) AS u(id, video_id, seg_index, start_s, end_s, thumbnail, preview, path, "
        f"duration_s) WHERE s.id = u.id AND s.removed_in IS NULL",
        {name: list(values) for name, values in zip(SegmentRecord._fields, columns)})


def _next_version(conn: Connection, floor: int) -> int:
    found = [conn.execute(text(f"SELECT max(version) FROM {VERSIONS}")).scalar()]
    if conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": IndexVersion.__tablename__}).scalar():
        found.append(conn.execute(text(f"SELECT max(version) FROM {IndexVersion.__tablename__}")).scalar())
    return max([floor, *((v or 0) + 1 for v in found)])


def _retain(conn: Connection, version: int, keep: int) -> list[int]:
    """Drop all but the newest `keep` versions, and the rows only they could see: a row removed in version R is
    seen by versions before R only. (A reader still on a dropped version finds those rows gone: it moves to
    the published version within one poll.)"""
    newest_first = [row[0] for row in conn.exec_driver_sql(
        f"SELECT version FROM {VERSIONS} WHERE version <= %(v)s ORDER BY version DESC", {"v": version}).all()]
    kept, dropped = newest_first[:max(1, keep)], newest_first[max(1, keep):]
    if not dropped:
        return []
    oldest_kept = min(kept)
    conn.exec_driver_sql(f"DELETE FROM {SEGMENTS} WHERE removed_in <= %(v)s", {"v": oldest_kept})
    conn.exec_driver_sql(f"DELETE FROM {VERSIONS} WHERE version = ANY(%(d)s)", {"d": dropped})
    if conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": IndexVersion.__tablename__}).scalar():
        conn.execute(IndexVersion.__table__.update().where(IndexVersion.version.in_(dropped)).values(status="deleted"))
    return sorted(dropped)


def publish_version(engine: Engine, change: VersionChange, template: IndexManifest, *, num_videos: int,
                    live_ids: Sequence[int], keep_versions: int = 3, recall_target: float = 0.95,
                    min_version: int = 1, index_type: str = "auto", before_commit: Any = None) -> PublishedVersion:
    """Commit `change` as a new version described by `template` (its version, counts, index type, recall and
    search parameters are filled in here). `live_ids`: every segment id of the new version (recall sample).
    `index_type`: auto, flat (exact search; the HNSW index is not built) or hnsw (tuning.tune).
    `before_commit(conn, version)`, if given, runs last inside the transaction (tests hold a publish open)."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with engine.begin() as conn:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
        ensure_tables(conn, template.dim)
        previous = read_manifest(conn)
        version = _next_version(conn, min_version)
        t = time.perf_counter()
        if change.added:
            # a segment id is never reused (store.tables), but a row removed earlier may linger until retention
            conn.exec_driver_sql(f"DELETE FROM {SEGMENTS} WHERE id = ANY(%(ids)s) AND removed_in IS NOT NULL",
                                 {"ids": [r.id for r in change.added]})
            _copy_rows(conn, version, change.added, np.asarray(change.vectors, dtype=np.float32))
        seconds["copy"] = time.perf_counter() - t
        t = time.perf_counter()
        if change.removed:
            conn.exec_driver_sql(f"UPDATE {SEGMENTS} SET removed_in = %(v)s WHERE id = ANY(%(ids)s) "
                                 f"AND removed_in IS NULL", {"v": version, "ids": list(change.removed)})
        if change.updated:
            _update_rows(conn, change.updated)
        seconds["update"] = time.perf_counter() - t
        t = time.perf_counter()
        if index_type != "flat" and not has_hnsw_index(conn):
            conn.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{BUILD_MEMORY}'")
            conn.exec_driver_sql(hnsw_index_sql())
            logger.info("pgvector: built the HNSW index over %d vectors in %.1f s", len(live_ids),
                        time.perf_counter() - t)
        if len(change.added) + len(change.removed) > 0.1 * max(1, len(live_ids)):
            conn.exec_driver_sql(f"ANALYZE {SEGMENTS}")  # the planner's row estimates, before tuning measures plans
        seconds["index"] = time.perf_counter() - t
        t = time.perf_counter()
        earlier = None
        if previous is not None and previous.dim == template.dim and \
                previous.checkpoint_fingerprint == template.checkpoint_fingerprint:
            earlier = SearchPlan.from_manifest(previous.index_type, previous.search_params, previous.recall_at_10)
        plan = tune(conn, version, live_ids, recall_target, earlier, index_type)
        seconds["tune"] = time.perf_counter() - t
        created = datetime.now(timezone.utc)
        manifest = replace(template, version=version, created_at=created.isoformat(timespec="seconds"),
                           num_vectors=len(live_ids), num_videos=num_videos, index_type=plan.index_type,
                           metric="ip", recall_at_10=plan.recall_at_10, search_params=plan.search_params)
        conn.exec_driver_sql(
            f"INSERT INTO {VERSIONS} (version, created_at, num_vectors, num_videos, manifest) "
            f"VALUES (%(v)s, %(c)s, %(n)s, %(m)s, %(j)s)",
            {"v": version, "c": created, "n": manifest.num_vectors, "m": num_videos, "j": manifest.to_json()})
        if conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": IndexVersion.__tablename__}).scalar():
            conn.execute(IndexVersion.__table__.insert().values(
                version=version, created_at=created, checkpoint_fingerprint=manifest.checkpoint_fingerprint,
                num_videos=num_videos, num_segments=manifest.num_vectors, index_type=manifest.index_type,
                status="published", recall_at_10=manifest.recall_at_10))
        removed_versions = _retain(conn, version, keep_versions)
        if before_commit is not None:
            before_commit(conn, version)
        t = time.perf_counter()
    seconds["commit"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - start
    logger.info("pgvector: published version %d (%s; %d vectors, %s) in %.2f s", version, change.describe(),
                manifest.num_vectors, manifest.index_type, seconds["total"])
    return PublishedVersion(manifest, removed_versions, {k: round(v, 4) for k, v in seconds.items()})


__all__ = ["PublishedVersion", "SegmentRecord", "StoreState", "VersionChange", "plan_change", "publish_version",
           "read_state"]
