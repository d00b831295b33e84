"""Reader stage: decode videos into clip frames in worker processes, one segment window per clip.

Sampling is the model package's (model.preprocess.window_frame_range + sample_frame_indices with the
checkpoint's num_frames, img_size and sampling), the same indices `iter_video_clips` uses; frames leave
the workers as uint8 (4x less inter-process traffic than normalised floats) and are normalised by the
embedder, on the GPU when there is one. A long video is streamed in chunks of a few clips, so memory
stays bounded whatever its length.

Segments (moments): a video of length L seconds is cut into n = max(1, round(L / segment_seconds))
equal windows, so each window lasts between 2/3 and 3/2 of `segment_seconds` (a video shorter than
that is one window). There is no separate whole-video entry: ALPRO is trained on clips of about
10-30 s, and 8 frames spread over a long video are a set of unrelated snapshots unlike anything it
was trained on; a video's score is its best window's score (the search side groups by video_id).

Workers pull videos from a shared counter (dynamic load balancing: a long video does not hold up a
static share), and a file that cannot be decoded becomes a failure chunk, never a dead worker.
"""

from __future__ import annotations

import io
import logging
import math
import multiprocessing
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset

from model.config import AlproConfig
from model.decode import VideoInfo, decode_clips, open_video
from model.preprocess import Window, sample_frame_indices, window_frame_range

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkItem:
    """A video to decode and embed."""

    pos: int  # position in the run's work list (unique key of its chunks)
    video_id: str
    path: str


@dataclass(frozen=True)
class ReaderOptions:
    """How the reader turns a file into clips."""

    num_frames: int  # frames per clip (the checkpoint's)
    img_size: int  # square side (the checkpoint's)
    sampling: str  # frame sampling strategy at inference (the checkpoint's)
    segment_seconds: float  # target window length; <= 0 means one window per video
    chunk_clips: int = 8  # clips per chunk sent to the embedder
    thumbnail_width: int = 320  # 0 disables thumbnails
    backend: str | None = None  # decoder backend (None: $ALPRO_DECODER or auto)

    @classmethod
    def from_config(cls, config: AlproConfig, segment_seconds: float, **kwargs) -> "ReaderOptions":
        return cls(num_frames=config.num_frames, img_size=config.img_size, sampling=config.preprocess.sampling,
                   segment_seconds=segment_seconds, **kwargs)


@dataclass
class ReaderChunk:
    """Clips of consecutive segments of one video; the last chunk of a video has `final` set."""

    pos: int
    video_id: str
    first: int  # segment index of clips[0]
    clips: torch.Tensor | None  # uint8 (k, T, H, W, 3)
    final: bool
    decode_s: float  # worker seconds spent producing this chunk
    info: VideoInfo | None = None  # on the final chunk
    windows: list[Window] = field(default_factory=list)  # on the final chunk
    thumbnails: list[bytes | None] = field(default_factory=list)  # JPEG bytes, on the final chunk
    error: tuple[str, str] | None = None  # (error type, reason): the video failed, drop its chunks

    @property
    def num_clips(self) -> int:
        return 0 if self.clips is None else int(self.clips.shape[0])


def segment_windows(info: VideoInfo, segment_seconds: float) -> list[Window]:
    """Equal windows of about `segment_seconds` covering the decodable frames (see the module docstring)."""
    length = info.num_frames / info.fps  # frame-count based, so every window starts on an existing frame
    if segment_seconds <= 0 or length <= segment_seconds:
        return [(0.0, length)]
    n = max(1, int(length / segment_seconds + 0.5))  # round half up (round() rounds 2.5 to 2)
    return [(length * i / n, length * (i + 1) / n) for i in range(n)]


def window_indices(info: VideoInfo, windows: Sequence[Window], num_frames: int, sampling: str) -> list[np.ndarray]:
    """Frame indices of each window, exactly as model.preprocess.iter_video_clips samples them."""
    groups = []
    for window in windows:
        start, end = window_frame_range(info, window)
        groups.append(sample_frame_indices(info.num_frames, num_frames, sampling, start=start, end=end))
    return groups


def thumbnail_size(info: VideoInfo, width: int) -> tuple[int, int]:
    """(height, width) of a thumbnail: `width` wide (never upscaled), aspect kept, even sides."""
    w = min(width, info.width) if info.width > 0 else width
    h = round(w * info.height / info.width) if info.width > 0 else w
    return max(2, h - h % 2), max(2, w - w % 2)


