"""Browser-playable previews: whether a browser plays a video as it is, and a small H.264/AAC MP4 of the
whole video where it does not.

Playable (Chromium, no platform decoders assumed): an .mp4/.m4v file that FFmpeg reads as MP4, with H.264
(8-bit 4:2:0), AV1 or VP9 video and AAC, MP3, Opus or FLAC audio; a .webm file read as WebM with VP8, VP9
or AV1 video (4:2:0) and Opus or Vorbis audio. The extension counts because the service names the media
type by it. Everything else (AVI, MPEG-2, WMV, ProRes, HEVC, MKV, MOV, ...) gets a preview.

A preview (`make_preview`) is the whole video, so a player can seek anywhere: libx264 (veryfast, CRF 28,
yuv420p, a key frame at least every 4 s for quick seeks), at most `height` pixels high (never upscaled,
aspect kept with the sample aspect ratio applied, even sides, rotation metadata copied), at most 30 fps,
AAC 96 kb/s stereo from the first audio track where there is one, faststart MP4 (playable while it
downloads). Time: the k-th frame the decoder puts out is shown at k / fps, the average frame rate, which is
how the indexer times segments (model.decode: frame index / fps from the first decoded frame, whatever the
streams' start_time), so second t of the preview is second t of the search hit. Audio keeps its offset to
that first frame (trimmed or padded with silence at the start) and then runs continuously; in a
variable-frame-rate file the video follows the indexer's clock, not the original timestamps.

Bounded work: a source longer than MAX_SOURCE_S (3 h) gets no preview (decoding a whole movie costs
minutes of CPU per video; hours of surveillance footage would cost far more). A file that stops decoding
part-way gets a preview of what decodes (`Preview.partial` says where it stops). Written to a temporary
sibling, fsynced and renamed: a crash leaves no half file under the final name (`remove_temporaries`).

`run_job` is a previewer worker's unit of work (indexer.previewer); this module imports only PyAV and numpy.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from store.atomic import fsync_dir

from .cache import TMP_MARK
from .errors import is_disk_full

logger = logging.getLogger(__name__)

MAX_SOURCE_S = 3 * 3600.0  # longer sources get no preview (see the module docstring)
MAX_FPS = Fraction(30)
CRF, PRESET = 28, "veryfast"
KEYFRAME_S = 4  # seconds between forced key frames: a seek decodes at most this much
AUDIO_BITRATE = 96_000
AUDIO_RATES = (48000, 44100, 32000, 24000, 22050, 16000)  # kept where the source has one, else 48 kHz

_MP4 = "mov,mp4,m4a,3gp,3g2,mj2"  # FFmpeg's demuxer name for the whole ISO family
_WEBM = "matroska,webm"
# extension -> (FFmpeg demuxer, video codecs, audio codecs) a browser plays
_MP4_RULE = (_MP4, frozenset({"h264", "av1", "vp9"}), frozenset({"aac", "mp3", "opus", "flac"}))
_PLAYABLE: dict[str, tuple[str, frozenset[str], frozenset[str]]] = {
    ".mp4": _MP4_RULE, ".m4v": _MP4_RULE,
    ".webm": (_WEBM, frozenset({"vp8", "vp9", "av1"}), frozenset({"opus", "vorbis"})),
}
# Chromium's software decoders: H.264 8-bit 4:2:0 only (no High 10 / 4:2:2 / 4:4:4); VP9 and AV1 also 10-bit
_PIXEL_FORMATS = {"h264": frozenset({"yuv420p", "yuvj420p"})}
_DEFAULT_PIXEL_FORMATS = frozenset({"yuv420p", "yuvj420p", "yuv420p10le"})


class PreviewError(RuntimeError):
    """No preview could be made of a file (unreadable, nothing decodes, too long)."""


@dataclass(frozen=True)
class Playability:
    container: str  # FFmpeg's format name, e.g. "avi" or "mov,mp4,m4a,3gp,3g2,mj2"
    playable: bool
    reason: str  # why not (or what plays)


@dataclass(frozen=True)
class Preview:
    """A preview written by `make_preview`."""

    path: Path
    bytes: int
    seconds: float  # wall time it took
    duration_s: float  # of the preview: frames / its frame rate
    frames: int
    width: int
    height: int
    partial: str | None = None  # where the source stops decoding, if it does


def probe_playability(path: str | os.PathLike) -> Playability:
    """Whether a browser plays `path` as it is (reads the container header only); PreviewError if unreadable."""
    try:
        with av.open(str(path)) as container:
            return _playability(Path(path), container)
    except (av.FFmpegError, OSError, ValueError) as e:
        raise PreviewError(f"cannot open: {type(e).__name__}: {e}") from e


def browser_playable(path: str | os.PathLike) -> tuple[bool, str]:
    """(whether a browser plays the file natively, why or why not); an unreadable file is not playable."""
    try:
        result = probe_playability(path)
    except PreviewError as e:
        return False, str(e)
    return result.playable, result.reason


def _playability(path: Path, container: av.container.InputContainer) -> Playability:
    name = str(container.format.name)
    video = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not video:
        return Playability(name, False, "no video stream")
    rule = _PLAYABLE.get(path.suffix.lower())
    if rule is None:
        return Playability(name, False, f"{path.suffix or 'no extension'} is not a browser container")
    demuxer, video_codecs, audio_codecs = rule
    if name != demuxer:
        return Playability(name, False, f"{path.suffix} file holds {name}, not {demuxer}")
    ctx = video[0].codec_context
    codec = _codec_name(ctx)
    if codec not in video_codecs:
        return Playability(name, False, f"video codec {codec} does not play in {path.suffix}")
    pix_fmt = ctx.format.name if ctx.format is not None else ""
    if pix_fmt and pix_fmt not in _PIXEL_FORMATS.get(codec, _DEFAULT_PIXEL_FORMATS):
        return Playability(name, False, f"{codec} in {pix_fmt} does not play")
    for stream in container.streams.audio:
        audio = _codec_name(stream.codec_context)
        if audio not in audio_codecs:
            return Playability(name, False, f"audio codec {audio} does not play in {path.suffix}")
    audio = ", ".join(_codec_name(s.codec_context) for s in container.streams.audio) or "no audio"
    return Playability(name, True, f"{codec} ({audio}) in {path.suffix}")


def _codec_name(ctx: av.codec.context.CodecContext) -> str:
    # the codec's own name ("mp3"), not its decoder's ("mp3float")
    return str(getattr(ctx.codec, "canonical_name", None) or ctx.name)


def preview_size(width: int, height: int, sample_aspect: Fraction | None, max_height: int) -> tuple[int, int]:
    """(width, height) of a preview: at most `max_height` high, never upscaled, square pixels, even sides."""
    out_h = max(2, min(max_height, height) // 2 * 2)
    display_w = width * (sample_aspect if sample_aspect and sample_aspect > 0 else 1)
    out_w = max(2, round(display_w * out_h / height / 2) * 2)
    return out_w, out_h


def make_preview(src: str | os.PathLike, dst: str | os.PathLike, *, height: int = 360, threads: int = 0,
                 max_source_s: float | None = MAX_SOURCE_S) -> Preview:
    """Transcode `src` into a preview MP4 at `dst` (see the module docstring); PreviewError where none is made.

    `threads`: encoder and decoder threads each (0: FFmpeg's choice). Nothing is left at `dst` or beside
    it on failure; an existing `dst` is replaced only by a complete preview.
    """
    start = time.perf_counter()
    dst = Path(dst)
    tmp = dst.with_name(f"{dst.name}{TMP_MARK}{os.getpid()}")
    try:
        with av.open(str(src)) as source:
            transcoder = _Transcoder(source, height, threads, max_source_s)
            with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
                transcoder.run(out)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except (av.FFmpegError, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise  # the run's problem, not this video's (the CLI exits 5)
        raise PreviewError(f"{type(e).__name__}: {e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)
    t = transcoder
    return Preview(dst, dst.stat().st_size, time.perf_counter() - start, t.frames_out / float(t.out_rate),
                   t.frames_out, t.width, t.height, t.partial)


class _Transcoder:
    """One source container into one preview container (see the module docstring for the timing rules)."""

    def __init__(self, source: av.container.InputContainer, height: int, threads: int,
                 max_source_s: float | None) -> None:
        if not source.streams.video:
            raise PreviewError("no video stream")
        self.source = source
        self.video = source.streams.video[0]
        self.audio = source.streams.audio[0] if source.streams.audio else None
        rate = self.video.average_rate or self.video.guessed_rate or self.video.base_rate  # the indexer's fps
        if not rate or rate <= 0:
            raise PreviewError("unknown frame rate")
        duration = source.duration / av.time_base if source.duration else None
        if max_source_s is not None and duration is not None and duration > max_source_s:
            raise PreviewError(f"{duration / 3600:.1f} h long: previews are made of videos up to "
                               f"{max_source_s / 3600:.1f} h")
        self.in_rate = Fraction(rate)
        self.out_rate = min(self.in_rate, MAX_FPS)
        for stream in (self.video, self.audio):
            if stream is not None:
                stream.thread_type = "AUTO"
                stream.codec_context.thread_count = threads
        ctx = self.video.codec_context
        self.width, self.height = preview_size(ctx.width, ctx.height, self.video.sample_aspect_ratio, height)
        self.threads = threads
        self.audio_rate = 48000
        if self.audio is not None and self.audio.codec_context.sample_rate in AUDIO_RATES:
            self.audio_rate = self.audio.codec_context.sample_rate
        self.frames_in = 0  # frames the decoder put out: frame k is shown at k / in_rate
        self.frames_out = 0  # preview frames: frame j at j / out_rate
        self.samples_out = 0
        self.partial: str | None = None
        self.origin_s: float | None = None  # time of the first decoded frame: 0 in the preview
        # decoded before the first video frame; bounded: audio this far ahead of the video is cut anyway
        self._pending_audio: deque[av.AudioFrame] = deque(maxlen=4096)
        self._out: av.container.OutputContainer | None = None
        self.vout: av.video.stream.VideoStream | None = None  # made at the first frame
        self.aout: av.audio.stream.AudioStream | None = None
        self._resampler = av.AudioResampler(format="fltp", layout="stereo", rate=self.audio_rate)

    def run(self, out: av.container.OutputContainer) -> None:
        self._out = out
        for frame in self._decoded():
            if isinstance(frame, av.VideoFrame):
                self._put_video(frame)
            elif self.origin_s is None:
                self._pending_audio.append(frame)  # placed once the first video frame says where 0 is
            else:
                self._put_audio(frame)
        if self.frames_out == 0:
            raise PreviewError("no frame decodes")
        for packet in self.vout.encode():
            out.mux(packet)
        if self.aout is not None:
            self._encode_audio(None)

    def _decoded(self) -> Iterator[av.VideoFrame | av.AudioFrame]:
        """The source's video and audio frames in file order, up to where it stops decoding (`partial`).

        Only reading and decoding errors end a preview early; an encoding or writing error is raised.
        """
        packets = self.source.demux(*[s for s in (self.video, self.audio) if s is not None])
        while True:
            try:
                packet = next(packets)
                if packet.stream is self.video:
                    frames = packet.decode()
                else:
                    frames = self._decode_audio(packet)
            except StopIteration:
                return
            except (av.FFmpegError, ValueError) as e:  # a cut or damaged file: keep what decoded before it
                if is_disk_full(e):
                    raise
                if self.frames_out == 0:
                    raise PreviewError(f"no frame decodes: {type(e).__name__}: {e}") from e
                self.partial = f"decodes to {self.frames_in / float(self.in_rate):.1f} s: {type(e).__name__}: {e}"
                return
            yield from frames

    def _open_streams(self, first: av.VideoFrame) -> None:
        """Output streams, made at the first frame: it carries the rotation to copy."""
        out = self._out
        self.vout = out.add_stream("libx264", rate=self.out_rate)
        self.vout.width, self.vout.height, self.vout.pix_fmt = self.width, self.height, "yuv420p"
        self.vout.codec_context.thread_count = self.threads
        self.vout.options = {"preset": PRESET, "crf": str(CRF), "g": str(max(1, round(KEYFRAME_S * self.out_rate)))}
        if first.rotation:
            self.vout.set_display_rotation(first.rotation)
        self.aout = None
        if self.audio is not None:
            self.aout = out.add_stream("aac", rate=self.audio_rate, layout="stereo")
            self.aout.bit_rate = AUDIO_BITRATE
        self.origin_s = float(first.time) if first.time is not None else 0.0

    def _put_video(self, frame: av.VideoFrame) -> None:
        if self.origin_s is None:
            self._open_streams(frame)
            for pending in self._pending_audio:
                self._put_audio(pending)
            self._pending_audio.clear()
        k = self.frames_in
        self.frames_in += 1
        # preview frame j shows source frame floor(j * in_rate / out_rate): the one on screen at that moment
        scaled = None
        while self.frames_out * self.in_rate < (k + 1) * self.out_rate:
            if scaled is None:
                scaled = frame.reformat(width=self.width, height=self.height, format="yuv420p", interpolation="AREA")
            scaled.pts, scaled.time_base = self.frames_out, 1 / self.out_rate
            for packet in self.vout.encode(scaled):
                self._out.mux(packet)
            self.frames_out += 1

    def _decode_audio(self, packet: av.Packet) -> list[av.AudioFrame]:
        try:
            return packet.decode()
        except (av.FFmpegError, ValueError) as e:  # a damaged audio packet costs its few milliseconds only
            logger.debug("audio packet skipped: %s", e)
            return []

    def _put_audio(self, frame: av.AudioFrame) -> None:
        if self.aout is None:
            return
        resampled = [f.to_ndarray() for f in self._resampler.resample(frame)]
        if not resampled:
            return
        samples = np.concatenate(resampled, axis=1)
        if self.samples_out == 0 and frame.time is not None:
            # the first audio keeps its offset to the first video frame: silence before it, or its lead cut
            offset = round((float(frame.time) - self.origin_s) * self.audio_rate)
            if offset > 0:
                self._encode_audio(np.zeros((2, offset), dtype=np.float32))
            elif offset < 0:
                samples = samples[:, -offset:]  # empty where the whole frame precedes the video
        self._encode_audio(samples)

    def _encode_audio(self, samples: np.ndarray | None) -> None:
        """Encode fltp stereo samples continuing the track (None flushes)."""
        if samples is None:
            for packet in self.aout.encode(None):
                self._out.mux(packet)
            return
        if samples.shape[1] == 0:
            return
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32), format="fltp",
                                           layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = self.audio_rate, self.samples_out, Fraction(1, self.audio_rate)
        self.samples_out += samples.shape[1]
        for packet in self.aout.encode(frame):
            self._out.mux(packet)


def wants_preview(policy: str, playable: bool) -> bool:
    """Whether the policy asks for a preview of a video the browser does (not) play."""
    return policy == "all" or (policy == "auto" and not playable)


@dataclass(frozen=True)
class PreviewJob:
    """One video for a previewer worker: probe it, and make its preview where the policy asks for one."""

    video_id: str
    source: str  # the video file
    target: str  # DataDir.preview_path
    policy: str  # "auto" | "all"
    height: int
    threads: int = 0


@dataclass(frozen=True)
class PreviewOutcome:
    video_id: str
    container: str  # "" where the file could not be read
    playable: bool | None  # None where the file could not be read
    preview_bytes: int | None = None  # the preview's size where there is one
    made: Preview | None = None  # the preview this job made (None: none, or one already there was kept)
    error: str | None = None  # why no preview was made where the policy asked for one


def run_job(job: PreviewJob) -> PreviewOutcome:
    """A worker's unit of work; never raises for a bad file (the outcome carries the error), only where the
    data dir's disk is full.

    A preview already at the target is kept: only a complete one is ever renamed there (a run killed
    before recording it leaves one).
    """
    try:
        probe = probe_playability(job.source)
    except PreviewError as e:
        return PreviewOutcome(job.video_id, "", None, error=str(e))
    if not wants_preview(job.policy, probe.playable):
        return PreviewOutcome(job.video_id, probe.container, probe.playable)
    target = Path(job.target)
    if target.is_file():
        return PreviewOutcome(job.video_id, probe.container, probe.playable, target.stat().st_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        preview = make_preview(job.source, target, height=job.height, threads=job.threads)
    except PreviewError as e:
        return PreviewOutcome(job.video_id, probe.container, probe.playable, error=str(e))
    except Exception as e:  # noqa: BLE001 - whatever goes wrong costs this preview, never the run
        if is_disk_full(e):
            raise
        logger.debug("preview of %s failed", job.source, exc_info=True)
        return PreviewOutcome(job.video_id, probe.container, probe.playable, error=f"{type(e).__name__}: {e}")
    return PreviewOutcome(job.video_id, probe.container, probe.playable, preview.bytes, preview)


def remove_temporaries(directory: Path) -> int:
    """Delete previews left half-written by a crash under `directory` (call with the data dir lock held)."""
    count = 0
    if directory.is_dir():
        for path in directory.glob(f"*/*{TMP_MARK}*"):
            path.unlink(missing_ok=True)
            count += 1
    return count


__all__ = ["MAX_SOURCE_S", "Playability", "Preview", "PreviewError", "PreviewJob", "PreviewOutcome", "browser_playable",
           "make_preview", "preview_size", "probe_playability", "remove_temporaries", "run_job", "wants_preview"]
