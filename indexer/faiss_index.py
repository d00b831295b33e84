"""FAISS indexes over segment embeddings: exact for small libraries, approximate (IVF / HNSW) for large ones.

Vectors are L2-normalised, so inner product is cosine similarity. Every index is wrapped in an
IndexIDMap2 whose ids are Segment.id. `auto` picks by size (ENVIRONMENT.md "FAISS", 2-core CPU):
- flat up to 100k vectors (about 10 ms a query there; exact);
- HNSW (M=32) up to 1M: the best latency/recall where its build (about 1.5 min at 1M) is affordable;
- IVF-Flat beyond: k-means on a sample trains in seconds, lists are cheap to add to, GPU-trainable.
An approximate index's search parameter (nprobe / efSearch) is raised until recall@10 against exact
search, measured on a sample of the stored vectors used as queries, reaches the target; the measured
recall is reported and stored in the manifest.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import faiss
import numpy as np

from store.datadir import apply_search_params, configure_faiss

logger = logging.getLogger(__name__)

INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")
FLAT_MAX = 100_000
HNSW_MAX = 1_000_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
RECALL_K = 10


class IndexBuildError(RuntimeError):
    """An index cannot be built from these vectors as asked."""


@dataclass
class BuiltIndex:
    index: faiss.Index  # IndexIDMap2 on the CPU, ready to write
    index_type: str  # "flat" | "ivf" | "hnsw"
    search_params: dict = field(default_factory=dict)
    recall_at_10: float | None = None
    build_s: float = 0.0
    recall_s: float = 0.0


def choose_index_type(num_vectors: int, requested: str = "auto") -> str:
    if requested not in INDEX_TYPES:
        raise IndexBuildError(f"unknown index type {requested!r}; choose one of {INDEX_TYPES}")
    if requested != "auto":
        return requested
    if num_vectors <= FLAT_MAX:
        return "flat"
    return "hnsw" if num_vectors <= HNSW_MAX else "ivf"


def ivf_nlist(num_vectors: int) -> int:
    """About 4 sqrt(n) lists, at least 39 training points per list (FAISS's own warning threshold)."""
    return int(max(1, min(65536, 4 * math.sqrt(num_vectors), num_vectors // 39)))


def _gpu_resources():
    return faiss.StandardGpuResources() if faiss.get_num_gpus() > 0 else None


def build_index(vectors: np.ndarray, ids: np.ndarray, index_type: str = "auto", *, recall_target: float = 0.95,
                recall_sample: int = 1000, use_gpu: bool = False, seed: int = 0) -> BuiltIndex:
    """An IndexIDMap2 over `vectors` (n, d) with `ids` (n,); tuned and measured as the module says."""
    configure_faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise IndexBuildError(f"vectors {vectors.shape} and ids {ids.shape} do not match")
    n, d = vectors.shape
    kind = choose_index_type(n, index_type)
    if kind != "flat" and n == 0:
        kind = "flat"  # nothing to train on; an empty exact index is still a valid version
    start = time.perf_counter()
    gpu = _gpu_resources() if use_gpu else None
    if kind == "flat":
        inner: faiss.Index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        nlist = ivf_nlist(n)
        inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors if n <= 256 * nlist else vectors[rng.choice(n, 256 * nlist, replace=False)]
        if gpu is not None:
            trainer = faiss.index_cpu_to_gpu(gpu, 0, inner)
            trainer.train(sample)
            inner = faiss.index_gpu_to_cpu(trainer)
        else:
            inner.train(sample)
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(vectors, ids)
    built = BuiltIndex(index=index, index_type=kind, build_s=time.perf_counter() - start)
    if kind == "flat":
        built.recall_at_10 = 1.0 if n else None
        return built
    tune_search_params(built, vectors, recall_target=recall_target, sample=recall_sample, gpu=gpu, seed=seed)
    return built


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int, gpu=None) -> np.ndarray:
    """Row numbers of the exact top-k inner-product neighbours of each query."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    if gpu is not None:
        flat = faiss.index_cpu_to_gpu(gpu, 0, flat)
    flat.add(vectors)
    return flat.search(queries, k)[1]


def recall_at_k(index: faiss.Index, ids: np.ndarray, truth_rows: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean |approximate top-k ∩ exact top-k| / k over the queries."""
    _, found = index.search(queries, k)
    truth = ids[truth_rows]
    hits = sum(len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) for f, t in zip(found, truth))
    denom = sum(int((t >= 0).sum()) for t in truth)
    return hits / denom if denom else 1.0


def tune_search_params(built: BuiltIndex, vectors: np.ndarray, *, recall_target: float, sample: int, gpu=None,
                       seed: int = 0) -> None:
    """Raise nprobe / efSearch until recall@10 on a sample reaches the target (or the parameter's maximum)."""
    start = time.perf_counter()
    n = len(vectors)
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(n, min(sample, n), replace=False))
    queries = vectors[rows]
    k = min(RECALL_K, n)
    truth_rows = exact_neighbours(vectors, queries, k, gpu)
    ids = faiss.vector_to_array(built.index.id_map).astype(np.int64)  # row -> id, as added
    inner = faiss.downcast_index(built.index.index)
    if isinstance(inner, faiss.IndexIVF):
        name, value, limit = "nprobe", max(1, min(8, inner.nlist)), inner.nlist
    else:
        name, value, limit = "efSearch", 16, 4096
    while True:
        apply_search_params(built.index, {name: value})
        recall = recall_at_k(built.index, ids, truth_rows, queries, k)
        if recall >= recall_target or value >= limit:
            break
        value = min(limit, value * 2)
    built.search_params = {name: int(value)}
    built.recall_at_10 = float(recall)
    built.recall_s = time.perf_counter() - start
    if recall < recall_target:
        logger.warning("%s index reaches recall@10 %.3f < target %.3f at %s=%d", built.index_type, recall,
                       recall_target, name, value)


__all__ = ["BuiltIndex", "FLAT_MAX", "HNSW_MAX", "INDEX_TYPES", "IndexBuildError", "build_index",
           "choose_index_type", "exact_neighbours", "ivf_nlist", "recall_at_k", "tune_search_params"]
