"""Search, the engine's half that answers POST /search: query -> text embedding (model thread) -> FAISS over
segment vectors (over-fetched, filtered by selection) -> rows from the index version (or the metadata DB) ->
best moment per video, with its other moments -> optionally VTM re-ranking of the top candidates by VTC logit +
VTM log-odds (model.alpro.rerank_scores), from the index's stored tokens or from segments decoded on demand
(LRU cached). `Searching` is mixed into `engine.Engine`, whose state (worker, index, caches, library) it uses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import torch

from model.alpro import rerank_probability
from model.preprocess import load_video
from store.rows import IndexRow
from store.snapshot import IndexSnapshot

from . import schemas
from .catalog import SegmentRow
from .errors import IndexUnavailableError, InvalidRequestError, OverloadedError, UnavailableError
from .index import IndexLease, Selection
from .library import preview_url, segment_thumbnail_url, stream_url
from .models import LoadedModel
from .ranking import Candidate, decode_cursor, encode_cursor, passes, query_key, to_cosine

logger = logging.getLogger(__name__)

MOMENT_HITS = 256  # how deep in the hits a result's further moments are looked for


@dataclass
class TextQuery:
    """One text query on its way through the model thread."""

    text: str
    snapshot: IndexSnapshot
    k: int
    selection: Optional[Selection] = None  # search only these rows (the request's filters)


@dataclass
class Hits:
    embedding: np.ndarray  # float32 (D,)
    scores: np.ndarray  # (k,) FAISS scores, best first
    ids: np.ndarray  # int64 (k,) segment ids, -1 padding
    encode_s: float
    faiss_s: float


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=lambda: {"encode": 0.0, "faiss": 0.0, "db": 0.0, "rerank": 0.0})

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


class Searching:
    """POST /search on the engine's state (see the module docstring)."""


    async def search(self, request: schemas.SearchRequest) -> schemas.SearchResponse:
        start = time.perf_counter()
        settings = self.settings
        if request.query is not None and len(request.query) > settings.max_query_chars:
            raise InvalidRequestError(
                f"query: longer than this server's limit of {settings.max_query_chars} characters")
        if request.top_k > settings.max_top_k:
            raise InvalidRequestError(f"top_k: larger than this server's limit of {settings.max_top_k}")
        offset = decode_cursor(request.cursor, query_key(request)) if request.cursor else request.offset
        rerank_k = settings.rerank_default if request.rerank is True else int(request.rerank)
        end = offset + request.top_k
        want = max(end + 1, rerank_k)  # one more than the page tells whether a next page exists
        timer = StageTimer()
        with self.index.acquire() as lease:
            manifest = lease.manifest
            if manifest.num_vectors == 0:
                raise IndexUnavailableError(f"index version {manifest.version} is empty: no video has been indexed")
            vector, source = None, None  # a text query is embedded on the model thread with the others
            if request.image is not None:
                vector = await self._image_vector(request.image, lease, timer)
            elif request.example is not None:
                vector, source = await self._example_vector(request.example, lease, timer)
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
            hits: Optional[Hits] = None
            if searchable:  # else nothing passes the filters
                candidates, hits = await self._videos(request, vector, lease, selection,
                                                      min(searchable, settings.max_fetch), want, timer)
            reranked = 0
            if rerank_k and candidates:
                t = time.perf_counter()
                async with self._deadline("re-ranking"):
                    reranked = await self._rerank(request.query, candidates, rerank_k, lease)
                timer.add("rerank", time.perf_counter() - t)
            if request.min_score is not None:
                candidates = [c for c in candidates if c.score >= request.min_score]
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
            query_type=request.query_type, query=request.query, example_source=source, results=[self._hit(c) for c in page], offset=offset,
            next_cursor=encode_cursor(end, query_key(request)) if has_more else None, reranked=reranked,
            index_version=version, took_ms=round((time.perf_counter() - start) * 1000, 3),
            timings=schemas.StageTimings(
                encode_ms=round(timings["encode"] * 1000, 3), faiss_ms=round(timings["faiss"] * 1000, 3),
                db_ms=round(timings["db"] * 1000, 3), rerank_ms=round(timings["rerank"] * 1000, 3)))

    async def _videos(self, request: schemas.SearchRequest, vector: Optional[np.ndarray], lease: IndexLease,
                      selection: Optional[Selection], limit: int, want: int,
                      timer: StageTimer) -> tuple[list[Candidate], Hits]:
        """Up to `want` videos at their best moment, best first, from at most `limit` FAISS hits of the text query
        (embedded on the model thread, batched with others) or of `vector`."""
        k = min(limit, max(want * self.settings.overfetch, 16))
        search = lease.snapshot.search if selection is None else selection.search
        if vector is None:
            hits: Hits = await self.worker.submit(TextQuery(request.query, lease.snapshot, k, selection))
            timer.add("encode", hits.encode_s)
        else:
            t = time.perf_counter()
            scores, ids = await asyncio.to_thread(search, vector[None], k)
            hits = Hits(vector, np.asarray(scores[0]), np.asarray(ids[0]), 0.0, time.perf_counter() - t)
        timer.add("faiss", hits.faiss_s)
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

    async def _candidates(self, hits: Hits, snapshot: IndexSnapshot, rows: dict[int, Optional[SegmentRow]],
                          metric: str, filters: Optional[schemas.SearchFilters], want: int,
                          timer: StageTimer) -> list[Candidate]:
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
            if missing:
                rows.update(await self._rows_by_id(snapshot, missing, timer))
            for i in chunk:
                row = rows[ids[i]]
                if row is not None and passes(row, filters):
                    out.append(Candidate(row, float(cosines[i])))
        return out[:want]

    async def _moments(self, page: list[Candidate], hits: Hits, lease: IndexLease, timer: StageTimer) -> None:
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
        known: dict[int, Optional[SegmentRow]] = {c.row.segment_id: c.row for c in page}
        missing = [segment_id for _, segment_id, _ in picked if segment_id not in known]
        if missing:
            known.update(await self._rows_by_id(snapshot, missing, timer))
        for c, segment_id, cosine in picked:
            row = known.get(segment_id)
            if row is not None:
                c.moments.append(schemas.Moment(segment_index=row.index, start=row.start_s, end=row.end_s,
                                                similarity=cosine))

    async def _rows_by_id(self, snapshot: IndexSnapshot, segment_ids: list[int],
                          timer: StageTimer) -> dict[int, Optional[SegmentRow]]:
        """What results show of these segments: from the version itself where it carries its rows, else the row
        cache, else the metadata database (None: the row is gone, its video removed)."""
        if snapshot.has_rows:  # no database round trip
            return {info.segment_id: self._segment_row(info) for info in snapshot.segment_rows(segment_ids)}
        out: dict[int, Optional[SegmentRow]] = {}
        missing = segment_ids
        if self.row_cache.max_rows > 0:
            cached = self.row_cache.get_many(snapshot.version, missing)
            out.update(cached)
            self._row_hits.inc(len(cached))
            missing = [segment_id for segment_id in missing if segment_id not in cached]
        if missing:
            self._row_misses.inc(len(missing))
            t = time.perf_counter()
            found = await self._db(self.catalog.segments, missing, observe=False)
            timer.add("db", time.perf_counter() - t)
            self.row_cache.put_many(snapshot.version, found.values())
            for segment_id in missing:
                out[segment_id] = found.get(segment_id)
        return out

    async def _refresh_roots(self) -> None:
        """Re-read the library folders (for relative paths) without failing a search when the database is down."""
        try:
            await self._db(self.library.roots, observe=False)
        except UnavailableError:
            pass  # relative paths fall back to file names until the database answers again

    async def _rerank(self, query: str, candidates: list[Candidate], rerank_k: int, lease: IndexLease) -> int:
        """Re-order the top `rerank_k` candidates in place by VTC logit + VTM log-odds (model.alpro.rerank_scores;
        the score shown is its 0-1 form, rerank_probability); returns how many were scored."""
        top = candidates[:rerank_k]
        tokens = await self._segment_tokens(top, lease)
        scored = [i for i, t in enumerate(tokens) if t is not None]
        if scored:
            logits, temperature = await self.worker.run(self._vtm_scores, query, [tokens[i] for i in scored])
            cosine = torch.tensor([top[i].vtc for i in scored], dtype=torch.float32)
            probs = torch.softmax(logits, dim=-1)[:, 1]
            combined = rerank_probability(cosine, float(cosine.max()), logits, temperature)
            for i, prob, score in zip(scored, probs.tolist(), combined.tolist()):
                top[i].vtm, top[i].reranked = float(prob), float(score)
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
