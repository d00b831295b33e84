"""Durable, all-or-nothing writes of the index format: a directory is written under a temporary name in index/,
every file and the directory are fsynced, and it is renamed into place; CURRENT is replaced through a
fsynced temporary file and os.replace, then index/ is fsynced.

A crash before a rename leaves a temporary that the next writer deletes (`remove_temporaries`, under the
indexer's lock); a crash between a version's rename and the CURRENT swap leaves an unreferenced version (and
part) that retention deletes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .layout import CURRENT_NAME, DataDir, version_name

TMP_PREFIX = ".tmp-"


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fsync_file(path)  # a directory opened read-only fsyncs its entries


def staged_dir(datadir: DataDir, final: Path) -> Path:
    """An empty temporary directory in index/ to write `final`'s files into, then `commit_dir`.

    A `final` already there is the unreferenced leftover of a crash (its version never became current: numbers
    only grow, so no published version lists it) and is deleted.
    """
    if final.exists():
        shutil.rmtree(final)
    tmp = datadir.index_dir / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: Path) -> Path:
    """fsync everything under `tmp` (files, then directories bottom-up), rename it to `final`, fsync its parent.
    Hard-linked files are not fsynced again: their data is the embedding cache's, durable since it was written."""
    for root, _, files in os.walk(tmp, topdown=False):
        for name in files:
            path = Path(root) / name
            if os.stat(path).st_nlink == 1:
                fsync_file(path)
        fsync_dir(Path(root))
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    return final


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link (immutable files: no copy), or a copy on filesystems without them."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_current(datadir: DataDir, version: int) -> None:
    """Name `version` in index/CURRENT atomically and durably."""
    tmp = datadir.index_dir / f"{TMP_PREFIX}{CURRENT_NAME}-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(version_name(version) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, datadir.current_file)
    fsync_dir(datadir.index_dir)


def remove_temporaries(datadir: DataDir) -> int:
    """Delete build directories and files left by an interrupted run (call with the indexer's lock held)."""
    count = 0
    if datadir.index_dir.is_dir():
        for path in datadir.index_dir.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            count += 1
    return count


__all__ = ["TMP_PREFIX", "commit_dir", "fsync_dir", "fsync_file", "link_or_copy", "remove_temporaries",
           "staged_dir", "write_current"]
