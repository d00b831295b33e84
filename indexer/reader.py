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

A file that decodes only in part (cut short, garbage in the middle) is indexed over the span that decodes
and never padded with a repeated frame: the windows of its whole length that begin inside the span are kept,
the one across the span's end is cut there (and sampled again inside it), later ones are not made; the final
chunk carries the reason ("decodable to 12.4 s of 30.0 s: ..."). The decoder finds the end where the
sampled frames reach it (decord counts the frames a cut file holds on open; PyAV when a frame asked for is
missing), so a file cut after the last frame sampled from it is indexed as whole.

Workers pull videos from a shared counter (dynamic load balancing: a long video does not hold up a
static share), and a file that cannot be decoded becomes a failure chunk, never a dead worker.
"""

from __future__ import annotations

import io
import logging
import math
import multiprocessing
import time
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset

from model.config import AlproConfig
from model.decode import DecodeStop, VideoDecodeError, VideoInfo, decode_clips, open_video
from model.preprocess import Window, sample_frame_indices, window_frame_range

logger = logging.getLogger(__name__)

# Container frame counts are estimates in some formats (WebM/MKV: frame rate x a duration that may include
# a longer audio track), so a stream ending this close to the count is whole; its windows still end where
# it does.
PARTIAL_TOLERANCE_S = 0.5
PARTIAL_TOLERANCE_FRAMES = 2


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
    partial_reason: str | None = None  # on the final chunk: set where only part of the file decodes

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


def cut_windows(windows: Sequence[Window], end_s: float) -> list[Window]:
    """The windows that begin before `end_s`, the last one ending there at the latest."""
    return [(start, min(end, end_s)) for start, end in windows if start < end_s]


def plan_windows(info: VideoInfo, stopped: DecodeStop | None, segment_seconds: float) -> list[Window]:
    """The windows to read; where the decoder already knows the file stops early, those of its whole
    length cut where it stops (the same windows as where the stop is found while reading)."""
    if stopped is None:
        return segment_windows(info, segment_seconds)
    whole = segment_windows(replace(info, num_frames=max(stopped.expected, info.num_frames)), segment_seconds)
    return cut_windows(whole, stopped.frames / info.fps)


def partial_reason(info: VideoInfo, stopped: DecodeStop | None, span_s: float) -> str | None:
    """Why a video is partial ("decodable to 12.4 s of 30.0 s: <reason>"), or None where it is whole."""
    if stopped is None:
        return None
    tolerance = max(PARTIAL_TOLERANCE_FRAMES, PARTIAL_TOLERANCE_S * info.fps)
    if stopped.expected - stopped.frames <= tolerance:
        return None
    return f"decodable to {span_s:.1f} s of {info.duration_s:.1f} s: {stopped.reason}"


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
                                 backend=options.backend, pad=False)
        jpegs: list[bytes | None] = [encode_jpeg(f[0]) for f in frames]
        return jpegs + [None] * (len(windows) - len(jpegs))  # a frame that does not decode has none
    except Exception as e:  # noqa: BLE001 - any decoder or PIL error: the video itself decoded fine
        logger.warning("no thumbnails for %s: %s: %s", path, type(e).__name__, e)
        return [None] * len(windows)


def read_tail(path: str, info: VideoInfo, window: Window, stopped: DecodeStop,
              options: ReaderOptions) -> tuple[Window, torch.Tensor] | None:
    """The window across the end of a partial file's span, cut there and sampled inside it, with its clip;
    None where it begins past the span or its frames do not decode after all."""
    span_s = stopped.frames / info.fps
    if window[0] >= span_s:
        return None
    cut = (window[0], min(window[1], span_s))
    (indices,) = window_indices(replace(info, num_frames=stopped.frames), [cut], options.num_frames,
                                options.sampling)
    try:
        _, clips = decode_clips(path, [indices], size=options.img_size, backend=options.backend, pad=False)
    except Exception as e:  # noqa: BLE001 - any decoder error: the span ends before this window then
        logger.debug("%s: the window %s does not decode: %s: %s", path, cut, type(e).__name__, e)
        return None
    return (cut, clips[0]) if clips else None


def read_video(item: WorkItem, options: ReaderOptions) -> Iterator[ReaderChunk]:
    """Chunks of uint8 clips of one video; a decoding problem ends the stream with an error chunk."""
    start = time.perf_counter()
    first = 0
    try:
        source = open_video(item.path, size=options.img_size, backend=options.backend)
        try:
            info = source.info
            windows = plan_windows(info, source.stopped, options.segment_seconds)
            groups = window_indices(info, windows, options.num_frames, options.sampling)
            pending: list[torch.Tensor] = []
            # pad=False: no frame is repeated into a window the file does not reach
            for clip in source.iter_clips(groups, pad=False):  # (T, H, W, 3) uint8, one window at a time
                pending.append(clip)
                done = first + len(pending)
                if len(pending) >= options.chunk_clips and done < len(groups):
                    chunk = ReaderChunk(item.pos, item.video_id, first, torch.stack(pending), False,
                                        time.perf_counter() - start)
                    first, pending = done, []
                    yield chunk
                    start = time.perf_counter()  # time blocked in the queue is not decode time
            stopped = source.stopped
        finally:
            source.close()
        served = first + len(pending)
        if served < len(groups):
            if stopped is None:
                raise RuntimeError(f"decoder returned {served} of {len(groups)} clips")
            # the clips served stand (real frames); the window the stream ended in is cut and read again
            tail = read_tail(item.path, info, windows[served], stopped, options)
            windows = windows[:served]
            if tail is not None:
                windows.append(tail[0])
                pending.append(tail[1])
            if not windows:
                raise VideoDecodeError(item.path, f"no window decodes: {stopped.reason}")
        reason = partial_reason(info, stopped, windows[-1][1])
        if reason is not None:
            logger.warning("%s decodes only in part: %s", item.path, reason)
        thumbnails = read_thumbnails(item.path, info, windows, options)
        clips = torch.stack(pending) if pending else None
        yield ReaderChunk(item.pos, item.video_id, first, clips, True, time.perf_counter() - start,
                          info=info, windows=windows, thumbnails=thumbnails, partial_reason=reason)
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


__all__ = ["ReaderChunk", "ReaderOptions", "VideoReaderDataset", "WorkItem", "cut_windows", "default_num_workers",
           "encode_jpeg", "partial_reason", "plan_windows", "read_thumbnails", "read_video", "segment_windows",
           "thumbnail_size", "window_indices"]
