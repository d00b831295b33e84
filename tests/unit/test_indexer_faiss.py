"""FAISS index building: exact and approximate types, size-based choice, recall measured against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from store.faiss_build import FLAT_MAX, HNSW_MAX, IndexBuildError, build_index, choose_index_type, ivf_nlist


def clustered(n: int, dim: int = 32, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.4 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def numpy_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def test_choose_index_type_by_size() -> None:
    assert choose_index_type(10) == "flat"
    assert choose_index_type(FLAT_MAX) == "flat"
    assert choose_index_type(FLAT_MAX + 1) == "hnsw"
    assert choose_index_type(HNSW_MAX + 1) == "ivf"
    assert choose_index_type(10, "ivf") == "ivf"
    with pytest.raises(IndexBuildError):
        choose_index_type(10, "pq")
    assert ivf_nlist(10) == 1 and ivf_nlist(1_000_000) == 4000


def test_flat_is_exact_and_maps_ids() -> None:
    x = clustered(500)
    ids = np.arange(500, dtype=np.int64) * 7 + 3  # not row numbers
    built = build_index(x, ids, "flat")
    assert built.index_type == "flat" and built.recall_at_10 == 1.0
    queries = clustered(20, seed=5)
    _, found = built.index.search(queries, 10)
    np.testing.assert_array_equal(found, ids[numpy_top_k(x, queries, 10)])


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_is_measured_truthfully(kind: str) -> None:
    x = clustered(4000)
    ids = np.arange(4000, dtype=np.int64) + 1000
    built = build_index(x, ids, kind, recall_target=0.95, recall_sample=300)
    assert built.index_type == kind and built.search_params
    # recompute recall@10 on fresh queries with numpy ground truth, independently of the builder
    queries = x[np.random.default_rng(9).choice(4000, 200, replace=False)]
    truth = ids[numpy_top_k(x, queries, 10)]
    _, found = built.index.search(queries, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())])
    assert recall >= 0.9
    assert abs(recall - built.recall_at_10) < 0.05


def test_empty_and_mismatched_inputs() -> None:
    built = build_index(np.zeros((0, 8), np.float32), np.zeros(0, np.int64), "ivf")
    assert built.index_type == "flat" and built.index.ntotal == 0
    with pytest.raises(IndexBuildError):
        build_index(np.zeros((3, 8), np.float32), np.zeros(2, np.int64))
