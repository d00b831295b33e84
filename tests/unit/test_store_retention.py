"""Versions that share a base: a reader keeps the version it holds (and so its parts) while deltas and a
compaction publish; retention never deletes a part a remaining version lists; a publish killed midway leaves
the current version serving; a format-1 version serves as the base of deltas."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np

from store.atomic import remove_temporaries
from store.layout import FAISS_NAME, MANIFEST_NAME, SEGMENTS_NAME, version_name
from store.manifest import IndexManifest
from store.rows import SegmentRows
from tests.store_library import DIM, Library, assert_serves

ROOT = Path(__file__).resolve().parents[2]


def parts_on_disk(lib: Library) -> list[str]:
    return sorted(p.name for p in lib.datadir.parts_dir.iterdir())


def test_a_reader_keeps_its_version_while_deltas_and_a_compaction_publish(tmp_path: Path) -> None:
    lib = Library(tmp_path, tokens=False)
    lib.add_many(50, 4)
    lib.publish(keep_versions=1)
    reader = lib.datadir.open_index()  # a service serving version 1
    queries = lib.queries()
    before = reader.search(queries, 10)
    want = lib.exact(queries, 10)

    lib.add_many(3, 4, prefix="a")
    lib.publish(keep_versions=1)
    with lib.datadir.open_index() as latest:  # a swap to the delta version opens the delta only
        assert latest.parts[0] is reader.parts[0] and len(latest.parts) == 2
    lib.remove("v00000")
    lib.remove("a00000")
    lib.publish(keep_versions=1)
    compacted = lib.publish(keep_versions=1, compact=True)
    assert compacted.version == 4 and compacted.kind == "base"
    assert lib.datadir.published_versions() == [1, 4]  # 2 and 3 went; 1 is held
    assert parts_on_disk(lib) == ["p000001", "p000004"]  # the base of version 1 stays with it
    after = reader.search(queries, 10)
    assert after[1].tolist() == before[1].tolist() == want[1].tolist()  # its content, unchanged
    reader.close()
    with lib.datadir.open_index() as snapshot:
        assert_serves(snapshot, lib)
    assert not lib.publish(keep_versions=1).published  # nothing new, but retention runs: version 1 goes now
    assert lib.datadir.published_versions() == [4] and parts_on_disk(lib) == ["p000004"]


def test_retention_never_deletes_a_listed_base(tmp_path: Path) -> None:
    lib = Library(tmp_path, tokens=False)
    lib.add_many(20, 3)
    lib.publish(keep_versions=1)
    for prefix in "abc":
        lib.add_many(1, 2, prefix=prefix)
        lib.publish(keep_versions=1)
    assert lib.datadir.published_versions() == [4]
    assert parts_on_disk(lib) == ["p000001", "p000002", "p000003", "p000004"]  # version 4 lists them all
    with lib.datadir.open_index() as snapshot:
        assert_serves(snapshot, lib)
    lib.publish(keep_versions=1, compact=True)
    assert parts_on_disk(lib) == ["p000005"]


def crash_child(root: str, point: str) -> None:
    """Publish the second state of `scripted` and die by SIGKILL at `point` (run in a child process)."""
    lib = scripted(Path(root), step=1)

    def die(frame, event, arg) -> None:
        if (point == "current" and event == "call" and frame.f_code.co_name == "write_current") or \
                (point == "rename" and event == "c_call" and arg is os.rename):
            os.kill(os.getpid(), signal.SIGKILL)

    sys.setprofile(die)
    lib.publish()


def scripted(root: Path, step: int) -> Library:
    """The same library in every process: 30 videos, then (step 1) 4 more and one fewer."""
    lib = Library(root, seed=7)
    lib.add_many(30, 3)
    if step:
        lib.add_many(4, 3, prefix="a")
        lib.remove("v00002")
    return lib


def test_a_publish_killed_midway_leaves_the_current_version_serving(tmp_path: Path) -> None:
    first = scripted(tmp_path, step=0)
    assert first.publish().version == 1
    for point in ("rename", "current"):  # with the part half committed; with the version written, not current
        child = subprocess.run([sys.executable, "-c", "import sys; from tests.unit.test_store_retention import "
                                "crash_child; crash_child(sys.argv[1], sys.argv[2])", str(tmp_path), point],
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                               text=True, timeout=120)
        assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
        assert first.datadir.current_version() == 1
        with first.datadir.open_index() as snapshot:
            assert_serves(snapshot, first)
    # what each child left: a staged part (killed at its rename), a whole version 2 CURRENT does not name
    assert list(first.datadir.index_dir.glob(".tmp-p000002-*")) and first.datadir.version_dir(2).is_dir()
    remove_temporaries(first.datadir)  # what the next indexer run does first (under its lock)
    second = scripted(tmp_path, step=1)
    result = second.publish(keep_versions=1)
    # version 2 was written whole by the second child, never made current: the next number is 3, and
    # retention deletes version 2 with its part
    assert result.version == 3 and result.kind == "delta"
    with second.datadir.open_index() as snapshot:
        assert_serves(snapshot, second)
    assert second.datadir.published_versions() == [3] and parts_on_disk(second) == ["p000001", "p000003"]
    assert not list(second.datadir.index_dir.glob(".tmp-*"))


def write_format1(lib: Library) -> None:
    """Version 1 as the code before parts wrote it: everything in the version directory, rows in one npz."""
    rows = lib.wanted()
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    index.add_with_ids(np.stack([lib.vectors[i] for i in rows.ids.tolist()]), rows.ids)
    directory = lib.datadir.version_dir(1)
    directory.mkdir(parents=True)
    faiss.write_index(index, str(directory / FAISS_NAME))
    columns = {name: getattr(rows, name) for name in ("ids", "video_pos", "seg_index", "video_ids", "start_s",
                                                       "end_s", "thumbnail", "preview", "video_paths",
                                                       "video_durations")}
    np.savez(directory / SEGMENTS_NAME, **columns)
    manifest = IndexManifest(version=1, created_at="2026-01-01T00:00:00+00:00", checkpoint_fingerprint="fp",
                             checkpoint="/ckpt", model_config={}, dim=DIM, num_vectors=rows.num_rows,
                             num_videos=rows.num_videos, index_type="flat", metric="ip", has_tokens=False,
                             recall_at_10=1.0, format=1)
    (directory / MANIFEST_NAME).write_text(manifest.to_json().replace('"parts": [],', ""))
    (lib.datadir.index_dir / "CURRENT").write_text(version_name(1) + "\n")


def test_a_format1_version_is_the_base_of_deltas_until_compaction(tmp_path: Path) -> None:
    lib = Library(tmp_path, tokens=False)
    lib.add_many(25, 2)
    write_format1(lib)
    assert isinstance(SegmentRows.load(lib.datadir.version_dir(1)).ids, np.ndarray)
    lib.add_many(2, 2, prefix="a")
    lib.remove("v00004")
    delta = lib.publish(keep_versions=1)
    assert delta.kind == "delta" and delta.manifest.parts == ("v000001", "parts/p000002")
    lib.add_many(1, 2, prefix="b")
    lib.publish(keep_versions=1)
    assert lib.datadir.published_versions() == [1, 3]  # version 1 is listed as the base: kept past keep=1
    with lib.datadir.open_index() as snapshot:
        assert_serves(snapshot, lib)
    lib.publish(keep_versions=1, compact=True)
    assert lib.datadir.published_versions() == [4] and parts_on_disk(lib) == ["p000004"]
