"""Planning a run: which videos are unchanged, which come back from the cache, which must be embedded,
and which index entries go away.

Per distinct content id found under the videos folder:
- unchanged: its row was made with this pipeline key and its cache entry exists (a new path is only a
  rename: the row's path is updated, nothing is decoded);
- from cache: the cache entry exists but the row does not (a run killed between the two) -> rows are
  written from the cache, nothing is decoded;
- failed before: every path of it failed last time with the same size and mtime -> skipped (counted as
  failed) unless --retry-failed; a fixed file has a new mtime and is tried again;
- otherwise: embedded.
Per indexed video not found: replaced (its path now holds other content) -> dropped; gone from under
the videos folder -> dropped with --prune, else kept and reported missing; elsewhere -> untouched.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from .catalog import VideoState
from .discover import FoundFile


@dataclass
class Plan:
    embed: list[tuple[str, list[FoundFile]]] = field(default_factory=list)  # (id, files), sorted by id
    from_cache: list[tuple[str, list[FoundFile]]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    renamed: dict[str, FoundFile] = field(default_factory=dict)  # id -> new canonical file
    failed_before: list[FoundFile] = field(default_factory=list)
    drop: dict[str, str] = field(default_factory=dict)  # id -> why ("replaced" | "pruned" | "stale")
    missing: list[tuple[str, str]] = field(default_factory=list)  # (id, path) kept although the file is gone
    duplicates: int = 0  # extra paths with content already found at another path
    gone_failure_paths: list[str] = field(default_factory=list)  # failure rows of files no longer there


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def make_plan(*, files: Sequence[FoundFile], ids: Mapping[str, str], videos: Mapping[str, VideoState],
              failures: Mapping[str, tuple[int, float]], root: str, key: str,
              cached: Callable[[str], bool], prune: bool = False, reindex: bool = False,
              retry_failed: bool = False) -> Plan:
    """Decide what this run does; `cached(video_id)` says whether a usable cache entry exists."""
    plan = Plan()
    groups: dict[str, list[FoundFile]] = defaultdict(list)
    for f in files:
        if f.path in ids:
            groups[ids[f.path]].append(f)
    for video_id in sorted(groups):
        group = sorted(groups[video_id], key=lambda f: f.path)
        row = videos.get(video_id)
        # keep pointing at the path the row already has, so duplicates do not flip it run to run
        if row is not None and any(f.path == row.path for f in group):
            group.sort(key=lambda f: f.path != row.path)
        plan.duplicates += len(group) - 1
        if reindex:
            plan.embed.append((video_id, group))
        elif row is not None and row.pipeline_key == key and row.num_segments > 0 and cached(video_id):
            plan.unchanged.append(video_id)
            if row.path != group[0].path:
                plan.renamed[video_id] = group[0]
        elif cached(video_id):
            plan.from_cache.append((video_id, group))
        elif not retry_failed and all(_failed_unchanged(f, failures) for f in group):
            plan.failed_before.extend(group)
        else:
            plan.embed.append((video_id, group))

    scanned = {f.path: ids.get(f.path) for f in files}
    for video_id, row in videos.items():
        if video_id in groups:
            continue
        if scanned.get(row.path) not in (None, video_id):
            plan.drop[video_id] = "replaced"
        elif row.pipeline_key != key:
            plan.drop[video_id] = "stale"  # made by another checkpoint and not found to re-embed
        elif _under(row.path, root):
            if prune:
                plan.drop[video_id] = "pruned"
            else:
                plan.missing.append((video_id, row.path))
    plan.gone_failure_paths = [p for p in failures if _under(p, root) and p not in scanned]
    return plan


def _failed_unchanged(f: FoundFile, failures: Mapping[str, tuple[int, float]]) -> bool:
    known = failures.get(f.path)
    return known is not None and known[0] == f.size and abs(known[1] - f.mtime) < 1e-6


__all__ = ["Plan", "make_plan"]
