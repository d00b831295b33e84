"""How a version is searched: exactly, or through the HNSW index with an ef_search that reaches the recall target.

As the FAISS builder does: a sample of the stored vectors are the queries, exact search (every visible vector
scored) is the truth, and hnsw.ef_search is doubled until recall@10 reaches the target. Then the faster of
the two is recorded in the manifest: on small libraries, and on hard (e.g. random) data where the tuned HNSW
search visits most of the graph anyway, an exact scan is as fast and always complete.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from sqlalchemy.engine import Connection

from .schema import ITERATIVE_SCAN, SEGMENTS

logger = logging.getLogger(__name__)

RECALL_K = 10
EXACT_MAX = 10_000  # up to this many vectors a version is searched exactly (a scan of 10k 256-d: about 3 ms)
EF_START = 40  # pgvector's default hnsw.ef_search
EF_MAX = 1000  # pgvector's upper bound of hnsw.ef_search
SAMPLE_QUERIES = 64
RETUNE_GROWTH = 0.1  # a version within 10% of the size the search was tuned at keeps the tuning (O(change))

VISIBLE = "added_in <= %(v)s AND (removed_in IS NULL OR removed_in > %(v)s)"


def vector_text(vector: np.ndarray) -> str:
    """pgvector's text form; a float32 value's repr parses back to the same float32."""
    return "[" + ",".join(map(repr, np.asarray(vector, dtype=np.float32).tolist())) + "]"


def nearest_sql(where: str, *, exact: bool) -> str:
    """Top-k by inner product among the rows `where` selects. Exact: a scan of the selected rows behind an
    optimisation fence (OFFSET 0), so no index orders them and each distance is computed once; else the HNSW
    index is walked."""
    columns = "id, video_id, seg_index, start_s, end_s, thumbnail, path, duration_s, preview"
    distance = "(embedding <#> %(q)s::vector)"
    if exact:
        return (f"SELECT * FROM (SELECT {columns}, {distance} AS distance FROM {SEGMENTS} WHERE {where} "
                f"OFFSET 0) AS scored ORDER BY distance LIMIT %(k)s")
    return f"SELECT {columns}, {distance} AS distance FROM {SEGMENTS} WHERE {where} ORDER BY {distance} LIMIT %(k)s"


@dataclass(frozen=True)
class SearchPlan:
    """What a version's manifest records of how to search it."""

    index_type: str  # "flat" (exact scan) | "hnsw"
    ef_search: int | None = None
    recall_at_10: float | None = None
    measured_at: int = 0  # vectors when the recall was measured
    timings_ms: dict = field(default_factory=dict)  # mean query time, exact and at the tuned ef_search

    @property
    def search_params(self) -> dict:
        params = {"backend": "pgvector", "measured_at": self.measured_at, **self.timings_ms}
        if self.ef_search is not None:
            params["ef_search"] = self.ef_search
        return params

    @classmethod
    def from_manifest(cls, index_type: str, params: dict, recall: float | None) -> "SearchPlan":
        return cls(index_type, params.get("ef_search"), recall, int(params.get("measured_at", 0)))


def _ids(conn: Connection, sql: str, params: dict) -> list[int]:
    return [row[0] for row in conn.exec_driver_sql(sql, params).all()]


def sample_queries(conn: Connection, version: int, ids: Sequence[int], n: int = SAMPLE_QUERIES,
                   seed: int = 0) -> list[str]:
    """Up to `n` stored vectors (by id, chosen at random among `ids`) as query texts."""
    if not len(ids):
        return []
    rng = np.random.default_rng(seed)
    chosen = rng.choice(np.asarray(ids, dtype=np.int64), size=min(n, len(ids)), replace=False).tolist()
    rows = conn.exec_driver_sql(f"SELECT embedding::text FROM {SEGMENTS} WHERE id = ANY(%(ids)s) AND {VISIBLE}",
                                {"ids": chosen, "v": version}).all()
    return [row[0] for row in rows]


