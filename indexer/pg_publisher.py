"""Publishing with ALPRO_VECTOR_STORE=pgvector: the run's change goes into PostgreSQL (store.pgvector), in place
of a FAISS version directory.

Same arguments and result as `publisher.publish`, so the pipeline calls either. What is read costs what
changed: the wanted rows come from the metadata database (one query), the published ones from the vector
table (no vectors), and only the added segments' vectors are read from the embedding cache.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Collection

import numpy as np

from store.layout import DataDir
from store.manifest import IndexManifest, IndexNotFoundError
from store.pgvector import (SegmentRecord, VersionChange, plan_change, publish_version, read_manifest,
                           read_state)
from store.pgvector.schema import VectorStoreError, is_postgresql

from .cache import EmbeddingCache
from .catalog import IndexedVideo, segments_for_index
from .publisher import PublishResult

logger = logging.getLogger(__name__)


def wanted_records(videos: list[IndexedVideo]) -> list[SegmentRecord]:
    return [SegmentRecord(seg_id, v.video_id, i, start, end, thumb, v.preview, v.path, v.duration_s)
            for v in videos
            for i, (seg_id, start, end, thumb) in enumerate(zip(v.segment_ids, v.starts, v.ends, v.thumbnails))]


def added_vectors(cache: EmbeddingCache, change: VersionChange, dim: int,
                  videos: dict[str, IndexedVideo]) -> tuple[VersionChange, list[str]]:
    """The change with the added rows' vectors from the cache; videos whose entry is unusable are left out
    (and returned: the pipeline drops their rows, to be embedded again on the next run)."""
    by_video: dict[str, list[SegmentRecord]] = {}
    for record in change.added:
        by_video.setdefault(record.video_id, []).append(record)
    kept: list[SegmentRecord] = []
    vectors: list[np.ndarray] = []
    uncached: list[str] = []
    for video_id, records in by_video.items():
        entry = cache.get(video_id)
        if entry is None or entry.num_segments != len(videos[video_id].segment_ids):
            uncached.append(video_id)
            continue
        kept.extend(records)
        vectors.append(entry.embeddings[[r.seg_index for r in records]])
    matrix = np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)
    return VersionChange(kept, matrix, change.removed, change.updated), uncached


def read_pgvector_manifest(datadir: DataDir) -> IndexManifest | None:
    """The published pgvector version's manifest (for the indexer's compatibility check), or None."""
    with datadir.engine.connect() as conn:
        return read_manifest(conn)


def publish_pgvector(datadir: DataDir, cache: EmbeddingCache, *, key: str, fingerprint: str, checkpoint: str,
                     model_config: dict[str, Any], dim: int, index_type: str = "auto", store_tokens: bool = False,
                     segment_seconds: float = 10.0, keep_versions: int = 3, recall_target: float = 0.95,
                     use_gpu: bool = False, force: bool = False, exclude: Collection[str] = (),
                     precision: str = "fp32") -> PublishResult:
    """As `publisher.publish`, into the vector table of the metadata database. `index_type`: auto searches
    exactly or through the HNSW index, whichever measures faster at the target recall (store.pgvector.tuning);
    flat always exactly; hnsw through the index; ivf is FAISS's (auto here), as is `use_gpu`. Token features
    stay in the embedding cache only (has_tokens is False)."""
    start = time.perf_counter()
    if not is_postgresql(datadir.database_url):
        raise VectorStoreError("ALPRO_VECTOR_STORE=pgvector needs ALPRO_DATABASE_URL to be a PostgreSQL database")
    if index_type == "ivf":
        logger.warning("--index-type ivf is FAISS's: pgvector picks exact or HNSW search itself (auto)")
        index_type = "auto"
    with datadir.session() as session:
        videos = {v.video_id: v for v in segments_for_index(session, key) if v.video_id not in exclude}
    state = read_state(datadir.engine)
    current = state.manifest
    same_dim = current is not None and current.dim == dim
    change = plan_change(state.rows if same_dim else {}, wanted_records(list(videos.values())))
    if not same_dim:
        change.removed = []  # another width: the table starts afresh (store.pgvector.schema.ensure_tables)
    change, uncached = added_vectors(cache, change, dim, videos)
    for video_id in uncached:
        videos.pop(video_id)
    same_manifest = current is not None and same_dim and (
        current.checkpoint_fingerprint, current.segment_seconds, current.precision) == (
        fingerprint, segment_seconds, precision) and index_type in ("auto", current.index_type)
    if change.empty and same_manifest and not force:
        logger.info("index unchanged: pgvector version %d stays current", current.version)
        return PublishResult(version=current.version, published=False, manifest=current, uncached=uncached,
                             publish_s=time.perf_counter() - start)
    template = IndexManifest(
        version=0, created_at="", checkpoint_fingerprint=fingerprint, checkpoint=checkpoint,
        model_config=model_config, dim=dim, num_vectors=0, num_videos=0, index_type="", metric="ip",
        has_tokens=False, recall_at_10=None, segment_seconds=segment_seconds, precision=precision)
    try:
        floor = max([0, *datadir.published_versions(), datadir.current_version() or 0]) + 1
    except IndexNotFoundError:
        floor = 1
    live_ids = [seg_id for v in videos.values() for seg_id in v.segment_ids]
    published = publish_version(datadir.engine, change, template, num_videos=len(videos), live_ids=live_ids,
                                keep_versions=keep_versions, recall_target=recall_target, min_version=floor,
                                index_type=index_type)
    manifest = published.manifest
    if store_tokens:
        logger.info("token features stay in the embedding cache: the pgvector backend re-ranks by decoding")
    return PublishResult(version=manifest.version, published=True, manifest=manifest,
                         removed_versions=published.removed_versions, uncached=uncached,
                         publish_s=time.perf_counter() - start)


__all__ = ["added_vectors", "publish_pgvector", "read_pgvector_manifest", "wanted_records"]
