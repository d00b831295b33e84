"""Compressed (IVF-PQ + exact fp16 re-scoring) indexes: tuned recall, exact scores, mmap round trip, filters."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from store import compressed
from store.compressed import CompressedIndex, build_compressed, exact_top_k, recall_at

N, D = 20_000, 256


def clustered(n: int, d: int = D, clusters: int = 64, seed: int = 0) -> np.ndarray:
    """Unit vectors from a mixture of gaussians (power-law noise spectrum, as embeddings cluster), fp16-exact:
    the stored fp16 copy then equals them and exact scores can be compared with a float32 flat index."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scales = (1 + np.arange(d)) ** -0.5
    scales *= 0.9 / np.sqrt((scales ** 2).sum())
    x = centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, d)) * scales[rng.permutation(d)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16).astype(np.float32)


@pytest.fixture(scope="module")
def single_thread():
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # OpenMP spinning on a shared 2-core machine is slower than one thread
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def data(single_thread):
    x = clustered(N + 600)
    rng = np.random.default_rng(1)
    ids = rng.choice(10 * N, N, replace=False).astype(np.int64)  # unsorted, not row numbers
    return x[:N], ids, x[N:N + 300], x[N + 300:]  # vectors, ids, tuning queries, held-out queries


@pytest.fixture(scope="module")
def tuned(data):
    x, ids, tune_q, _ = data
    with pytest.MonkeyPatch.context() as patch:  # lighter training than the defaults: the test must be quick
        patch.setattr(compressed.build, "PQ_NITER", 6)
        patch.setattr(compressed.build, "KMEANS_NITER", 6)
        index = build_compressed(x, ids, opq=True, opq_niter=2, train_sample=10_000)
    result = index.tune(tune_q, exact_top_k(x, ids, tune_q), 0.95, reranks=[10, 20, 30, 40, 60, 80, 120, 160])
    return index, result


