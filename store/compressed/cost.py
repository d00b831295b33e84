"""The cost model of a compressed index's query: what `tune` minimises and what decides between an exact and an
approximate filtered search (store/compressed/index.py)."""

from __future__ import annotations

# Modelled cost of one query, in single-core nanoseconds (fitted on 100k / 1M indexes, one OpenMP thread): what
# `tune` minimises and what decides between an exact and an approximate filtered search.
COARSE_NS_PER_DIM = 0.1  # query x coarse centroids
LIST_NS = 300.0  # per probed list: list lookup, residual term
SCAN_NS_PER_BYTE = 0.5  # per PQ code byte scanned (a table look-up and an add)
HEAP_NS = 100.0  # per candidate kept by the PQ search
ROW_NS = {"pread": 1800.0, "memory": 600.0}  # per re-scored row: fetch (a pread, or a gather) + convert + dot


def query_cost_ns(*, nlist: int, ntotal: int, d: int, code_size: int, nprobe: int, rerank: int,
                  rescore_io: str) -> float:
    """Modelled single-core cost of one query probing `nprobe` of `nlist` lists and re-scoring `rerank` rows
    fetched as `rescore_io` says ("pread" or "memory")."""
    nprobe = min(nprobe, nlist)
    scanned = nprobe * ntotal / max(1, nlist)
    return (nlist * d * COARSE_NS_PER_DIM + nprobe * LIST_NS + scanned * code_size * SCAN_NS_PER_BYTE
            + rerank * (HEAP_NS + ROW_NS[rescore_io]))


__all__ = ["COARSE_NS_PER_DIM", "HEAP_NS", "LIST_NS", "ROW_NS", "SCAN_NS_PER_BYTE", "query_cost_ns"]
