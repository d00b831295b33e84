"""Run planning: unchanged, renamed, recovered from the cache, failed before, replaced, missing, pruned."""

from __future__ import annotations

from indexer.catalog import VideoState
from indexer.discover import FoundFile
from indexer.plan import make_plan

ROOT = "/lib"
KEY = "key"


def f(path: str, size: int = 10, mtime_ns: int = 5_000_000_000) -> FoundFile:
    return FoundFile(path, size, mtime_ns, "extension")


def row(video_id: str, path: str, key: str = KEY, segments: int = 1) -> VideoState:
    return VideoState(video_id, path, key, "fp", segments)


def plan(files, ids, videos=(), failures=None, cached=(), **kw):
    return make_plan(files=files, ids=ids, videos={v.id: v for v in videos}, failures=failures or {}, root=ROOT,
                     key=KEY, cached=lambda vid: vid in set(cached), **kw)


def test_new_unchanged_and_renamed() -> None:
    files = [f("/lib/a.mp4"), f("/lib/new.mp4"), f("/lib/moved/b.mp4")]
    ids = {"/lib/a.mp4": "A", "/lib/new.mp4": "N", "/lib/moved/b.mp4": "B"}
    p = plan(files, ids, [row("A", "/lib/a.mp4"), row("B", "/lib/b.mp4")], cached={"A", "B"})
    assert p.unchanged == ["A", "B"]
    assert p.renamed == {"B": files[2]}
    assert [(vid, [x.path for x in group]) for vid, group in p.embed] == [("N", ["/lib/new.mp4"])]
    assert not p.drop and not p.missing


def test_cache_without_row_is_recovered_and_row_without_cache_is_embedded() -> None:
    files = [f("/lib/a.mp4"), f("/lib/b.mp4"), f("/lib/c.mp4")]
    ids = {"/lib/a.mp4": "A", "/lib/b.mp4": "B", "/lib/c.mp4": "C"}
    p = plan(files, ids, [row("B", "/lib/b.mp4"), row("C", "/lib/c.mp4", key="old")], cached={"A"})
    assert [vid for vid, _ in p.from_cache] == ["A"]  # killed between the cache write and the commit
    assert [vid for vid, _ in p.embed] == ["B", "C"]  # cache deleted by hand / another checkpoint


def test_duplicates_share_one_id_and_keep_the_row_path() -> None:
    files = [f("/lib/a.mp4"), f("/lib/z/copy.mp4")]
    ids = {"/lib/a.mp4": "A", "/lib/z/copy.mp4": "A"}
    p = plan(files, ids, [row("A", "/lib/z/copy.mp4")], cached={"A"})
    assert p.unchanged == ["A"] and p.renamed == {} and p.duplicates == 1
    fresh = plan(files, ids)
    assert [[x.path for x in group] for _, group in fresh.embed] == [["/lib/a.mp4", "/lib/z/copy.mp4"]]


def test_failed_files_are_retried_only_when_changed() -> None:
    files = [f("/lib/bad.mp4", 10, 5_000_000_000), f("/lib/fixed.mp4", 99, 6_000_000_000)]
    ids = {"/lib/bad.mp4": "X", "/lib/fixed.mp4": "Y"}
    failures = {"/lib/bad.mp4": (10, 5.0), "/lib/fixed.mp4": (10, 5.0), "/lib/gone.mp4": (1, 1.0),
                "/elsewhere/x.mp4": (1, 1.0)}
    p = plan(files, ids, failures=failures)
    assert [x.path for x in p.failed_before] == ["/lib/bad.mp4"]
    assert [vid for vid, _ in p.embed] == ["Y"]
    assert p.gone_failure_paths == ["/lib/gone.mp4"]
    assert [vid for vid, _ in plan(files, ids, failures=failures, retry_failed=True).embed] == ["X", "Y"]


def test_replaced_missing_pruned_stale_and_elsewhere() -> None:
    files = [f("/lib/a.mp4")]
    ids = {"/lib/a.mp4": "A2"}  # a.mp4 has new content
    videos = [row("A", "/lib/a.mp4"), row("G", "/lib/gone.mp4"), row("E", "/other/e.mp4"),
              row("S", "/other/s.mp4", key="old"), row("L", "/library/x.mp4")]
    p = plan(files, ids, videos, cached={"A", "G", "E"})
    assert p.drop == {"A": "replaced", "S": "stale"}
    assert p.missing == [("G", "/lib/gone.mp4")]  # /other and /library (not under /lib) are untouched
    pruned = plan(files, ids, videos, prune=True)
    assert pruned.drop == {"A": "replaced", "G": "pruned", "S": "stale"}
    assert pruned.missing == []


def test_reindex_embeds_everything() -> None:
    files = [f("/lib/a.mp4"), f("/lib/b.mp4")]
    ids = {"/lib/a.mp4": "A", "/lib/b.mp4": "B"}
    p = plan(files, ids, [row("A", "/lib/a.mp4")], failures={"/lib/b.mp4": (10, 5.0)}, cached={"A"}, reindex=True)
    assert [vid for vid, _ in p.embed] == ["A", "B"] and not p.unchanged and not p.failed_before
