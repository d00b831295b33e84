"""What a version holds, gathered for `store.publish`: every video's rows from the SQL metadata (this pipeline
key's videos, by video id), and a loader that reads from the embedding cache the vectors (and token files)
of the videos the store asks for. The store compares, then writes a delta of what changed or compacts
(store/publish.py), so a run that changes k videos reads k cache entries, not the library's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Collection

import numpy as np

from store.layout import DataDir
from store.publish import LoadedVectors, PublishResult, VersionSpec
from store.publish import publish as publish_version
from store.rows import SegmentRows

from .cache import EmbeddingCache
from .catalog import segments_for_index


def gather_rows(datadir: DataDir, key: str, exclude: Collection[str] = ()) -> SegmentRows:
    """The rows of every video of this pipeline key but `exclude`, by video id, segments by index."""
    with datadir.session() as session:
        videos = [v for v in segments_for_index(session, key) if v.video_id not in exclude]
    return SegmentRows.of_videos(videos)


class CacheLoader:
    """Reads the vectors of the videos asked for from the cache; a video whose entry is missing or does not
    match its rows (e.g. a cache deleted by hand) is reported missing: the pipeline drops its rows, and the
    next run embeds it again."""

    def __init__(self, cache: EmbeddingCache, dim: int, *, store_tokens: bool) -> None:
        self.cache = cache
        self.dim = dim
        self.store_tokens = store_tokens
        self.loaded_videos = 0  # cache entries read (what a publish cost in vector reads)

    def __call__(self, rows: SegmentRows) -> LoadedVectors:
        vectors: list[np.ndarray] = []
        missing: list[str] = []
        tokens: dict[str, Path] = {}
        token_shape = None
        for video_id, count in zip(rows.video_ids.tolist(), rows.video_counts().tolist()):
            entry = self.cache.get(video_id, need_tokens=self.store_tokens)
            if entry is None or entry.num_segments != count:
                missing.append(video_id)
                continue
            vectors.append(entry.embeddings)
            if self.store_tokens:
                tokens[video_id] = self.cache.tokens_path(video_id)
                if token_shape is None:
                    shape = np.load(tokens[video_id], mmap_mode="r").shape
                    token_shape = (int(shape[1]), int(shape[2]))
        self.loaded_videos += len(vectors)
        matrix = np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, self.dim), np.float32)
        return LoadedVectors(matrix, missing, tokens if self.store_tokens else None, token_shape)


def publish(datadir: DataDir, cache: EmbeddingCache, *, key: str, fingerprint: str, checkpoint: str,
            model_config: dict[str, Any], dim: int, index_type: str = "auto", store_tokens: bool = False,
            segment_seconds: float = 10.0, keep_versions: int = 3, recall_target: float = 0.95,
            use_gpu: bool = False, force: bool = False, exclude: Collection[str] = (),
            precision: str = "fp32") -> PublishResult:
    """Publish what the database and the cache hold now: a delta when a compatible version is current, a new
    base otherwise or with `force` (a compaction; PublishResult.compaction_due says when one is due).

    `exclude`: videos about to be dropped (their rows go only after the new version is current).
    """
    spec = VersionSpec(fingerprint=fingerprint, checkpoint=checkpoint, model_config=model_config, dim=dim,
                       has_tokens=store_tokens, segment_seconds=segment_seconds, precision=precision,
                       index_type=index_type, recall_target=recall_target)
    return publish_version(datadir, gather_rows(datadir, key, exclude),
                           CacheLoader(cache, dim, store_tokens=store_tokens), spec, keep_versions=keep_versions,
                           compact=force, use_gpu=use_gpu)


__all__ = ["CacheLoader", "PublishResult", "gather_rows", "publish"]
