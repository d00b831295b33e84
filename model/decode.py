"""Video decoding behind one small, swappable interface: which frames, at what size, as uint8 RGB.

Two backends (ENVIRONMENT.md "Video decoding"):
- decord (the reference ALPRO's reader, `_load_video_from_path_decord`): fast sparse access through its
  key-frame index, resizes inside FFmpeg 4.1's scale filter. No AV1.
- PyAV: bundles FFmpeg 8 and decodes everything; here it reads forward, converting only the frames asked
  for, and seeks to the key frame before a frame asked for where that is further ahead than a GOP (a
  segment deep into a long file costs about a GOP, not the whole file before it; see `model.pyav_source`).
`auto` (the default, or ALPRO_DECODER=auto|decord|pyav) uses decord when it is importable and it works
for the file, PyAV otherwise, including when decord fails part-way through a file.

Frame counts: decord's `len()` where decord is used, otherwise the container's frame count, or
`int(fps * duration)` where the container has none (decord's own rule), so both backends sample the
same indices. Files that decode only in part (truncated, garbage in the middle): a source records how far
the file decodes in `stopped` (a `DecodeStop`); `iter_clips(groups, pad=False)` then ends before the first
group that needs a frame past that point, while the default (`pad=True`) replaces those frames by the last
decodable one (logged as a warning). A file where no frame decodes raises `VideoDecodeError`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence, Union

import av
import numpy as np
import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
DECODER_ENV = "ALPRO_DECODER"
BACKENDS = ("auto", "decord", "pyav")

Size = Union[int, tuple[int, int]]  # a square side, or (height, width)
IndexGroups = Sequence[Union[Sequence[int], np.ndarray]]
IndexSelector = Callable[["VideoInfo"], IndexGroups]


class VideoError(ValueError):
    """A video cannot be turned into model input."""


class VideoDecodeError(VideoError):
    """A file is not a decodable video: missing, empty, truncated before any frame, not a video, corrupt."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path}: {reason}")

    def __reduce__(self):  # keep it picklable, so it crosses DataLoader worker processes intact
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class VideoInfo:
    """What a container says about its first video stream."""

    num_frames: int  # frames to sample from (see the module docstring for how it is counted)
    fps: float  # average frame rate
    duration_s: float  # stream (or container) duration in seconds
    width: int  # native frame width in pixels
    height: int  # native frame height in pixels
    codec: str = ""  # decoder name, e.g. "h264"


@dataclass(frozen=True)
class DecodeStop:
    """How far a file decodes, where that is short of the frames its container announces (or asked for)."""

    frames: int  # frames [0, frames) decoded (or, for decord's sparse reads, the last one read and those before)
    expected: int  # the frame count the source started from (its `info.num_frames`, or the container's)
    reason: str  # the decoder's message, or "stream ends early" where the stream simply ends


class VideoSource(Protocol):
    """An open video (a context manager): `info`, then clips of frames read in one forward sweep."""

    info: VideoInfo
    backend: str
    stopped: DecodeStop | None  # set once the file is found to decode only in part

    def iter_clips(self, groups: IndexGroups, *, pad: bool = True) -> Iterator[torch.Tensor]:
        """For each index group, uint8 (T, H, W, 3) RGB frames in the group's order.

        Where frames are missing (see `stopped`), `pad` repeats the last decodable frame in their place;
        `pad=False` ends the iteration before the first group that needs one.
        """
        ...

    def close(self) -> None: ...

    def __enter__(self) -> "VideoSource": ...

    def __exit__(self, *exc: object) -> None: ...


def resolve_backend(backend: str | None = None) -> str:
    """The backend to use: the argument, else $ALPRO_DECODER, else `auto`."""
    name = (backend or os.environ.get(DECODER_ENV) or "auto").strip().lower()
    if name not in BACKENDS:
        raise VideoError(f"unknown video decoder {name!r} (argument or ${DECODER_ENV}); choose one of {BACKENDS}")
    return name


def decord_available() -> bool:
    """Whether the decord backend can be used in this environment."""
    return _import_decord() is not None


def probe_video(path: PathLike) -> VideoInfo:
    """Metadata of a video without decoding any frame (PyAV; reads the container header only)."""
    _check_file(path)
    try:
        with av.open(str(path)) as container:
            return _info_from_container(path, container)
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as e:
        raise VideoDecodeError(path, f"{type(e).__name__}: {e}") from e


