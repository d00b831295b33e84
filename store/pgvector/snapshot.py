"""Reading a published pgvector version: search (plain and filtered, in SQL) and the rows results show.

`VectorSnapshot` answers as `store.datadir.IndexSnapshot` does (the service's engine uses either): search
returns (scores, segment ids) best first, padded with -inf / -1; `segment_rows`, `locate` and
`first_hit_per_video` read the rows each search brought back with its hits (a bounded cache), so a search
costs one round trip. Every query names the version, so a reader sees exactly its version's vectors, also
while and after a newer one is published.

Complete filtered results: the filters are SQL conditions on the same rows. Where few rows pass
(tuning.EXACT_MAX) they are all scored; else the HNSW index is walked with iterative scans, which go on
past ef_search until the LIMIT is met, and a walk that stops short (hnsw.max_scan_tuples) is followed by
an exact scan. The same holds for the plain search, whose one filter is the version's visibility.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from ..manifest import IndexManifest, IndexNotFoundError
from ..rows import IndexRow
from .schema import SEGMENTS, VERSIONS, has_tables
from .tuning import EXACT_MAX, VISIBLE, SearchPlan, nearest_sql, vector_text

ROW_CACHE = 65_536  # rows kept per snapshot: those of the last searches' hits (about 200 bytes each)
_ROW_COLUMNS = "id, video_id, seg_index, start_s, end_s, thumbnail, path, duration_s, preview"


@dataclass(frozen=True)
class RowFilter:
    """Search filters as SQL sees them: a folder (by whole path components), a duration range."""

    folder: str | None = None  # a file or folder, no trailing slash ("" is the root)
    min_duration: float | None = None
    max_duration: float | None = None

    def sql(self) -> tuple[str, dict[str, Any]]:
        """The condition and its parameters; an unknown duration fails a duration filter, as in the FAISS backend."""
        parts, params = [VISIBLE], {}
        if self.folder is not None:
            # the folder itself (a file named exactly) or what lies below it: [folder/, folder0) in byte order
            parts.append("(path = %(folder)s OR (path >= %(below)s AND path < %(after)s))")
            params.update(folder=self.folder, below=self.folder + "/", after=self.folder + "0")
        if self.min_duration is not None:
            parts.append("duration_s >= %(min_d)s")
            params["min_d"] = float(self.min_duration)
        if self.max_duration is not None:
            parts.append("duration_s <= %(max_d)s")
            params["max_d"] = float(self.max_duration)
        return " AND ".join(parts), params


def read_current_version(conn: Connection) -> int | None:
    if not has_tables(conn):
        return None
    return conn.exec_driver_sql(f"SELECT max(version) FROM {VERSIONS}").scalar()


def read_manifest(conn: Connection, version: int | None = None) -> IndexManifest | None:
    """A version's manifest (default: the published one); None where there is none yet."""
    if not has_tables(conn):
        return None
    if version is None:
        found = conn.exec_driver_sql(f"SELECT manifest FROM {VERSIONS} ORDER BY version DESC LIMIT 1").scalar()
    else:
        found = conn.exec_driver_sql(f"SELECT manifest FROM {VERSIONS} WHERE version = %(v)s",
                                     {"v": int(version)}).scalar()
    if found is None:
        return None
    return IndexManifest.from_dict(json.loads(found))


