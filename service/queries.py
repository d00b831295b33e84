"""Queries that are not text: an image, an example moment, a video's own segments. Each becomes vectors in the
index's space: an image through the video encoder as a still clip (model/image.py, the reference's image
handling), a moment through its stored vector when it is an indexed segment, else through decoding its window
and encoding it. `QueryVectors` is mixed into `engine.Engine`; decoding runs on the decode pool, the encoder on
the model thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import re
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from model.decode import VideoError
from model.image import ImageError, ImageTooLargeError, decode_image, image_clip
from model.preprocess import load_video

from . import schemas
from .catalog import SegmentRow
from .errors import (ImageTooLargeError as ImageTooLargeResponse, InvalidImageError, InvalidRequestError,
                     VideoFileMissingError, VideoNotFoundError, VideoUndecodableError)
from .index import IndexLease
from .models import LoadedModel

_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,")
_WHITESPACE = re.compile(r"\s+")


def image_bytes(text: str, max_bytes: int) -> bytes:
    """The bytes of a base64 image (a `data:image/...;base64,` prefix and line breaks allowed)."""
    text = _WHITESPACE.sub("", _DATA_URL.sub("", text, count=1))
    if len(text) // 4 * 3 > max_bytes + 2:  # before decoding: the decoded size is known from the length
        raise ImageTooLargeResponse(f"image: about {len(text) // 4 * 3} bytes is more than this server's limit of "
                                    f"{max_bytes} bytes (ALPRO_MAX_IMAGE_BYTES)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidImageError("image: not valid base64 (standard alphabet, = padding; a data:image/...;base64, "
                                "prefix is allowed)") from e


class QueryVectors:
    """Vectors for image and example queries, and the stored vectors of indexed segments."""

    async def _image_vector(self, image: str, lease: IndexLease, timer) -> np.ndarray:
        """(D,) float32: the image as a still clip through the video encoder, in the index's precision."""
        settings = self.settings
        data = image_bytes(image, settings.max_image_bytes)
        loaded = self._require_retrieval()
        t = time.perf_counter()
        try:
            pixels = await self.decoder.run(functools.partial(
                decode_image, data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels))
        except ImageTooLargeError as e:
            setting = "ALPRO_MAX_IMAGE_PIXELS" if e.limit == "pixels" else "ALPRO_MAX_IMAGE_BYTES"
            raise ImageTooLargeResponse(f"image: {e} ({setting})") from e
        except ImageError as e:
            raise InvalidImageError(f"image: {e}") from e
        clip = image_clip(pixels, loaded.model.config)  # (T, 3, S, S)
        (vector,) = await self.worker.run(self._clip_vectors, loaded, [clip], lease.manifest.precision)
        timer.add("encode", time.perf_counter() - t)
        return vector

    async def _example_vector(self, example: schemas.Example, lease: IndexLease,
                              timer) -> tuple[np.ndarray, str]:
        """(D,) float32 of a moment, and where it came from: "index" (an indexed segment's stored vector) or
        "decoded" (the window decoded and encoded now)."""
        t = time.perf_counter()
        segments = await self._db(self.catalog.video_segments, example.video_id)
        if not segments:
            raise VideoNotFoundError(f"example: no video with id {example.video_id}")
        tolerance = schemas.EXAMPLE_TOLERANCE_S
        same = [row for row in segments
                if abs(row.start_s - example.start) <= tolerance and abs(row.end_s - example.end) <= tolerance]
        if same:
            rows, vectors = await asyncio.to_thread(self._stored_vectors, lease, same)
            if rows:
                timer.add("faiss", time.perf_counter() - t)
                return vectors[0], "index"
        length = max(row.end_s for row in segments)
        if example.start >= length:
            raise InvalidRequestError(f"example: start ({example.start:g} s) is at or past the end of video "
                                      f"{example.video_id} ({length:g} s)")
        if example.end > length + tolerance:
            raise InvalidRequestError(f"example: end ({example.end:g} s) is past the end of video "
                                      f"{example.video_id} ({length:g} s)")
        path = Path(segments[0].path)
        if not await asyncio.to_thread(path.is_file):
            raise VideoFileMissingError(f"the file of video {example.video_id} is no longer on the server")
        loaded = self._require_retrieval()
        async with self._deadline("decoding the example"):
            try:
                clip = await self.decoder.run(functools.partial(
                    load_video, path, loaded.model.config, window=(example.start, min(example.end, length))))
            except VideoError as e:
                raise VideoUndecodableError(f"example: video {example.video_id} cannot be decoded: {e}") from e
            (vector,) = await self.worker.run(self._clip_vectors, loaded, [clip], lease.manifest.precision)
        timer.add("encode", time.perf_counter() - t)
        return vector, "decoded"

    def _clip_vectors(self, loaded: LoadedModel, clips: list[torch.Tensor], precision: str) -> np.ndarray:
        """(n, D) float32 L2-normalised embeddings of (T, 3, H, W) clips. Runs on the model thread."""
        tokens = self._video_tokens(loaded, clips, precision)
        with torch.inference_mode():
            video = torch.stack(tokens).to(loaded.device, torch.float32)  # (n, 1 + N, D)
            return loaded.model.video_features(video).float().cpu().numpy()

    @staticmethod
    def _stored_vectors(lease: IndexLease, rows: Sequence[SegmentRow]) -> tuple[list[SegmentRow], np.ndarray]:
        """The rows the served version holds, with their stored vectors (n, D); rows it does not hold (indexed
        after it was published, or removed) are left out. Blocking."""
        snapshot = lease.snapshot
        try:
            return list(rows), np.asarray(snapshot.vectors([row.segment_id for row in rows]), np.float32)
        except KeyError:
            pass
        kept: list[SegmentRow] = []
        vectors: list[np.ndarray] = []
        for row in rows:
            try:
                vectors.append(np.asarray(snapshot.vectors([row.segment_id]), np.float32)[0])
            except KeyError:
                continue
            kept.append(row)
        dim = lease.manifest.dim
        return kept, np.stack(vectors) if vectors else np.zeros((0, dim), np.float32)


def spread(rows: Sequence[SegmentRow], limit: int) -> list[SegmentRow]:
    """At most `limit` of the rows, evenly spread over them (all when there are few)."""
    if len(rows) <= limit:
        return list(rows)
    picks = np.linspace(0, len(rows) - 1, limit).round().astype(int)
    return [rows[i] for i in sorted(set(picks.tolist()))]


def latest_segments(rows: Sequence[SegmentRow]) -> list[SegmentRow]:
    """One row per segment index (the newest where the metadata holds several), in index order."""
    by_index: dict[int, SegmentRow] = {}
    for row in rows:
        kept: Optional[SegmentRow] = by_index.get(row.index)
        if kept is None or row.segment_id > kept.segment_id:
            by_index[row.index] = row
    return [by_index[i] for i in sorted(by_index)]
