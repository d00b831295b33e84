"""Retention: which versions and parts may go.

A version goes once it is not among the newest `keep` up to the current one (versions newer than CURRENT are
leftovers of a crash between their rename and the CURRENT swap), and no reader holds a lease on it
(store/lease.py). A part goes once no remaining version lists it: a base shared by every version since the
last compaction stays as long as one of them does, and with it whatever a reader of any of them needs. A
format-1 version directory listed as a base stays while it is listed, even past `keep`.
"""

from __future__ import annotations

import logging
import shutil

from .history import mark_versions_deleted
from .layout import PARTS_DIR, DataDir, manifest_parts, version_name
from .lease import version_unleased
from .manifest import IndexNotFoundError

logger = logging.getLogger(__name__)


def apply_retention(datadir: DataDir, keep: int) -> list[int]:
    """Delete all but the newest `keep` versions (never the current one, nor one a reader holds or another
    version lists as its base), then every part no remaining version lists; returns the deleted versions."""
    current = datadir.current_version()
    versions = datadir.published_versions()
    live = [v for v in versions if current is not None and v <= current]
    keep_set = set(live[-max(1, keep):])
    listed = _listed_parts(datadir, keep_set)  # what the kept versions list
    removed, in_use = [], []
    for v in (v for v in versions if v not in keep_set):
        if listed is not None and version_name(v) in listed:
            continue  # a format-1 version that later versions list as their base
        with version_unleased(datadir.index_dir, v) as free:
            if free:
                shutil.rmtree(datadir.version_dir(v), ignore_errors=True)
                removed.append(v)
            else:
                in_use.append(v)
    if in_use:
        logger.info("keeping old index versions %s: a running service still reads them", in_use)
    if removed:
        with datadir.session() as session:
            mark_versions_deleted(session, removed)
        logger.info("deleted old index versions %s", removed)
    _remove_unlisted_parts(datadir)
    return removed


def _listed_parts(datadir: DataDir, versions) -> set[str] | None:
    """The parts these versions list (names under index/), or None when a manifest cannot be read."""
    listed: set[str] = set()
    for v in versions:
        try:
            listed.update(manifest_parts(datadir.read_manifest(v)))
        except IndexNotFoundError as e:
            if v == datadir.current_version():
                logger.warning("cannot read the current version's manifest (%s): deleting no index parts", e)
                return None
    return listed


def _remove_unlisted_parts(datadir: DataDir) -> None:
    if not datadir.parts_dir.is_dir():
        return
    listed = _listed_parts(datadir, datadir.published_versions())
    if listed is None:
        return
    gone = []
    for path in sorted(datadir.parts_dir.iterdir()):
        name = f"{PARTS_DIR}/{path.name}"
        if path.is_dir() and name not in listed:
            shutil.rmtree(path, ignore_errors=True)
            gone.append(path.name)
    if gone:
        logger.info("deleted index parts no version lists: %s", gone)


__all__ = ["apply_retention"]