def open_video(path: PathLike, *, size: Size | None = None, backend: str | None = None) -> VideoSource:
    """Open a video for reading, decoded frames resized to `size` (None keeps the native size)."""
    name = resolve_backend(backend)
    hw = _as_hw(size)
    info = probe_video(path)  # a cheap, uniform first check that this is a video at all
    from .pyav_source import PyAVSource  # it builds on this module's types

    if name == "pyav":
        return PyAVSource(path, info, hw)
    decord = _import_decord()
    if decord is None:
        if name == "decord":
            raise VideoError(f"{DECODER_ENV}=decord but decord is not importable; install eva-decord")
        return PyAVSource(path, info, hw)
    try:
        return _DecordSource(path, info, hw, fallback=name == "auto")
    except VideoDecodeError as e:
        if name == "decord":
            raise
        logger.debug("decord cannot open %s (%s); using PyAV", path, e.reason)
        return PyAVSource(path, info, hw)


def decode_clips(
    path: PathLike,
    select: IndexSelector | IndexGroups,
    *,
    size: Size | None = None,
    backend: str | None = None,
    pad: bool = True,
) -> tuple[VideoInfo, list[torch.Tensor]]:
    """Open once, read several index groups in one forward sweep; `select(info)` may compute them from the info.

    Returns the info the indices were computed from and one uint8 (T, H, W, 3) tensor per group (with
    `pad=False`, per group before the first that needs a frame the file does not decode).
    """
    source = open_video(path, size=size, backend=backend)
    try:
        groups = select(source.info) if callable(select) else select
        return source.info, list(source.iter_clips(groups, pad=pad))
    finally:
        source.close()


def decode_frames(
    path: PathLike, indices: Sequence[int] | np.ndarray, *, size: Size | None = None, backend: str | None = None
) -> torch.Tensor:
    """uint8 (T, H, W, 3) RGB frames at the given indices (any order, repeats allowed)."""
    return decode_clips(path, [indices], size=size, backend=backend)[1][0]


# --- backends ---------------------------------------------------------------------------------------


class _Closing:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _DecordSource(_Closing):
    backend = "decord"

    def __init__(self, path: PathLike, info: VideoInfo, hw: tuple[int, int] | None, fallback: bool) -> None:
        decord = _import_decord()
        assert decord is not None
        self._path, self._hw, self._fallback = path, hw, fallback
        self._errors = _decord_errors(decord)
        kwargs = {} if hw is None else {"height": hw[0], "width": hw[1]}
        try:
            self._reader = decord.VideoReader(str(path), **kwargs)
            num_frames, fps = len(self._reader), float(self._reader.get_avg_fps())
        except self._errors as e:
            raise VideoDecodeError(path, f"decord: {_first_line(e)}") from e
        if num_frames < 1:
            raise VideoDecodeError(path, "decord: no frame in the file")
        # decord reads every packet on open, so a file cut short counts only the frames it still holds
        self.stopped: DecodeStop | None = None
        if num_frames < info.num_frames:
            self.stopped = DecodeStop(num_frames, info.num_frames, "stream ends early")
        # decord's count is what the reference sampled from; keep the probe's size and duration
        self.info = replace(info, num_frames=num_frames, fps=fps if fps > 0 else info.fps)

    def iter_clips(self, groups: IndexGroups, *, pad: bool = True) -> Iterator[torch.Tensor]:
        groups = [_as_indices(g) for g in groups]
        last = self.info.num_frames - 1
        done = -1  # the highest frame index read so far
        for k, group in enumerate(groups):
            if not pad and int(group.max()) > last:
                self.stopped = self.stopped or DecodeStop(last + 1, self.info.num_frames, "stream ends early")
                return
            wanted = _clamp(group, last, self._path)
            unique, inverse = np.unique(wanted, return_inverse=True)
            try:
                batch = self._reader.get_batch(unique.tolist()).asnumpy()  # (U, H, W, 3) uint8
            except self._errors as e:
                message = f"decord: {_first_line(e)}"
                if self._fallback:
                    # decord stops at the first unreadable packet (e.g. a truncated file); PyAV keeps
                    # every frame before it
                    logger.warning("decord failed on %s (%s); continuing with PyAV", self._path, _first_line(e))
                    yield from self._continue_with_pyav(groups[k:], pad)
                    return
                if pad:
                    raise VideoDecodeError(self._path, message) from e
                frames = self._decodable_end(unique, done)
                if frames == 0:
                    raise VideoDecodeError(self._path, message) from e
                self.stopped = DecodeStop(frames, self.info.num_frames, message)
                logger.info("%s: decodes to frame %d of %d (%s)", self._path, frames, self.info.num_frames, message)
                return
            done = max(done, int(unique[-1]))
            yield torch.from_numpy(batch[inverse.reshape(-1)])

    def _continue_with_pyav(self, groups: list[np.ndarray], pad: bool) -> Iterator[torch.Tensor]:
        from .pyav_source import PyAVSource

        self.close()
        fallback = PyAVSource(self._path, self.info, self._hw)
        try:
            yield from fallback.iter_clips(groups, pad=pad)
        finally:
            self.stopped = fallback.stopped or self.stopped
            fallback.close()

    def _decodable_end(self, group: np.ndarray, done: int) -> int:
        """Frames [0, n) read one by one up to where `group` fails: n (0 where none does).

        A bisection between the last frame that reads and the first that does not, a few seeks each.
        """
        good, bad = done, None
        for i in group.tolist():
            if i <= good:
                continue
            if not self._reads(i):
                bad = i
                break
            good = i
        if bad is None:  # each frame reads alone: stop after the group
            return good + 1
        while bad - good > 1:
            mid = (good + bad) // 2
            if self._reads(mid):
                good = mid
            else:
                bad = mid
        return good + 1

    def _reads(self, index: int) -> bool:
        try:
            self._reader.get_batch([index])
            return True
        except self._errors:
            return False

    def close(self) -> None:
        self._reader = None