class VectorSnapshot:
    """One published version in PostgreSQL; safe from several threads (each query takes a pooled connection)."""

    def __init__(self, engine: Engine, manifest: IndexManifest, *, row_cache: int = ROW_CACHE) -> None:
        self.engine = engine  # schema.create_vector_engine: autocommit, iterative scans on
        self.manifest = manifest
        self.version = manifest.version
        self.plan = SearchPlan.from_manifest(manifest.index_type, manifest.search_params, manifest.recall_at_10)
        self._rows: OrderedDict[int, IndexRow] = OrderedDict()
        self._row_cache = row_cache
        self._lock = threading.Lock()

    @classmethod
    def open(cls, engine: Engine, version: int | None = None) -> "VectorSnapshot":
        with engine.connect() as conn:
            manifest = read_manifest(conn, version)
        if manifest is None:
            raise IndexNotFoundError("no pgvector index version published yet" if version is None else
                                     f"pgvector index version {version} not found (retention dropped it?)")
        return cls(engine, manifest)

    @property
    def num_vectors(self) -> int:
        return self.manifest.num_vectors

    @property
    def has_rows(self) -> bool:
        return True

    # --- search

    def search(self, queries: np.ndarray, k: int, where: RowFilter | None = None,
               passing: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Q, dim) float32 L2-normalised -> scores (Q, k) float32, segment ids (Q, k) int64, best first, over the
        rows that pass `where` (`passing` of them; default: all of this version's)."""
        q = self.manifest.query_matrix(queries, k)
        condition, params = (where or RowFilter()).sql()
        params["v"] = self.version
        passing = self.num_vectors if passing is None else passing
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        if passing == 0:
            return scores, ids
        exact = self.plan.index_type != "hnsw" or passing <= EXACT_MAX
        with self.engine.connect() as conn:
            if not exact:
                self._use_ef_search(conn)
            for i, vector in enumerate(q):
                values = {**params, "q": vector_text(vector), "k": int(k)}
                rows = conn.exec_driver_sql(nearest_sql(condition, exact=exact), values).all()
                if not exact and len(rows) < min(k, passing):  # the walk stopped short: score them all
                    rows = conn.exec_driver_sql(nearest_sql(condition, exact=True), values).all()
                # relaxed_order: an iterative walk's hits may be slightly out of order
                rows.sort(key=lambda r: (r[-1], r[0]))
                self._keep(rows)
                scores[i, :len(rows)] = [-r[-1] for r in rows]
                ids[i, :len(rows)] = [r[0] for r in rows]
        return scores, ids

    def count(self, where: RowFilter) -> int:
        """How many of this version's vectors pass `where`."""
        condition, params = where.sql()
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql(f"SELECT count(*) FROM {SEGMENTS} WHERE {condition}",
                                            {**params, "v": self.version}).scalar())

    def _use_ef_search(self, conn: Connection) -> None:
        # session-level, set once per pooled connection and ef_search value (an autocommit SET LOCAL would not last)
        ef = int(self.plan.ef_search or 40)
        if conn.info.get("hnsw.ef_search") != ef:
            conn.exec_driver_sql(f"SET hnsw.ef_search = {ef}")
            conn.info["hnsw.ef_search"] = ef

    # --- rows

    def _keep(self, rows: Sequence[Any]) -> None:
        with self._lock:
            for r in rows:
                self._rows[int(r[0])] = IndexRow(int(r[0]), r[1], int(r[2]), float(r[3]), float(r[4]), bool(r[5]),
                                                 r[6], None if r[7] is None else float(r[7]), bool(r[8]))
                self._rows.move_to_end(int(r[0]))
            while len(self._rows) > self._row_cache:
                self._rows.popitem(last=False)

    def segment_rows(self, segment_ids: Sequence[int]) -> list[IndexRow]:
        """What a search result shows of each segment: from the hits' rows, else one query for the rest."""
        wanted = [int(i) for i in np.asarray(segment_ids, dtype=np.int64).reshape(-1).tolist()]
        with self._lock:
            found = {i: self._rows[i] for i in wanted if i in self._rows}
        missing = [i for i in wanted if i not in found]
        if missing:
            with self.engine.connect() as conn:
                rows = conn.exec_driver_sql(f"SELECT {_ROW_COLUMNS} FROM {SEGMENTS} WHERE id = ANY(%(ids)s) "
                                            f"AND {VISIBLE}", {"ids": missing, "v": self.version}).all()
            self._keep(rows)
            with self._lock:
                found.update((i, self._rows[i]) for i in missing if i in self._rows)
            gone = [i for i in missing if i not in found]
            if gone:
                raise KeyError(f"segment ids not in index version {self.version}: {gone[:10]}")
        return [found[i] for i in wanted]

    def locate(self, segment_ids: Sequence[int]) -> list[tuple[str, int]]:
        return [(row.video_id, row.index) for row in self.segment_rows(segment_ids)]

    def first_hit_per_video(self, segment_ids: Sequence[int]) -> list[int]:
        """Positions in `segment_ids` (hits, best first) of each video's first hit, in hit order."""
        seen: set[str] = set()
        firsts = []
        for pos, row in enumerate(self.segment_rows(segment_ids)):
            if row.video_id not in seen:
                seen.add(row.video_id)
                firsts.append(pos)
        return firsts

    def vectors(self, segment_ids: Sequence[int]) -> np.ndarray:
        """(n, dim) float32 stored vectors of these segments; KeyError naming those this version does not serve."""
        wanted = [int(i) for i in np.asarray(segment_ids, dtype=np.int64).reshape(-1).tolist()]
        out = np.zeros((len(wanted), self.manifest.dim), np.float32)
        if not wanted:
            return out
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(f"SELECT id, embedding::text FROM {SEGMENTS} WHERE id = ANY(%(ids)s) AND "
                                        f"{VISIBLE}", {"ids": wanted, "v": self.version}).all()
        found = {int(r[0]): np.array(r[1].strip("[]").split(","), dtype=np.float32) for r in rows}
        gone = [i for i in wanted if i not in found]
        if gone:
            raise KeyError(f"segment ids not in index version {self.version}: {gone[:10]}")
        for pos, i in enumerate(wanted):
            out[pos] = found[i]
        return out

    def tokens(self, segment_ids: Sequence[int]) -> np.ndarray | None:
        """Token features are not kept in PostgreSQL (about 300 KB a segment): re-ranking decodes segments."""
        return None

    def close(self) -> None:
        with self._lock:
            self._rows.clear()

    def __enter__(self) -> "VectorSnapshot":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VectorSnapshot(version={self.version}, vectors={self.num_vectors}, type={self.manifest.index_type})"


__all__ = ["ROW_CACHE", "RowFilter", "VectorSnapshot", "read_current_version", "read_manifest"]
