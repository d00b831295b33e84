"""One indexing run: plan -> reader (worker processes) -> embedder (batched) -> writer (thread) -> publish,
then browser previews (indexer.previewer) and, where they change the rows, another publish.

The stages overlap: DataLoader workers decode the next videos while the main thread encodes, and the
writer thread stores finished videos meanwhile. Each stage is timed; `encode_wait_s` is how long the
embedder sat idle waiting for decoded clips, the number to watch when decoding is the bottleneck.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from model.alpro import AlproModel
from model.checkpoint import checkpoint_fingerprint, load_model
from model.hub import resolve_checkpoint

from .cache import EmbeddingCache
from .catalog import (delete_failures, delete_videos, load_failures, load_hash_cache, load_videos, record_failure,
                      record_library_root, record_video, save_hash_cache, stale_video_ids, update_paths)
from store.atomic import remove_temporaries
from store.layout import DataDir
from store.manifest import IndexMismatchError, IndexNotFoundError
from .discover import FoundFile, discover, hash_files
from .distributed import DistContext
from .embedder import Embedder, index_precision, pipeline_key, resolve_device
from .lock import DataDirLock
from .plan import Plan, make_plan
from .preview import remove_temporaries as remove_preview_temporaries
from .previewer import update_previews
from .publisher import PublishResult, publish
from .pg_publisher import publish_pgvector, read_pgvector_manifest
from .reader import ReaderChunk, ReaderOptions, VideoReaderDataset, WorkItem, default_num_workers
from .settings import IndexSettings
from store.tables import init_db
from .writer import VideoFailure, VideoResult, Writer, remove_thumbnails, thumbnail_relpaths

logger = logging.getLogger(__name__)

MAX_LISTED_FAILURES = 50


@dataclass
class StageStats:
    """Work and time per stage of one process."""

    videos: int = 0  # videos sent to the reader
    clips: int = 0  # clips encoded
    written: int = 0
    failed: int = 0
    partial: int = 0  # of written: videos that decode only in part
    segments: int = 0
    decode_s: float = 0.0  # summed worker busy time (can exceed wall time with several workers)
    encode_s: float = 0.0  # main-thread model time
    encode_wait_s: float = 0.0  # embedder idle, waiting for the reader
    write_s: float = 0.0  # writer thread busy time
    write_wait_s: float = 0.0  # embedder blocked on a full writer queue
    wall_s: float = 0.0  # first chunk requested to last result written
    num_workers: int = 0  # decoding processes (all ranks, after merge)
    processes: int = 1  # embedding processes (ranks) these figures sum over
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    def merge(self, other: "StageStats") -> None:
        """Sum another rank's figures into these (start from StageStats(processes=0))."""
        for name in ("videos", "clips", "written", "failed", "partial", "segments", "decode_s", "encode_s",
                     "encode_wait_s", "write_s", "write_wait_s", "num_workers", "processes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.wall_s = max(self.wall_s, other.wall_s)
        self.failures.extend(other.failures)


@dataclass
class RunSummary:
    """What a run did; `to_dict` is the --json output."""

    indexed: int = 0  # videos newly in the index (embedded, or recovered from the cache)
    unchanged: int = 0  # already indexed, not decoded
    failed: int = 0  # files that could not be indexed (new failures and unchanged earlier ones)
    partial: int = 0  # of `indexed` by decoding: videos that decode only in part (indexed over that span)
    removed: int = 0  # videos dropped from the index (pruned, replaced by new content, stale)
    missing: int = 0  # indexed videos whose files are gone (kept; --prune drops them)
    renamed: int = 0
    duplicates: int = 0  # extra paths holding content found elsewhere
    skipped: int = 0  # files that are not videos
    found: int = 0  # candidate video files found
    decoded: int = 0  # videos decoded in this run (all ranks)
    encoded_clips: int = 0
    recovered: int = 0  # of `indexed`: rows written from the cache after an interrupted run
    previews_made: int = 0  # browser previews made (timings["previews"]: the stage's seconds)
    previews_failed: int = 0
    preview_bytes: int = 0  # of the previews made
    segments: int = 0  # vectors in the current index version
    index_version: int | None = None
    published: bool = False
    index_type: str | None = None
    recall_at_10: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    videos_per_s: float = 0.0  # videos embedded per second of pipeline wall time
    pipeline: dict[str, Any] = field(default_factory=dict)  # stage utilisation figures
    failures: list[dict[str, str]] = field(default_factory=list)
    world_size: int = 1

    @property
    def exit_code(self) -> int:
        """1 when the run could index nothing it was asked to (or found nothing to do), else 0."""
        if self.found > 0:
            return 0 if self.indexed + self.unchanged > 0 else 1
        return 0 if self.removed > 0 else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Indexer:
    """Runs `alpro-index` in this process (one rank of a torchrun job, or alone)."""

    def __init__(self, settings: IndexSettings, *, model: AlproModel | None = None,
                 dist: DistContext | None = None) -> None:
        self.settings = settings
        self.dist = dist or DistContext()
        self._model = model
        self.precision = "fp32"  # what this run's vectors are made in; set by run()
        self.datadir = DataDir(settings.data_dir, settings.database_url)

    # --- set-up ----------------------------------------------------------------------------------

    @functools.cached_property
    def checkpoint_path(self) -> Path:
        """The checkpoint as a path: a released checkpoint's name is fetched into ALPRO_HOME on first use."""
        s = self.settings
        return resolve_checkpoint(s.checkpoint, home=s.home, base_url=s.checkpoint_url)

    def load_model(self) -> AlproModel:
        if self._model is None:
            path = self.checkpoint_path
            if path.is_dir():
                self._model = load_model(path)
            else:
                s = self.settings
                self._model = load_model(path, s.bert_config, vision_num_heads=s.vision_num_heads)
        return self._model

    def check_compatible(self, fingerprint: str, key: str, precision: str = "fp32") -> None:
        """Refuse a data dir made with another checkpoint, segmentation or precision, unless --reindex."""
        if self.settings.reindex:
            return
        try:
            manifest = self.datadir.read_manifest() if self.settings.vector_store == "faiss" else \
                read_pgvector_manifest(self.datadir)  # issue 21: the pgvector backend's published version
        except IndexNotFoundError:
            manifest = None
        if manifest is not None:
            if manifest.checkpoint_fingerprint != fingerprint:
                raise IndexMismatchError(
                    f"{self.datadir.root} holds an index made with checkpoint {manifest.checkpoint_fingerprint} "
                    f"({manifest.checkpoint}); {self.settings.checkpoint} is {fingerprint}. Pass --reindex to "
                    f"re-embed every video with the new checkpoint, or use another --data-dir."
                )
            if manifest.segment_seconds != self.settings.segment_seconds:
                raise IndexMismatchError(
                    f"{self.datadir.root} was indexed with --segment-seconds {manifest.segment_seconds}, not "
                    f"{self.settings.segment_seconds}; pass --reindex to re-segment every video."
                )
            if (manifest.precision or "fp32") != precision:  # int8 and fp32 vectors never mix silently
                raise IndexMismatchError(
                    f"{self.datadir.root} holds vectors made in {manifest.precision or 'fp32'}, this run makes "
                    f"{precision} ones (--precision / ALPRO_PRECISION); pass --reindex to re-embed every video "
                    f"in {precision}, or use another --data-dir."
                )
        with self.datadir.session() as session:
            stale = stale_video_ids(session, key)
        if stale:
            raise IndexMismatchError(
                f"{len(stale)} videos in {self.datadir.root} were embedded with another checkpoint, segmentation "
                f"or precision (an interrupted --reindex?); pass --reindex to finish re-embedding them."
            )

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        t_start = time.perf_counter()
        s = self.settings
        timings: dict[str, float] = {}
        t = time.perf_counter()
        model = self.load_model()
        fingerprint = checkpoint_fingerprint(model)
        precision = self.precision = index_precision(resolve_device(s.resolved_device_name()), s.precision)
        key = pipeline_key(fingerprint, s.segment_seconds, model.config.preprocess.sampling, precision)
        timings["load_model"] = time.perf_counter() - t
        cache = EmbeddingCache(self.datadir.cache_dir, key)
        summary = RunSummary(world_size=self.dist.world_size)
        lock = DataDirLock(self.datadir.lock_path) if self.dist.is_main else None
        try:
            if self.dist.is_main:
                payload: dict[str, Any] = {"fingerprint": fingerprint}
                try:
                    self.datadir.enable_writes()
                    lock.acquire()
                    payload["items"] = self._prepare(fingerprint, key, cache, summary, timings)
                except BaseException as e:
                    self.dist.broadcast({"error": f"{type(e).__name__}: {e}"})  # let the other ranks exit
                    raise
                self.dist.broadcast(payload)
            else:
                payload = self.dist.broadcast(None)
                if "error" in payload:
                    raise RuntimeError(f"rank 0 failed: {payload['error']}")
                if payload["fingerprint"] != fingerprint:
                    raise IndexMismatchError(f"rank {self.dist.rank} loaded checkpoint {fingerprint}, "
                                             f"rank 0 has {payload['fingerprint']}")
            items: list[tuple[str, list[FoundFile]]] = payload["items"]
            mine = self.dist.shard(items)
            stats = self.run_stages(mine, model, cache, fingerprint=fingerprint, key=key,
                                    database=self.dist.is_main)
            gathered = self.dist.gather(stats)
            if self.dist.is_main:
                total = StageStats(processes=0)
                for part in gathered or []:
                    total.merge(part)
                self._finish(items, total, gathered or [], fingerprint, key, cache, model, summary, timings)
            self.dist.barrier()
        finally:
            if lock is not None:
                lock.release()
            self.datadir.dispose()
        timings["total"] = time.perf_counter() - t_start
        summary.timings = {k: round(v, 4) for k, v in timings.items()}
        return summary

    def _prepare(self, fingerprint: str, key: str, cache: EmbeddingCache, summary: RunSummary,
                 timings: dict[str, float]) -> list[tuple[str, list[FoundFile]]]:
        """Rank 0: clean up, check, discover, hash, plan, apply the cheap parts of the plan."""
        s = self.settings
        init_db(self.datadir.engine)
        removed_tmp = (remove_temporaries(self.datadir) + cache.remove_temporaries()
                       + remove_preview_temporaries(self.datadir.previews_dir))
        if removed_tmp:
            logger.info("removed %d leftovers of an interrupted run", removed_tmp)
        self.check_compatible(fingerprint, key, self.precision)
        with self.datadir.session() as session:  # before any row under it: the service serves only inside roots
            record_library_root(session, os.path.realpath(s.videos_dir))

        t = time.perf_counter()
        found = discover(s.videos_dir, exclude=[self.datadir.root])
        with self.datadir.session() as session:
            videos = load_videos(session)
            failures = load_failures(session)
            hash_cache = load_hash_cache(session)
        files = list(found.files)
        if s.reindex:
            # "re-embed everything": also indexed videos outside this folder whose files still exist
            seen = {f.path for f in files}
            for row in videos.values():
                if row.path not in seen and os.path.isfile(row.path):
                    st = os.stat(row.path)
                    files.append(FoundFile(row.path, st.st_size, st.st_mtime_ns, "database"))
        timings["discover"] = time.perf_counter() - t

        t = time.perf_counter()
        hashed = hash_files(files, hash_cache, threads=s.hash_threads)
        root = str(s.videos_dir)
        with self.datadir.session() as session:
            gone = [p for p in hash_cache if p.startswith(root.rstrip(os.sep) + os.sep)
                    and p not in hashed.ids]
            save_hash_cache(session, files, hashed.ids, hash_cache, forget=gone)
            for file, error_type, reason in hashed.failures:
                record_failure(session, file, error_type, reason)
        timings["hash"] = time.perf_counter() - t
        logger.info("found %d video files (%d hashed, %d skipped as not video)", len(files), hashed.hashed,
                    found.skipped)

        plan = make_plan(files=files, ids=hashed.ids, videos=videos, failures=failures, root=root, key=key,
                         cached=lambda vid: cache.has(vid, need_tokens=s.store_tokens), prune=s.prune,
                         reindex=s.reindex, retry_failed=s.retry_failed)
        with self.datadir.session() as session:
            if plan.renamed:
                update_paths(session, plan.renamed)
            if plan.gone_failure_paths:
                delete_failures(session, plan.gone_failure_paths)
        embed = list(plan.embed)
        recovered = 0
        for video_id, group in plan.from_cache:
            if self.commit_from_cache(cache, video_id, group, fingerprint, key):
                recovered += 1
            else:
                embed.append((video_id, group))
        embed.sort(key=lambda item: item[0])
        self._plan = plan
        summary.found = len(files)
        summary.skipped = found.skipped
        summary.unchanged = len(plan.unchanged)
        summary.renamed = len(plan.renamed)
        summary.duplicates = plan.duplicates
        summary.missing = len(plan.missing)
        summary.recovered = recovered
        summary.failed = len(hashed.failures) + len(plan.failed_before)
        summary.failures = [{"path": f.path, "error_type": e, "reason": r} for f, e, r in hashed.failures]
        for f in plan.failed_before:
            summary.failures.append({"path": f.path, "error_type": "unchanged",
                                     "reason": "failed before and unchanged (use --retry-failed)"})
        for video_id, path in plan.missing[:10]:
            logger.warning("indexed video %s is missing at %s (kept; --prune drops it)", video_id, path)
        return embed

    def commit_from_cache(self, cache: EmbeddingCache, video_id: str, files: list[FoundFile], fingerprint: str,
                          key: str) -> bool:
        """Write a video's rows from its cache entry (no decoding); False if the entry is unusable."""
        entry = cache.get(video_id, need_tokens=self.settings.store_tokens)
        if entry is None:
            return False
        with self.datadir.session() as session:
            record_video(session, video_id=video_id, file=files[0], all_paths=[f.path for f in files],
                         info=entry.info, starts=entry.starts, ends=entry.ends,
                         thumbnails=thumbnail_relpaths(self.datadir, entry), fingerprint=fingerprint, key=key)
        return True

    # --- reader -> embedder -> writer --------------------------------------------------------------

    def run_stages(self, items: list[tuple[str, list[FoundFile]]], model: AlproModel, cache: EmbeddingCache, *,
                   fingerprint: str, key: str, database: bool = True) -> StageStats:
        """Decode, embed and store `items`; returns the stage statistics of this process."""
        s = self.settings
        stats = StageStats(videos=len(items))
        if not items:
            return stats
        device = resolve_device(s.resolved_device_name())
        if self.dist.enabled and device.type == "cuda":
            device = torch.device("cuda", self.dist.local_rank)
        batch_size = s.batch_size or (32 if device.type == "cuda" else 4)
        num_workers = default_num_workers() if s.num_workers is None else s.num_workers
        stats.num_workers = num_workers
        embedder = Embedder(model, device, store_tokens=s.store_tokens, precision=s.precision)
        options = ReaderOptions.from_config(model.config, s.segment_seconds, chunk_clips=batch_size,
                                            thumbnail_width=s.thumbnail_width, backend=s.decoder)
        work = [WorkItem(pos, video_id, files[0].path) for pos, (video_id, files) in enumerate(items)]
        files_of = {pos: files for pos, (_, files) in enumerate(items)}
        dataset = VideoReaderDataset(work, options)
        # no DataLoader pinning: the batcher stacks clips straight into a pinned staging buffer (one copy)
        loader = DataLoader(dataset, batch_size=None, num_workers=num_workers,
                            prefetch_factor=2 if num_workers else None, in_order=False)

        t_start = time.perf_counter()
        # no pooled database connections across fork(); the writer opens its own afterwards
        self.datadir.dispose()
        chunks = iter(loader)  # forks the workers before any other thread of ours exists
        bar = _progress_bar(len(items), enabled=s.progress and self.dist.is_main)

        def done(_video_id: str, ok: bool) -> None:
            bar.update(1)
            if not ok:
                bar.set_postfix(failed=writer.stats.failed, refresh=False)

        writer = Writer(self.datadir, cache, fingerprint=fingerprint, key=key, database=database, on_done=done)
        writer.start()
        batcher = _Batcher(embedder, batch_size, work, files_of, writer, stats)
        try:
            while True:
                t = time.perf_counter()
                try:
                    chunk = next(chunks)
                except StopIteration:
                    break
                finally:
                    stats.encode_wait_s += time.perf_counter() - t
                batcher.add(chunk)
            batcher.flush()
        finally:
            del chunks  # shuts the workers down, also on an error
            try:
                wstats = writer.close()
            finally:
                bar.close()
        stats.clips = embedder.clips_encoded
        stats.written, stats.failed, stats.segments = wstats.written, wstats.failed, wstats.segments
        stats.partial = wstats.partial
        stats.write_s, stats.write_wait_s = wstats.write_s, writer.put_wait_s
        stats.failures = wstats.failures
        stats.wall_s = time.perf_counter() - t_start
        return stats

    # --- finishing (rank 0) ------------------------------------------------------------------------

    def _finish(self, items: list[tuple[str, list[FoundFile]]], stats: StageStats, per_rank: list[StageStats],
                fingerprint: str, key: str, cache: EmbeddingCache, model: AlproModel, summary: RunSummary,
                timings: dict[str, float]) -> None:
        s = self.settings
        plan: Plan = self._plan
        t = time.perf_counter()
        # other ranks wrote cache entries and collected failures; rank 0 owns the database
        mine = {video_id for video_id, _ in self.dist.shard(items)}
        for video_id, files in items:
            if video_id not in mine:
                self.commit_from_cache(cache, video_id, files, fingerprint, key)
        files_by_path = {f.path: f for _, files in items for f in files}
        for part in per_rank[1:]:
            with self.datadir.session() as session:
                for path, error_type, reason in part.failures:
                    record_failure(session, files_by_path[path], error_type, reason)
        timings["merge"] = time.perf_counter() - t

        t = time.perf_counter()
        # issue 21: ALPRO_VECTOR_STORE picks where a version goes (FAISS files, or the pgvector tables)
        publish_to = publish if s.vector_store == "faiss" else publish_pgvector
        publish_now = functools.partial(
            publish_to, self.datadir, cache, key=key, fingerprint=fingerprint, checkpoint=str(self.checkpoint_path),
            model_config=model.config.to_dict(), dim=model.config.embed_dim, index_type=s.index_type,
            store_tokens=s.store_tokens, segment_seconds=s.segment_seconds, keep_versions=s.keep_versions,
            recall_target=s.recall_target, use_gpu=resolve_device(s.resolved_device_name()).type == "cuda",
            exclude=set(plan.drop), precision=self.precision,
        )
        result: PublishResult = publish_now(force=s.reindex)  # --reindex: every vector is new, a new base at once
        timings["publish"] = time.perf_counter() - t
        if result.compaction_due:  # the delta is current meanwhile; now a new base of every vector (store/publish.py)
            t, first = time.perf_counter(), result
            result = publish_now(force=True)
            result.published, result.uncached = True, sorted({*first.uncached, *result.uncached})
            timings["compact"] = time.perf_counter() - t

        # only now, with the new version current, do rows and files of dropped videos go
        t = time.perf_counter()
        drop = dict(plan.drop)
        for video_id in result.uncached:
            logger.warning("video %s has rows but no usable cache entry; dropped, it is embedded on the next run",
                           video_id)
            drop.setdefault(video_id, "uncached")
        with self.datadir.session() as session:
            drop.update({vid: "stale" for vid in stale_video_ids(session, key)})
            delete_videos(session, list(drop))
            live = set(load_videos(session))
        for video_id in drop:
            if video_id not in live:
                remove_thumbnails(self.datadir, video_id)
                self.datadir.preview_path(video_id).unlink(missing_ok=True)
        cache.retain(live)
        cache.drop_other_keys()  # every remaining row has this key now; other caches are dead weight
        timings["cleanup"] = time.perf_counter() - t

        # previews once search works with this run's videos; a version whose rows show them follows
        t = time.perf_counter()
        previews = update_previews(self.datadir, policy=s.previews, height=s.preview_height,
                                   workers=default_num_workers() if s.num_workers is None else s.num_workers,
                                   retry_failed=s.retry_failed)
        timings["previews"] = time.perf_counter() - t
        if previews.changed:
            t, published = time.perf_counter(), result.published
            result = publish_now()
            result.published = result.published or published
            timings["publish"] += time.perf_counter() - t
        summary.previews_made, summary.previews_failed = previews.made, previews.failed
        summary.preview_bytes = previews.bytes

        manifest = result.manifest
        summary.indexed = stats.written + summary.recovered  # written: all ranks
        summary.failed += stats.failed
        summary.partial = stats.partial
        summary.failures.extend({"path": p, "error_type": e, "reason": r} for p, e, r in stats.failures)
        summary.failures = summary.failures[:MAX_LISTED_FAILURES]
        summary.removed = len(drop)
        summary.decoded = stats.videos
        summary.encoded_clips = stats.clips
        summary.index_version = result.version
        summary.published = result.published
        summary.segments = manifest.num_vectors if manifest else 0
        summary.index_type = manifest.index_type if manifest else None
        summary.recall_at_10 = manifest.recall_at_10 if manifest else None
        timings.update(decode=stats.decode_s, encode=stats.encode_s, encode_wait=stats.encode_wait_s,
                       write=stats.write_s, write_wait=stats.write_wait_s, pipeline=stats.wall_s)
        summary.videos_per_s = round(stats.videos / stats.wall_s, 4) if stats.wall_s > 0 else 0.0
        summary.pipeline = pipeline_figures(stats)


class _Batcher:
    """Collects clips across videos into model batches and hands finished videos to the writer."""

    def __init__(self, embedder: Embedder, batch_size: int, work: list[WorkItem],
                 files_of: dict[int, list[FoundFile]], writer: Writer, stats: StageStats) -> None:
        self.embedder = embedder
        self.batch_size = batch_size
        self.work = work
        self.files_of = files_of
        self.writer = writer
        self.stats = stats
        self.queue: list[tuple[int, int, torch.Tensor]] = []  # (pos, segment index, uint8 clip)
        self.videos: dict[int, _VideoState] = {}
        pinned = embedder.device.type == "cuda"
        self._staging: torch.Tensor | None = None
        self._pinned = pinned

    def add(self, chunk: ReaderChunk) -> None:
        self.stats.decode_s += chunk.decode_s
        state = self.videos.setdefault(chunk.pos, _VideoState())
        if chunk.error is not None:
            self.queue = [q for q in self.queue if q[0] != chunk.pos]
            del self.videos[chunk.pos]
            item = self.work[chunk.pos]
            self.writer.put(VideoFailure(item, self.files_of[chunk.pos], *chunk.error))
            return
        if chunk.clips is not None:
            for j in range(chunk.num_clips):
                self.queue.append((chunk.pos, chunk.first + j, chunk.clips[j]))
        if chunk.final:
            state.final = chunk
            state.total = chunk.first + chunk.num_clips
            self._emit_if_done(chunk.pos)
        while len(self.queue) >= self.batch_size:
            self._encode(self.queue[:self.batch_size])
            self.queue = self.queue[self.batch_size:]

    def flush(self) -> None:
        while self.queue:
            self._encode(self.queue[:self.batch_size])
            self.queue = self.queue[self.batch_size:]
        assert not self.videos, f"videos left unfinished: {sorted(self.videos)}"

    def _stack(self, clips: list[torch.Tensor]) -> torch.Tensor:
        if not self._pinned:
            return torch.stack(clips)
        shape = (self.batch_size, *clips[0].shape)
        if self._staging is None or tuple(self._staging.shape) != shape:
            self._staging = torch.empty(shape, dtype=clips[0].dtype).pin_memory()
        # the previous batch's copy has finished: encode() synchronises when it fetches its outputs
        return torch.stack(clips, out=self._staging[:len(clips)])

    def _encode(self, batch: list[tuple[int, int, torch.Tensor]]) -> None:
        t = time.perf_counter()
        out = self.embedder.encode(self._stack([clip for _, _, clip in batch]))
        self.stats.encode_s += time.perf_counter() - t
        touched = set()
        for row, (pos, index, _) in enumerate(batch):
            state = self.videos[pos]
            state.embeddings[index] = out.embeddings[row]
            if out.tokens is not None:
                state.tokens[index] = out.tokens[row]
            touched.add(pos)
        for pos in touched:
            self._emit_if_done(pos)

    def _emit_if_done(self, pos: int) -> None:
        state = self.videos.get(pos)
        if state is None or state.final is None or len(state.embeddings) < state.total:
            return
        final = state.final
        info = final.info
        assert info is not None
        order = range(state.total)
        result = VideoResult(
            item=self.work[pos],
            files=self.files_of[pos],
            info={"num_frames": info.num_frames, "fps": info.fps, "duration_s": info.duration_s,
                  "width": info.width, "height": info.height, "codec": info.codec,
                  "partial_reason": final.partial_reason},
            windows=[(float(a), float(b)) for a, b in final.windows],
            embeddings=np.stack([state.embeddings[i] for i in order]).astype(np.float32),
            tokens=np.stack([state.tokens[i] for i in order]) if state.tokens else None,
            thumbnails=list(final.thumbnails),
        )
        del self.videos[pos]
        self.writer.put(result)


@dataclass
class _VideoState:
    final: ReaderChunk | None = None
    total: int = 0
    embeddings: dict[int, np.ndarray] = field(default_factory=dict)
    tokens: dict[int, np.ndarray] = field(default_factory=dict)


def pipeline_figures(stats: StageStats) -> dict[str, Any]:
    """Utilisation of each stage over the pipeline's wall time, and which stage bounds it."""
    procs = max(1, stats.processes)
    wall = stats.wall_s * procs  # process-seconds (ranks run side by side)
    if wall <= 0:
        return {}
    # num_workers == 0 decodes in the embedding process itself
    decode_capacity = stats.wall_s * stats.num_workers if stats.num_workers else wall
    busy = {
        "decode": stats.decode_s / decode_capacity,  # fraction of the decoding processes' time busy
        "encode": stats.encode_s / wall,
        "write": stats.write_s / wall,
    }
    return {
        "utilisation": {k: round(v, 4) for k, v in busy.items()},
        "bound_by": max(busy, key=busy.get),
        "encode_idle_fraction": round(stats.encode_wait_s / wall, 4),
        "writer_backpressure_fraction": round(stats.write_wait_s / wall, 4),
        "clips_per_s": round(stats.clips / stats.wall_s, 4),
        "num_workers": stats.num_workers,
        "processes": procs,
    }


def _progress_bar(total: int, *, enabled: bool):
    from tqdm import tqdm

    # no monitor thread: it would exist while later DataLoader workers fork
    tqdm.monitor_interval = 0
    return tqdm(total=total, unit="video", file=sys.stderr, disable=not enabled, dynamic_ncols=True,
                smoothing=0.1, desc="indexing")


def run_index(settings: IndexSettings, *, model: AlproModel | None = None,
              dist: DistContext | None = None) -> RunSummary:
    """Index `settings.videos_dir` into `settings.data_dir`; see Indexer."""
    return Indexer(settings, model=model, dist=dist).run()


__all__ = ["Indexer", "RunSummary", "StageStats", "pipeline_figures", "run_index"]
