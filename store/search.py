"""Searching a version's parts over some of their rows: the rows a version serves (tombstoned and shadowed ones
left out), or those that also pass a search filter. Each part is searched with a FAISS ID selector over its
row numbers, and the parts' best hits are merged by score.

An approximate index (IVF, HNSW) is searched with its effort (nprobe, efSearch) divided by the selected share,
so that it meets about as many selected vectors as an unselected search meets vectors. Where that would cost
more than EFFORT_MAX times the tuned effort, or few rows are selected, the selected rows are scored
exhaustively instead: exact and complete, at a bounded cost (one bit test per vector, distances for the
selected ones). A version's own hidden rows are a small share (compaction bounds them), so its unfiltered
search keeps about its tuned effort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import faiss
import numpy as np

EXACT_MAX = 65_536  # selected vectors of a part scored exhaustively whatever their share
EFFORT_MAX = 8


@dataclass(frozen=True, eq=False)
class RowMask:
    """The rows of one part a search may return."""

    bitmap: np.ndarray  # uint8, bit r (little-endian within each byte) set when row r is selected
    count: int
    total: int  # rows of the part
    selector: faiss.IDSelector  # over the part's row numbers, reading `bitmap`

    @classmethod
    def of(cls, selected: np.ndarray) -> "RowMask":
        bitmap = np.packbits(np.asarray(selected, dtype=bool), bitorder="little")
        return cls(bitmap, int(np.count_nonzero(selected)), len(selected), faiss.IDSelectorBitmap(bitmap))

    def rows(self) -> np.ndarray:
        """bool (total,): the selected rows."""
        return np.unpackbits(self.bitmap, count=self.total, bitorder="little").astype(bool)


@dataclass(frozen=True, eq=False)
class RowSelection:
    """The rows of each part of a version a search may return; None for a part: every row of it."""

    masks: tuple[Optional[RowMask], ...]
    count: int  # selected rows, all parts


def search_part(inner: faiss.Index, ids: np.ndarray, queries: np.ndarray, k: int,
                mask: Optional[RowMask]) -> tuple[np.ndarray, np.ndarray]:
    """One part's best k of the selected rows: (scores (Q, k) float32, segment ids (Q, k) int64), -inf / -1 where
    fewer; at most two FAISS searches, the second (an approximate index came back short) exhaustive."""
    total = int(inner.ntotal)
    if mask is None:
        scores, rows = inner.search(queries, k) if total else _nothing(len(queries), k)
    elif mask.count == 0:
        scores, rows = _nothing(len(queries), k)
    else:
        params = _approximate(inner, mask.selector, k, mask.count / total) if mask.count > EXACT_MAX else None
        found = None
        if params is not None:
            scores, rows = inner.search(queries, k, params=params)
            if np.all((rows >= 0).sum(axis=1) >= min(k, mask.count)):
                found = scores, rows
        if found is None:
            index, params = _exhaustive(inner, mask.selector)
            found = index.search(queries, k, params=params)
        scores, rows = found
    hit = rows >= 0
    labelled = np.where(hit, np.asarray(ids)[np.where(hit, rows, 0)], -1).astype(np.int64)
    scores = scores.astype(np.float32, copy=True)
    scores[~hit] = -np.inf
    return scores, labelled


def merge(results: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k of several parts' hits per query, best first (a tie keeps the earlier part first)."""
    if len(results) == 1:
        return results[0]
    scores = np.concatenate([s for s, _ in results], axis=1)
    ids = np.concatenate([i for _, i in results], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _nothing(queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((queries, k), -np.inf, np.float32), np.full((queries, k), -1, np.int64)


def _approximate(inner: faiss.Index, selector: faiss.IDSelector, k: int,
                 share: float) -> Optional[faiss.SearchParameters]:
    """Parameters of an approximate search over the selected rows with its effort scaled to their share; None
    where the index is exact anyway, or that search would cost more than scoring them all."""
    if isinstance(inner, faiss.IndexIVF):
        nprobe = math.ceil(inner.nprobe / share)
        if nprobe > EFFORT_MAX * inner.nprobe or nprobe >= inner.nlist:
            return None
        return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
    if isinstance(inner, faiss.IndexHNSW):
        tuned = max(inner.hnsw.efSearch, k)
        ef = math.ceil(tuned / share)
        return None if ef > EFFORT_MAX * tuned else faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
    return None


def _exhaustive(inner: faiss.Index, selector: faiss.IDSelector) -> tuple[faiss.Index, faiss.SearchParameters]:
    """The index and parameters that score every selected row: exact, and complete."""
    if isinstance(inner, faiss.IndexIVF):
        return inner, faiss.SearchParametersIVF(sel=selector, nprobe=inner.nlist)  # every list
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.downcast_index(inner.storage), faiss.SearchParameters(sel=selector)  # the vectors, row for row
    return inner, faiss.SearchParameters(sel=selector)


__all__ = ["EFFORT_MAX", "EXACT_MAX", "RowMask", "RowSelection", "merge", "search_part"]
