"""Test-only writer of real video files whose frames say which frame they are.

Every frame carries its own index as a 4 x 4 grid of black/white cells (bit k of the index in cell k,
row-major). The cells are large and only their centres are read back, so the code survives lossy
codecs, chroma subsampling and any resize to a square (the cells keep their relative position).
Broken files (empty, truncated, text renamed .mp4, garbage) are written here too; videos optionally get a
sine-tone audio track (`audio=`) or video time stamps that start late (`start_s=`).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

GRID = 4  # cells per side; 16 bits, so up to 65535 frames can be told apart
WHITE, BLACK = 235, 16  # inside the limited YUV range, so the codec's clipping cannot flip a cell

# codec name -> (container suffix, PyAV encoder, pixel format, encoder options)
CODECS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "h264": (".mp4", "libx264", "yuv420p", {"preset": "ultrafast", "crf": "18"}),
    "vp9": (".webm", "libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}),
    "mpeg4": (".avi", "mpeg4", "yuv420p", {"qscale": "2"}),
    "av1": (".mp4", "libsvtav1", "yuv420p", {"preset": "12", "crf": "30"}),
    # browsers other than Safari cannot play these: the indexer makes previews of them
    "hevc": (".mp4", "libx265", "yuv420p", {"preset": "ultrafast", "crf": "28", "x265-params": "log-level=error"}),
    "mpeg2": (".mpg", "mpeg2video", "yuv420p", {"qscale": "2"}),
    "wmv": (".wmv", "wmv2", "yuv420p", {"qscale": "2"}),
    "prores": (".mov", "prores_ks", "yuv422p10le", {"profile": "0"}),
}
AUDIO_RATE = 48000  # every audio encoder below takes it (libopus takes only 48/24/16/12/8 kHz)
TONE_HZ = 440.0


def coded_frame(index: int, width: int, height: int) -> np.ndarray:
    """An RGB uint8 (H, W, 3) frame whose 4 x 4 cells spell `index` in binary."""
    bits = [(index >> k) & 1 for k in range(GRID * GRID)]
    cells = np.where(np.array(bits, dtype=bool).reshape(GRID, GRID), WHITE, BLACK).astype(np.uint8)
    ys = np.arange(height) * GRID // height  # cell row of each pixel row
    xs = np.arange(width) * GRID // width
    return np.repeat(cells[ys][:, xs][..., None], 3, axis=2)


def read_frame_index(frame: np.ndarray) -> int:
    """The index coded in a frame, (H, W, 3) or (3, H, W), any size; reads the middle of each cell."""
    if frame.shape[0] == 3 and frame.shape[-1] != 3:
        frame = frame.transpose(1, 2, 0)
    h, w = frame.shape[:2]
    index = 0
    for k in range(GRID * GRID):
        r, c = divmod(k, GRID)
        y0, y1 = (4 * r + 1) * h // (4 * GRID), (4 * r + 3) * h // (4 * GRID)  # central half of the cell
        x0, x1 = (4 * c + 1) * w // (4 * GRID), (4 * c + 3) * w // (4 * GRID)
        if float(frame[y0:y1, x0:x1].astype(np.float64).mean()) > (WHITE + BLACK) / 2:
            index |= 1 << k
    return index


def write_video(
    path: Path,
    num_frames: int,
    codec: str = "h264",
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    frames: np.ndarray | None = None,
    faststart: bool = False,
    gop: int | None = None,
    audio: str | None = None,
    start_s: float = 0.0,
) -> Path:
    """Encode a real video; frames are index-coded unless given as uint8 (T, H, W, 3) RGB.

    `audio` adds a stereo 440 Hz sine track as long as the video, made by that PyAV encoder ("aac", "mp3",
    "libopus", "pcm_s16le", "flac"; the container must take it: pcm_s16le goes in .avi/.mov/.mkv, not .mp4).
    `start_s` delays the video's time stamps (the audio still starts at 0), as in a recording cut from a
    broadcast: the streams' start_time then differs from 0 and from each other (.mp4/.mkv/.ts; AVI has no
    time stamps to delay).
    """
    _, encoder, pix_fmt, options = CODECS[codec]
    container_options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=container_options) as container:
        stream = container.add_stream(encoder, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = dict(options)
        if gop is not None:
            stream.codec_context.gop_size = gop
        sound = container.add_stream(audio, rate=AUDIO_RATE, layout="stereo") if audio else None
        samples = 0  # audio samples written so far
        for i in range(num_frames):
            rgb = frames[i] if frames is not None else coded_frame(i, width, height)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if start_s:
                frame.pts, frame.time_base = round(start_s * fps) + i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
            if sound is not None:  # the audio up to the end of this frame: the muxer gets both interleaved
                end = (i + 1) * AUDIO_RATE // fps
                _encode_tone(container, sound, samples, end)
                samples = end
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            for packet in sound.encode():
                container.mux(packet)
    return path


def _encode_tone(container: av.container.OutputContainer, stream: av.audio.AudioStream, start: int, end: int) -> None:
    """Samples [start, end) of the sine tone (PyAV re-frames them to the encoder's frame size)."""
    if end <= start:
        return
    t = np.arange(start, end, dtype=np.float64) / AUDIO_RATE
    wave = (0.3 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
    frame = av.AudioFrame.from_ndarray(np.stack([wave, wave]), format="fltp", layout="stereo")
    frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, start, Fraction(1, AUDIO_RATE)
    for packet in stream.encode(frame):
        container.mux(packet)


def solid_frames(colors: list[tuple[int, int, int]], width: int = 64, height: int = 64) -> np.ndarray:
    """uint8 (T, H, W, 3) frames, frame t filled with colors[t]."""
    return np.stack([np.full((height, width, 3), c, dtype=np.uint8) for c in colors])


def write_truncated(src: Path, dst: Path, keep: float = 0.5) -> Path:
    """Copy the first `keep` fraction of a file's bytes, as an interrupted download would."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def write_index_only(faststart_mp4: Path, dst: Path) -> Path:
    """Keep an mp4's boxes up to the start of `mdat`: a valid header whose frames are all missing."""
    data = faststart_mp4.read_bytes()
    pos = 0
    while pos + 8 <= len(data):
        size, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind == b"mdat":
            dst.write_bytes(data[: pos + 8])
            return dst
        pos += size
    raise ValueError(f"{faststart_mp4} has no mdat box")


def write_broken_files(directory: Path, good_mp4: Path, faststart_mp4: Path) -> dict[str, Path]:
    """Files with a video suffix that are not decodable videos, by name.

    `good_mp4` must have its index (moov) at the end, `faststart_mp4` at the front.
    """
    directory.mkdir(parents=True, exist_ok=True)
    empty = directory / "empty.mp4"
    empty.write_bytes(b"")
    text = directory / "notes.mp4"
    text.write_text("this is a text file renamed to .mp4\n" * 20)
    garbage = directory / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes())
    return {
        "missing": directory / "does_not_exist.mp4",
        "empty": empty,
        "text": text,
        "garbage": garbage,
        # moov atom at the end (no faststart): cutting the file loses the index, nothing opens
        "truncated_no_index": write_truncated(good_mp4, directory / "truncated_no_index.mp4", keep=0.5),
        "header_only": write_truncated(good_mp4, directory / "header_only.mp4", keep=0.002),
        # a complete, valid index but no frame data: opens and probes fine, yet nothing decodes
        "index_only": write_index_only(faststart_mp4, directory / "index_only.mp4"),
    }