# --- helpers ----------------------------------------------------------------------------------------


def _check_file(path: PathLike) -> None:
    p = Path(path)
    if not p.exists():
        raise VideoDecodeError(path, "no such file")
    if not p.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if p.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file")


def _info_from_container(path: PathLike, container: av.container.InputContainer) -> VideoInfo:
    if not container.streams.video:
        raise VideoDecodeError(path, "no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    if fps <= 0:
        raise VideoDecodeError(path, "unknown frame rate")
    container_s = container.duration / av.time_base if container.duration else 0.0
    stream_s = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
    # decord's rule where the container has no count (WebM/MKV): avg rate x container duration
    num_frames = stream.frames if stream.frames > 0 else int(fps * container_s)
    if num_frames < 1:
        raise VideoDecodeError(path, "no frame count and no duration in the container")
    ctx = stream.codec_context
    return VideoInfo(
        num_frames=int(num_frames),
        fps=fps,
        duration_s=stream_s or container_s or num_frames / fps,
        width=int(ctx.width),
        height=int(ctx.height),
        codec=str(ctx.name),
    )


def _as_hw(size: Size | None) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise VideoError(f"decode size must be positive, got {size!r}")
    return int(h), int(w)


def _as_indices(group: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(group)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise VideoError(f"frame indices must be a 1-D integer sequence, got shape {arr.shape} {arr.dtype}")
    if arr.size == 0:
        raise VideoError("empty frame index group")
    if arr.min() < 0:
        raise VideoError(f"negative frame index {int(arr.min())}")
    return arr.astype(np.int64)


def _clamp(indices: np.ndarray, last: int, path: PathLike) -> np.ndarray:
    if indices.max() > last:
        logger.warning("%s: frame %d asked for, the video has %d; using the last frame", path,
                       int(indices.max()), last + 1)
        return np.minimum(indices, last)
    return indices


def _import_decord():
    try:
        import decord
    except ImportError:
        return None
    return decord


def _decord_errors(decord) -> tuple[type[BaseException], ...]:
    # decord raises RuntimeError, or its DECORDError (an Exception, not a RuntimeError)
    errors: list[type[BaseException]] = [RuntimeError, ValueError, IndexError]
    try:
        from decord._ffi.base import DECORDError

        errors.append(DECORDError)
    except ImportError:
        pass
    return tuple(errors)


def _first_line(e: BaseException) -> str:
    """The first line of an error, without decord's "[hh:mm:ss] /build/path/file.cc:123: " prefix."""
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    # decord nests its prefix once per layer it re-raises through
    return re.sub(r"^(\[[\d:]+\]\s*\S+:\d+:\s*)+", "", lines[0])[:300]
