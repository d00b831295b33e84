"""The pgvector backend's store against a real PostgreSQL with pgvector (tests/pg_server.py starts it): recall of
its HNSW search against exact search, a publish as one transaction, incremental versions that older readers
do not see, filters in SQL that stay complete, retention."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from store.manifest import IndexManifest
from store.pgvector import (EXACT_MAX, RowFilter, SegmentRecord, VectorSnapshot, create_vector_engine, plan_change,
                            publish_version, read_state)
from store.pgvector import publication
from tests.pg_server import pgvector_db  # noqa: F401 - fixture

D = 64
PER_VIDEO = 5


def template(dim: int = D) -> IndexManifest:
    return IndexManifest(version=0, created_at="", checkpoint_fingerprint="f" * 16, checkpoint="/ckpt", model_config={},
                         dim=dim, num_vectors=0, num_videos=0, index_type="", metric="ip", has_tokens=False,
                         recall_at_10=None)


def unit_rows(n: int, dim: int = D, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def path_of(video: int) -> str:
    """1 in 10 videos under /media/lib (some in a sub-folder), 1 in 10 under the look-alike /media/library2."""
    if video % 10 == 0:
        return f"/media/lib/{video % 3}/v{video}.mp4" if video % 20 else f"/media/lib/v{video}.mp4"
    return f"/media/library2/v{video}.mp4" if video % 10 == 1 else f"/media/other/v{video}.mp4"


def duration_of(video: int) -> float | None:
    return None if video % 7 == 3 else float(10 + video % 50)


def records(ids: range) -> list[SegmentRecord]:
    """Segment id i is segment (i - 1) % PER_VIDEO of video (i - 1) // PER_VIDEO."""
    out = []
    for i in ids:
        video, index = divmod(i - 1, PER_VIDEO)
        out.append(SegmentRecord(i, f"{video:032x}", index, 2.0 * index, 2.0 * index + 2, True, False,
                                 path_of(video), duration_of(video)))
    return out


class Library:
    """Vectors by segment id (row i - 1) and publishes of any subset of them."""

    def __init__(self, url: str, n: int, dim: int = D) -> None:
        self.url = url
        self.engine = create_engine(url)
        self.vectors = unit_rows(n, dim)
        self.dim = dim

    def publish(self, ids: range | list[int], **kwargs) -> IndexManifest:
        wanted = records(ids)
        change = plan_change(read_state(self.engine).rows, wanted)
        change.vectors = self.vectors[[r.id - 1 for r in change.added]]
        videos = len({r.video_id for r in wanted})
        return publish_version(self.engine, change, template(self.dim), num_videos=videos,
                               live_ids=[r.id for r in wanted], **kwargs).manifest

    def snapshot(self, version: int | None = None, **overrides) -> VectorSnapshot:
        snapshot = VectorSnapshot.open(create_vector_engine(self.url), version)
        if overrides:
            snapshot = VectorSnapshot(snapshot.engine, replace(snapshot.manifest, **overrides))
        return snapshot

    def exact(self, query: np.ndarray, ids: list[int], k: int) -> list[int]:
        ids = np.asarray(ids)
        scores = self.vectors[ids - 1] @ query
        return ids[np.argsort(-scores, kind="stable")][:k].tolist()


def test_hnsw_recall_at_10_on_20k_random_vectors(pgvector_db):
    """The tuned ef_search reaches recall@10 0.95 against exact search (stored vectors as queries, as the FAISS
    builder measures), and the HNSW search path the service takes returns that recall too."""
    lib = Library(pgvector_db("recall"), 20_000, dim=256)
    # tuned to 0.97 on its 64 queries, so that 100 others reach 0.95 however the graph came out
    manifest = lib.publish(range(1, 20_001), recall_target=0.97)
    assert manifest.num_vectors == 20_000 and manifest.version == 1
    ef = manifest.search_params["ef_search"]
    assert manifest.index_type in ("hnsw", "flat")  # flat: an exact scan measured faster here (random data)
    assert manifest.recall_at_10 >= 0.97
    snapshot = lib.snapshot(index_type="hnsw", search_params={"ef_search": ef})
    queries = lib.vectors[np.random.default_rng(1).choice(20_000, 100, replace=False)]
    _, found = snapshot.search(queries, 10)
    everything = list(range(1, 20_001))
    hits = sum(len(set(row) & set(lib.exact(q, everything, 10))) for q, row in zip(queries, found.tolist()))
    assert hits / 1000 >= 0.95
    print(f"recall@10 {hits / 1000:.3f} at ef_search {ef}; tuned plan {manifest.index_type} "
          f"{manifest.search_params}")


