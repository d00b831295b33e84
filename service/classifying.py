"""POST /classify: zero-shot labels through ALPRO's entity prompts (arXiv 2112.09583 section 3.3). A label's
prompt feature is the mean over templates of the normalised text features of the filled-in templates (not
re-normalised), as the prompter builds its entity prompts (model/prompts.py); the text features are cached per
checkpoint and prompt. For one video: each label's similarity at the video's segment that scores it highest,
and the softmax over the labels of those similarities divided by the model's VTC temperature, as the prompter
turns similarities into PEM's soft labels. Without a video: each label's top videos in the library, with that
video's softmax share of the label. `Classifying` is mixed into `engine.Engine`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch

from model.prompts import VIDEO_TEMPLATES, ensemble, text_embeddings

from . import schemas
from .errors import IndexUnavailableError, InvalidRequestError, VideoNotFoundError
from .index import IndexLease
from .models import LoadedModel
from .queries import latest_segments, spread
from .ranking import Candidate
from .searching import Hits, StageTimer

CLASSIFY_SEGMENTS = 4096  # segments of one video scored at most (evenly spread over a longer one)


class PromptCache:
    """LRU of prompt text features: (checkpoint fingerprint, prompt text) -> float32 (D,)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, fingerprint: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        found = {}
        with self._lock:
            for text in texts:
                vector = self._entries.get((fingerprint, text))
                if vector is not None:
                    self._entries.move_to_end((fingerprint, text))
                    found[text] = vector
        return found

    def put_many(self, fingerprint: str, vectors: dict[str, np.ndarray]) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            for text, vector in vectors.items():
                self._entries[(fingerprint, text)] = vector
                self._entries.move_to_end((fingerprint, text))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


class Classifying:
    """Zero-shot labels for a video or over the library."""

    async def classify(self, request: schemas.ClassifyRequest) -> schemas.ClassifyResponse:
        start = time.perf_counter()
        templates = tuple(request.templates or VIDEO_TEMPLATES)
        if len(request.labels) * len(templates) > schemas.MAX_PROMPTS:
            raise InvalidRequestError(f"labels x templates: {len(request.labels)} x {len(templates)} prompts is more "
                                      f"than this server's limit of {schemas.MAX_PROMPTS}")
        loaded = self._require_retrieval()
        timer = StageTimer()
        with self.index.acquire() as lease:
            if lease.manifest.num_vectors == 0:
                raise IndexUnavailableError(f"index version {lease.version} is empty: no video has been indexed")
            if request.video_id is not None:  # before the text encoder: an unknown video costs nothing
                t = time.perf_counter()
                segments = latest_segments(await self._db(self.catalog.video_segments, request.video_id))
                if not segments:
                    raise VideoNotFoundError(f"no video with id {request.video_id}")
                rows, vectors = await asyncio.to_thread(self._stored_vectors, lease,
                                                        spread(segments, CLASSIFY_SEGMENTS))
                timer.add("db", time.perf_counter() - t)
                if not rows:
                    raise VideoNotFoundError(f"video {request.video_id} is not in the served index version "
                                             f"{lease.version} yet (it was indexed after it, or removed)")
            t = time.perf_counter()
            async with self._deadline("encoding the label prompts"):
                features = await self.worker.run(self._prompt_features, loaded, list(request.labels), templates)
            timer.add("encode", time.perf_counter() - t)
            temperature = loaded.model.temperature
            if request.video_id is not None:
                labels = self._video_labels(request.labels, features, rows, vectors, temperature)
            else:
                labels = await self._library_labels(request, features, temperature, lease, timer)
            version = lease.version
        for stage in ("encode", "faiss", "db"):
            self.metrics.observe_stage(stage, timer.seconds[stage])
        return schemas.ClassifyResponse(video_id=request.video_id, labels=labels, templates=len(templates),
                                        temperature=temperature, index_version=version,
                                        took_ms=round((time.perf_counter() - start) * 1000, 3))

    def _prompt_features(self, loaded: LoadedModel, labels: list[str], templates: Sequence[str]) -> np.ndarray:
        """(L, D) float32 prompt features, the template ensemble of each label. Runs on the model thread."""
        texts = [template.format(label) for template in templates for label in labels]  # template-major
        known = self.prompt_cache.get_many(loaded.fingerprint, texts)
        missing = list(dict.fromkeys(text for text in texts if text not in known))
        if missing:
            with torch.inference_mode():
                computed = text_embeddings(loaded.model, loaded.tokenizer, missing).cpu().numpy()
            fresh = dict(zip(missing, computed))
            self.prompt_cache.put_many(loaded.fingerprint, fresh)
            known.update(fresh)
        stacked = torch.from_numpy(np.stack([known[text] for text in texts]))  # (K * L, D)
        return ensemble(stacked.view(len(templates), len(labels), -1)).numpy()  # (L, D)

    @staticmethod
    def _video_labels(labels: list[str], features: np.ndarray, rows, vectors: np.ndarray,
                      temperature: float) -> list[schemas.LabelScore]:
        similarity = vectors @ features.T  # (S, L)
        best_segment = similarity.argmax(axis=0)  # (L,)
        best = similarity.max(axis=0)
        probability = softmax(best / temperature)
        out = []
        for j in np.argsort(-probability, kind="stable").tolist():
            row = rows[int(best_segment[j])]
            out.append(schemas.LabelScore(
                label=labels[j], probability=float(probability[j]), similarity=float(best[j]),
                moment=schemas.Moment(segment_index=row.index, start=row.start_s, end=row.end_s,
                                      similarity=float(best[j]))))
        return out

    async def _library_labels(self, request: schemas.ClassifyRequest, features: np.ndarray, temperature: float,
                              lease: IndexLease, timer: StageTimer) -> list[schemas.LabelScore]:
        settings = self.settings
        manifest = lease.manifest
        queries = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        k = min(manifest.num_vectors, settings.max_fetch, max(16, request.top_k * settings.overfetch))
        t = time.perf_counter()
        scores, ids = await asyncio.to_thread(lease.snapshot.search, queries.astype(np.float32), k)
        timer.add("faiss", time.perf_counter() - t)
        rows: dict = {}
        per_label: list[tuple[list[Candidate], Hits]] = []
        for j in range(len(request.labels)):
            hits = Hits(queries[j], np.asarray(scores[j]), np.asarray(ids[j]), 0.0, 0.0)
            candidates = await self._candidates(hits, lease.snapshot, rows, manifest.metric, None, request.top_k,
                                                timer)
            await self._moments(candidates, hits, lease, timer)
            per_label.append((candidates, hits))
        shown = list(dict.fromkeys(c.row.segment_id for candidates, _ in per_label for c in candidates))
        shares: dict[int, np.ndarray] = {}
        if shown:
            t = time.perf_counter()
            vectors = await asyncio.to_thread(lease.snapshot.vectors, shown)
            timer.add("faiss", time.perf_counter() - t)
            probability = softmax(np.asarray(vectors, np.float32) @ features.T / temperature)  # (n, L)
            shares = dict(zip(shown, probability))
        out = []
        for j, (candidates, _) in enumerate(per_label):
            matches = [schemas.LabelMatch(**self._hit(c).model_dump(), probability=float(shares[c.row.segment_id][j]))
                       for c in candidates]
            out.append(schemas.LabelScore(label=request.labels[j], videos=matches))
        return out
