"""Publishing versions and the read API (DataDir, IndexSnapshot) on a real FAISS index and SQLite database."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from indexer import catalog
from indexer.cache import CacheEntry, EmbeddingCache
from store.layout import DataDir
from store.manifest import IndexMismatchError, IndexNotFoundError
from indexer.discover import FoundFile
from indexer.publisher import publish
from store.atomic import remove_temporaries
from store.retention import apply_retention
from store.tables import IndexVersion, init_db

DIM = 16
KEY = "k" * 16
INFO = {"num_frames": 30, "fps": 30.0, "duration_s": 1.0, "width": 64, "height": 48, "codec": "h264"}


class Library:
    """A data dir filled through the cache and catalog exactly as the pipeline's writer does."""

    def __init__(self, root: Path, tokens: bool = False) -> None:
        self.datadir = DataDir(root)
        self.datadir.enable_writes()
        init_db(self.datadir.engine)
        self.cache = EmbeddingCache(self.datadir.cache_dir, KEY)
        self.tokens = tokens
        self.rng = np.random.default_rng(0)
        self.vectors: dict[int, np.ndarray] = {}  # segment id -> vector
        self.token_rows: dict[int, np.ndarray] = {}

    def add(self, video_id: str, segments: int) -> list[int]:
        vectors = self.rng.normal(size=(segments, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        tokens = self.rng.normal(size=(segments, 5, 8)).astype(np.float16) if self.tokens else None
        entry = CacheEntry(video_id, vectors, np.arange(segments, dtype=float), np.arange(segments, dtype=float) + 1,
                           INFO, tokens is not None, (False,) * segments)
        self.cache.put(entry, tokens)
        with self.datadir.session() as session:
            ids = catalog.record_video(session, video_id=video_id, file=FoundFile(f"/v/{video_id}", 1, 1, "x"),
                                       all_paths=[f"/v/{video_id}"], info=INFO, starts=entry.starts, ends=entry.ends,
                                       thumbnails=[None] * segments, fingerprint="fp", key=KEY)
        for i, seg_id in enumerate(ids):
            self.vectors[seg_id] = vectors[i]
            if tokens is not None:
                self.token_rows[seg_id] = tokens[i]
        return ids

    def publish(self, **kwargs):
        values = dict(key=KEY, fingerprint="fp", checkpoint="/ckpt", model_config={"vision": {"num_frames": 2}},
                      dim=DIM, store_tokens=self.tokens)
        values.update(kwargs)
        return publish(self.datadir, self.cache, **values)


@pytest.fixture
def lib(tmp_path: Path) -> Library:
    library = Library(tmp_path / "data")
    yield library
    library.datadir.dispose()


def brute_force(vectors: dict[int, np.ndarray], query: np.ndarray, k: int) -> list[int]:
    ids = np.array(list(vectors))
    scores = np.stack(list(vectors.values())) @ query
    return ids[np.argsort(-scores, kind="stable")[:k]].tolist()


def test_publish_and_search(lib: Library) -> None:
    lib.add("a" * 32, 3)
    lib.add("b" * 32, 1)
    result = lib.publish()
    assert result.published and result.version == 1
    assert (lib.datadir.index_dir / "CURRENT").read_text() == "v000001\n"
    assert not list(lib.datadir.index_dir.glob(".tmp-*"))
    reader = DataDir(lib.datadir.root)  # a separate, read-only reader
    assert reader.current_version() == 1
    with reader.open_index() as snap:
        m = snap.manifest
        assert (m.version, m.num_vectors, m.num_videos, m.dim, m.index_type, m.metric) == (1, 4, 2, DIM, "flat", "ip")
        assert m.has_tokens is False and snap.tokens([1]) is None
        queries = np.stack(list(lib.vectors.values()))
        scores, ids = snap.search(queries, k=2)
        assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (4, 2)
        for q, row in zip(queries, ids):
            assert row.tolist() == brute_force(lib.vectors, q, 2)
        np.testing.assert_allclose(snap.vectors(list(lib.vectors)), queries, atol=1e-6)
        assert sorted(snap.locate(list(lib.vectors))) == [("a" * 32, 0), ("a" * 32, 1), ("a" * 32, 2), ("b" * 32, 0)]
        with pytest.raises(KeyError):
            snap.vectors([999])
        with pytest.raises(ValueError):
            snap.search(np.zeros((1, DIM + 1), np.float32), k=1)
    reader.dispose()


def test_search_from_threads_matches_serial(lib: Library) -> None:
    for i in range(20):
        lib.add(f"{i:032d}", 5)
    lib.publish()
    queries = lib.rng.normal(size=(64, DIM)).astype(np.float32)
    with lib.datadir.open_index() as snap:
        expected = snap.search(queries, k=7)[1]
        results: list[np.ndarray] = [None] * 8  # type: ignore[list-item]

        def worker(i: int) -> None:
            for _ in range(20):
                results[i] = snap.search(queries, k=7)[1]

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_unchanged_content_is_not_republished_and_retention(lib: Library) -> None:
    lib.add("a" * 32, 2)
    assert lib.publish(keep_versions=2).version == 1
    again = lib.publish(keep_versions=2)
    assert (again.published, again.version) == (False, 1)
    old_snapshot = lib.datadir.open_index()
    lib.add("b" * 32, 1)
    assert lib.publish(keep_versions=2).version == 2
    lib.add("c" * 32, 1)
    third = lib.publish(keep_versions=2)
    # a reader still holds version 1 (a service serving it): retention keeps it, files and all
    assert third.version == 3 and third.removed_versions == []
    assert lib.datadir.published_versions() == [1, 2, 3]
    assert old_snapshot.search(np.ones((1, DIM), np.float32), k=1)[1].shape == (1, 1)
    old_snapshot.close()
    lib.add("d" * 32, 1)
    fourth = lib.publish(keep_versions=2)  # the reader is gone: now 1 and 2 go
    assert fourth.version == 4 and fourth.removed_versions == [1, 2]
    assert lib.datadir.published_versions() == [3, 4]
    with lib.datadir.session() as session:
        statuses = {v.version: v.status for v in session.scalars(select(IndexVersion))}
    assert statuses == {1: "deleted", 2: "deleted", 3: "published", 4: "published"}
    with pytest.raises(IndexNotFoundError):
        lib.datadir.open_index(1)


def test_missing_index_and_mismatch_errors(lib: Library) -> None:
    with pytest.raises(IndexNotFoundError):
        lib.datadir.open_index()
    lib.add("a" * 32, 1)
    lib.publish()
    with pytest.raises(IndexNotFoundError):
        lib.datadir.open_index(7)
    with pytest.raises(IndexMismatchError, match="--reindex"):
        lib.datadir.open_index(expected_fingerprint="another")
    manifest = lib.datadir.read_manifest()
    manifest.check_model("fp", {"vision": {"num_frames": 2}})
    with pytest.raises(IndexMismatchError, match="pre-processing"):
        manifest.check_model("fp", {"vision": {"num_frames": 16}})


def test_crash_leftovers_are_removed(lib: Library) -> None:
    lib.add("a" * 32, 1)
    lib.publish()
    index = lib.datadir.index_dir
    (index / ".tmp-v000002-1234").mkdir()  # killed while writing
    (index / ".tmp-v000002-1234" / "segments.faiss").write_bytes(b"partial")
    (index / "v000005").mkdir()  # killed between the rename and CURRENT
    assert remove_temporaries(lib.datadir) == 1
    assert apply_retention(lib.datadir, keep=3) == [5]
    assert lib.datadir.published_versions() == [1] and lib.datadir.current_version() == 1
    lib.add("b" * 32, 1)
    assert lib.publish().version == 2


def test_tokens_are_memory_mapped_per_segment(tmp_path: Path) -> None:
    lib = Library(tmp_path / "data", tokens=True)
    lib.add("a" * 32, 3)
    lib.add("b" * 32, 2)
    lib.publish()
    with lib.datadir.open_index() as snap:
        assert snap.manifest.has_tokens and snap.manifest.token_shape == (5, 8)
        wanted = list(lib.token_rows)[::-1]
        tokens = snap.tokens(wanted)
        assert tokens.dtype == np.float16 and tokens.shape == (len(wanted), 5, 8)
        for row, seg_id in zip(tokens, wanted):
            np.testing.assert_array_equal(row, lib.token_rows[seg_id])
        with pytest.raises(KeyError):
            snap.tokens([12345])
    lib.datadir.dispose()


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_approximate_versions_record_recall(lib: Library, index_type: str) -> None:
    for i in range(60):
        lib.add(f"{i:032d}", 10)
    result = lib.publish(index_type=index_type, recall_target=0.9)
    manifest = result.manifest
    assert manifest.index_type == index_type
    assert manifest.recall_at_10 is not None and manifest.recall_at_10 >= 0.9
    assert set(manifest.search_params) == {"nprobe" if index_type == "ivf" else "efSearch"}
    with lib.datadir.open_index() as snap:
        first = next(iter(lib.vectors))
        assert snap.search(lib.vectors[first][None], k=1)[1][0, 0] == first
        np.testing.assert_allclose(snap.vectors([first]), lib.vectors[first][None], atol=1e-6)


@pytest.mark.parametrize("ids", [[5, 3, 9, 4], [7, 10**12, 3, 10**9]], ids=["dense", "sparse"])
def test_snapshot_locates_and_reads_rows_by_segment_id(tmp_path: Path, ids) -> None:
    """Dense ids take the direct id -> row table, sparse ones the binary search: the same answers."""
    import faiss

    from store.layout import FAISS_NAME, MANIFEST_NAME, SEGMENTS_NAME
    from store.manifest import IndexManifest
    from store.snapshot import IndexSnapshot

    version_dir = tmp_path / "v000001"
    version_dir.mkdir()
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    index.add_with_ids(np.eye(len(ids), DIM, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    faiss.write_index(index, str(version_dir / FAISS_NAME))
    np.savez(version_dir / SEGMENTS_NAME, ids=np.asarray(ids, np.int64), video_pos=np.array([0, 0, 1, 1], np.int32),
             seg_index=np.array([0, 1, 0, 1], np.int32), video_ids=np.array(["va", "vb"]),
             start_s=np.array([0.0, 2.0, 0.0, 2.0]), end_s=np.array([2.0, 4.0, 2.0, 3.5]),
             thumbnail=np.array([True, False, True, True]), video_paths=np.array(["/v/a.mp4", "/v/b.mp4"]),
             video_durations=np.array([4.0, np.nan]))
    manifest = IndexManifest(version=1, created_at="2026-01-01T00:00:00+00:00", checkpoint_fingerprint="fp",
                             checkpoint="/c", model_config={}, dim=DIM, num_vectors=4, num_videos=2, index_type="flat",
                             metric="ip", has_tokens=False, recall_at_10=1.0)
    (version_dir / MANIFEST_NAME).write_text(manifest.to_json())
    snapshot = IndexSnapshot(version_dir, manifest)
    assert snapshot.locate([ids[3], ids[0], ids[2]]) == [("vb", 1), ("va", 0), ("vb", 0)]
    # hits best first: a video's first hit stands for it (video b at 0, a at 1; the later hits are dropped)
    assert snapshot.first_hit_per_video([ids[3], ids[0], ids[2], ids[1]]) == [0, 1]
    assert snapshot.first_hit_per_video([ids[1], ids[0], ids[2]]) == [0, 2]
    assert snapshot.first_hit_per_video([]) == []
    rows = snapshot.segment_rows([ids[1], ids[3]])
    assert [(r.segment_id, r.video_id, r.index, r.start_s, r.end_s, r.has_thumbnail, r.path, r.duration_s)
            for r in rows] == [(ids[1], "va", 1, 2.0, 4.0, False, "/v/a.mp4", 4.0),
                               (ids[3], "vb", 1, 2.0, 3.5, True, "/v/b.mp4", None)]
    _, found = snapshot.search(np.eye(1, DIM, 2, dtype=np.float32), 1)
    assert found[0, 0] == ids[2]
    for missing in (6, -1, 10**13):
        with pytest.raises(KeyError, match="not in index version 1"):
            snapshot.locate([ids[0], missing])
