"""Publishing an index version: gather vectors from the cache in Segment-id order, build, write, swap CURRENT.

Atomicity: the version is written into index/.tmp-vNNNNNN-<pid>/, every file and the directory are
fsynced, the directory is renamed to vNNNNNN, and only then is CURRENT replaced (temp file, fsync,
os.replace, fsync of index/). A crash before the rename leaves a temp dir that the next run deletes; a
crash between the rename and CURRENT leaves an unreferenced version that retention deletes. Versions
beyond the newest `keep` are deleted (never the current one).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection

import faiss
import numpy as np

from .cache import EmbeddingCache, fsync_dir
from .catalog import IndexedVideo, mark_versions_deleted, next_version, record_version, segments_for_index
from store.datadir import (CURRENT_NAME, FAISS_NAME, MANIFEST_NAME, OPTIONAL_ROW_COLUMNS, ROW_COLUMNS, SEGMENTS_NAME,
                           TOKENS_DIR, DataDir, IndexManifest, IndexNotFoundError, version_name)
from .faiss_index import BuiltIndex, build_index, choose_index_type
from store.lease import version_unleased

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


@dataclass
class IndexContent:
    """Everything a version holds, in insertion order."""

    ids: np.ndarray  # int64 (n,) segment ids
    vectors: np.ndarray  # float32 (n, d)
    video_ids: list[str]  # distinct, sorted
    video_pos: np.ndarray  # int32 (n,) position in video_ids
    seg_index: np.ndarray  # int32 (n,)
    token_shape: tuple[int, int] | None = None
    uncached: list[str] = field(default_factory=list)  # videos with rows but no usable cache entry
    # the database rows a search result shows, copied so the service needs no database round trip a search
    start_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float64 (n,)
    end_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float64 (n,)
    thumbnail: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # bool (n,)
    video_paths: list[str] = field(default_factory=list)  # per video, as video_ids
    video_durations: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float64 per video, NaN unknown
    preview: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # bool (n,): its video has a preview


@dataclass
class PublishResult:
    version: int | None  # the current version after this step
    published: bool  # a new version was written
    manifest: IndexManifest | None = None
    build: BuiltIndex | None = None
    removed_versions: list[int] = field(default_factory=list)
    uncached: list[str] = field(default_factory=list)
    publish_s: float = 0.0


def gather_content(datadir: DataDir, cache: EmbeddingCache, key: str, dim: int, *, store_tokens: bool,
                   exclude: Collection[str] = ()) -> IndexContent:
    """Vectors of every video of this pipeline key (but `exclude`), from the cache, by (video id, segment index)."""
    with datadir.session() as session:
        videos = [v for v in segments_for_index(session, key) if v.video_id not in exclude]
    ids: list[int] = []
    vectors: list[np.ndarray] = []
    kept: list[IndexedVideo] = []
    uncached: list[str] = []
    token_shape = None
    for video in videos:
        entry = cache.get(video.video_id, need_tokens=store_tokens)
        if entry is None or entry.num_segments != len(video.segment_ids):
            uncached.append(video.video_id)  # e.g. a cache deleted by hand for a file that is gone too
            continue
        if store_tokens and token_shape is None:
            shape = np.load(cache.tokens_path(video.video_id), mmap_mode="r").shape
            token_shape = (int(shape[1]), int(shape[2]))
        kept.append(video)
        ids.extend(video.segment_ids)
        vectors.append(entry.embeddings)
    counts = [len(v.segment_ids) for v in kept]
    return IndexContent(
        ids=np.asarray(ids, dtype=np.int64),
        vectors=np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32),
        video_ids=[v.video_id for v in kept],
        video_pos=np.repeat(np.arange(len(kept), dtype=np.int32), counts),
        seg_index=np.concatenate([np.arange(n, dtype=np.int32) for n in counts]) if kept else np.zeros(0, np.int32),
        token_shape=token_shape,
        uncached=uncached,
        start_s=np.asarray([t for v in kept for t in v.starts], dtype=np.float64),
        end_s=np.asarray([t for v in kept for t in v.ends], dtype=np.float64),
        thumbnail=np.asarray([t for v in kept for t in v.thumbnails], dtype=bool),
        video_paths=[v.path for v in kept],
        video_durations=np.asarray([np.nan if v.duration_s is None else v.duration_s for v in kept], dtype=np.float64),
        preview=np.asarray([v.preview for v in kept for _ in v.segment_ids], dtype=bool),
    )


def _compare_current(datadir: DataDir, content: IndexContent, *, fingerprint: str, index_type: str,
                     store_tokens: bool, segment_seconds: float, precision: str) -> tuple[int | None, bool]:
    """(the current version when its vectors are this content's, in the same order, else None; whether its
    rows are the same too).

    Rows differ without new vectors when a video was renamed (same content, new path) or got a preview, or
    when the version predates a row column: then a new version reuses the current FAISS index instead of
    building one (the same order matters there: `IndexSnapshot.vectors` reads the FAISS index by row position).
    """
    try:
        manifest = datadir.read_manifest()
        with np.load(datadir.version_dir(manifest.version) / SEGMENTS_NAME, allow_pickle=False) as data:
            current_ids = data["ids"]
            current_rows = {name: data[name] for name in ROW_COLUMNS + OPTIONAL_ROW_COLUMNS if name in data.files}
    except (IndexNotFoundError, OSError, KeyError, ValueError):
        return None, False
    wanted_type = choose_index_type(len(content.ids), index_type)
    same = (manifest.checkpoint_fingerprint == fingerprint and manifest.index_type == wanted_type
            and manifest.has_tokens == store_tokens and manifest.segment_seconds == segment_seconds
            and manifest.precision == precision and np.array_equal(current_ids, content.ids))
    if not same:
        return None, False
    columns = ROW_COLUMNS + OPTIONAL_ROW_COLUMNS
    rows_same = (len(current_rows) == len(columns)
                 and all(np.array_equal(current_rows[name], np.asarray(getattr(content, name)), equal_nan=
                                        current_rows[name].dtype.kind == "f") for name in columns))
    return manifest.version, rows_same


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    """Delete build directories and files left by an interrupted run (call with the lock held)."""
    count = 0
    if datadir.index_dir.is_dir():
        for path in datadir.index_dir.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            count += 1
    return count


def publish(datadir: DataDir, cache: EmbeddingCache, *, key: str, fingerprint: str, checkpoint: str,
            model_config: dict[str, Any], dim: int, index_type: str = "auto", store_tokens: bool = False,
            segment_seconds: float = 10.0, keep_versions: int = 3, recall_target: float = 0.95,
            use_gpu: bool = False, force: bool = False, exclude: Collection[str] = (),
            precision: str = "fp32") -> PublishResult:
    """Build and publish a new version if the content differs from the current one (or `force`).

    `exclude`: videos about to be dropped (their rows go only after the new version is current).
    """
    start = time.perf_counter()
    content = gather_content(datadir, cache, key, dim, store_tokens=store_tokens, exclude=exclude)
    current, rows_same = _compare_current(datadir, content, fingerprint=fingerprint, index_type=index_type,
                                          store_tokens=store_tokens, segment_seconds=segment_seconds,
                                          precision=precision)
    same = current if rows_same and not force else None
    if same is not None:
        logger.info("index unchanged: version %d stays current", same)
        removed = apply_retention(datadir, keep_versions)
        return PublishResult(version=same, published=False, manifest=datadir.read_manifest(same),
                             removed_versions=removed, uncached=content.uncached,
                             publish_s=time.perf_counter() - start)
    if current is not None and not force:  # the same vectors, other rows (a rename): keep the built index
        logger.info("index vectors unchanged, rows changed: reusing the FAISS index of version %d", current)
        old = datadir.read_manifest(current)
        built = BuiltIndex(faiss.read_index(str(datadir.version_dir(current) / FAISS_NAME)), old.index_type,
                           dict(old.search_params), old.recall_at_10)
    else:
        built = build_index(content.vectors, content.ids, index_type, recall_target=recall_target, use_gpu=use_gpu)
    if built.recall_at_10 is not None and built.index_type != "flat":
        logger.info("%s index: recall@10 %.3f vs exact search (%s)", built.index_type, built.recall_at_10,
                    built.search_params)
    with datadir.session() as session:
        version = max([next_version(session), *(v + 1 for v in datadir.published_versions()),
                       (datadir.current_version() or 0) + 1])
    created = datetime.now(timezone.utc)
    manifest = IndexManifest(
        version=version, created_at=created.isoformat(timespec="seconds"), checkpoint_fingerprint=fingerprint,
        checkpoint=checkpoint, model_config=model_config, dim=dim, num_vectors=len(content.ids),
        num_videos=len(content.video_ids), index_type=built.index_type, metric="ip", has_tokens=store_tokens,
        recall_at_10=built.recall_at_10, segment_seconds=segment_seconds, search_params=built.search_params,
        token_shape=content.token_shape, precision=precision,
    )
    logger.info("writing index version %d", version)
    write_version(datadir, cache, manifest, built, content)
    write_current(datadir, version)
    with datadir.session() as session:
        record_version(session, version=version, created_at=created, fingerprint=fingerprint,
                       num_videos=manifest.num_videos, num_segments=manifest.num_vectors,
                       index_type=manifest.index_type, recall_at_10=manifest.recall_at_10)
    removed = apply_retention(datadir, keep_versions)
    logger.info("published index version %d: %d vectors of %d videos (%s)", version, manifest.num_vectors,
                manifest.num_videos, manifest.index_type)
    return PublishResult(version=version, published=True, manifest=manifest, build=built, removed_versions=removed,
                         uncached=content.uncached, publish_s=time.perf_counter() - start)


def write_version(datadir: DataDir, cache: EmbeddingCache, manifest: IndexManifest, built: BuiltIndex,
                  content: IndexContent) -> Path:
    final = datadir.version_dir(manifest.version)
    if final.exists():  # an unreferenced leftover of a crash between rename and CURRENT
        shutil.rmtree(final)
    tmp = datadir.index_dir / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    faiss.write_index(built.index, str(tmp / FAISS_NAME))
    with open(tmp / SEGMENTS_NAME, "wb") as f:
        np.savez(f, ids=content.ids, video_pos=content.video_pos, seg_index=content.seg_index,
                 video_ids=_strings(content.video_ids), start_s=content.start_s, end_s=content.end_s,
                 thumbnail=content.thumbnail, video_paths=_strings(content.video_paths),
                 video_durations=content.video_durations, preview=content.preview)
    if manifest.has_tokens:
        tokens = tmp / TOKENS_DIR
        tokens.mkdir()
        for video_id in content.video_ids:
            source, target = cache.tokens_path(video_id), tokens / f"{video_id}.npy"
            try:
                os.link(source, target)  # immutable files: a hard link costs no copy
            except OSError:
                shutil.copyfile(source, target)  # filesystems without hard links
                _fsync_file(target)
        fsync_dir(tokens)
    (tmp / MANIFEST_NAME).write_text(manifest.to_json())
    for name in (FAISS_NAME, SEGMENTS_NAME, MANIFEST_NAME):
        _fsync_file(tmp / name)
    fsync_dir(tmp)
    os.rename(tmp, final)
    fsync_dir(datadir.index_dir)
    return final


def _strings(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=f"<U{max([1, *map(len, values)])}")


def apply_retention(datadir: DataDir, keep: int) -> list[int]:
    """Delete all but the newest `keep` versions (never the current one); returns the deleted ones."""
    current = datadir.current_version()
    versions = datadir.published_versions()
    # versions newer than CURRENT are leftovers of a crash between their rename and the CURRENT swap
    live = [v for v in versions if current is not None and v <= current]
    keep_set = set(live[-max(1, keep):])
    removed, in_use = [], []
    for v in (v for v in versions if v not in keep_set):
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
    return removed


__all__ = ["IndexContent", "PublishResult", "apply_retention", "gather_content", "publish",
           "remove_temporaries", "write_current", "write_version"]