def flat_scores(x: np.ndarray, ids: np.ndarray, queries: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Inner products a float32 flat index gives the found ids (-inf for -1)."""
    row_of = {int(i): r for r, i in enumerate(ids)}
    out = np.full(found.shape, -np.inf, dtype=np.float32)
    for qi, row in enumerate(found):
        for j, i in enumerate(row):
            if i >= 0:
                out[qi, j] = float(x[row_of[int(i)]] @ queries[qi])
    return out


def exact_filtered(x: np.ndarray, ids: np.ndarray, queries: np.ndarray, allowed: np.ndarray, k: int):
    keep = np.isin(ids, allowed)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x[keep])
    scores, rows = flat.search(queries, k)
    return scores, np.where(rows >= 0, ids[keep][np.maximum(rows, 0)], -1)


def test_tune_reaches_recall_target(data, tuned) -> None:
    x, ids, _, held_out = data
    index, result = tuned
    assert result.reached and result.recall_at_10 >= 0.95
    assert (index.nprobe, index.rerank, index.recall_at_10) == (result.nprobe, result.rerank, result.recall_at_10)
    cheaper = [t for t in result.tried if t["cost_ns"] < result.cost_ns]
    assert all(t["recall"] < 0.95 for t in cheaper)  # nothing cheaper reached the target
    _, found = index.search(held_out, 10)
    assert recall_at(found, exact_top_k(x, ids, held_out)) >= 0.93  # queries it was not tuned on
    assert index.params()["recall_at_10"] == result.recall_at_10


def test_scores_are_exact_inner_products(data, tuned) -> None:
    x, ids, _, queries = data
    index, _ = tuned
    scores, found = index.search(queries[:50], 10)
    assert scores.dtype == np.float32 and found.dtype == np.int64 and found.shape == (50, 10)
    assert np.all(found >= 0) and np.all(np.isin(found, ids))
    np.testing.assert_allclose(scores, flat_scores(x, ids, queries[:50], found), rtol=0, atol=2e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first


def test_write_open_mmap_round_trip(data, tuned, tmp_path) -> None:
    _, ids, _, queries = data
    index, _ = tuned
    index.write(tmp_path / "v1")
    expected = index.search(queries, 10)
    allowed = ids[::7]
    expected_filtered = index.search(queries, 10, allowed_ids=allowed)
    for mmap, rescore_io in ((True, "pread"), (True, "mmap"), (False, "pread")):
        opened = CompressedIndex.open(tmp_path / "v1", mmap=mmap, rescore_io=rescore_io)
        assert opened.params() == index.params()
        assert opened.mmapped is mmap  # inverted lists mapped from the file (faiss.IO_FLAG_MMAP)
        assert isinstance(opened.vectors, np.memmap) is mmap and isinstance(opened.ids, np.memmap) is mmap
        assert (opened.reader is not None) is (mmap and rescore_io == "pread")
        assert opened.opq
        for got, want in ((opened.search(queries, 10), expected),
                          (opened.search(queries, 10, allowed_ids=allowed), expected_filtered)):
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[0], want[0])


def test_selective_filter_is_exact(data, tuned) -> None:
    x, ids, _, queries = data
    index, _ = tuned
    rng = np.random.default_rng(3)
    allowed = np.concatenate([rng.choice(ids, 150, replace=False), [-5, 10 * N + 1]])  # two ids it lacks
    scores, found = index.search(queries[:40], 10, allowed_ids=allowed)
    assert np.all(np.isin(found, allowed))
    want_scores, want = exact_filtered(x, ids, queries[:40], allowed, 10)
    np.testing.assert_array_equal(found, want)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=2e-6)


@pytest.mark.parametrize("selector", ["batch", "bitmap"])
def test_broad_filter_stays_complete(data, tuned, monkeypatch, selector) -> None:
    x, ids, _, queries = data
    index, _ = tuned
    if selector == "bitmap":
        monkeypatch.setattr(compressed.index, "BATCH_SELECTOR_MAX", 100)
    allowed = ids[np.random.default_rng(4).random(N) < 0.3]
    selection = index.select(allowed)
    assert type(selection.selector).__name__ == ("IDSelectorBatch" if selector == "batch" else "IDSelectorBitmap")
    scores, found = index.search(queries[:60], 10, allowed_ids=selection)
    assert np.all(found >= 0) and np.all(np.isin(found, allowed))  # complete, and only allowed ids
    _, want = exact_filtered(x, ids, queries[:60], allowed, 10)
    assert recall_at(found, want) >= 0.9
    np.testing.assert_allclose(scores, flat_scores(x, ids, queries[:60], found), rtol=0, atol=2e-6)


def test_padding_when_fewer_than_k(data, tuned, monkeypatch) -> None:
    _, ids, _, queries = data
    index, _ = tuned
    few = ids[[5, 50, 500]]
    for exact_path in (True, False):
        if not exact_path:  # make scoring every allowed vector look dear: the IVF search with a selector runs
            monkeypatch.setattr(compressed.cost, "ROW_NS", {"pread": 1e9, "memory": 1e9})
        scores, found = index.search(queries[:4], 10, allowed_ids=few)
        assert np.all(np.isin(found[:, :3], few)) and np.all(found[:, 3:] == -1)
        assert np.all(np.isfinite(scores[:, :3])) and np.all(scores[:, 3:] == -np.inf)
    scores, found = index.search(queries[:2], 10, allowed_ids=np.array([], dtype=np.int64))
    assert np.all(found == -1) and np.all(scores == -np.inf)


def test_without_opq_and_validation(single_thread, tmp_path) -> None:
    x = clustered(3000, d=64, clusters=8, seed=7)
    ids = np.arange(3000, dtype=np.int64) * 2
    index = build_compressed(x, ids, opq=False, nlist=16)
    assert not index.opq and index.m == 8 and index.code_size == 8
    index.write(tmp_path)
    opened = CompressedIndex.open(tmp_path)
    assert opened.mmapped and not opened.opq
    q = clustered(20, d=64, clusters=8, seed=8)
    for got, want in zip(opened.search(q, 5, rerank=40, nprobe=4), index.search(q, 5, rerank=40, nprobe=4)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="not unique"):
        build_compressed(x, np.zeros(3000, dtype=np.int64), opq=False, nlist=16)
    with pytest.raises(ValueError, match="too few"):
        build_compressed(x[:100], ids[:100], opq=False)


def test_row_reader_and_exact_search(data, tuned, tmp_path) -> None:
    x, ids, _, queries = data
    index, _ = tuned
    index.write(tmp_path)
    reader = compressed.RowReader(tmp_path / compressed.VECTORS_NAME)
    rows = np.array([19_999, 3, 3, 0, 12_345])
    np.testing.assert_array_equal(reader.take(rows), index.vectors[rows])  # scattered: a pread per row
    np.testing.assert_array_equal(reader.take(np.arange(100, 400)), index.vectors[100:400])  # one read of the span
    assert reader.take(np.array([], dtype=np.int64)).shape == (0, D)
    reader.close()
    opened = CompressedIndex.open(tmp_path)
    scores, found = opened.exact_search(queries[:5], 10)
    np.testing.assert_array_equal(found, exact_top_k(x, ids, queries[:5]))
    np.testing.assert_allclose(scores, flat_scores(x, ids, queries[:5], found), rtol=0, atol=2e-6)
