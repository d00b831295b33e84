"""The model and index holder behind the routes: search (VTC retrieval, grouping, VTM re-ranking) and QA.

Search: query -> text embedding -> FAISS over segment vectors (over-fetched) -> rows from the metadata DB
-> best moment per video -> optionally VTM re-ranking of the top candidates with the LAVIS score
(itm logit[1] + cosine), from the index's stored tokens or from segments decoded on demand (LRU cached).
QA: the video is decoded and encoded once (LRU cached by bytes), then each question costs the text layers,
the fusion layers and the classifier. Every model call runs on the model thread (`batching.ModelWorker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncIterator, Optional, Sequence

import numpy as np
import torch

from store.datadir import DataDir, IndexManifest, IndexRow, IndexSnapshot
from model.decode import VideoError
from model.preprocess import load_video

from . import schemas
from .batching import ModelWorker
from .cache import ByteLRU
from .decoding import DecodePool
from .catalog import Catalog, RowCache, SegmentRow
from .errors import (DeadlineExceededError, IndexUnavailableError, InvalidRequestError, OverloadedError,
                     QANotConfiguredError, StartupError, UnavailableError, VideoFileMissingError, VideoNotFoundError,
                     VideoUndecodableError)
from .index import IndexHolder, IndexLease, Selection
from .library import Library, preview_url, segment_thumbnail_url, stream_url
from .metrics import Metrics
from .models import LoadedModel, load_checkpoint, manifest_checkpoint, not_there_yet
from .ranking import Candidate, decode_cursor, encode_cursor, passes, query_key, to_cosine
from .settings import Settings

logger = logging.getLogger(__name__)

_VIDEO_BATCH = 8  # clips per video-encoder call when computing tokens for re-ranking
MOMENT_HITS = 256  # how deep in the hits a result's further moments are looked for
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # an index's recorded precision


# --------------------------------------------------------------------------------------------------
# The engine


@dataclass
class _Query:
    """One text query on its way through the model thread."""

    text: str
    snapshot: IndexSnapshot
    k: int
    selection: Optional[Selection] = None  # search only these rows (the request's filters)


@dataclass
class _Hits:
    embedding: np.ndarray  # float32 (D,)
    scores: np.ndarray  # (k,) FAISS scores, best first
    ids: np.ndarray  # int64 (k,) segment ids, -1 padding
    encode_s: float
    faiss_s: float


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=lambda: {"encode": 0.0, "faiss": 0.0, "db": 0.0, "rerank": 0.0})

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


class Engine:
    """Loaded models, the served index version, the metadata DB and the caches; built once per app."""

    def __init__(self, settings: Settings, metrics: Metrics, data_dir: DataDir, retrieval: Optional[LoadedModel],
                 qa: Optional[LoadedModel]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.data_dir = data_dir
        self.catalog = Catalog(data_dir.engine)
        self.library = Library(self.catalog, data_dir, self._db)
        self.row_cache = RowCache(settings.row_cache_size)
        self._row_hits = metrics.cache_lookups.labels("segment_rows", "hit")  # bound once: no label look-up a search
        self._row_misses = metrics.cache_lookups.labels("segment_rows", "miss")
        self.retrieval = retrieval
        self.qa = qa
        self.device = settings.resolved_device
        self.index = IndexHolder(data_dir, self.check_manifest, metrics)
        self.worker: ModelWorker[_Query, _Hits] = ModelWorker(
            self._encode_and_search, max_batch=settings.max_batch, window_s=settings.batch_window_s,
            max_queue=settings.max_queue, retry_after_s=settings.retry_after_s, metrics=metrics)
        self.token_cache: ByteLRU = ByteLRU(int(settings.token_cache_mb * 2**20),
                                            lambda hit: metrics.cache_lookup("segment_tokens", hit))
        self.qa_cache: ByteLRU = ByteLRU(int(settings.qa_cache_mb * 2**20),
                                         lambda hit: metrics.cache_lookup("qa_video_tokens", hit))
        self.decoder = DecodePool(settings.decode_workers, settings.max_decode_jobs, settings.retry_after_s, metrics)
        # few, long-lived threads for the metadata DB: bounded DB concurrency, and a connection per thread
        self._db_pool = ThreadPoolExecutor(settings.db_workers, thread_name_prefix="db")
        self._qa_inflight: dict[tuple[str, str], asyncio.Future] = {}
        self._qa_waiters: dict[tuple[str, str], int] = {}
        self._qa_loading = asyncio.Lock()
        self._watcher: Optional[asyncio.Task] = None
        self.started_at = time.time()

    # --- loading

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics) -> "Engine":
        """Open the data dir, load the checkpoints and the current index version, check they match. Blocking."""
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        device = settings.resolved_device
        data_dir = DataDir(settings.data_dir, settings.database_url)
        snapshot = None
        version = data_dir.current_version()
        if version is not None:
            snapshot = data_dir.open_index(version)
        try:
            retrieval = None
            checkpoint = settings.checkpoint
            if checkpoint is None and snapshot is not None:
                checkpoint = manifest_checkpoint(snapshot.manifest, data_dir)
            if checkpoint is not None:
                retrieval = load_checkpoint(checkpoint, settings.bert_config, device, settings)
            else:
                logger.warning("no index in %s yet and ALPRO_CHECKPOINT is unset: the model loads when an index "
                               "is published", settings.data_dir)
            qa = None
            if settings.qa_checkpoint is not None and not_there_yet(settings.qa_checkpoint):
                logger.warning("ALPRO_QA_CHECKPOINT %s is not there yet: /qa answers 503 until it is (it loads "
                               "at the first question after it appears)", settings.qa_checkpoint)
            elif settings.qa_checkpoint is not None:
                qa = load_checkpoint(settings.qa_checkpoint, settings.qa_bert_config or settings.bert_config, device,
                                     settings)
                if qa.model.qa_head is None:
                    raise StartupError(f"ALPRO_QA_CHECKPOINT {settings.qa_checkpoint} has no QA head (num_answers=0)")
            engine = cls(settings, metrics, data_dir, retrieval, qa)
            if snapshot is not None:
                engine.check_manifest(snapshot.manifest)  # refuse to start on a mismatch
                engine.index.install(snapshot)
                snapshot = None
        except BaseException:
            data_dir.dispose()
            raise
        finally:
            if snapshot is not None:
                snapshot.close()
        return engine

    def check_manifest(self, manifest: IndexManifest) -> None:
        """Raise StartupError unless the loaded retrieval checkpoint is the one that built this index version."""
        if self.retrieval is None:  # no checkpoint yet: take the one this index names
            self.retrieval = load_checkpoint(manifest_checkpoint(manifest, self.data_dir), self.settings.bert_config,
                                             self.device)
        if self.retrieval.fingerprint != manifest.checkpoint_fingerprint:
            raise StartupError(
                f"checkpoint {self.retrieval.path} (fingerprint {self.retrieval.fingerprint}) did not build index "
                f"version {manifest.version} in {self.data_dir.root}, which was made with {manifest.checkpoint} "
                f"(fingerprint {manifest.checkpoint_fingerprint}); serve that checkpoint (unset ALPRO_CHECKPOINT) "
                f"or re-index with this one")
        if manifest.dim != self.retrieval.model.config.embed_dim:
            raise StartupError(f"index version {manifest.version} holds {manifest.dim}-d vectors, the checkpoint "
                               f"makes {self.retrieval.model.config.embed_dim}-d ones")

    def _warm_up_models(self) -> None:
        """One pass through every model path (on the model thread, whose OpenMP team it warms too)."""
        with torch.inference_mode():
            for loaded in (self.retrieval, self.qa):
                if loaded is None:
                    continue
                model, config = loaded.model, loaded.model.config
                ids, mask = loaded.tokenizer(["warm up"])
                ids, mask = ids.to(loaded.device), mask.to(loaded.device)
                text = model.text_tokens(ids, mask)
                model.text_features(text)
                video = torch.zeros(1, 1 + config.vision.num_patches, config.vision.embed_dim, device=loaded.device)
                if model.qa_head is not None:
                    model.answer_logits_from_tokens(video, text, mask)
                else:
                    model.vtm_logits_from_tokens(video, text, mask)
        try:
            lease = self.index.acquire()
        except IndexUnavailableError:
            return
        with lease:
            if self.retrieval is not None and lease.manifest.num_vectors:
                self._encode_and_search([_Query("warm up", lease.snapshot, 1)])

    async def warm_up(self) -> None:
        """So that the first request does not pay for lazy initialisation (DB connection, kernels, FAISS)."""
        start = time.perf_counter()
        try:
            await self._db(self.catalog.ping, observe=False)
        except UnavailableError as e:  # not indexed yet: requests will say so
            logger.warning("%s", e.message)
        await self.worker.run(self._warm_up_models)
        logger.info("warm-up took %.2f s", time.perf_counter() - start)

    async def start(self) -> None:
        self.worker.start()
        await self._refresh_roots()
        if self.settings.warmup:
            await self.warm_up()
        self._watcher = asyncio.create_task(self.index.watch(self.settings.index_poll_s), name="index-watcher")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass
        await asyncio.to_thread(self.worker.stop)
        self.decoder.shutdown()
        self._db_pool.shutdown(wait=True, cancel_futures=True)
        self.index.close()
        self.data_dir.dispose()

    # --- state

    def readiness(self) -> schemas.ReadyResponse:
        version = self.index.version
        reason = None
        if self.retrieval is None:
            reason = "the retrieval checkpoint is not loaded (no index published yet)"
        elif version is None:
            reason = self.index.error or f"no index published in {self.data_dir.root} yet"
        elif self.index.manifest is not None and self.index.manifest.num_vectors == 0:
            reason = f"index version {version} is empty"
        return schemas.ReadyResponse(ready=reason is None, model=self.retrieval is not None, index_version=version,
                                     qa=self.qa is not None, reason=reason)

    async def stats(self) -> schemas.StatsResponse:
        videos, segments, failures = await self._db(self.catalog.counts)
        partial = await self._db(self.catalog.partial_count)
        roots = await self._db(self.library.roots)
        manifest = self.index.manifest
        index = None
        if manifest is not None:
            index = schemas.IndexInfo(
                version=manifest.version, created_at=str(manifest.created_at), index_type=manifest.index_type,
                metric=manifest.metric, num_vectors=manifest.num_vectors, num_videos=manifest.num_videos,
                has_tokens=bool(manifest.has_tokens), recall_at_10=manifest.recall_at_10)
        return schemas.StatsResponse(
            videos=videos, segments=segments, failures=failures, partial=partial, library_roots=list(roots),
            index=index,
            index_error=self.index.error,
            checkpoint=self.retrieval.info() if self.retrieval else None,
            qa_checkpoint=self.qa.info() if self.qa else None, device=self.device,
            uptime_s=round(time.time() - self.started_at, 3))

    # --- model thread work

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (N, D) L2-normalised query embeddings. Runs on the model thread."""
        loaded = self._require_retrieval()
        with torch.inference_mode():
            ids, mask = loaded.tokenizer(list(texts))
            embedding = loaded.model.encode_text(ids.to(loaded.device), mask.to(loaded.device))
        return embedding.float().cpu().numpy()

    def _encode_and_search(self, queries: Sequence[_Query]) -> list[_Hits]:
        """The micro-batch: one encoder call for all queries, one FAISS call per snapshot."""
        t0 = time.perf_counter()
        embeddings = np.ascontiguousarray(self.encode_texts([q.text for q in queries]), dtype=np.float32)
        encode_s = time.perf_counter() - t0
        groups: dict[tuple[int, int], list[int]] = {}
        for i, q in enumerate(queries):  # during an index switch one batch may span two versions
            groups.setdefault((id(q.snapshot), id(q.selection)), []).append(i)
        out: list[Optional[_Hits]] = [None] * len(queries)
        for rows in groups.values():
            t1 = time.perf_counter()
            k = max(queries[i].k for i in rows)
            first = queries[rows[0]]
            if first.selection is None:
                scores, ids = first.snapshot.search(embeddings[rows], k)
            else:
                scores, ids = first.selection.search(embeddings[rows], k)
            faiss_s = time.perf_counter() - t1
            for j, i in enumerate(rows):
                kq = queries[i].k
                out[i] = _Hits(embeddings[i], np.asarray(scores[j, :kq]), np.asarray(ids[j, :kq]), encode_s, faiss_s)
        return out  # type: ignore[return-value]

    def _video_tokens(self, loaded: LoadedModel, clips: list[torch.Tensor],
                      precision: str = "fp32") -> list[torch.Tensor]:
        """(T, 3, H, W) clips -> (1 + N, D) token features each, on the model's device, computed in the precision
        the index's stored tokens were (so stored and recomputed ones score alike).

        Each is an owned, contiguous copy: the caches keep them, and a row view would keep its whole batch."""
        out: list[torch.Tensor] = []
        dtype = _AUTOCAST[precision]
        with torch.inference_mode(), torch.autocast(loaded.device.type, dtype=dtype, enabled=dtype is not None):
            for i in range(0, len(clips), _VIDEO_BATCH):
                video = torch.stack(clips[i:i + _VIDEO_BATCH]).to(loaded.device)  # (B, T, 3, H, W)
                tokens = loaded.model.video_tokens(video)  # (B, 1 + N, D)
                if dtype is not None:  # as the indexer stores them: fp16
                    tokens = tokens.to(torch.float16)
                out.extend(t.clone(memory_format=torch.contiguous_format) for t in tokens)
        return out

    def _vtm_scores(self, query: str, video_tokens: list[torch.Tensor]) -> list[float]:
        """VTM match probabilities, softmax(itm_logits)[1], of one query against n videos' token features."""
        loaded = self._require_retrieval()
        model = loaded.model
        with torch.inference_mode():
            ids, mask = loaded.tokenizer([query])
            ids, mask = ids.to(loaded.device), mask.to(loaded.device)
            text = model.text_tokens(ids, mask)  # (1, L, D)
            dtype = text.dtype
            video = torch.stack([t.to(loaded.device, dtype) for t in video_tokens])  # (n, 1 + N, D)
            n = video.shape[0]
            logits = model.vtm_logits_from_tokens(video, text.expand(n, -1, -1), mask.expand(n, -1))  # (n, 2)
        return torch.softmax(logits.float(), dim=-1)[:, 1].cpu().tolist()

    def _answer_probs(self, question: str, video_tokens: torch.Tensor, top_k: int) -> list[tuple[int, float]]:
        qa = self.qa
        assert qa is not None
        with torch.inference_mode():
            ids, mask = qa.tokenizer([question])
            ids, mask = ids.to(qa.device), mask.to(qa.device)
            text = qa.model.text_tokens(ids, mask)  # (1, L, D)
            logits = qa.model.answer_logits_from_tokens(video_tokens.unsqueeze(0).to(text.dtype), text, mask)
            probs = logits.float().softmax(-1)[0]  # (num_answers,)
            values, indices = probs.topk(min(top_k, probs.numel()))
        return list(zip(indices.tolist(), values.tolist()))

    # --- search

    async def search(self, request: schemas.SearchRequest) -> schemas.SearchResponse:
        start = time.perf_counter()
        settings = self.settings
        if len(request.query) > settings.max_query_chars:
            raise InvalidRequestError(
                f"query: longer than this server's limit of {settings.max_query_chars} characters")
        if request.top_k > settings.max_top_k:
            raise InvalidRequestError(f"top_k: larger than this server's limit of {settings.max_top_k}")
        offset = decode_cursor(request.cursor, query_key(request)) if request.cursor else request.offset
        rerank_k = settings.rerank_default if request.rerank is True else int(request.rerank)
        end = offset + request.top_k
        want = max(end + 1, rerank_k)  # one more than the page tells whether a next page exists
        timer = _Timer()
        with self.index.acquire() as lease:
            manifest = lease.manifest
            if manifest.num_vectors == 0:
                raise IndexUnavailableError(f"index version {manifest.version} is empty: no video has been indexed")
            # Filters restrict the FAISS search to the rows that pass (a version without its rows: the hits are
            # filtered instead, as deep as max_fetch); then max_fetch bounds only how deep grouping by video
            # looks, as for an unfiltered search
            selection = None
            if request.filters is not None:
                t = time.perf_counter()
                selection = await asyncio.to_thread(lease.selection, request.filters)
                timer.add("faiss", time.perf_counter() - t)
                if selection is not None and selection.count == manifest.num_vectors:
                    selection = None  # everything passes: the plain search, batched with unfiltered queries
            searchable = manifest.num_vectors if selection is None else selection.count
            candidates: list[Candidate] = []
            hits: Optional[_Hits] = None
            if searchable:  # else nothing passes the filters
                candidates, hits = await self._videos(request, lease, selection, min(searchable, settings.max_fetch),
                                                      want, timer)
            reranked = 0
            if rerank_k and candidates:
                t = time.perf_counter()
                async with self._deadline("re-ranking"):
                    reranked = await self._rerank(request.query, candidates, rerank_k, lease)
                timer.add("rerank", time.perf_counter() - t)
            version = lease.version
            page = candidates[offset:end]
            if hits is not None and page:
                await self._moments(page, hits, lease, timer)
        if self.library.roots_stale():
            await self._refresh_roots()
        has_more = len(candidates) > end and end <= schemas.MAX_OFFSET
        for stage, seconds in timer.seconds.items():
            if stage != "rerank" or reranked:
                self.metrics.observe_stage(stage, seconds)
        timings = timer.seconds
        return schemas.SearchResponse(
            query=request.query, results=[self._hit(c) for c in page], offset=offset,
            next_cursor=encode_cursor(end, query_key(request)) if has_more else None, reranked=reranked,
            index_version=version, took_ms=round((time.perf_counter() - start) * 1000, 3),
            timings=schemas.StageTimings(
                encode_ms=round(timings["encode"] * 1000, 3), faiss_ms=round(timings["faiss"] * 1000, 3),
                db_ms=round(timings["db"] * 1000, 3), rerank_ms=round(timings["rerank"] * 1000, 3)))

    async def _videos(self, request: schemas.SearchRequest, lease: IndexLease, selection: Optional[Selection],
                      limit: int, want: int, timer: _Timer) -> tuple[list[Candidate], _Hits]:
        """Up to `want` videos at their best moment, best first, from at most `limit` FAISS hits."""
        k = min(limit, max(want * self.settings.overfetch, 16))
        hits: _Hits = await self.worker.submit(_Query(request.query, lease.snapshot, k, selection))
        timer.add("encode", hits.encode_s)
        timer.add("faiss", hits.faiss_s)
        search = lease.snapshot.search if selection is None else selection.search
        rows: dict[int, Optional[SegmentRow]] = {}
        while True:
            candidates = await self._candidates(hits, lease.snapshot, rows, lease.manifest.metric, request.filters,
                                                want, timer)
            exhausted = k >= limit or bool((hits.ids < 0).any())
            if len(candidates) >= want or exhausted:
                return candidates, hits
            k = min(limit, k * 4)  # grouping or filters dropped too many: fetch deeper
            t = time.perf_counter()
            scores, ids = await asyncio.to_thread(search, hits.embedding[None], k)
            timer.add("faiss", time.perf_counter() - t)
            hits = replace(hits, scores=np.asarray(scores[0]), ids=np.asarray(ids[0]))

    async def _candidates(self, hits: _Hits, snapshot: IndexSnapshot, rows: dict[int, Optional[SegmentRow]],
                          metric: str, filters: Optional[schemas.SearchFilters], want: int,
                          timer: _Timer) -> list[Candidate]:
        """Up to `want` videos at their best moment, best first: grouped by the index's own segment -> video
        map, so the DB is asked only for the rows of the moments shown (and filtered) and not every hit."""
        valid = hits.ids >= 0
        ids = hits.ids[valid].tolist()
        cosines = to_cosine(hits.scores[valid], metric).tolist()
        firsts = snapshot.first_hit_per_video(ids)
        out: list[Candidate] = []
        pos = 0
        while len(out) < want and pos < len(firsts):
            # filters may drop many videos: ask for more rows per round trip then
            chunk = firsts[pos:pos + (want - len(out)) * (4 if filters is not None else 1)]
            pos += len(chunk)
            missing = [ids[i] for i in chunk if ids[i] not in rows]
            if missing and snapshot.has_rows:  # the version carries its rows: no database round trip
                rows.update((info.segment_id, self._segment_row(info)) for info in snapshot.segment_rows(missing))
                missing = []
            if missing and self.row_cache.max_rows > 0:
                cached = self.row_cache.get_many(snapshot.version, missing)
                rows.update(cached)
                self._row_hits.inc(len(cached))
                missing = [segment_id for segment_id in missing if segment_id not in cached]
            if missing:
                self._row_misses.inc(len(missing))
                t = time.perf_counter()
                found = await self._db(self.catalog.segments, missing, observe=False)
                timer.add("db", time.perf_counter() - t)
                self.row_cache.put_many(snapshot.version, found.values())
                for segment_id in missing:
                    rows[segment_id] = found.get(segment_id)  # None: the row is gone (video removed)
            for i in chunk:
                row = rows[ids[i]]
                if row is not None and passes(row, filters):
                    out.append(Candidate(row, float(cosines[i])))
        return out[:want]

    async def _moments(self, page: list[Candidate], hits: _Hits, lease: IndexLease, timer: _Timer) -> None:
        """Each result's best moments among the top hits (the hits its best moment came from), best first."""
        snapshot = lease.snapshot
        valid = hits.ids >= 0
        ids = hits.ids[valid][:MOMENT_HITS].tolist()
        cosines = to_cosine(hits.scores[valid][:MOMENT_HITS], lease.manifest.metric).tolist()
        wanted = {c.row.video_id: c for c in page}
        picked: list[tuple[Candidate, int, float]] = []
        count: dict[str, int] = {}
        for segment_id, cosine, (video_id, _) in zip(ids, cosines, snapshot.locate(ids)):
            c = wanted.get(video_id)
            if c is not None and count.get(video_id, 0) < schemas.MAX_MOMENTS:
                count[video_id] = count.get(video_id, 0) + 1
                picked.append((c, segment_id, cosine))
        known = {c.row.segment_id: c.row for c in page}
        missing = [segment_id for _, segment_id, _ in picked if segment_id not in known]
        if missing and snapshot.has_rows:
            known.update((info.segment_id, self._segment_row(info)) for info in snapshot.segment_rows(missing))
        elif missing:  # a version without its rows: the row cache, then the database, as for the results
            known.update(self.row_cache.get_many(snapshot.version, missing))
            missing = [segment_id for segment_id in missing if segment_id not in known]
            if missing:
                t = time.perf_counter()
                found = await self._db(self.catalog.segments, missing, observe=False)
                timer.add("db", time.perf_counter() - t)
                self.row_cache.put_many(snapshot.version, found.values())
                known.update(found)
        for c, segment_id, cosine in picked:
            row = known.get(segment_id)
            if row is not None:
                c.moments.append(schemas.Moment(segment_index=row.index, start=row.start_s, end=row.end_s,
                                                similarity=cosine))

    async def _refresh_roots(self) -> None:
        """Re-read the library folders (for relative paths) without failing a search when the database is down."""
        try:
            await self._db(self.library.roots, observe=False)
        except UnavailableError:
            pass  # relative paths fall back to file names until the database answers again

    async def _rerank(self, query: str, candidates: list[Candidate], rerank_k: int, lease: IndexLease) -> int:
        """Re-order the top `rerank_k` candidates in place by VTM match probability; returns how many were scored."""
        top = candidates[:rerank_k]
        tokens = await self._segment_tokens(top, lease)
        scored = [i for i, t in enumerate(tokens) if t is not None]
        if scored:
            probs = await self.worker.run(self._vtm_scores, query, [tokens[i] for i in scored])
            for i, prob in zip(scored, probs):
                top[i].vtm = float(prob)
        # candidates whose segment could not be decoded keep their order, after the re-ranked ones
        ranked = sorted((c for c in top if c.vtm is not None), key=lambda c: c.rerank_key, reverse=True)
        candidates[:rerank_k] = ranked + [c for c in top if c.vtm is None]
        return len(scored)

    async def _segment_tokens(self, top: list[Candidate], lease: IndexLease) -> list[Optional[torch.Tensor]]:
        """(1 + N, D) token features per candidate: stored in the index, cached, or decoded and encoded now."""
        if lease.manifest.has_tokens:
            ids = np.array([c.row.segment_id for c in top], dtype=np.int64)
            try:
                stored = await asyncio.to_thread(lease.snapshot.tokens, ids)
            except (LookupError, OSError, ValueError) as e:  # a token file gone missing: decode instead
                logger.warning("stored tokens of index version %d unreadable (%s); decoding segments", lease.version, e)
                stored = None
            if stored is not None:
                stored = torch.as_tensor(np.asarray(stored))  # fp16 (n, 1 + N, D)
                return [stored[i] for i in range(len(top))]
        loaded = self._require_retrieval()
        precision = lease.manifest.precision
        keys = [(loaded.fingerprint, precision, c.row.video_id, c.row.index, c.row.start_s, c.row.end_s) for c in top]
        out: list[Optional[torch.Tensor]] = [self.token_cache.get(key) for key in keys]
        missing = [i for i, t in enumerate(out) if t is None]
        if not missing:
            return out
        t = time.perf_counter()
        clips = await asyncio.gather(*(self.decoder.run(self._decode_segment, loaded, top[i].row) for i in missing),
                                     return_exceptions=True)
        for clip in clips:
            if isinstance(clip, OverloadedError):  # bounded work: no decode admitted for this request now
                raise clip
        self.metrics.observe_stage("decode", time.perf_counter() - t)
        good = []
        for i, clip in zip(missing, clips):
            if isinstance(clip, BaseException):
                logger.warning("re-ranking skips segment %d of video %s: %s", top[i].row.index, top[i].row.video_id,
                               clip)
            else:
                good.append((i, clip))
        if good:
            t = time.perf_counter()
            tokens = await self.worker.run(self._video_tokens, loaded, [clip for _, clip in good], precision)
            self.metrics.observe_stage("video_encode", time.perf_counter() - t)
            for (i, _), token in zip(good, tokens):
                self.token_cache.put(keys[i], token)
                out[i] = token
        self.metrics.cache_bytes.labels("segment_tokens").set(self.token_cache.nbytes)
        return out

    @staticmethod
    def _decode_segment(loaded: LoadedModel, row: SegmentRow) -> torch.Tensor:
        window = (row.start_s, row.end_s) if row.end_s > row.start_s else None
        return load_video(row.path, loaded.model.config, window=window)  # (T, 3, H, W)

    def _segment_row(self, info: IndexRow) -> SegmentRow:
        thumbnail = self.data_dir.thumbnail_relpath(info.video_id, info.index) if info.has_thumbnail else None
        return SegmentRow(info.segment_id, info.video_id, info.index, info.start_s, info.end_s, thumbnail, info.path,
                          info.duration_s, info.preview)

    def _hit(self, c: Candidate) -> schemas.SearchHit:
        row = c.row  # validated construction (pydantic-core) costs 4 us a hit, model_construct (Python) 9
        preview = row.preview if row.preview is not None else self.library.has_preview(row.video_id)
        return schemas.SearchHit(
            video_id=row.video_id, path=row.path, relative_path=self.library.relative(row.path),
            name=os.path.basename(row.path), score=c.score, scored_by="vtc" if c.vtm is None else "vtm",
            start=row.start_s, end=row.end_s, segment_index=row.index,
            thumbnail_url=segment_thumbnail_url(row.video_id, row.index) if row.thumbnail else None,
            stream_url=stream_url(row.video_id), preview_url=preview_url(row.video_id) if preview else None,
            vtc_score=c.vtc, vtm_score=c.vtm, moments=c.moments)

    # --- QA

    async def answer(self, request: schemas.QARequest) -> schemas.QAResponse:
        start = time.perf_counter()
        qa = self.qa or await self._load_pending_qa()
        if len(request.question) > self.settings.max_query_chars:
            raise InvalidRequestError(
                f"question: longer than this server's limit of {self.settings.max_query_chars} characters")
        path = await self._db(self.catalog.video_path, request.video_id)
        if path is None:
            raise VideoNotFoundError(f"no video with id {request.video_id}")
        async with self._deadline("answering the question"):
            tokens, cached = await self._qa_video_tokens(qa, request.video_id, path)
        t = time.perf_counter()
        ranked = await self.worker.run(self._answer_probs, request.question, tokens, request.top_k)
        self.metrics.observe_stage("qa", time.perf_counter() - t)
        names = qa.model.config.answers
        answers = [schemas.Answer(answer=names[i] if i < len(names) else f"#{i}", score=p) for i, p in ranked]
        return schemas.QAResponse(video_id=request.video_id, question=request.question, answers=answers, cached=cached,
                                  took_ms=round((time.perf_counter() - start) * 1000, 3))

    @contextlib.asynccontextmanager
    async def _deadline(self, what: str) -> AsyncIterator[None]:
        """Bound a request's decoding work by ALPRO_REQUEST_TIMEOUT_S: past it, 504 and the work is cancelled."""
        limit = self.settings.request_timeout_s
        try:
            async with asyncio.timeout(limit):
                yield
        except TimeoutError as e:
            self.metrics.deadlines.inc()
            raise DeadlineExceededError(f"{what} took longer than this server's limit of {limit:g} s "
                                        f"(ALPRO_REQUEST_TIMEOUT_S); the video may be too long or the server busy") from e

    async def _load_pending_qa(self) -> LoadedModel:
        """The QA checkpoint that was not there at start-up (e.g. fetched into a volume later), once it is."""
        spec = self.settings.qa_checkpoint
        if spec is None:
            raise QANotConfiguredError("question answering is not configured on this server: start it with "
                                       "ALPRO_QA_CHECKPOINT set to a QA checkpoint")
        if not_there_yet(spec):
            raise UnavailableError(f"the QA checkpoint {spec} is not there yet (fetch, import or train it; see "
                                   f"README, Deploy)", headers={"Retry-After": str(self.settings.retry_after_s)})
        async with self._qa_loading:
            if self.qa is None:
                settings = self.settings
                try:
                    qa = await asyncio.to_thread(load_checkpoint, spec,
                                                 settings.qa_bert_config or settings.bert_config, self.device, settings)
                except StartupError as e:
                    raise UnavailableError(str(e)) from e
                if qa.model.qa_head is None:
                    raise UnavailableError(f"ALPRO_QA_CHECKPOINT {spec} has no QA head (num_answers=0)")
                self.qa = qa
        return self.qa

    async def _qa_video_tokens(self, qa: LoadedModel, video_id: str, path: Path) -> tuple[torch.Tensor, bool]:
        key = (qa.fingerprint, video_id)
        tokens = self.qa_cache.get(key)
        if tokens is not None:
            return tokens, True
        task = self._qa_inflight.get(key)
        if task is None:  # one decode per video, however many ask at once
            task = asyncio.ensure_future(self._compute_qa_tokens(qa, key, path))
            self._qa_inflight[key] = task
            task.add_done_callback(lambda _: self._qa_inflight.pop(key, None))
        self._qa_waiters[key] = self._qa_waiters.get(key, 0) + 1
        try:
            return await asyncio.shield(task), False  # one waiter leaving does not stop the others' work
        finally:
            self._qa_waiters[key] -= 1
            if not self._qa_waiters[key]:
                del self._qa_waiters[key]
                if not task.done():  # nobody waits any more (deadline, client gone): stop the work
                    task.cancel()

    async def _compute_qa_tokens(self, qa: LoadedModel, key: tuple[str, str], path: Path) -> torch.Tensor:
        if not await asyncio.to_thread(path.is_file):
            raise VideoFileMissingError(f"the file of video {key[1]} is no longer on the server")
        t = time.perf_counter()
        try:
            clip = await self.decoder.run(load_video, path, qa.model.config)
        except VideoError as e:
            raise VideoUndecodableError(f"video {key[1]} cannot be decoded: {e}") from e
        self.metrics.observe_stage("decode", time.perf_counter() - t)
        t = time.perf_counter()
        (tokens,) = await self.worker.run(self._video_tokens, qa, [clip])
        self.metrics.observe_stage("video_encode", time.perf_counter() - t)
        self.qa_cache.put(key, tokens)
        self.metrics.cache_bytes.labels("qa_video_tokens").set(self.qa_cache.nbytes)
        return tokens

    # --- helpers

    def _require_retrieval(self) -> LoadedModel:
        if self.retrieval is None:
            raise IndexUnavailableError("the retrieval model is not loaded: no index has been published yet")
        return self.retrieval

    async def _db(self, fn: Any, *args: Any, observe: bool = True) -> Any:
        """Run a blocking DB (and file-system) look-up on the DB threads."""
        t = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._db_pool, fn, *args)
        finally:
            if observe:
                self.metrics.observe_stage("db", time.perf_counter() - t)
