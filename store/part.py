"""An opened part: an immutable directory holding a FAISS index over some vectors (or, for an "ivfpq" base, a
compressed index: store/compressed/), their rows and token files (layout in store/layout.py). A base part is
listed by every version until the next compaction, so a process
opens each part once and shares it between the snapshots that list it: a service swapping to a version that
adds a delta reads the delta only.
"""

from __future__ import annotations

import json
import threading
import weakref
from pathlib import Path
from typing import Any, Mapping

import faiss
import numpy as np

from .compressed import META_NAME as COMPRESSED_META_NAME
from .compressed import CompressedIndex, Selection
from .faiss_build import apply_search_params, read_index
from .layout import FAISS_NAME, TOKENS_DIR
from .manifest import IndexNotFoundError
from .rows import SegmentRows
from .search import RowMask, search_part


class Part:
    """Vectors searchable by row number, and the rows that say what each row is; safe to share between threads."""

    def __init__(self, directory: Path, index: faiss.Index | CompressedIndex, rows: SegmentRows) -> None:
        self.directory = directory
        self.rows = rows
        self._lock = threading.Lock()
        ids = np.asarray(rows.ids, dtype=np.int64)
        self._order = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._order]
        # a compressed base: searched and read through it (its rows are in id order: row r of this part is its
        # row _position[r]); `inner` is then None
        self.compressed: CompressedIndex | None = index if isinstance(index, CompressedIndex) else None
        self._index = index  # owns `inner` (a downcast view of its sub-index)
        self.inner: faiss.Index | None = None
        self._position: np.ndarray | None = None
        self._selections: weakref.WeakKeyDictionary[RowMask, Selection] = weakref.WeakKeyDictionary()
        if self.compressed is not None:
            if not np.array_equal(np.asarray(self.compressed.ids), self._sorted_ids):
                raise ValueError("the compressed index holds other ids than the part's rows")
            self._position = np.empty(len(ids), dtype=np.int64)
            self._position[self._order] = np.arange(len(ids), dtype=np.int64)
        else:
            self.inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
        # Segment ids are database keys, dense in practice: then a direct id -> row table (4 bytes an id up to
        # the largest) answers a look-up with one memory access where a binary search over a million ids takes
        # twenty, each a cache miss right after a model call (0.25 ms for a search's hits, measured)
        self._direct: np.ndarray | None = None
        if len(ids) and self._sorted_ids[0] >= 0 and self._sorted_ids[-1] < 4 * len(ids) + 1024:
            self._direct = np.full(int(self._sorted_ids[-1]) + 1, -1, dtype=np.int32)
            self._direct[ids] = np.arange(len(ids), dtype=np.int32)

    @property
    def num_rows(self) -> int:
        return self.rows.num_rows

    @property
    def dim(self) -> int:
        return self.compressed.d if self.compressed is not None else int(self.inner.d)

    @property
    def index_type(self) -> str:
        return "ivfpq" if self.compressed is not None else type(self.inner).__name__

    def search(self, queries: np.ndarray, k: int, mask: RowMask | None) -> tuple[np.ndarray, np.ndarray]:
        """Best k of the selected rows (all with mask None): (scores (Q, k) float32, segment ids (Q, k) int64),
        -inf / -1 where fewer (store/search.py). A compressed part scores its hits exactly and stays complete
        under a selection (store/compressed/index.py)."""
        if self.compressed is None:
            return search_part(self.inner, self.rows.ids, queries, k, mask)
        if mask is None:
            if not self.num_rows:
                return (np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64))
            return self.compressed.search(queries, k)
        return self.compressed.search(queries, k, allowed_ids=self._selection(mask))

    def _selection(self, mask: RowMask) -> Selection:
        """The compressed index's selection of a mask's rows; kept while the mask lives (a version's own mask of
        served rows is reused by every search)."""
        with self._lock:
            selection = self._selections.get(mask)
            if selection is None:
                selection = Selection.of_rows(self.compressed, self._position[np.flatnonzero(mask.rows())])
                _ = selection.selector  # built here, under the lock: it owns the bitmap the selector reads
                self._selections[mask] = selection
            return selection

    def rows_of(self, segment_ids: np.ndarray) -> np.ndarray:
        """Row of each segment id in this part, -1 where it holds none (int64)."""
        wanted = np.asarray(segment_ids, dtype=np.int64).reshape(-1)
        if self._direct is not None:
            inside = (wanted >= 0) & (wanted < len(self._direct))
            return np.where(inside, self._direct[np.where(inside, wanted, 0)], -1).astype(np.int64)
        if not len(self._sorted_ids):
            return np.full(len(wanted), -1, np.int64)
        pos = np.minimum(np.searchsorted(self._sorted_ids, wanted), len(self._sorted_ids) - 1)
        return np.where(self._sorted_ids[pos] == wanted, self._order[pos], -1).astype(np.int64)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """(n, dim) float32 stored vectors of these rows."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.zeros((0, self.dim), np.float32)
        if self.compressed is not None:  # its fp16 copy (the only one the part holds)
            return self.compressed.take(self._position[rows]).astype(np.float32)
        if isinstance(self.inner, faiss.IndexIVF):
            with self._lock:  # not while another thread builds it
                if self.inner.direct_map.type == faiss.DirectMap.NoMap:
                    self.inner.make_direct_map()  # IVF lists do not support reconstruct without it
        return np.stack([self.inner.reconstruct(int(r)) for r in rows.tolist()])

    def token_path(self, video_id: str) -> Path:
        return self.directory / TOKENS_DIR / f"{video_id}.npy"

    def __repr__(self) -> str:
        return f"Part({self.directory.name}, rows={self.num_rows}, {self.index_type})"


_opened: dict[tuple, weakref.ref] = {}
_opened_lock = threading.Lock()


def open_part(directory: Path, *, dim: int, search_params: Mapping[str, Any]) -> Part:
    """The part in `directory`, shared with every snapshot of this process that has it open (parts never
    change; a directory recreated under the same name after a crash is another inode). Raises
    IndexNotFoundError when it is missing or inconsistent."""
    try:
        st = directory.stat()
    except OSError as e:
        raise IndexNotFoundError(f"index part {directory} is missing: {e}") from e
    key = (str(directory), st.st_ino, st.st_ctime_ns, json.dumps(dict(search_params), sort_keys=True))
    with _opened_lock:
        ref = _opened.get(key)
        part = ref() if ref is not None else None
        if part is not None:
            return part
        for stale in [k for k, r in _opened.items() if r() is None]:
            del _opened[stale]
    try:
        index: faiss.Index | CompressedIndex
        if (directory / COMPRESSED_META_NAME).exists():
            index = CompressedIndex.open(directory, mmap=True)  # lists and ids mapped, fp16 rows read by pread
        else:
            index = read_index(directory / FAISS_NAME)
        rows = SegmentRows.load(directory)
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise IndexNotFoundError(f"index part {directory} is unreadable: {e}") from e
    if index.ntotal != rows.num_rows or index.d != dim:
        raise IndexNotFoundError(f"index part {directory} is inconsistent: {index.ntotal} vectors of width "
                                 f"{index.d}, {rows.num_rows} rows, manifest dim {dim}")
    if isinstance(index, CompressedIndex):
        index.nprobe = int(search_params.get("nprobe", index.nprobe))
        index.rerank = int(search_params.get("rerank", index.rerank))
    else:
        apply_search_params(index, search_params)
    try:
        part = Part(directory, index, rows)
    except ValueError as e:
        raise IndexNotFoundError(f"index part {directory} is inconsistent: {e}") from e
    with _opened_lock:
        ref = _opened.get(key)
        other = ref() if ref is not None else None
        if other is not None:  # another thread opened it meanwhile: share one
            return other
        _opened[key] = weakref.ref(part)
    return part


__all__ = ["Part", "open_part"]