def _timed(conn: Connection, sql: str, queries: list[str], version: int, k: int) -> tuple[list[list[int]], float]:
    t = time.perf_counter()
    found = [_ids(conn, sql, {"q": q, "v": version, "k": k}) for q in queries]
    return found, (time.perf_counter() - t) / max(1, len(queries)) * 1000


def recall(found: list[list[int]], truth: list[list[int]], k: int = RECALL_K) -> float:
    hits = sum(len(set(f[:k]) & set(t[:k])) for f, t in zip(found, truth))
    wanted = sum(min(k, len(t)) for t in truth)
    return hits / wanted if wanted else 1.0


def set_ef_search(conn: Connection, ef: int) -> None:
    """For the rest of the transaction: HNSW effort, iterative scans (the visibility test is a filter)."""
    conn.exec_driver_sql(f"SET LOCAL hnsw.ef_search = {int(ef)}")
    conn.exec_driver_sql(f"SET LOCAL hnsw.iterative_scan = {ITERATIVE_SCAN}")


def tune(conn: Connection, version: int, ids: Sequence[int], target: float, previous: SearchPlan | None = None,
         requested: str = "auto") -> SearchPlan:
    """The search plan of `version` (whose rows `ids` are), measured inside the publishing transaction.
    `requested`: "auto" (the faster of exact and HNSW at the target), "flat" (always exact) or "hnsw" (HNSW
    whatever the size, at the tuned ef_search) — the indexer's --index-type."""
    n = len(ids)
    if requested == "flat" or requested == "auto" and n <= EXACT_MAX or not n:
        return SearchPlan("flat", None, 1.0 if n else None, n)
    if previous is not None and previous.measured_at and previous.ef_search and \
            (requested == "auto" or previous.index_type == requested) and \
            abs(n - previous.measured_at) <= RETUNE_GROWTH * previous.measured_at:
        return SearchPlan(previous.index_type, previous.ef_search, previous.recall_at_10, previous.measured_at)
    start = time.perf_counter()
    queries = sample_queries(conn, version, ids)
    truth, exact_ms = _timed(conn, nearest_sql(VISIBLE, exact=True), queries, version, RECALL_K)
    ef, measured, hnsw_ms = EF_START, 0.0, math.inf
    while True:
        set_ef_search(conn, ef)
        found, hnsw_ms = _timed(conn, nearest_sql(VISIBLE, exact=False), queries, version, RECALL_K)
        measured = recall(found, truth)
        if measured >= target or ef >= EF_MAX:
            break
        ef = min(EF_MAX, ef * 2)
    timings = {"exact_ms": round(exact_ms, 3), "hnsw_ms": round(hnsw_ms, 3)}
    if requested == "hnsw":
        logger.info("pgvector: HNSW recall@10 %.3f at ef_search %d over %d vectors", measured, ef, n)
        return SearchPlan("hnsw", ef, round(measured, 4), n, timings)
    if measured < target or exact_ms <= hnsw_ms:
        why = f"recall@10 {measured:.3f} at ef_search {ef}" if measured < target else \
            f"{exact_ms:.1f} ms exact vs {hnsw_ms:.1f} ms HNSW"
        logger.info("pgvector: %d vectors searched exactly (%s; measured in %.1f s)", n, why,
                    time.perf_counter() - start)
        return SearchPlan("flat", ef, 1.0, n, timings)
    logger.info("pgvector: HNSW recall@10 %.3f at ef_search %d over %d vectors (%.1f ms vs %.1f ms exact; "
                "measured in %.1f s)", measured, ef, n, hnsw_ms, exact_ms, time.perf_counter() - start)
    return SearchPlan("hnsw", ef, round(measured, 4), n, timings)


__all__ = ["EF_MAX", "EF_START", "EXACT_MAX", "RECALL_K", "SearchPlan", "VISIBLE", "nearest_sql", "recall",
           "sample_queries", "set_ef_search", "tune", "vector_text"]
