"""GET /videos/{id}/similar: the videos most like one video. Its segments' stored vectors (at most
`SIMILAR_QUERIES`, evenly spread over a long video) each search the index; the hits are grouped by video,
the video itself left out, each video scored by its best segment pair and shown at the moments that matched
best. `Similar` is mixed into `engine.Engine`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Optional

from . import schemas
from .errors import IndexUnavailableError, InvalidRequestError, VideoNotFoundError
from .queries import latest_segments, spread
from .ranking import Candidate, to_cosine
from .searching import StageTimer

SIMILAR_QUERIES = 32  # segments of the video that search at most


class Similar:
    """Videos like a video, in /search's response shape."""

    async def similar(self, video_id: str, top_k: int, min_score: Optional[float]) -> schemas.SearchResponse:
        start = time.perf_counter()
        settings = self.settings
        if top_k > settings.max_top_k:
            raise InvalidRequestError(f"top_k: larger than this server's limit of {settings.max_top_k}")
        timer = StageTimer()
        t = time.perf_counter()
        segments = latest_segments(await self._db(self.catalog.video_segments, video_id))
        timer.add("db", time.perf_counter() - t)
        if not segments:
            raise VideoNotFoundError(f"no video with id {video_id}")
        with self.index.acquire() as lease:
            manifest = lease.manifest
            if manifest.num_vectors == 0:
                raise IndexUnavailableError(f"index version {manifest.version} is empty: no video has been indexed")
            t = time.perf_counter()
            rows, vectors = await asyncio.to_thread(self._stored_vectors, lease, spread(segments, SIMILAR_QUERIES))
            if not rows:
                raise VideoNotFoundError(f"video {video_id} is not in the served index version {manifest.version} "
                                         f"yet (it was indexed after it, or removed)")
            # deep enough that the video's own segments (they come first) leave top_k others
            k = min(manifest.num_vectors, settings.max_fetch,
                    max(16, (top_k + 1) * settings.overfetch + len(segments)))
            scores, ids = await asyncio.to_thread(lease.snapshot.search, vectors, k)
            timer.add("faiss", time.perf_counter() - t)
            cosines = to_cosine(scores, manifest.metric)
            best: dict[int, float] = {}  # hit segment -> its best cosine over the query segments
            for segment_id, cosine in zip(ids.reshape(-1).tolist(), cosines.reshape(-1).tolist()):
                if segment_id >= 0 and cosine > best.get(segment_id, -2.0):
                    best[segment_id] = cosine
            order = sorted(best, key=best.__getitem__, reverse=True)
            by_video: dict[str, list[int]] = {}  # video -> its hit segments, best first
            for segment_id, (hit_video, _) in zip(order, lease.snapshot.locate(order)):
                if hit_video == video_id:
                    continue
                moments = by_video.setdefault(hit_video, [])
                if len(moments) < schemas.MAX_MOMENTS:
                    moments.append(segment_id)
            chosen = [segs for segs in by_video.values()
                      if min_score is None or (1.0 + best[segs[0]]) / 2.0 >= min_score][:top_k]
            found = await self._rows_by_id(lease.snapshot, [s for segs in chosen for s in segs], timer)
            results = []
            for segs in chosen:
                row = found.get(segs[0])
                if row is None:
                    continue
                c = Candidate(row, best[segs[0]])
                for segment_id in segs:
                    moment = found.get(segment_id)
                    if moment is not None:
                        c.moments.append(schemas.Moment(segment_index=moment.index, start=moment.start_s,
                                                        end=moment.end_s, similarity=best[segment_id]))
                results.append(self._hit(c))
            version = lease.version
        for stage in ("faiss", "db"):
            self.metrics.observe_stage(stage, timer.seconds[stage])
        timings = timer.seconds
        return schemas.SearchResponse(
            query_type="video", query=None, results=results, offset=0, next_cursor=None, reranked=0,
            index_version=version, took_ms=round((time.perf_counter() - start) * 1000, 3),
            timings=schemas.StageTimings(encode_ms=0.0, faiss_ms=round(timings["faiss"] * 1000, 3),
                                         db_ms=round(timings["db"] * 1000, 3), rerank_ms=0.0))