def test_search_matches_exact_search_with_its_scores(pgvector_db):
    lib = Library(pgvector_db("exact"), 2_000)
    lib.publish(range(1, 2_001))
    snapshot = lib.snapshot()
    assert snapshot.manifest.index_type == "flat"  # small: scanned, exactly
    queries = unit_rows(5, seed=3)
    scores, ids = snapshot.search(queries, 20)
    for q, s, row in zip(queries, scores, ids.tolist()):
        assert row == lib.exact(q, list(range(1, 2_001)), 20)
        np.testing.assert_allclose(s, lib.vectors[np.asarray(row) - 1] @ q, atol=1e-5)
    scores, ids = snapshot.search(queries[:1], 3000)  # more than there are: padded as FAISS pads
    assert (ids[0, 2000:] == -1).all() and np.isneginf(scores[0, 2000:]).all()
    rows = snapshot.segment_rows(ids[0, :3])
    assert [r.segment_id for r in rows] == ids[0, :3].tolist()
    assert rows[0].path == path_of((rows[0].segment_id - 1) // PER_VIDEO) and rows[0].has_thumbnail


@pytest.mark.parametrize("plan", ["flat", "hnsw"])
def test_filters_by_whole_path_components_and_duration_are_complete(pgvector_db, plan):
    """The passing rows' best matches, whatever their share: few pass (scanned), many pass (HNSW with iterative
    scans, or a scan when the walk stops short)."""
    n = 3 * EXACT_MAX
    lib = Library(pgvector_db(f"filters_{plan}"), n)
    lib.publish(range(1, n + 1))
    snapshot = lib.snapshot(index_type=plan, search_params={"ef_search": 100})
    query = unit_rows(1, seed=7)[0]
    videos = np.arange(n // PER_VIDEO)
    cases = {
        RowFilter(folder="/media/lib"): np.array([path_of(v).startswith("/media/lib/") for v in videos]),
        RowFilter(folder="/media/li"): np.zeros(len(videos), bool),  # not a folder of any video
        RowFilter(folder=path_of(20)): videos == 20,  # a file named exactly
        RowFilter(min_duration=55.0): np.array([(duration_of(v) or -1) >= 55 for v in videos]),
        RowFilter(folder="/media/other", max_duration=30.0):
            np.array([path_of(v).startswith("/media/other/") and (duration_of(v) or 99) <= 30 for v in videos]),
    }
    for where, passing_videos in cases.items():
        passing = [i for i in range(1, n + 1) if passing_videos[(i - 1) // PER_VIDEO]]
        assert snapshot.count(where) == len(passing), where
        k = 50
        scores, ids = snapshot.search(query[None], k, where, len(passing))
        want = lib.exact(query, passing, k) if passing else []
        found = [i for i in ids[0].tolist() if i >= 0]
        assert set(found) <= set(passing), where
        if plan == "flat" or len(passing) <= EXACT_MAX:
            assert found == want, where
        else:  # approximate, but complete: k results, nearly all of the true best
            assert len(found) == k and len(set(found) & set(want)) >= 0.9 * k, where


def test_a_publish_is_one_transaction(pgvector_db, monkeypatch):
    """A reader during a publish sees the old version, whole; a publish that fails leaves nothing behind."""
    lib = Library(pgvector_db("transaction"), 3_000)
    lib.publish(range(1, 2_001))
    reader = lib.snapshot()
    query = lib.vectors[2_500]  # an added vector: its own best match once published

    inside = threading.Event()
    release = threading.Event()

    def hold(conn, version) -> None:  # runs last inside the publishing transaction
        inside.set()
        assert release.wait(30)

    publisher = threading.Thread(target=lib.publish, args=(range(1001, 3_001),), kwargs={"before_commit": hold})
    publisher.start()
    try:
        assert inside.wait(60)
        with lib.engine.connect() as conn:
            assert conn.execute(text("SELECT max(version) FROM vector_versions")).scalar() == 1
        fresh = lib.snapshot()  # what a replica opening now finds
        assert fresh.version == 1 and fresh.count(RowFilter()) == 2_000
        _, ids = fresh.search(query[None], 5)
        assert ids[0].max() <= 2_000 and ids[0].min() >= 1
    finally:
        release.set()
        publisher.join(60)
    assert lib.snapshot().version == 2 and lib.snapshot().count(RowFilter()) == 2_000
    _, ids = lib.snapshot().search(query[None], 1)
    assert ids[0, 0] == 2_501

    def fail(*args, **kwargs):
        raise RuntimeError("disk full, say")

    monkeypatch.setattr(publication, "_retain", fail)  # after the rows went in
    with pytest.raises(RuntimeError):
        lib.publish(range(1, 3_001))
    state = read_state(lib.engine)
    assert state.manifest.version == 2 and sorted(state.rows) == list(range(1001, 3_001))
    assert reader.count(RowFilter()) == 2_000  # the first reader still sees version 1 whole


def test_incremental_versions_cost_the_change_and_keep_older_readers_whole(pgvector_db):
    lib = Library(pgvector_db("incremental"), 1_200)
    first = lib.publish(range(1, 1_001))
    with lib.engine.connect() as conn:
        index_oid = conn.execute(text("SELECT 'vector_segments_hnsw'::regclass::oid")).scalar()
    wanted = list(range(51, 1_101))  # -50 +100
    change = plan_change(read_state(lib.engine).rows, records(wanted))
    assert (len(change.added), len(change.removed), len(change.updated)) == (100, 50, 0)
    second = lib.publish(wanted)
    assert (first.version, second.version, second.num_vectors) == (1, 2, 1_050)
    with lib.engine.connect() as conn:  # the HNSW index took the inserts: not rebuilt
        assert conn.execute(text("SELECT 'vector_segments_hnsw'::regclass::oid")).scalar() == index_oid
        added_in = dict(conn.execute(text("SELECT added_in, count(*) FROM vector_segments GROUP BY 1")).all())
    assert added_in == {1: 1_000, 2: 100}
    old, new = lib.snapshot(1), lib.snapshot(2)
    assert (old.count(RowFilter()), new.count(RowFilter())) == (1_000, 1_050)
    query = lib.vectors[10]  # segment 11: removed in version 2
    assert old.search(query[None], 1)[1][0, 0] == 11
    assert new.search(query[None], 1)[1][0, 0] != 11
    assert new.search(lib.vectors[1_050][None], 1)[1][0, 0] == 1_051  # added in version 2
    assert old.search(lib.vectors[1_050][None], 1)[1][0, 0] != 1_051

    moved = [r._replace(path="/media/moved/" + r.path.rsplit("/", 1)[1]) if r.video_id == f"{20:032x}" else r
             for r in records(wanted)]
    change = plan_change(read_state(lib.engine).rows, moved)
    assert (len(change.added), len(change.removed), len(change.updated)) == (0, 0, PER_VIDEO)
    third = publish_version(lib.engine, change, template(), num_videos=210, live_ids=wanted).manifest
    assert lib.snapshot(third.version).count(RowFilter(folder="/media/moved")) == PER_VIDEO


def test_retention_drops_old_versions_and_their_rows(pgvector_db):
    lib = Library(pgvector_db("retention"), 400)
    for version, ids in enumerate((range(1, 101), range(51, 201), range(101, 301), range(201, 401)), start=1):
        assert lib.publish(ids, keep_versions=2).version == version
    with lib.engine.connect() as conn:
        assert [r[0] for r in conn.execute(text("SELECT version FROM vector_versions ORDER BY 1"))] == [3, 4]
        # version 3 still sees 101..300; rows removed in version 3 or before (1..100) are gone
        assert conn.execute(text("SELECT min(id), count(*) FROM vector_segments")).one() == (101, 300)
    assert lib.snapshot(3).count(RowFilter()) == 200 and lib.snapshot(4).count(RowFilter()) == 200
