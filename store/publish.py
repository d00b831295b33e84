"""Publishing a version: what changed since the current one as a delta on top of its parts, or a compaction
into a new base of every vector; then CURRENT, the version's record, and retention.

The caller says what the version should serve (`wanted`: the rows of every video, no vectors) and how to
read vectors (`load`: called with the rows of the videos whose vectors are needed). A delta reads only the
vectors of the videos that changed, so a change of k videos costs O(k) vector work (and O(library) rows
compared in numpy, store/change.py):

- A new base (compaction) is built when there is no current version, when it was made with another
  checkpoint, pre-processing, segmentation, precision or token setting, when it predates the rows copy, or
  when the caller asks (`compact=True`: --reindex, or a compaction that is due).
- Otherwise a delta: the changed videos' vectors in a new flat part, the replaced ids tombstoned. Beyond
  `max_deltas` delta parts, the deltas are merged into one (O(delta), no base rebuild).
- A compaction is due (PublishResult.compaction_due) once the delta parts' rows plus the tombstones exceed
  max(DELTA_MINIMUM, DELTA_FRACTION x the base's rows), or the base is no longer the index type asked for
  the served count (e.g. `auto` past FLAT_MAX). The caller publishes the delta first, then compacts, so the
  change is searchable while the base is rebuilt; readers keep serving whatever version they hold.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

import faiss
import numpy as np

from .atomic import commit_dir, link_or_copy, staged_dir, write_current
from .change import Change, diff, served_rows
from .compressed import CompressedIndex
from .faiss_build import BuiltIndex, build_index, choose_index_type, write_index
from .history import next_version, record_version
from .layout import (FAISS_NAME, MANIFEST_NAME, TOKENS_DIR, TOMBSTONES_NAME, DataDir, manifest_parts,
                     part_name)
from .manifest import IndexManifest, IndexNotFoundError
from .retention import apply_retention
from .rows import SegmentRows
from .snapshot import IndexSnapshot

logger = logging.getLogger(__name__)

DELTA_FRACTION = 0.10  # of the base's rows: delta rows + tombstones beyond it make a compaction due
DELTA_MINIMUM = 4096  # ... but never below this many (a small library compacts rarely: its deltas are cheap)
MAX_DELTAS = 8  # delta parts a version lists before they are merged into one


@dataclass(frozen=True)
class VersionSpec:
    """What every vector of a version shares (a new base when any of the first six changes), and how to build."""

    fingerprint: str  # of the checkpoint that embedded the vectors
    checkpoint: str
    model_config: dict
    dim: int
    has_tokens: bool = False
    segment_seconds: float = 10.0
    precision: str = "fp32"
    index_type: str = "auto"  # asked for (store.faiss_build.INDEX_TYPES)
    recall_target: float = 0.95


@dataclass(frozen=True)
class DeltaPolicy:
    fraction: float = DELTA_FRACTION
    minimum: int = DELTA_MINIMUM
    max_deltas: int = MAX_DELTAS

    def limit(self, base_rows: int) -> int:
        """Delta rows + tombstones a version may carry before a compaction is due."""
        return max(self.minimum, int(self.fraction * base_rows))


@dataclass
class LoadedVectors:
    """What a loader returns for the rows of some videos."""

    vectors: np.ndarray  # float32 (n, dim): the rows asked for, in their order, but those of `missing` videos
    missing: list[str] = field(default_factory=list)  # videos asked for whose vectors are unavailable
    tokens: Mapping[str, Path] | None = None  # token file ((S, 1+N, D) float16) of each loaded video
    token_shape: tuple[int, int] | None = None


VectorLoader = Callable[[SegmentRows], LoadedVectors]


@dataclass
class PublishResult:
    version: int | None  # the current version after this step
    published: bool  # a new version was written
    manifest: IndexManifest | None = None
    build: BuiltIndex | None = None  # the base built (kind "base")
    removed_versions: list[int] = field(default_factory=list)
    uncached: list[str] = field(default_factory=list)  # wanted videos left out: the loader had no vectors
    publish_s: float = 0.0
    kind: str = "unchanged"  # "base" | "delta" | "unchanged"
    written_vectors: int = 0  # vectors written into new parts: the change for a delta, everything for a base
    compaction_due: bool = False  # publish(..., compact=True) next


def array_loader(vectors: np.ndarray, ids: np.ndarray) -> VectorLoader:
    """A loader over vectors in memory (benchmarks, tests): row r of `vectors` is segment id ids[r]."""
    order = np.argsort(ids)
    sorted_ids = np.asarray(ids, np.int64)[order]

    def load(rows: SegmentRows) -> LoadedVectors:
        at = np.searchsorted(sorted_ids, np.asarray(rows.ids, np.int64))
        return LoadedVectors(np.asarray(vectors[order[at]], dtype=np.float32))

    return load


def publish(datadir: DataDir, wanted: SegmentRows, load: VectorLoader, spec: VersionSpec, *, keep_versions: int = 3,
            compact: bool = False, use_gpu: bool = False, policy: DeltaPolicy = DeltaPolicy()) -> PublishResult:
    """Publish the version serving `wanted` (module docstring); a no-op when the current one already does."""
    start = time.perf_counter()
    try:
        current: IndexSnapshot | None = datadir.open_index()
    except IndexNotFoundError as e:
        if datadir.current_version() is not None:
            logger.warning("the current index version is unreadable (%s): building a new base", e)
        current = None
    try:
        reason = "asked" if compact else _base_needed(current, spec)
        if reason is None:
            result = _publish_delta(datadir, current, wanted, load, spec, policy)
        else:
            logger.info("building a new base: %s", reason)
            result = _publish_base(datadir, wanted, load, spec, use_gpu)
    finally:
        if current is not None:
            current.close()  # its lease too: retention may delete it now
    result.removed_versions = apply_retention(datadir, keep_versions)
    result.publish_s = time.perf_counter() - start
    return result


def _base_needed(current: IndexSnapshot | None, spec: VersionSpec) -> str | None:
    if current is None:
        return "no current version"
    m = current.manifest
    for name, ours, theirs in (("checkpoint", spec.fingerprint, m.checkpoint_fingerprint), ("dim", spec.dim, m.dim),
                               ("tokens", spec.has_tokens, m.has_tokens), ("precision", spec.precision, m.precision),
                               ("segment seconds", spec.segment_seconds, m.segment_seconds)):
        if ours != theirs:
            return f"the current version {m.version} has another {name} ({theirs}, now {ours})"
    if not current.has_rows:
        return f"the current version {m.version} predates the rows copy"
    return None


def _publish_base(datadir: DataDir, wanted: SegmentRows, load: VectorLoader, spec: VersionSpec,
                  use_gpu: bool) -> PublishResult:
    loaded = load(wanted)
    rows = _without(wanted, loaded.missing)
    built = build_index(loaded.vectors, rows.ids, spec.index_type, recall_target=spec.recall_target, use_gpu=use_gpu)
    if built.recall_at_10 is not None and built.index_type != "flat":
        logger.info("%s index: recall@10 %.3f vs exact search (%s)", built.index_type, built.recall_at_10,
                    built.search_params)
    version = _next_version(datadir)
    logger.info("writing index version %d: a new base", version)
    name = part_name(version)
    write_part(datadir, name, rows, built.index, loaded.tokens if spec.has_tokens else None)
    manifest = _manifest(spec, version, parts=(name,), num_vectors=rows.num_rows, num_videos=rows.num_videos,
                         base=(built.index_type, built.search_params, built.recall_at_10), base_rows=rows.num_rows,
                         delta_rows=0, tombstones=0, token_shape=loaded.token_shape)
    _commit(datadir, manifest, np.zeros(0, np.int64))
    logger.info("published index version %d: a base of %d vectors of %d videos (%s)", version, rows.num_rows,
                rows.num_videos, built.index_type)
    return PublishResult(version, True, manifest, build=built, uncached=list(loaded.missing), kind="base",
                         written_vectors=rows.num_rows)


def _publish_delta(datadir: DataDir, current: IndexSnapshot, wanted: SegmentRows, load: VectorLoader,
                   spec: VersionSpec, policy: DeltaPolicy) -> PublishResult:
    m = current.manifest
    served = served_rows(current)
    change = diff(served, wanted)
    old_tombstones = _tombstones(current)
    due = _compaction_due(m, spec, policy, m.num_vectors, m.delta_vectors, len(old_tombstones))
    if change.empty:
        logger.info("index unchanged: version %d stays current", m.version)
        return PublishResult(m.version, False, m, compaction_due=due)
    added = wanted.take_videos(change.added)
    loaded = load(added) if added.num_videos else LoadedVectors(np.zeros((0, spec.dim), np.float32))
    added = _without(added, loaded.missing)
    tombstones = np.setdiff1d(np.union1d(old_tombstones, change.removed_ids), added.ids)
    parts = list(manifest_parts(m))
    kept_deltas = current.parts[1:]
    rows, vectors, tokens = added, loaded.vectors, dict(loaded.tokens or {})
    if len(kept_deltas) + (added.num_rows > 0) > policy.max_deltas:
        rows, vectors, tokens = _merged_deltas(current, change, added, vectors, tokens)
        parts, kept_deltas = parts[:1], ()
        tombstones = tombstones[current.parts[0].rows_of(tombstones) >= 0]  # only the base's ids need hiding
    if not rows.num_rows and parts == list(manifest_parts(m)) and np.array_equal(tombstones, old_tombstones):
        logger.info("index unchanged (the changed videos have no vectors): version %d stays current", m.version)
        return PublishResult(m.version, False, m, uncached=list(loaded.missing), compaction_due=due)
    version = _next_version(datadir)
    logger.info("writing index version %d: a delta on %s", version, parts[0])
    if rows.num_rows:
        name = part_name(version)
        write_part(datadir, name, rows, build_index(vectors, rows.ids, "flat").index,
                   tokens if spec.has_tokens else None)
        parts.append(name)
    delta_rows = sum(p.num_rows for p in kept_deltas) + rows.num_rows
    num_vectors = served.num_rows - len(change.removed_ids) + added.num_rows
    num_videos = served.num_videos - change.removed_videos - change.changed_videos + added.num_videos
    manifest = _manifest(spec, version, parts=tuple(parts), num_vectors=num_vectors, num_videos=num_videos,
                         base=(m.index_type, m.search_params, m.recall_at_10), base_rows=m.base_rows,
                         delta_rows=delta_rows, tombstones=len(tombstones),
                         token_shape=m.token_shape or loaded.token_shape)
    _commit(datadir, manifest, tombstones)
    due = _compaction_due(manifest, spec, policy, num_vectors, delta_rows, len(tombstones))
    logger.info("published index version %d: a delta of %d vectors (%d videos added or changed, %d removed, "
                "%d tombstones) on base %s%s", version, rows.num_rows, len(change.added), change.removed_videos,
                len(tombstones), parts[0], "; a compaction is due" if due else "")
    return PublishResult(version, True, manifest, uncached=list(loaded.missing), kind="delta",
                         written_vectors=rows.num_rows, compaction_due=due)


def _merged_deltas(current: IndexSnapshot, change: Change, added: SegmentRows, vectors: np.ndarray,
                   tokens: dict[str, Path]) -> tuple[SegmentRows, np.ndarray, dict[str, Path]]:
    """One delta of the served rows of every delta part that stay, and the added ones."""
    tables, matrices = [], []
    for i, part in enumerate(current.parts[1:], start=1):
        live = current.served_rows(i)
        keep = np.ones(part.num_rows, bool) if live is None else live.copy()
        keep &= ~np.isin(np.asarray(part.rows.ids, np.int64), change.removed_ids)
        videos = np.unique(np.asarray(part.rows.video_pos)[keep])  # a served video is served whole
        table = part.rows.take_videos(videos)
        tables.append(table)
        matrices.append(part.vectors(part.rows_of(table.ids)))
        tokens.update({str(v): part.token_path(str(v)) for v in table.video_ids})
    return SegmentRows.concat([*tables, added]), np.concatenate([*matrices, vectors]).astype(np.float32), tokens


def _compaction_due(manifest: IndexManifest, spec: VersionSpec, policy: DeltaPolicy, num_vectors: int,
                    delta_rows: int, tombstones: int) -> bool:
    if delta_rows + tombstones > policy.limit(manifest.base_rows):
        return True
    return choose_index_type(num_vectors, spec.index_type) != manifest.index_type and num_vectors > 0


def _tombstones(snapshot: IndexSnapshot) -> np.ndarray:
    path = snapshot.directory / TOMBSTONES_NAME
    return np.load(path, allow_pickle=False).astype(np.int64) if path.exists() else np.zeros(0, np.int64)


def _without(rows: SegmentRows, videos: list[str]) -> SegmentRows:
    if not videos:
        return rows
    keep = ~np.isin(np.asarray(rows.video_ids, dtype=str), np.asarray(videos, dtype=str))
    return rows.take_videos(np.flatnonzero(keep))


def _next_version(datadir: DataDir) -> int:
    with datadir.session() as session:
        return max([next_version(session), *(v + 1 for v in datadir.published_versions()),
                    (datadir.current_version() or 0) + 1])


def _manifest(spec: VersionSpec, version: int, *, parts: tuple[str, ...], num_vectors: int, num_videos: int,
              base: tuple[str, dict, float | None], base_rows: int, delta_rows: int, tombstones: int,
              token_shape: tuple[int, int] | None) -> IndexManifest:
    index_type, search_params, recall = base
    return IndexManifest(
        version=version, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        checkpoint_fingerprint=spec.fingerprint, checkpoint=spec.checkpoint, model_config=spec.model_config,
        dim=spec.dim, num_vectors=num_vectors, num_videos=num_videos, index_type=index_type, metric="ip",
        has_tokens=spec.has_tokens, recall_at_10=recall, segment_seconds=spec.segment_seconds,
        search_params=dict(search_params), token_shape=token_shape if spec.has_tokens else None,
        precision=spec.precision, parts=parts, base_vectors=base_rows, delta_vectors=delta_rows,
        tombstones=tombstones)


def write_part(datadir: DataDir, name: str, rows: SegmentRows, index: faiss.Index | CompressedIndex,
               tokens: Mapping[str, Path] | None) -> Path:
    """A new part (store/layout.py) from its rows, its FAISS index (ids = rows.ids, in order) or compressed index
    (an "ivfpq" base: its files instead of segments.faiss) and, with tokens, each video's token file
    (hard-linked)."""
    final = datadir.part_dir(name)
    tmp = staged_dir(datadir, final)
    if isinstance(index, CompressedIndex):
        index.write(tmp)
    else:
        write_index(index, tmp / FAISS_NAME)
    rows.save(tmp)
    if tokens is not None:
        (tmp / TOKENS_DIR).mkdir()
        for video_id in rows.video_ids.tolist():
            link_or_copy(tokens[video_id], tmp / TOKENS_DIR / f"{video_id}.npy")
    return commit_dir(tmp, final)


def _commit(datadir: DataDir, manifest: IndexManifest, tombstones: np.ndarray) -> None:
    """Write the version directory, name it in CURRENT, record it."""
    final = datadir.version_dir(manifest.version)
    tmp = staged_dir(datadir, final)
    np.save(tmp / TOMBSTONES_NAME, np.asarray(tombstones, np.int64), allow_pickle=False)
    (tmp / MANIFEST_NAME).write_text(manifest.to_json())
    commit_dir(tmp, final)
    write_current(datadir, manifest.version)
    with datadir.session() as session:
        record_version(session, version=manifest.version, created_at=datetime.fromisoformat(manifest.created_at),
                       fingerprint=manifest.checkpoint_fingerprint, num_videos=manifest.num_videos,
                       num_segments=manifest.num_vectors, index_type=manifest.index_type,
                       recall_at_10=manifest.recall_at_10)


__all__ = ["DELTA_FRACTION", "DELTA_MINIMUM", "MAX_DELTAS", "DeltaPolicy", "LoadedVectors", "PublishResult",
           "VectorLoader", "VersionSpec", "array_loader", "publish", "write_part"]
