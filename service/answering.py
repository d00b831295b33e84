"""Question answering, the engine's half that answers POST /qa: the video is decoded and encoded once (LRU
cached by bytes, one computation per video however many ask at once), then each question costs the text
layers, the fusion layers and the classifier on the model thread. A QA checkpoint configured but not there
yet loads at the first question after it appears. `Answering` is mixed into `engine.Engine`.

Grounded answers: a video indexed as more than one segment is not squeezed into one clip. Its segments are
ranked by the question's VTC similarity (the retrieval model's text embedding against the stored segment
vectors), the best `ALPRO_QA_SEGMENTS` are decoded and answered on (their QA token features LRU cached per
segment), and the answers are mixed over them: p(answer) = sum over segments of p(segment | question)
p(answer | question, segment), p(segment | question) being the VTC softmax of the similarities (the retrieval
model's temperature). Each answer's moment is the segment that gives it most; the response abstains when the
best mixed probability is below the confidence threshold. (Measured on joined synthetic clips, the mixture
beat taking each answer's best segment: docs/beyond_text.md.)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from model.decode import VideoError
from model.preprocess import iter_video_clips, load_video

from . import schemas
from .errors import (InvalidRequestError, QANotConfiguredError, StartupError, UnavailableError, VideoFileMissingError,
                     VideoNotFoundError, VideoUndecodableError)
from .catalog import SegmentRow
from .errors import IndexUnavailableError
from .models import LoadedModel, load_checkpoint, not_there_yet
from .queries import latest_segments, spread

QA_SEGMENTS_SCORED = 4096  # segments of one video ranked against the question at most (evenly spread)


def decode_windows(path: Path, config, windows: list[tuple[float, float]]) -> list[torch.Tensor]:
    """(T, 3, H, W) clips of these time windows (in time order) of one video, in one open and pass."""
    return [clip.frames for clip in iter_video_clips(path, config, windows)]


class Answering:
    """POST /qa on the engine's state (see the module docstring)."""


    async def answer(self, request: schemas.QARequest) -> schemas.QAResponse:
        start = time.perf_counter()
        qa = self.qa or await self._load_pending_qa()
        if len(request.question) > self.settings.max_query_chars:
            raise InvalidRequestError(
                f"question: longer than this server's limit of {self.settings.max_query_chars} characters")
        path = await self._db(self.catalog.video_path, request.video_id)
        if path is None:
            raise VideoNotFoundError(f"no video with id {request.video_id}")
        segments = latest_segments(await self._db(self.catalog.video_segments, request.video_id))
        if len(segments) > 1 and self.retrieval is not None:
            grounded = await self._grounded_answer(qa, request, path, segments, start)
            if grounded is not None:
                return grounded
        async with self._deadline("answering the question"):
            tokens, cached = await self._qa_video_tokens(qa, request.video_id, path)
        t = time.perf_counter()
        (probs,) = await self.worker.run(self._answer_probs, request.question, [tokens])
        self.metrics.observe_stage("qa", time.perf_counter() - t)
        names = qa.model.config.answers
        order = np.argsort(-probs, kind="stable")[:request.top_k].tolist()
        answers = [schemas.Answer(answer=names[i] if i < len(names) else f"#{i}", score=float(probs[i]))
                   for i in order]
        return self._qa_response(request, answers, request.min_confidence, cached, start)

    async def _grounded_answer(self, qa: LoadedModel, request: schemas.QARequest, path: Path,
                               segments: list[SegmentRow], start: float) -> Optional[schemas.QAResponse]:
        """Answers on the video's segments most similar to the question, each with its moment; None where the
        served index version does not hold the video's segments (then the whole video is answered on)."""
        try:
            lease = self.index.acquire()
        except IndexUnavailableError:
            return None
        with lease:
            rows, vectors = await asyncio.to_thread(self._stored_vectors, lease, spread(segments, QA_SEGMENTS_SCORED))
        if len(rows) < 2:
            return None
        t = time.perf_counter()
        (question,) = await self.worker.run(self.encode_texts, [request.question])
        similarity = vectors @ question  # (S,) cosine: both L2-normalised
        self.metrics.observe_stage("encode", time.perf_counter() - t)
        top = np.argsort(-similarity, kind="stable")[:self.settings.qa_segments].tolist()
        chosen = [rows[i] for i in top]
        async with self._deadline("answering the question"):
            tokens, cached = await self._qa_segment_tokens(qa, request.video_id, path, chosen)
        t = time.perf_counter()
        probs = np.stack(await self.worker.run(self._answer_probs, request.question, tokens))  # (n, answers)
        self.metrics.observe_stage("qa", time.perf_counter() - t)
        # p(answer) = sum over segments of p(segment | question) p(answer | question, segment), p(segment | question)
        # the VTC softmax of the similarities with the retrieval model's temperature
        logits = similarity[top] / self.retrieval.model.temperature
        weights = np.exp(logits - logits.max())
        weights /= weights.sum()
        mixed = weights @ probs  # (answers,)
        support = (weights[:, None] * probs).argmax(axis=0)  # the segment that gives each answer most
        names = qa.model.config.answers
        answers = []
        for i in np.argsort(-mixed, kind="stable")[:request.top_k].tolist():
            row = chosen[int(support[i])]
            answers.append(schemas.Answer(
                answer=names[i] if i < len(names) else f"#{i}", score=float(mixed[i]),
                moment=schemas.AnswerMoment(segment_index=row.index, start=row.start_s, end=row.end_s)))
        examined = [schemas.ExaminedMoment(segment_index=row.index, start=row.start_s, end=row.end_s,
                                           similarity=float(similarity[i])) for i, row in zip(top, chosen)]
        threshold = request.min_confidence if request.min_confidence is not None else self.settings.qa_min_confidence
        return self._qa_response(request, answers, threshold, cached, start, grounded=True, moments=examined)

    @staticmethod
    def _qa_response(request: schemas.QARequest, answers: list[schemas.Answer], threshold: Optional[float],
                     cached: bool, start: float, **extra) -> schemas.QAResponse:
        abstained = threshold is not None and (not answers or answers[0].score < threshold)
        return schemas.QAResponse(video_id=request.video_id, question=request.question,
                                  answers=[] if abstained else answers, abstained=abstained, min_confidence=threshold,
                                  cached=cached, took_ms=round((time.perf_counter() - start) * 1000, 3), **extra)

    async def _qa_segment_tokens(self, qa: LoadedModel, video_id: str, path: Path,
                                 rows: Sequence[SegmentRow]) -> tuple[list[torch.Tensor], bool]:
        """QA token features of these segments of a video (decoded and encoded where not cached); and whether
        all were cached."""
        keys = [(qa.fingerprint, video_id, row.start_s, row.end_s) for row in rows]
        out: list[Optional[torch.Tensor]] = [self.qa_cache.get(key) for key in keys]
        missing = [i for i, tokens in enumerate(out) if tokens is None]
        if not missing:
            return out, True  # type: ignore[return-value]
        if not await asyncio.to_thread(path.is_file):
            raise VideoFileMissingError(f"the file of video {video_id} is no longer on the server")
        t = time.perf_counter()
        order = sorted(missing, key=lambda i: rows[i].start_s)  # one decode job: one open, one pass in time order
        try:
            decoded = await self.decoder.run(decode_windows, path, qa.model.config,
                                             [(rows[i].start_s, rows[i].end_s) for i in order])
        except VideoError as e:
            raise VideoUndecodableError(f"video {video_id} cannot be decoded: {e}") from e
        clips = [decoded[order.index(i)] for i in missing]
        self.metrics.observe_stage("decode", time.perf_counter() - t)
        t = time.perf_counter()
        tokens = await self.worker.run(self._video_tokens, qa, list(clips))
        self.metrics.observe_stage("video_encode", time.perf_counter() - t)
        for i, token in zip(missing, tokens):
            self.qa_cache.put(keys[i], token)
            out[i] = token
        self.metrics.cache_bytes.labels("qa_video_tokens").set(self.qa_cache.nbytes)
        return out, False  # type: ignore[return-value]

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

    def _answer_probs(self, question: str, video_tokens: list[torch.Tensor]) -> list[np.ndarray]:
        """Softmax over the answer vocabulary of one question on each video's (or segment's) token features,
        float32 (num_answers,) each. Runs on the model thread."""
        qa = self.qa
        assert qa is not None
        with torch.inference_mode():
            ids, mask = qa.tokenizer([question])
            ids, mask = ids.to(qa.device), mask.to(qa.device)
            text = qa.model.text_tokens(ids, mask)  # (1, L, D)
            video = torch.stack([t.to(qa.device, text.dtype) for t in video_tokens])  # (n, 1 + N, D)
            n = video.shape[0]
            logits = qa.model.answer_logits_from_tokens(video, text.expand(n, -1, -1), mask.expand(n, -1))
            probs = logits.float().softmax(-1).cpu().numpy()  # (n, num_answers)
        return list(probs)