def encode_jpeg(frame: torch.Tensor, quality: int = 85) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame.numpy()).save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def read_thumbnails(path: str, info: VideoInfo, windows: Sequence[Window], options: ReaderOptions) -> list[bytes | None]:
    """JPEG of the middle frame of each window; a failure here costs the thumbnails, not the video."""
    if options.thumbnail_width <= 0:
        return [None] * len(windows)
    groups = []
    for window in windows:
        start, end = window_frame_range(info, window)
        groups.append([(start + end - 1) // 2])
    try:
        _, frames = decode_clips(path, groups, size=thumbnail_size(info, options.thumbnail_width),
                                 backend=options.backend)
        return [encode_jpeg(f[0]) for f in frames]
    except Exception as e:  # noqa: BLE001 - any decoder or PIL error: the video itself decoded fine
        logger.warning("no thumbnails for %s: %s: %s", path, type(e).__name__, e)
        return [None] * len(windows)


def read_video(item: WorkItem, options: ReaderOptions) -> Iterator[ReaderChunk]:
    """Chunks of uint8 clips of one video; a decoding problem ends the stream with an error chunk."""
    start = time.perf_counter()
    first = 0
    try:
        source = open_video(item.path, size=options.img_size, backend=options.backend)
        try:
            info = source.info
            windows = segment_windows(info, options.segment_seconds)
            groups = window_indices(info, windows, options.num_frames, options.sampling)
            pending: list[torch.Tensor] = []
            for clip in source.iter_clips(groups):  # (T, H, W, 3) uint8, one window at a time
                pending.append(clip)
                done = first + len(pending)
                if len(pending) >= options.chunk_clips and done < len(groups):
                    chunk = ReaderChunk(item.pos, item.video_id, first, torch.stack(pending), False,
                                        time.perf_counter() - start)
                    first, pending = done, []
                    yield chunk
                    start = time.perf_counter()  # time blocked in the queue is not decode time
        finally:
            source.close()
        if first + len(pending) != len(groups):
            raise RuntimeError(f"decoder returned {first + len(pending)} of {len(groups)} clips")
        thumbnails = read_thumbnails(item.path, info, windows, options)
        clips = torch.stack(pending) if pending else None
        yield ReaderChunk(item.pos, item.video_id, first, clips, True, time.perf_counter() - start,
                          info=info, windows=windows, thumbnails=thumbnails)
    except Exception as e:  # noqa: BLE001 - decoders raise many types; one bad file must not stop the run
        reason = getattr(e, "reason", None) or str(e) or type(e).__name__
        logger.debug("failed to read %s", item.path, exc_info=True)
        yield ReaderChunk(item.pos, item.video_id, first, None, True, time.perf_counter() - start,
                          error=(type(e).__name__, reason))


class VideoReaderDataset(IterableDataset):
    """An IterableDataset over work items; DataLoader workers take the next video from a shared counter."""

    def __init__(self, items: Sequence[WorkItem], options: ReaderOptions) -> None:
        super().__init__()
        self.items = list(items)
        self.options = options
        self._next = multiprocessing.Value("q", 0)  # inherited by the workers: dynamic work sharing
        self.videos_opened = 0  # counted in the process that iterates (num_workers=0: this one)

    def __iter__(self) -> Iterator[ReaderChunk]:
        quiet_decoder_logs()
        while True:
            with self._next.get_lock():
                i = self._next.value
                self._next.value = i + 1
            if i >= len(self.items):
                return
            self.videos_opened += 1
            yield from read_video(self.items[i], self.options)


def quiet_decoder_logs() -> None:
    """Silence decord's FFmpeg messages on stderr: every decoding error also comes back as an exception,
    which becomes the file's recorded failure reason, so the raw lines only tear up the progress bar."""
    try:
        import decord
    except ImportError:
        return
    decord.logging.set_level(decord.logging.QUIET)


def default_num_workers() -> int:
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, math.ceil(cpus / 2)))


__all__ = ["ReaderChunk", "ReaderOptions", "VideoReaderDataset", "WorkItem", "default_num_workers", "encode_jpeg",
           "read_thumbnails", "read_video", "segment_windows", "thumbnail_size", "window_indices"]
