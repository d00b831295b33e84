"""The PyAV backend of model.decode: reads forward, converting only the frames asked for, and seeks to the
key frame before a wanted frame that lies further ahead than a GOP (learned while decoding), so a segment deep
into a long file costs about a GOP instead of the whole file before it. Where a seek cannot be trusted
(MPEG-TS without an index, data cut behind an intact index) it falls back to one pass from the start.
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction
from typing import Iterator

import av
import numpy as np
import torch

from .decode import DecodeStop, IndexGroups, PathLike, VideoDecodeError, VideoInfo, _as_indices, _Closing

logger = logging.getLogger(__name__)

# PyAV's bilinear scaler is the closest to decord's FFmpeg 4.1 scale filter (measured: mean |diff| about
# 2/255 at 320x240 -> 224x224; identical at native size).
_PYAV_INTERPOLATION = "BILINEAR"
# A seek flushes the decoder and the frames in flight in its threads: not worth it for a shorter jump.
_MIN_SEEK_FRAMES = 16


class PyAVSource(_Closing):
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
