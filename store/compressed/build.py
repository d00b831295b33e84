"""Building a compressed index (training the coarse lists, the PQ codebooks and the OPQ rotation on a sample,
encoding every vector), tuning its (nprobe, rerank) to a recall target, and measuring recall@10."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Optional

import faiss
import numpy as np

from .index import RECALL_K, CompressedIndex

logger = logging.getLogger(__name__)

KMEANS_NITER = 10  # coarse k-means iterations (FAISS's IVF default is 10 too; more buys little on a sample)
PQ_NITER = 25  # k-means iterations of each PQ codebook (FAISS's default)
OPQ_NITER = 20  # OPQ alternations (FAISS default 50: the rotation converges well before on embeddings)
OPQ_NITER_PQ_0 = 10  # k-means iterations of OPQ's first PQ (FAISS default 40; later alternations refine it)
OPQ_TRAIN_MAX = 32_768  # points the OPQ rotation is learnt on
TRAIN_PER_LIST = 64  # training points per coarse list (FAISS warns under 39)
TRAIN_MIN = 16_384  # at least this many: the PQ codebooks (256 centroids a sub-space) train on them too
ADD_CHUNK = 65_536  # vectors encoded at a time (bounds the rotated / residual copies)


def default_nlist(n: int) -> int:
    """About 2 sqrt(n) lists (2000 at 1M, 6300 at 10M), at least TRAIN_PER_LIST vectors per list."""
    return int(max(1, min(65_536, round(2 * math.sqrt(n)), n // TRAIN_PER_LIST)))


def default_m(d: int) -> int:
    """PQ sub-quantizers: one byte per 8 dimensions (32 bytes a vector at d = 256), a divisor of d."""
    m = max(1, d // 8)
    while d % m:
        m -= 1
    return m


@dataclass
class TuneResult:
    nprobe: int
    rerank: int
    recall_at_10: float  # measured at (nprobe, rerank) on the tuning queries
    cost_ns: float  # modelled cost of one query there
    reached: bool  # recall_at_10 >= the target
    tried: list[dict] = field(default_factory=list)  # every (nprobe, rerank, recall, cost_ns) measured
    tune_s: float = 0.0


def tune(index: CompressedIndex, sample_queries: np.ndarray, truth: np.ndarray, recall_target: float = 0.95, *,
         k: int = RECALL_K, nprobes: Optional[list[int]] = None, reranks: Optional[list[int]] = None,
         rescore_io: str = "pread") -> TuneResult:
    """Choose (nprobe, rerank) reaching recall@k >= target against `truth` (ids (q, >= k) of the exact top k
    of each query, -1 padded) at the lowest modelled cost; set them on the index and record the recall.
    Costs assume rows re-scored as `rescore_io` says: "pread", as `open` serves them by default, or "memory".

    One PQ search per nprobe (with the largest rerank), each rerank scored on its prefix: the PQ top r is
    the prefix of the PQ top r'. Where no setting reaches the target the best recall found is kept (and a
    warning logged)."""
    start = time.perf_counter()
    q = index._queries(sample_queries)
    truth = np.asarray(truth, dtype=np.int64)[:, :k]
    if len(truth) != len(q):
        raise ValueError(f"{len(q)} queries but {len(truth)} rows of truth")
    if nprobes is None:
        nprobes = [1 << i for i in range(17) if 1 << i < index.nlist] + [index.nlist]
    if reranks is None:
        reranks = [int(k * f) for f in (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)]
    reranks = sorted({max(k, min(int(r), max(k, index.ntotal))) for r in reranks})
    r_max = reranks[-1]
    tried: list[dict] = []
    best: Optional[dict] = None

    def dearer(nprobe: int, r: int) -> bool:  # than the best setting reaching the target so far
        return (best is not None and best["recall"] >= recall_target
                and index.cost_ns(nprobe, r, rescore_io) >= best["cost_ns"])

    for nprobe in sorted(set(min(index.nlist, max(1, int(p))) for p in nprobes)):
        if dearer(nprobe, reranks[0]):
            break  # so is every further setting
        labels = index._candidates(q, r_max, nprobe)
        for r in reranks:
            if dearer(nprobe, r):
                break
            _, found = index._rescore(q, np.ascontiguousarray(labels[:, :r]), k)
            row = {"nprobe": nprobe, "rerank": r, "recall": recall_at(found, truth),
                   "cost_ns": index.cost_ns(nprobe, r, rescore_io)}
            tried.append(row)
            if _better(row, best, recall_target):
                best = row
            if row["recall"] >= recall_target:
                break  # a larger rerank at this nprobe only costs more
    assert best is not None
    index.nprobe, index.rerank, index.recall_at_10 = best["nprobe"], best["rerank"], float(best["recall"])
    result = TuneResult(nprobe=index.nprobe, rerank=index.rerank, recall_at_10=index.recall_at_10,
                        cost_ns=best["cost_ns"], reached=best["recall"] >= recall_target, tried=tried,
                        tune_s=time.perf_counter() - start)
    if not result.reached:
        logger.warning("IVF-PQ index reaches recall@%d %.3f < target %.3f (nprobe %d, rerank %d)", k,
                       result.recall_at_10, recall_target, index.nprobe, index.rerank)
    return result


def build_compressed(vectors: np.ndarray, ids: np.ndarray, *, nlist: Optional[int] = None, m: Optional[int] = None,
                     nbits: int = 8, opq: bool = True, train_sample: Optional[int] = None, nprobe: int = 16,
                     rerank: int = 100, opq_niter: int = OPQ_NITER, seed: int = 0) -> CompressedIndex:
    """An IVF-PQ (OPQ-rotated when `opq`) index over `vectors` (n, d) float32 with `ids` (n,) int64 (unique),
    plus their fp16 copy in id order. Trained on `train_sample` vectors drawn at random (default
    max(TRAIN_MIN, TRAIN_PER_LIST * nlist), all when fewer): bounded time whatever n. Not tuned: call `tune`."""
    start = time.perf_counter()
    vectors = np.asarray(vectors)
    ids = np.asarray(ids, dtype=np.int64).ravel()
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise ValueError(f"vectors {vectors.shape} and ids {ids.shape} do not match")
    n, d = vectors.shape
    m = default_m(d) if m is None else int(m)
    if d % m:
        raise ValueError(f"m = {m} does not divide the dimension {d}")
    nlist = default_nlist(n) if nlist is None else int(nlist)
    ksub = 1 << nbits
    if n < max(nlist, ksub):
        raise ValueError(f"{n} vectors are too few to train {nlist} lists and {ksub}-centroid PQ codebooks; "
                         "use an exact index")
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if n > 1 and not np.all(sorted_ids[1:] > sorted_ids[:-1]):
        raise ValueError("ids are not unique")
    rng = np.random.default_rng(seed)
    size = min(n, train_sample if train_sample is not None else max(TRAIN_MIN, TRAIN_PER_LIST * nlist))
    sample_rows = np.sort(rng.choice(n, size, replace=False)) if size < n else np.arange(n)
    sample = np.ascontiguousarray(vectors[sample_rows], dtype=np.float32)

    quantizer = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = KMEANS_NITER
    ivf.cp.seed = seed
    ivf.pq.cp.seed = seed
    ivf.pq.cp.niter = PQ_NITER
    index: faiss.Index = ivf
    if opq:
        matrix = faiss.OPQMatrix(d, m)
        matrix.niter = opq_niter
        matrix.niter_pq_0 = OPQ_NITER_PQ_0
        matrix.max_train_points = min(OPQ_TRAIN_MAX, size)
        index = faiss.IndexPreTransform(matrix, ivf)  # FAISS's wrappers keep `matrix` and `ivf` alive with it
    index.train(sample)
    del sample
    train_s = time.perf_counter() - start

    fp16 = np.empty((n, d), dtype=np.float16)
    for lo in range(0, n, ADD_CHUNK):
        rows = order[lo:lo + ADD_CHUNK]
        chunk = np.ascontiguousarray(vectors[rows], dtype=np.float32)
        index.add_with_ids(chunk, sorted_ids[lo:lo + ADD_CHUNK])
        fp16[lo:lo + len(rows)] = chunk
    build_s = time.perf_counter() - start
    info = {"train_sample": int(size), "train_s": round(train_s, 3), "add_s": round(build_s - train_s, 3),
            "opq_niter": int(opq_niter) if opq else None, "seed": seed}
    return CompressedIndex(index, fp16, sorted_ids, nprobe=min(nprobe, nlist), rerank=rerank, build_s=build_s,
                           info=info)




def exact_top_k(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int = RECALL_K) -> np.ndarray:
    """ids (q, k) of the exact inner-product top k (FAISS IndexFlatIP), -1 padded: the truth `tune` wants."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, rows = flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    ids = np.asarray(ids, dtype=np.int64)
    return np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean |found ∩ truth| / |truth| (ignoring -1), pooled over the queries as indexer.faiss_index does."""
    hits = total = 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        total += len(t)
        hits += int(np.isin(t, f[f >= 0]).sum())
    return hits / total if total else 1.0


def _better(row: dict, best: Optional[dict], target: float) -> bool:
    if best is None:
        return True
    ok, best_ok = row["recall"] >= target, best["recall"] >= target
    if ok != best_ok:
        return ok
    if ok:
        return row["cost_ns"] < best["cost_ns"]
    return (row["recall"], -row["cost_ns"]) > (best["recall"], -best["cost_ns"])



def build_tuned(vectors: np.ndarray, ids: np.ndarray, *, recall_target: float = 0.95, sample: int = 1000,
                seed: int = 0) -> tuple[CompressedIndex, TuneResult]:
    """A compressed index over `vectors` / `ids`, tuned on `sample` of the stored vectors used as queries against
    exact search (as store.faiss_build tunes IVF and HNSW): what a compaction builds for the "ivfpq" type."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    built = build_compressed(vectors, ids, seed=seed)
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(len(vectors), min(sample, len(vectors)), replace=False))
    queries = vectors[rows]
    truth = exact_top_k(vectors, ids, queries, min(RECALL_K, len(vectors)))
    return built, built.tune(queries, truth, recall_target)


__all__ = ["TuneResult", "build_compressed", "build_tuned", "default_m", "default_nlist", "exact_top_k", "recall_at",
           "tune"]
