"""Video decoding behind one small, swappable interface: which frames, at what size, as uint8 RGB.

Two backends (ENVIRONMENT.md "Video decoding"):
- decord (the reference ALPRO's reader, `_load_video_from_path_decord`): fast sparse access through its
  key-frame index, resizes inside FFmpeg 4.1's scale filter. No AV1.
- PyAV: bundles FFmpeg 8 and decodes everything; here it reads forward, converting only the frames asked
  for, and seeks to the key frame before a frame asked for where that is further ahead than a GOP (a
  segment deep into a long file costs about a GOP, not the whole file before it; see `_FrameCursor`).
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
import math
import os
import re
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence, Union

import av
import numpy as np
import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
DECODER_ENV = "ALPRO_DECODER"
BACKENDS = ("auto", "decord", "pyav")
# PyAV's bilinear scaler is the closest to decord's FFmpeg 4.1 scale filter (measured: mean |diff| about
# 2/255 at 320x240 -> 224x224; identical at native size).
_PYAV_INTERPOLATION = "BILINEAR"
# A seek flushes the decoder and the frames in flight in its threads: not worth it for a shorter jump.
_MIN_SEEK_FRAMES = 16

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
    if name == "pyav":
        return _PyAVSource(path, info, hw)
    decord = _import_decord()
    if decord is None:
        if name == "decord":
            raise VideoError(f"{DECODER_ENV}=decord but decord is not importable; install eva-decord")
        return _PyAVSource(path, info, hw)
    try:
        return _DecordSource(path, info, hw, fallback=name == "auto")
    except VideoDecodeError as e:
        if name == "decord":
            raise
        logger.debug("decord cannot open %s (%s); using PyAV", path, e.reason)
        return _PyAVSource(path, info, hw)


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
        self.close()
        fallback = _PyAVSource(self._path, self.info, self._hw)
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


class _PyAVSource(_Closing):
    backend = "pyav"

    def __init__(self, path: PathLike, info: VideoInfo, hw: tuple[int, int] | None) -> None:
        self._path, self._hw, self.info = path, hw, info
        self._cursor = _FrameCursor(path)
        self._used = False
        self.stopped: DecodeStop | None = None

    def iter_clips(self, groups: IndexGroups, *, pad: bool = True) -> Iterator[torch.Tensor]:
        if self._used:  # the cursor only moves forward; a second call would need to start again
            raise RuntimeError("a PyAV video source reads once; open the video again")
        self._used = True
        groups = [_as_indices(g) for g in groups]
        if not groups:
            return
        # how many still-pending groups want each frame, so frames are dropped once served
        wanted: dict[int, int] = {}
        for group in groups:
            for i in np.unique(group).tolist():
                wanted[i] = wanted.get(i, 0) + 1
        stored: dict[int, np.ndarray] = {}
        ends = [int(g.max()) for g in groups]
        next_group = 0
        cursor = self._cursor
        for index in sorted(wanted):
            frame = cursor.frame_at(index)
            if frame is None:  # the stream ends before this frame
                break
            stored[index] = self._to_rgb(frame)
            while next_group < len(groups) and ends[next_group] <= index:
                yield self._assemble(groups[next_group], stored, wanted, None)
                next_group += 1
        else:
            return
        if cursor.last is None:
            raise VideoDecodeError(self._path, "no frame could be decoded")
        index, last = cursor.last
        self.stopped = DecodeStop(index + 1, self.info.num_frames, cursor.error or "stream ends early")
        if not pad:
            logger.info("%s: decodes to frame %d of %d (%s)", self._path, index + 1, self.info.num_frames,
                        self.stopped.reason)
            return
        logger.warning(
            "%s: only %d of %d frames decode; later indices use the last decodable frame",
            self._path, index + 1, self.info.num_frames,
        )
        if index not in stored:  # (after a seek, the frame closest to `index` may already stand for it)
            stored[index] = self._to_rgb(last)
        for group in groups[next_group:]:
            yield self._assemble(np.minimum(group, index), stored, wanted, index)

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        if self._hw is None:
            return frame.to_ndarray(format="rgb24")
        h, w = self._hw
        return frame.to_ndarray(format="rgb24", width=w, height=h, interpolation=_PYAV_INTERPOLATION)

    @staticmethod
    def _assemble(
        group: np.ndarray, stored: dict[int, np.ndarray], wanted: dict[int, int], keep: int | None
    ) -> torch.Tensor:
        clip = torch.from_numpy(np.stack([stored[i] for i in group.tolist()]))  # (T, H, W, 3)
        for i in np.unique(group).tolist():
            if i == keep:  # the last decodable frame stands in for every later index
                continue
            wanted[i] -= 1
            if wanted[i] == 0:
                stored.pop(i, None)
        return clip

    def close(self) -> None:
        self._cursor.close()


class _FrameCursor:
    """The frames of a file's first video stream by index, asked for in ascending order (PyAV).

    It decodes forward, and where the next frame wanted lies further ahead than a GOP (the longest run
    between key frames seen so far, and at least `_MIN_SEEK_FRAMES`) it seeks to the key frame at or before
    that frame instead: a window deep into a long file costs about one GOP, and sparse frames of a long-GOP
    file one pass, as before.

    Index i is the i-th frame the decoder puts out while it reads on from the start of the file (decord's
    count, and the frame count's); after a seek, the frame whose pts is closest to the first frame's pts plus
    i / average rate, which is the same frame wherever the rate is constant. A seek that lands past its frame
    or on nothing (a container without an index, data cut off behind an intact index) turns seeking off: the
    file is opened again and read from the start.
    """

    def __init__(self, path: PathLike) -> None:
        self._path = path
        self.decoded = 0  # frames the decoder has put out: the work done
        self.seeks = 0
        self.error: str | None = None  # the decoder's message where the stream ended on an error
        self._seekable = True
        self._origin: int | None = None  # pts of the file's first frame, index 0
        self._gop = 0  # the longest run from one key frame to the next seen so far, in frames
        self._key = 0  # position of the last key frame (or start of reading) seen
        self._open()
        stream = self._stream
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate  # the probe's rule
        # index -> pts: first pts + index / rate / time_base (no seeking without both)
        self._rate = Fraction(rate) if rate and stream.time_base else None
        self._time_base = Fraction(stream.time_base) if stream.time_base else None

    def _open(self) -> None:
        try:
            self._container = av.open(str(self._path))
            self._stream = self._container.streams.video[0]
        except (av.FFmpegError, OSError, ValueError, IndexError) as e:
            raise VideoDecodeError(self._path, f"{type(e).__name__}: {e}") from e
        self._stream.thread_type = "AUTO"  # frame threads: several times faster on HD, harmless on small
        self._read_from(-1)

    def _read_from(self, count: int | None) -> None:
        """Start a new forward read: from the start (`count` -1) or after a seek (None, positions from pts)."""
        self._frames = self._container.decode(self._stream)
        self._count = count  # index of the last frame put out, while reading on from the start
        # the last two frames put out by this read, as (position, frame): the closest one is taken
        self._prev: tuple[Fraction | int, av.VideoFrame] | None = None
        self._cur: tuple[Fraction | int, av.VideoFrame] | None = None
        self._ended = False

    @property
    def last(self) -> tuple[int, av.VideoFrame] | None:
        """(index, frame) of the last frame put out."""
        if self._cur is None:
            return None
        position, frame = self._cur
        index = int(position) if self._count is not None else math.floor(position + Fraction(1, 2))
        return index, frame

    def frame_at(self, index: int) -> av.VideoFrame | None:
        """The frame at `index` (no lower than the last asked for), or None where the stream ends before it."""
        if self._cur is None and not self._ended:
            self._advance()  # the first frame: where index 0 is
        if not self._ended and self._cur is not None and index > self._cur[0] and self._worth_seeking(index):
            self._seek(index)
        while not self._ended and (self._cur is None or self._cur[0] < index):
            self._advance()
        if self._cur is None:
            return None
        position, frame = self._cur
        if position < index:  # the stream ended first
            return frame if index - position <= Fraction(1, 2) else None
        if self._prev is not None and index - self._prev[0] <= position - index:
            return self._prev[1]
        return frame

    def _advance(self) -> bool:
        """Decode one more frame; False where the stream ends (its end, or a decode error after a frame)."""
        try:
            frame = next(self._frames)
        except StopIteration:
            self._ended = True
            return False
        except (av.FFmpegError, OSError, ValueError) as e:
            if self.decoded == 0:
                raise VideoDecodeError(self._path, f"{type(e).__name__}: {e}") from e
            # PyAV raises InvalidDataError where a truncated file ends: keep what decoded before it
            logger.debug("%s: decoding stopped after %d frames: %s", self._path, self.decoded, e)
            self.error = f"{type(e).__name__}: {e}"
            self._ended = True
            return False
        self.decoded += 1
        if self.decoded == 1:
            self._origin = frame.pts
            self._seekable = frame.pts is not None and self._rate is not None
        position = self._position(frame)
        if self._cur is None:  # a read starts on a key frame
            self._key = position
        elif frame.key_frame and position is not None:
            self._gop = max(self._gop, position - self._key)
            self._key = position
        self._prev, self._cur = self._cur, (position, frame)
        return True

    def _position(self, frame: av.VideoFrame) -> Fraction | int | None:
        if self._count is not None:
            self._count += 1
            return self._count
        if frame.pts is None:  # a frame without a time stamp: the one after the last
            return None if self._cur is None else self._cur[0] + 1
        return (frame.pts - self._origin) * self._time_base * self._rate

    def _worth_seeking(self, index: int) -> bool:
        # a seek lands on the key frame at or before `index`: only worth it if one lies beyond the frame
        # decoded last, which is sure only once the gap is longer than any run between key frames
        if not self._seekable:
            return False
        position = self._cur[0]
        return index - position > max(_MIN_SEEK_FRAMES, self._gop, position - self._key)

    def _seek(self, index: int) -> None:
        target = index + Fraction(1, 2)  # the key frame at or before the middle between `index` and the next
        pts = self._origin + math.floor(target / self._rate / self._time_base)
        self.seeks += 1
        try:
            self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
        except (av.FFmpegError, OSError, ValueError) as e:
            self._restart(f"seeking to frame {index} failed ({type(e).__name__}: {e})")
            return
        self._read_from(None)
        if not self._advance() or self._cur[0] is None:
            self._restart(f"nothing decodes after seeking to frame {index}")
        elif self._cur[0] > target:
            self._restart(f"seeking to frame {index} landed on frame {float(self._cur[0]):.1f}")
        elif self._cur[1].pts == self._origin:  # back at the start: count again
            self._count, self._cur = 0, (0, self._cur[1])

    def _restart(self, reason: str) -> None:
        logger.debug("%s: %s; reading from the start without seeking", self._path, reason)
        self.error = None
        self._seekable = False
        self._container.close()
        self._open()

    def close(self) -> None:
        logger.debug("%s: PyAV decoded %d frames with %d seeks", self._path, self.decoded, self.seeks)
        self._container.close()


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
