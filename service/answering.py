"""Question answering, the engine's half that answers POST /qa: the video is decoded and encoded once (LRU
cached by bytes, one computation per video however many ask at once), then each question costs the text
layers, the fusion layers and the classifier on the model thread. A QA checkpoint configured but not there
yet loads at the first question after it appears. `Answering` is mixed into `engine.Engine`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import torch

from model.decode import VideoError
from model.preprocess import load_video

from . import schemas
from .errors import (InvalidRequestError, QANotConfiguredError, StartupError, UnavailableError, VideoFileMissingError,
                     VideoNotFoundError, VideoUndecodableError)
from .models import LoadedModel, load_checkpoint, not_there_yet


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
        async with self._deadline("answering the question"):
            tokens, cached = await self._qa_video_tokens(qa, request.video_id, path)
        t = time.perf_counter()
        ranked = await self.worker.run(self._answer_probs, request.question, tokens, request.top_k)
        self.metrics.observe_stage("qa", time.perf_counter() - t)
        names = qa.model.config.answers
        answers = [schemas.Answer(answer=names[i] if i < len(names) else f"#{i}", score=p) for i, p in ranked]
        return schemas.QAResponse(video_id=request.video_id, question=request.question, answers=answers, cached=cached,
                                  took_ms=round((time.perf_counter() - start) * 1000, 3))

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
