"""The engine behind the routes: the loaded checkpoints, the served index version, the metadata database,
the caches and the model thread, built once per app. What a request does with them lives beside it:
search in searching.py (mixed in as `Searching`), image and example queries in queries.py (`QueryVectors`),
similar videos in similar.py (`Similar`), zero-shot labels in classifying.py (`Classifying`), question
answering in answering.py (`Answering`), the library's listings and files in library.py (`Engine.library`).
Every model call runs on the model thread (`batching.ModelWorker`); blocking database and file look-ups on the
DB threads (`Engine._db`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Optional, Sequence

import numpy as np
import torch

from store.layout import DataDir
from store.manifest import IndexManifest

from . import schemas
from .answering import Answering
from .classifying import Classifying, PromptCache
from .batching import ModelWorker
from .cache import ByteLRU
from .catalog import Catalog, RowCache
from .decoding import DecodePool
from .errors import DeadlineExceededError, IndexUnavailableError, StartupError, UnavailableError
from .index import IndexHolder
from .library import Library
from .pg_index import PgIndexHolder, open_published
from .metrics import Metrics
from .models import LoadedModel, load_checkpoint, manifest_checkpoint, not_there_yet
from .queries import QueryVectors
from .searching import Hits, Searching, TextQuery
from .similar import Similar
from .settings import Settings

logger = logging.getLogger(__name__)

_VIDEO_BATCH = 8  # clips per video-encoder call when computing tokens for re-ranking
# an index's recorded precision -> the autocast its tokens are recomputed in (int8 indexes: the service's own)
_AUTOCAST = {"fp32": None, "int8": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------------------------------
# The engine


class Engine(Searching, QueryVectors, Similar, Classifying, Answering):
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
        # issue 21: the served version comes from FAISS files in the data dir, or from the pgvector tables
        holder = IndexHolder if settings.vector_store == "faiss" else PgIndexHolder
        self.index = holder(data_dir, self.check_manifest, metrics)
        self.worker: ModelWorker[TextQuery, Hits] = ModelWorker(
            self._encode_and_search, max_batch=settings.max_batch, window_s=settings.batch_window_s,
            max_queue=settings.max_queue, retry_after_s=settings.retry_after_s, metrics=metrics)
        self.token_cache: ByteLRU = ByteLRU(int(settings.token_cache_mb * 2**20),
                                            lambda hit: metrics.cache_lookup("segment_tokens", hit))
        self.qa_cache: ByteLRU = ByteLRU(int(settings.qa_cache_mb * 2**20),
                                         lambda hit: metrics.cache_lookup("qa_video_tokens", hit))
        self.prompt_cache = PromptCache(settings.prompt_cache_size)
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
        if settings.vector_store == "pgvector":  # issue 21: the published version of the vector tables
            snapshot = open_published(data_dir)
        elif (version := data_dir.current_version()) is not None:
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
                                             self.device, self.settings)
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
                self._encode_and_search([TextQuery("warm up", lease.snapshot, 1)])

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

    def _encode_and_search(self, queries: Sequence[TextQuery]) -> list[Hits]:
        """The micro-batch: one encoder call for all queries, one FAISS call per snapshot."""
        t0 = time.perf_counter()
        embeddings = np.ascontiguousarray(self.encode_texts([q.text for q in queries]), dtype=np.float32)
        encode_s = time.perf_counter() - t0
        groups: dict[tuple[int, int], list[int]] = {}
        for i, q in enumerate(queries):  # during an index switch one batch may span two versions
            groups.setdefault((id(q.snapshot), id(q.selection)), []).append(i)
        out: list[Optional[Hits]] = [None] * len(queries)
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
                out[i] = Hits(embeddings[i], np.asarray(scores[j, :kq]), np.asarray(ids[j, :kq]), encode_s, faiss_s)
        return out  # type: ignore[return-value]

    def _video_tokens(self, loaded: LoadedModel, clips: list[torch.Tensor],
                      precision: str = "fp32") -> list[torch.Tensor]:
        """(T, 3, H, W) clips -> (1 + N, D) token features each, on the model's device, computed in the precision
        the index's stored tokens were (so stored and recomputed ones score alike).

        Each is an owned, contiguous copy: the caches keep them, and a row view would keep its whole batch."""
        out: list[torch.Tensor] = []
        dtype = _AUTOCAST.get(precision)
        with torch.inference_mode(), torch.autocast(loaded.device.type, dtype=dtype, enabled=dtype is not None):
            for i in range(0, len(clips), _VIDEO_BATCH):
                video = torch.stack(clips[i:i + _VIDEO_BATCH]).to(loaded.device)  # (B, T, 3, H, W)
                tokens = loaded.model.video_tokens(video)  # (B, 1 + N, D)
                if dtype is not None:  # as the indexer stores them: fp16
                    tokens = tokens.to(torch.float16)
                out.extend(t.clone(memory_format=torch.contiguous_format) for t in tokens)
        return out

    def _vtm_scores(self, query: str, video_tokens: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        """VTM logits (n, 2) of one query against n videos' token features, and the model's VTC temperature."""
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
        return logits.float().cpu(), model.temperature

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
