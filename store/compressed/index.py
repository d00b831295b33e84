"""The compressed index itself: IVF-PQ candidates re-scored exactly from fp16 vectors, its filtered search, and
its files (store/compressed/__init__.py says how it works)."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import faiss
import numpy as np

from . import cost
from .row_reader import RowReader

if TYPE_CHECKING:
    from .build import TuneResult

logger = logging.getLogger(__name__)

FORMAT = 1
INDEX_NAME = "ivfpq.faiss"
VECTORS_NAME = "vectors.f16.npy"
IDS_NAME = "ids.npy"
META_NAME = "compressed.json"

RECALL_K = 10
RESCORE_BLOCK_BYTES = 32 << 20  # float32 candidate vectors gathered at a time when re-scoring
BATCH_SELECTOR_MAX = 65_536  # allowed ids up to which an IDSelectorBatch (hash set) is used, above a bitmap


class Selection:
    """Allowed ids of one filter, resolved against an index: the rows they occupy and a FAISS selector over ids.

    Reusable across searches (the same filter for many queries builds its selector once)."""

    def __init__(self, index: "CompressedIndex", allowed_ids: np.ndarray) -> None:
        allowed = np.unique(np.asarray(allowed_ids, dtype=np.int64).ravel())
        ids = index.ids
        pos = np.searchsorted(ids, allowed)
        present = pos < len(ids)
        present[present] = ids[pos[present]] == allowed[present]
        self.rows = pos[present].astype(np.int64)  # sorted rows of the allowed ids the index holds
        self.ids = allowed[present]  # those ids, sorted
        self.count = int(len(self.rows))
        self.share = self.count / max(1, len(ids))
        self._max_id = int(ids[-1]) if len(ids) else -1
        self._min_id = int(ids[0]) if len(ids) else 0
        self._selector: Optional[faiss.IDSelector] = None
        self._bitmap: Optional[np.ndarray] = None  # IDSelectorBitmap reads it in place: kept alive here

    @classmethod
    def of_rows(cls, index: "CompressedIndex", rows: np.ndarray) -> "Selection":
        """The selection of these rows of the index (positions in its sorted ids, unique), without a look-up."""
        selection = cls(index, np.zeros(0, dtype=np.int64))
        selection.rows = np.sort(np.asarray(rows, dtype=np.int64))
        selection.ids = np.asarray(index.ids[selection.rows], dtype=np.int64)
        selection.count = int(len(selection.rows))
        selection.share = selection.count / max(1, index.ntotal)
        return selection

    @property
    def selector(self) -> faiss.IDSelector:
        """IDSelectorBatch for few ids or sparse ids; IDSelectorBitmap (max id / 8 bytes) for many dense ids."""
        if self._selector is None:
            dense = self._min_id >= 0 and self._max_id + 1 <= 64 * max(1, self.count)
            if self.count <= BATCH_SELECTOR_MAX or not dense:
                self._selector = faiss.IDSelectorBatch(self.ids)
            else:
                bits = np.zeros(self._max_id + 1, dtype=bool)
                bits[self.ids] = True
                self._bitmap = np.packbits(bits, bitorder="little")
                self._selector = faiss.IDSelectorBitmap(self._bitmap)
        return self._selector

class CompressedIndex:
    """IVF-PQ candidates re-scored exactly from fp16 vectors; see the module docstring."""

    def __init__(self, index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, *, nprobe: int = 16,
                 rerank: int = 100, recall_at_10: Optional[float] = None, build_s: float = 0.0,
                 info: Optional[dict] = None, reader: Optional[RowReader] = None) -> None:
        self.index = index  # IndexPreTransform(OPQ, IndexIVFPQ) or IndexIVFPQ; labels are the ids
        if isinstance(index, faiss.IndexPreTransform):
            self._transform: Optional[faiss.VectorTransform] = faiss.downcast_VectorTransform(index.chain.at(0))
            self.ivf = faiss.downcast_index(index.index)
        else:
            self._transform = None
            self.ivf = index
        if not isinstance(self.ivf, faiss.IndexIVFPQ):
            raise TypeError(f"expected an IndexIVFPQ, got {type(self.ivf).__name__}")
        self.vectors = vectors  # float16 (n, d), row r holds the vector of ids[r]; ndarray or read-only memmap
        self.reader = reader  # when set, rows to re-score are read from the file (pread), not from `vectors`
        self.ids = ids  # int64 (n,), strictly increasing
        if vectors.shape != (len(ids), self.ivf.d) or vectors.dtype != np.float16:
            raise ValueError(f"vectors {vectors.dtype} {vectors.shape} do not match {len(ids)} ids of "
                             f"dimension {self.ivf.d}")
        if self.ivf.ntotal != len(ids):
            raise ValueError(f"the FAISS index holds {self.ivf.ntotal} vectors, the id list {len(ids)}")
        self.nprobe = int(nprobe)
        self.rerank = int(rerank)
        self.recall_at_10 = recall_at_10
        self.build_s = build_s
        self.info = dict(info or {})
        od = faiss.downcast_InvertedLists(self.ivf.invlists)
        self.mmapped = isinstance(od, faiss.OnDiskInvertedLists)  # inverted lists mapped from the file
        if self.mmapped:
            od.prefetch_nthread = 0  # FAISS would start a thread per probed list (up to 32) on every search

    # ------------------------------------------------------------------ properties

    @property
    def d(self) -> int:
        return int(self.ivf.d)

    @property
    def ntotal(self) -> int:
        return int(len(self.ids))

    @property
    def nlist(self) -> int:
        return int(self.ivf.nlist)

    @property
    def m(self) -> int:
        return int(self.ivf.pq.M)

    @property
    def nbits(self) -> int:
        return int(self.ivf.pq.nbits)

    @property
    def code_size(self) -> int:
        return int(self.ivf.code_size)

    @property
    def opq(self) -> bool:
        return self._transform is not None

    def params(self) -> dict:
        """What a manifest would record."""
        return {"kind": "ivfpq", "metric": "ip", "d": self.d, "ntotal": self.ntotal, "nlist": self.nlist,
                "m": self.m, "nbits": self.nbits, "opq": self.opq, "nprobe": self.nprobe, "rerank": self.rerank,
                "recall_at_10": self.recall_at_10}

    def memory(self) -> dict:
        """Bytes by kind: owned by the process (anonymous) vs mappable from files (shared page cache)."""
        d = self.d
        owned = self.nlist * d * 4 + self.ivf.pq.ksub * d * 4 + (d * d * 4 if self.opq else 0)
        lists = self.ntotal * (self.code_size + 8)
        return {"owned": owned, "lists": lists, "vectors_fp16": self.ntotal * d * 2, "ids": self.ntotal * 8,
                "per_vector_index": self.code_size + 8, "per_vector_rescore": d * 2 + 8}

    # ------------------------------------------------------------------ search

    @property
    def rescore_io(self) -> str:
        """How re-scored rows are fetched: "pread" (from the file) or "memory" (array or mapping)."""
        return "pread" if self.reader is not None else "memory"

    def cost_ns(self, nprobe: int, rerank: int, rescore_io: Optional[str] = None) -> float:
        """Modelled cost of one query (store/compressed/cost.py), rows fetched as `rescore_io` says (default: as
        this index fetches them)."""
        return cost.query_cost_ns(nlist=self.nlist, ntotal=self.ntotal, d=self.d, code_size=self.code_size,
                                  nprobe=nprobe, rerank=rerank, rescore_io=rescore_io or self.rescore_io)

    def select(self, allowed_ids: np.ndarray) -> Selection:
        return Selection(self, allowed_ids)

    def search(self, queries: np.ndarray, k: int, *, rerank: Optional[int] = None, nprobe: Optional[int] = None,
               allowed_ids: Union[np.ndarray, Selection, None] = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 (q, k), ids int64 (q, k)), best first; exact inner products with the stored vectors.

        `rerank` (>= k) candidates come from the PQ search over `nprobe` lists (defaults: the tuned ones). Rows
        with fewer than k results end in -inf / -1, as FAISS pads. `allowed_ids` restricts the search to those
        ids (a `Selection` from `select` may be passed to reuse one filter)."""
        q = self._queries(queries)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        rerank = max(k, int(rerank if rerank is not None else self.rerank))
        nprobe = max(1, min(self.nlist, int(nprobe if nprobe is not None else self.nprobe)))
        if allowed_ids is None:
            if self.ntotal == 0:
                return _empty(len(q), k)
            return self._rescore(q, self._candidates(q, rerank, nprobe), k)
        selection = allowed_ids if isinstance(allowed_ids, Selection) else self.select(allowed_ids)
        if selection.count == 0:
            return _empty(len(q), k)
        wide = max(1, min(self.nlist, math.ceil(nprobe / max(selection.share, 1e-12))))
        if selection.count * cost.ROW_NS[self.rescore_io] <= self.cost_ns(wide, rerank):
            return self._exact_rows(q, selection.rows, k)  # cheaper to score every allowed vector: exact
        labels = self._candidates(q, rerank, wide, selection.selector)
        short = (labels >= 0).sum(axis=1) < min(k, selection.count)
        if short.any() and wide < self.nlist:  # an approximate search came back short: every list, complete
            labels[short] = self._candidates(q[short], rerank, self.nlist, selection.selector)
        return self._rescore(q, labels, k)

    def exact_search(self, queries: np.ndarray, k: int,
                     allowed_ids: Union[np.ndarray, Selection, None] = None) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the stored fp16 vectors (all, or the allowed ones): the reference `search` approaches."""
        q = self._queries(queries)
        if allowed_ids is None:
            rows = np.arange(self.ntotal, dtype=np.int64)
        else:
            selection = allowed_ids if isinstance(allowed_ids, Selection) else self.select(allowed_ids)
            rows = selection.rows
        return self._exact_rows(q, rows, k)

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.d:
            raise ValueError(f"queries of shape {np.shape(queries)} for an index of dimension {self.d}")
        return q

    def _candidates(self, q: np.ndarray, r: int, nprobe: int,
                    selector: Optional[faiss.IDSelector] = None) -> np.ndarray:
        """ids (q, r) of the PQ search's top r, best first, -1 padded."""
        x = self._transform.apply(q) if self._transform is not None else q
        params = faiss.SearchParametersIVF(nprobe=int(nprobe))
        if selector is not None:
            params.sel = selector
        _, labels = self.ivf.search(x, int(r), params=params)
        return labels

    def take(self, rows: np.ndarray) -> np.ndarray:
        """fp16 (len(rows), d) stored vectors of these rows (positions in `ids`)."""
        return self._take(np.asarray(rows, dtype=np.int64))

    def _take(self, rows: np.ndarray) -> np.ndarray:
        return self.reader.take(rows) if self.reader is not None else self.vectors[rows]

    def _rows(self, labels: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.ids, labels)

    def _rescore(self, q: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the candidate ids (q, r) and the top k of them."""
        nq, r = labels.shape
        scores = np.empty((nq, r), dtype=np.float32)
        valid = labels >= 0
        rows = self._rows(np.where(valid, labels, self.ids[0] if self.ntotal else 0))
        block = max(1, RESCORE_BLOCK_BYTES // max(1, r * self.d * 4))
        for start in range(0, nq, block):
            end = min(nq, start + block)
            vec = self._take(rows[start:end].ravel()).astype(np.float32).reshape(end - start, r, self.d)
            scores[start:end] = np.matmul(vec, q[start:end, :, None])[:, :, 0]
        scores[~valid] = -np.inf
        return _top_k(scores, labels, k)

    def _exact_rows(self, q: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top k over the given rows (sorted), in blocks, keeping a running top k."""
        nq = len(q)
        best_s, best_i = _empty(nq, k)
        if len(rows) == 0:
            return best_s, best_i
        block = max(1024, RESCORE_BLOCK_BYTES // (self.d * 4))
        for start in range(0, len(rows), block):
            part = rows[start:start + block]
            s = q @ self._take(part).astype(np.float32).T  # (nq, b)
            ids = np.broadcast_to(self.ids[part], s.shape)
            best_s, best_i = _top_k(np.concatenate([best_s, s], axis=1), np.concatenate([best_i, ids], axis=1), k)
        return best_s, best_i

    # ------------------------------------------------------------------ tuning
    def tune(self, sample_queries: np.ndarray, truth: np.ndarray, recall_target: float = 0.95, *, k: int = RECALL_K,
             nprobes: Optional[list[int]] = None, reranks: Optional[list[int]] = None,
             rescore_io: str = "pread") -> "TuneResult":
        """Choose (nprobe, rerank) reaching recall@k >= target against `truth` at the lowest modelled cost and set
        them on the index (store.compressed.build.tune)."""
        from .build import tune  # build.py imports this module

        return tune(self, sample_queries, truth, recall_target, k=k, nprobes=nprobes, reranks=reranks,
                    rescore_io=rescore_io)

    # ------------------------------------------------------------------ files

    def write(self, directory: Union[str, Path]) -> Path:
        """Write the index, the fp16 vectors, the ids and the parameters into `directory` (created); each file
        is written to a temporary name and renamed, the parameters last."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{INDEX_NAME}.tmp"
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, directory / INDEX_NAME)
        for name, array in ((VECTORS_NAME, self.vectors), (IDS_NAME, self.ids)):
            tmp = directory / f".{name}.tmp"
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(array), allow_pickle=False)
            os.replace(tmp, directory / name)
        meta = dict(self.params(), format=FORMAT, build_s=self.build_s, info=self.info)
        tmp = directory / f".{META_NAME}.tmp"
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, directory / META_NAME)
        return directory

    @classmethod
    def open(cls, directory: Union[str, Path], mmap: bool = True, rescore_io: str = "pread") -> "CompressedIndex":
        """Open a written index; with `mmap` the inverted lists, fp16 vectors and ids are mapped, not read into
        memory. `rescore_io` says how re-scored rows are fetched then: "pread" (default; see `RowReader`: page
        cache, shared, outside RSS) or "mmap" (from the mapping: faster by a few us, but the file's pages pile
        up in each process's RSS)."""
        if rescore_io not in ("pread", "mmap"):
            raise ValueError(f"rescore_io must be 'pread' or 'mmap', got {rescore_io!r}")
        directory = Path(directory)
        meta = json.loads((directory / META_NAME).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{directory / META_NAME}: format {meta.get('format')!r}, expected {FORMAT}")
        path = str(directory / INDEX_NAME)
        index = None
        if mmap:
            try:
                index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            except RuntimeError as exc:  # a FAISS build without the on-disk hook: read it instead
                logger.warning("%s: cannot map the inverted lists (%s); reading them", path, exc)
        if index is None:
            index = faiss.read_index(path)
        mode = "r" if mmap else None
        vectors = np.load(directory / VECTORS_NAME, mmap_mode=mode, allow_pickle=False)
        ids = np.load(directory / IDS_NAME, mmap_mode=mode, allow_pickle=False)
        reader = RowReader(directory / VECTORS_NAME) if mmap and rescore_io == "pread" else None
        # read_index returns the concrete class (IndexPreTransform or IndexIVFPQ), owning what it read
        return cls(index, vectors, ids, nprobe=meta["nprobe"], rerank=meta["rerank"],
                   recall_at_10=meta.get("recall_at_10"), build_s=meta.get("build_s", 0.0), info=meta.get("info"),
                   reader=reader)



def _empty(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


def _top_k(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score desc, then id asc) of each row; -inf / -1 where a row has fewer than k valid."""
    nq, r = scores.shape
    if r > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        labels = np.take_along_axis(labels, part, axis=1)
    order = np.lexsort((labels, -scores), axis=1) if nq else np.zeros((0, scores.shape[1]), dtype=np.int64)
    top_s = np.take_along_axis(scores, order, axis=1)[:, :k]
    top_i = np.take_along_axis(labels, order, axis=1)[:, :k]
    if top_s.shape[1] < k:
        pad_s, pad_i = _empty(nq, k - top_s.shape[1])
        top_s, top_i = np.concatenate([top_s, pad_s], axis=1), np.concatenate([top_i, pad_i], axis=1)
    missing = ~np.isfinite(top_s)
    top_i = np.where(missing, -1, top_i).astype(np.int64)
    top_s = np.where(missing, -np.inf, top_s).astype(np.float32)
    return top_s, top_i



__all__ = ["FORMAT", "IDS_NAME", "INDEX_NAME", "META_NAME", "RECALL_K", "VECTORS_NAME", "CompressedIndex", "Selection"]
