"""FAISS indexes over segment embeddings: exact for small libraries, approximate (IVF / HNSW) for large ones.

Vectors are L2-normalised, so inner product is cosine similarity. Every index is wrapped in an
IndexIDMap2 whose ids are Segment.id. `auto` picks by size (ENVIRONMENT.md "FAISS", 2-core CPU):
- flat up to 100k vectors (about 10 ms a query there; exact);
- HNSW (M=32) up to 1M: the best latency/recall where its build (about 1.5 min at 1M) is affordable;
- IVF-Flat up to IVFPQ_MIN_AUTO: k-means on a sample trains in seconds, lists are cheap to add to, GPU-trainable;
- IVF-PQ ("ivfpq", store/compressed/) beyond: OPQ + IVF-PQ candidates re-scored exactly from an fp16 copy of
  the vectors (pread), 32 bytes a vector in its lists instead of 1 KiB; scores stay exact, only which vectors
  are scored is approximate.
An approximate index's search parameter (nprobe / efSearch; nprobe and rerank for ivfpq) is raised until
recall@10 against exact search, measured on a sample of the stored vectors used as queries, reaches the
target; the measured recall is reported and stored in the manifest.

Reading: `read_index` memory-maps what FAISS can map: with IO_FLAG_MMAP_IFC (FAISS >= 1.9) a Flat's
vectors, an HNSW's vectors and graph, an IVF's lists (IO_FLAG_MMAP alone maps IVF lists only). Replicas of
the service on one host then share those pages (figures in indexer/README.md, "Memory").
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import faiss
import numpy as np

logger = logging.getLogger(__name__)

INDEX_TYPES = ("auto", "flat", "ivf", "hnsw", "ivfpq")
FLAT_MAX = 100_000
HNSW_MAX = 1_000_000
# `auto` compresses from here. Measured at 1M vectors (d = 256; bench/compressed_index.py): flat and HNSW cost
# ~1.1-1.3 GB of RSS a process (1 KiB+ a vector), IVF-PQ with fp16 re-scoring 126 MiB (32-byte codes + ids
# mapped, fp16 rows pread from the page cache) at p50 0.4 ms and recall@10 0.968. At 2M an uncompressed index
# passes ~2.5 GB a replica, more than a small host's replicas can each hold, while the compressed one stays
# near 250 MiB at the same recall target; below it IVF-Flat's exact list scans are affordable and keep recall
# highest.
IVFPQ_MIN_AUTO = 2_000_000
# An explicit --index-type ivfpq over fewer vectors builds a flat index: too few to train 256-centroid PQ
# codebooks per sub-space and the coarse lists (and flat is exact and small there anyway).
IVFPQ_MIN = 4096
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
RECALL_K = 10
# Batched flat search is about 5x faster with BLAS from 20 queries up (default threshold 128000).
FAISS_BLAS_THRESHOLD = 20
# FAISS >= 1.9 maps Flat and HNSW storage with IO_FLAG_MMAP_IFC; IO_FLAG_MMAP alone maps IVF lists only
MMAP_FLAG = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP)


class IndexBuildError(RuntimeError):
    """An index cannot be built from these vectors as asked."""


@dataclass
class BuiltIndex:
    index: Any  # IndexIDMap2 on the CPU, or a CompressedIndex (ivfpq); ready to write
    index_type: str  # "flat" | "ivf" | "hnsw" | "ivfpq"
    search_params: dict = field(default_factory=dict)
    recall_at_10: float | None = None
    build_s: float = 0.0
    recall_s: float = 0.0


def configure_faiss() -> None:
    """Process-wide FAISS settings this package relies on (idempotent)."""
    faiss.cvar.distance_compute_blas_threshold = FAISS_BLAS_THRESHOLD


def apply_search_params(index: faiss.Index, params: Mapping[str, Any]) -> None:
    """Set nprobe (IVF) or efSearch (HNSW) on an index, through an IndexIDMap wrapper."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if "nprobe" in params and isinstance(inner, faiss.IndexIVF):
        inner.nprobe = int(params["nprobe"])
    if "efSearch" in params and isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = int(params["efSearch"])


def read_index(path: Path, *, mmap: bool = True) -> faiss.Index:
    """A written index, memory-mapped where FAISS can (see the module). The file must never change while
    mapped: parts are immutable, and an unlinked file stays readable until unmapped."""
    return faiss.read_index(str(path), MMAP_FLAG if mmap else 0)


def write_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def choose_index_type(num_vectors: int, requested: str = "auto") -> str:
    if requested not in INDEX_TYPES:
        raise IndexBuildError(f"unknown index type {requested!r}; choose one of {INDEX_TYPES}")
    if requested == "ivfpq" and num_vectors < IVFPQ_MIN:
        return "flat"
    if requested != "auto":
        return requested
    if num_vectors <= FLAT_MAX:
        return "flat"
    if num_vectors <= HNSW_MAX:
        return "hnsw"
    return "ivf" if num_vectors < IVFPQ_MIN_AUTO else "ivfpq"


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
    if kind == "ivfpq":
        return _build_ivfpq(vectors, ids, recall_target=recall_target, recall_sample=recall_sample, seed=seed)
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


def _build_ivfpq(vectors: np.ndarray, ids: np.ndarray, *, recall_target: float, recall_sample: int,
                 seed: int) -> BuiltIndex:
    """A compressed index (store/compressed/), tuned to the recall target on a sample of the stored vectors."""
    from .compressed import build_tuned  # faiss only, but keeps this module's import light

    start = time.perf_counter()
    index, tuned = build_tuned(vectors, ids, recall_target=recall_target, sample=recall_sample, seed=seed)
    return BuiltIndex(index=index, index_type="ivfpq", search_params={"nprobe": tuned.nprobe, "rerank": tuned.rerank},
                      recall_at_10=tuned.recall_at_10, build_s=time.perf_counter() - start - tuned.tune_s,
                      recall_s=tuned.tune_s)


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


__all__ = ["BuiltIndex", "FLAT_MAX", "HNSW_MAX", "INDEX_TYPES", "IVFPQ_MIN", "IVFPQ_MIN_AUTO", "IndexBuildError",
           "apply_search_params", "build_index", "choose_index_type", "configure_faiss", "exact_neighbours",
           "ivf_nlist", "read_index", "recall_at_k", "tune_search_params", "write_index"]
