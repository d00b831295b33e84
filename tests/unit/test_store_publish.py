"""Publishing through the real store (random vectors, a SQLite data dir): a delta costs what changed, the
versions it makes serve exactly the live set (base + deltas - tombstones) in search, filtered search and every
look-up, and compaction comes when the policy says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import store.search
from service import schemas
from service.index import IndexHolder
from store.layout import FAISS_NAME, ROWS_DIR
from store.publish import DeltaPolicy
from tests.store_library import Library, assert_serves


def part_bytes(lib: Library, name: str) -> dict[str, int]:
    directory = lib.datadir.part_dir(name)
    return {"faiss": (directory / FAISS_NAME).stat().st_size,
            "rows": sum(p.stat().st_size for p in (directory / ROWS_DIR).iterdir())}


def test_a_delta_reads_and_writes_the_change_only(tmp_path: Path) -> None:
    """Three new videos on a library of 1,000 or of 4,000 vectors: 30 vectors read and written either way,
    the same bytes on disk; removing two videos reads and writes no vector."""
    written = {}
    for videos in (100, 400):
        lib = Library(tmp_path / str(videos), tokens=False)
        lib.add_many(videos, 10)
        base = lib.publish()
        assert (base.kind, base.written_vectors, lib.loaded_rows) == ("base", videos * 10, videos * 10)
        lib.loaded_rows = 0
        lib.add_many(3, 10, prefix="new")
        delta = lib.publish()
        assert (delta.kind, delta.written_vectors, lib.loaded_rows) == ("delta", 30, 30)
        assert delta.manifest.parts == (base.manifest.parts[0], f"parts/p{delta.version:06d}")
        written[videos] = part_bytes(lib, delta.manifest.parts[-1])
        assert written[videos]["faiss"] < 30 * 32 * 4 + 4096  # the 30 vectors and a header

        lib.remove("v00000")
        lib.remove("new00001")
        removal = lib.publish()
        assert (removal.kind, removal.written_vectors, lib.loaded_rows) == ("delta", 0, 30)
        assert removal.manifest.parts == delta.manifest.parts  # no new part: tombstones only
        assert removal.manifest.tombstones == 20 and removal.manifest.num_vectors == videos * 10 + 10
        with lib.datadir.open_index() as snapshot:
            assert_serves(snapshot, lib)
            assert isinstance(snapshot.parts[0].rows.ids, np.memmap)  # rows are mapped, not read
        lib.datadir.dispose()
    assert written[100] == written[400]


def test_versions_serve_base_plus_deltas_minus_tombstones(tmp_path: Path) -> None:
    """Adds, removals, renames, re-embeddings and preview flags over several deltas: each version's search
    equals exact search over the live set, ids and scores, and its rows, vectors and tokens are the live ones."""
    lib = Library(tmp_path)
    lib.add_many(60, 5)
    assert lib.publish().kind == "base"
    steps = [
        lambda: lib.add_many(4, 3, prefix="a"),
        lambda: [lib.remove("v00003"), lib.remove("a00001")],
        lambda: setattr(lib.videos["v00007"], "path", "/media/renamed/v00007.mp4"),  # same ids, new path
        lambda: lib.reembed("v00010"),  # new ids
        lambda: [setattr(lib.videos["a00002"], "preview", True), lib.add("late", 7)],
        lambda: [lib.remove("late"), lib.reembed("v00007")],
    ]
    for step in steps:
        step()
        result = lib.publish()
        assert result.kind == "delta" and result.published, result
        with lib.datadir.open_index() as snapshot:
            assert_serves(snapshot, lib)
    manifest = lib.datadir.read_manifest()
    assert len(manifest.parts) == 6 and manifest.tombstones > 0
    with lib.datadir.open_index() as snapshot:
        for gone in (lib.next_id + 5, 3 * 5 + 1):  # never published; a removed video's
            with pytest.raises(KeyError, match="not in index version"):
                snapshot.locate([gone])
    assert not lib.publish().published  # nothing changed since


def test_unchanged_library_publishes_nothing(tmp_path: Path) -> None:
    lib = Library(tmp_path, tokens=False)
    lib.add_many(5, 2)
    first = lib.publish()
    lib.loaded_rows = 0
    again = lib.publish()
    assert (again.published, again.version, again.kind, lib.loaded_rows) == (False, first.version, "unchanged", 0)


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_filtered_search_across_base_and_delta(tmp_path: Path, monkeypatch, index_type: str) -> None:
    """A service filter over a version with a delta and tombstones: the passing live rows only, all parts."""
    lib = Library(tmp_path, tokens=False, index_type=index_type)
    lib.add_many(300, 10, prefix="o", folder="/media/other")
    lib.add_many(30, 10, prefix="l", folder="/media/lib")
    lib.publish()
    lib.add_many(5, 10, prefix="nl", folder="/media/lib")
    lib.add_many(5, 10, prefix="no", folder="/media/other")
    for gone in ("l00000", "l00001", "o00000"):
        lib.remove(gone)
    lib.videos["o00001"].path = "/media/lib/moved.mp4"  # into the folder: served from the delta now
    assert lib.publish().kind == "delta"
    under_lib = lambda video: video.path.startswith("/media/lib/")  # noqa: E731
    holder = IndexHolder(lib.datadir, lambda manifest: None)
    holder.install(lib.datadir.open_index())
    queries = lib.queries(8)
    try:
        with holder.acquire() as lease:
            assert len(lease.snapshot.parts) == 2
            selection = lease.selection(schemas.SearchFilters(path_prefix="/media/lib"))
            assert selection.count == 10 * sum(under_lib(v) for v in lib.videos.values()) == 340
            scores, ids = selection.search(queries, 20)
            want_scores, want_ids = lib.exact(queries, 20, under_lib)
            assert ids.tolist() == want_ids.tolist()
            np.testing.assert_allclose(scores, want_scores, atol=1e-5)
            if index_type == "ivf":  # through the approximate index, its effort scaled to the passing share
                monkeypatch.setattr(store.search, "EXACT_MAX", 0)
                others = lease.selection(schemas.SearchFilters(path_prefix="/media/other"))
                _, ids = others.search(queries, 10)
                _, want_ids = lib.exact(queries, 10, lambda v: not under_lib(v))
                assert np.isin(ids, want_ids).mean() >= 0.8
                live_other = {i for v in lib.videos.values() if not under_lib(v) for i in v.segment_ids}
                assert set(ids[ids >= 0].tolist()) <= live_other
    finally:
        holder.close()


def test_compaction_is_due_past_the_threshold(tmp_path: Path) -> None:
    """Due once delta rows + tombstones pass max(minimum, fraction x base rows); compacting builds a base of
    everything and serves the same."""
    policy = DeltaPolicy(fraction=0.1, minimum=0)
    lib = Library(tmp_path, tokens=False)
    lib.add_many(100, 10)
    lib.publish(policy=policy)
    lib.add_many(5, 10, prefix="a")
    first = lib.publish(policy=policy)
    assert first.kind == "delta" and not first.compaction_due  # 50 <= 100
    lib.add_many(5, 10, prefix="b")
    lib.remove("v00000")
    second = lib.publish(policy=policy)
    assert second.kind == "delta" and second.compaction_due  # 100 delta rows + 10 tombstones > 100
    compacted = lib.publish(policy=policy, compact=True)
    m = compacted.manifest
    assert (compacted.kind, len(m.parts), m.delta_vectors, m.tombstones) == ("base", 1, 0, 0)
    assert m.base_vectors == m.num_vectors == 1090 and m.recall_at_10 == 1.0
    with lib.datadir.open_index() as snapshot:
        assert_serves(snapshot, lib)
    # another index type asked for than the base has: due as well
    lib.spec = type(lib.spec)(**{**lib.spec.__dict__, "index_type": "hnsw"})
    lib.add("one more", 2)
    assert lib.publish(policy=policy).compaction_due


def test_deltas_merge_beyond_the_limit(tmp_path: Path) -> None:
    policy = DeltaPolicy(max_deltas=2)
    lib = Library(tmp_path)
    lib.add_many(40, 4)
    lib.publish(policy=policy)
    lib.add_many(2, 3, prefix="a")
    lib.publish(policy=policy)
    lib.add_many(2, 3, prefix="b")
    lib.remove("a00000")
    lib.remove("v00001")
    assert len(lib.publish(policy=policy).manifest.parts) == 3
    lib.add_many(2, 3, prefix="c")
    merged = lib.publish(policy=policy)  # a third delta: the deltas become one
    assert merged.kind == "delta" and len(merged.manifest.parts) == 2
    assert merged.written_vectors == 3 + 6 + 6 and merged.manifest.delta_vectors == 15
    assert merged.manifest.tombstones == 4  # only the base's ids (v00001's) are hidden now
    with lib.datadir.open_index() as snapshot:
        assert_serves(snapshot, lib)
