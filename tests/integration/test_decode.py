"""Decoding real files with both backends: which frames come back, sizes, broken files, windows."""

from __future__ import annotations

import logging
import pickle
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from model.config import CLIP_MEAN, CLIP_STD, preset_config
from model.decode import (
    DecodeStop,
    VideoDecodeError,
    VideoError,
    decode_clips,
    decode_frames,
    decord_available,
    open_video,
    probe_video,
)
from model.preprocess import iter_video_clips, load_video
from tests.video_factory import (
    coded_frame,
    read_frame_index,
    solid_frames,
    write_broken_files,
    write_truncated,
    write_video,
)

BACKENDS = [
    "pyav",
    pytest.param("decord", marks=pytest.mark.skipif(not decord_available(), reason="decord not installed")),
]
CODEC_FRAMES = {"h264": 300, "vp9": 60, "mpeg4": 60}  # the h264 one is 10 s of 320x240 at 30 fps


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    paths = {
        "h264": write_video(d / "h264.mp4", CODEC_FRAMES["h264"], "h264"),
        "vp9": write_video(d / "vp9.webm", CODEC_FRAMES["vp9"], "vp9"),
        "mpeg4": write_video(d / "mpeg4.avi", CODEC_FRAMES["mpeg4"], "mpeg4"),
        "faststart": write_video(d / "faststart.mp4", 90, "h264", faststart=True),
        "rgb": write_video(d / "rgb.mp4", 3, "h264", width=64, height=64,
                           frames=solid_frames([(255, 0, 0), (0, 255, 0), (0, 0, 255)])),
    }
    paths["truncated"] = write_truncated(paths["faststart"], d / "truncated_faststart.mp4", keep=0.5)
    return paths


@pytest.fixture(scope="module")
def broken(videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_broken_files(tmp_path_factory.mktemp("broken"), videos["h264"], videos["faststart"])


def frame_ids(frames: torch.Tensor) -> list[int]:
    return [read_frame_index(f.numpy()) for f in frames]


def packet_offsets(path: Path) -> list[int]:
    """Byte offset of each video packet's data, in decode order (x264 ultrafast: no B-frames, so frame order)."""
    with av.open(str(path)) as container:
        return [p.pos for p in container.demux(video=0) if p.size]


def cut_before_frame(src: Path, dst: Path, frame: int) -> Path:
    """An interrupted download that stops where `frame`'s data begins (the index, at the front, lists them all)."""
    dst.write_bytes(src.read_bytes()[:packet_offsets(src)[frame]])
    return dst


def corrupt_frames(src: Path, dst: Path, first: int, end: int) -> Path:
    """Random bytes over the data of frames [first, end), the container's boxes intact."""
    offsets = packet_offsets(src)
    data = bytearray(src.read_bytes())
    a, b = offsets[first], offsets[end]
    data[a:b] = np.random.default_rng(0).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


# --- which frames ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("codec", list(CODEC_FRAMES))
def test_decodes_the_requested_frames_in_the_requested_order(videos, codec, backend):
    last = CODEC_FRAMES[codec] - 1
    indices = [0, 7, last, 3, 3, 31]
    frames = decode_frames(videos[codec], indices, size=224, backend=backend)
    assert frames.shape == (6, 224, 224, 3) and frames.dtype == torch.uint8
    assert frame_ids(frames) == indices


@pytest.mark.parametrize("backend", BACKENDS)
def test_indices_past_the_end_use_the_last_frame(videos, backend):
    assert frame_ids(decode_frames(videos["vp9"], [58, 59, 60, 500], size=32, backend=backend)) == [58, 59, 59, 59]
    with pytest.raises(VideoError):
        decode_frames(videos["vp9"], [-1], backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_native_and_rectangular_sizes(videos, backend):
    assert decode_frames(videos["h264"], [5], backend=backend).shape == (1, 240, 320, 3)
    frames = decode_frames(videos["h264"], [5, 6], size=(96, 128), backend=backend)
    assert frames.shape == (2, 96, 128, 3) and frame_ids(frames) == [5, 6]


@pytest.mark.parametrize("size", [None, 32])
@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_are_rgb(videos, backend, size):
    frames = decode_frames(videos["rgb"], [0, 1, 2], size=size, backend=backend).float()
    means = frames.mean(dim=(1, 2))  # (T, 3)
    assert means.argmax(dim=1).tolist() == [0, 1, 2]
    assert means.max(dim=1).values.min() > 200


@pytest.mark.parametrize("backend", BACKENDS)
def test_several_groups_in_one_pass(videos, backend):
    groups = [np.array([0, 10, 20]), np.array([250, 299]), np.array([15, 15, 280])]
    info, clips = decode_clips(videos["h264"], groups, size=64, backend=backend)
    assert info.num_frames == 300
    assert [frame_ids(c) for c in clips] == [g.tolist() for g in groups]


def test_selector_receives_the_info(videos):
    seen = []

    def select(info):
        seen.append(info.num_frames)
        return [np.arange(0, info.num_frames, 20)]

    _, (clip,) = decode_clips(videos["vp9"], select, size=32, backend="pyav")
    assert seen == [60] and frame_ids(clip) == [0, 20, 40]


def test_backends_agree_on_pixels(videos):
    if not decord_available():
        pytest.skip("decord not installed")
    a = decode_frames(videos["h264"], [0, 150], size=224, backend="pyav").float()
    b = decode_frames(videos["h264"], [0, 150], size=224, backend="decord").float()
    assert (a - b).abs().mean() < 3.0  # different FFmpeg scalers; same frames, same colours


def test_av1_decodes_with_pyav_and_auto_falls_back(tmp_path):
    try:
        path = write_video(tmp_path / "av1.mp4", 20, "av1", width=64, height=64)
    except (av.FFmpegError, ValueError) as e:  # a PyAV build without the SVT-AV1 encoder
        pytest.skip(f"cannot encode AV1 here: {e}")
    assert frame_ids(decode_frames(path, [0, 19, 7], backend="pyav")) == [0, 19, 7]
    assert frame_ids(decode_frames(path, [0, 19, 7], backend="auto")) == [0, 19, 7]
    if decord_available():  # decord's FFmpeg 4.1 has no AV1 decoder
        with pytest.raises(VideoDecodeError):
            decode_frames(path, [0], backend="decord")


# --- metadata and backend choice ------------------------------------------------------------------


def test_probe_video(videos):
    info = probe_video(videos["h264"])
    assert (info.num_frames, info.fps, info.width, info.height, info.codec) == (300, 30.0, 320, 240, "h264")
    assert info.duration_s == pytest.approx(10.0, abs=0.05)
    assert probe_video(videos["vp9"]).num_frames == 60  # WebM has no count: fps x duration


@pytest.mark.parametrize("codec", list(CODEC_FRAMES))
def test_backends_count_frames_alike(videos, codec):
    if not decord_available():
        pytest.skip("decord not installed")
    with open_video(videos[codec], backend="decord") as d, open_video(videos[codec], backend="pyav") as p:
        assert d.info.num_frames == p.info.num_frames == CODEC_FRAMES[codec]


def test_backend_from_environment(videos, monkeypatch):
    monkeypatch.setenv("ALPRO_DECODER", "pyav")
    with open_video(videos["h264"]) as source:
        assert source.backend == "pyav"
    monkeypatch.setenv("ALPRO_DECODER", "ffmpeg-cli")
    with pytest.raises(VideoError):
        open_video(videos["h264"])


def test_pyav_source_reads_once(videos):
    with open_video(videos["vp9"], backend="pyav") as source:
        list(source.iter_clips([[0]]))
        with pytest.raises(RuntimeError):
            list(source.iter_clips([[1]]))


# --- broken files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "pyav", *BACKENDS[1:]])
@pytest.mark.parametrize(
    "name", ["missing", "empty", "text", "garbage", "truncated_no_index", "header_only", "index_only"]
)
def test_broken_files_raise_video_decode_error(broken, name, backend):
    path = broken[name]
    with pytest.raises(VideoDecodeError) as excinfo:
        decode_frames(path, [0], size=32, backend=backend)
    err = excinfo.value
    assert isinstance(err, ValueError) and isinstance(err, VideoError)
    assert err.path == str(path) and err.reason and str(path) in str(err)
    if name not in ("missing", "empty", "index_only"):  # our own checks, not a library error
        assert err.__cause__ is not None
    if name != "index_only":  # its header is valid: only decoding finds out
        with pytest.raises(VideoDecodeError):
            probe_video(path)


def test_video_decode_error_pickles():
    err = pickle.loads(pickle.dumps(VideoDecodeError("/x.mp4", "empty file")))
    assert (err.path, err.reason) == ("/x.mp4", "empty file")


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_truncated_file_clamps_to_the_last_decodable_frame(videos, backend, caplog):
    with caplog.at_level(logging.WARNING, logger="model.decode"):
        frames = decode_frames(videos["truncated"], [0, 10, 89], size=32, backend=backend)
    ids = frame_ids(frames)
    assert ids[:2] == [0, 10]
    assert 10 < ids[2] < 89  # the last frame that decodes, well before the end
    assert "decode" in caplog.text
    # and that really is the last decodable frame: asking for it directly gives the same picture
    assert frame_ids(decode_frames(videos["truncated"], [ids[2]], size=32, backend="pyav")) == [ids[2]]


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_without_padding_a_truncated_file_stops_where_it_does(videos, tmp_path, backend):
    """pad=False: no clip of a frame past the end, and the source says how far the file decodes."""
    path = cut_before_frame(videos["faststart"], tmp_path / "cut.mp4", 45)  # frames [0, 45) of 90 are there
    with open_video(path, size=32, backend=backend) as source:
        clips = [frame_ids(c) for c in source.iter_clips([[0, 10], [20, 44], [40, 60], [80]], pad=False)]
        assert clips == [[0, 10], [20, 44]]
        assert source.stopped == DecodeStop(45, 90, "stream ends early")
    # with padding (the default) the same file is still read to the end, and says so too
    with open_video(path, size=32, backend="pyav") as source:
        clips = [frame_ids(c) for c in source.iter_clips([[0, 10], [40, 60]])]
        assert clips == [[0, 10], [40, 44]] and source.stopped == DecodeStop(45, 90, "stream ends early")


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_without_padding_garbage_mid_file_stops_before_it(videos, tmp_path, backend):
    path = corrupt_frames(videos["faststart"], tmp_path / "garbage_inside.mp4", 45, 60)
    with open_video(path, size=32, backend=backend) as source:
        clips = [frame_ids(c) for c in source.iter_clips([[0, 10], [20, 40], [50, 55], [80, 85]], pad=False)]
        stopped = source.stopped
    assert clips == [[0, 10], [20, 40]]  # the frames after the garbage are not read: one span from the start
    assert stopped is not None and stopped.expected == 90 and 40 < stopped.frames <= 50
    assert "Invalid data" in stopped.reason  # the decoder's message


def test_truncated_file_with_forced_decord_raises(videos):
    if not decord_available():
        pytest.skip("decord not installed")
    with pytest.raises(VideoDecodeError):
        decode_frames(videos["truncated"], [0], backend="decord")


def test_decord_failing_mid_file_continues_with_pyav(videos):
    if not decord_available():
        pytest.skip("decord not installed")

    class Failing:
        def get_batch(self, indices):
            raise RuntimeError("simulated decord failure")

    with open_video(videos["h264"], size=32, backend="auto") as source:
        assert source.backend == "decord"
        clips = source.iter_clips([[1, 2], [100, 5]])
        assert frame_ids(next(clips)) == [1, 2]
        source._reader = Failing()
        assert frame_ids(next(clips)) == [100, 5]


# --- seeking (PyAV): a segment deep into a long file ----------------------------------------------
# 120 s at 25 fps (3000 frames), index-coded; key frames every 2 s, or every 10 s with B-frames; files whose
# first frame is not at pts 0 (10 s in), in mp4, mkv and MPEG-TS (whose seeks land late: read from the start).

LONG_FPS, LONG_FRAMES = 25, 3000


def write_long_video(path: Path, num_frames: int, gop: int, bframes: int = 0, first_pts: int = 0) -> Path:
    """A 160x120 h264 video at LONG_FPS, frame i coded with i, at pts first_pts + i (in 1/LONG_FPS s)."""
    width, height = 160, 120
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(LONG_FPS))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, LONG_FPS)
        stream.options = {"preset": "veryfast" if bframes else "ultrafast", "crf": "23", "bf": str(bframes),
                          "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        stream.codec_context.gop_size = gop
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(coded_frame(i, width, height), format="rgb24")
            frame.pts, frame.time_base = first_pts + i, Fraction(1, LONG_FPS)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("long")
    paths = {
        "gop2s": write_long_video(d / "gop2s.mp4", LONG_FRAMES, gop=50),
        "gop10s_b": write_long_video(d / "gop10s_b.mp4", LONG_FRAMES, gop=250, bframes=3),
    }
    for suffix in ("mp4", "mkv", "ts"):  # 40 s starting at 10 s, B-frames
        paths[f"offset.{suffix}"] = write_long_video(d / f"offset.{suffix}", 1000, gop=50, bframes=2,
                                                     first_pts=10 * LONG_FPS)
    faststart = d / "gop2s_faststart.mp4"
    with av.open(str(paths["gop2s"])) as src, av.open(str(faststart), "w", options={"movflags": "faststart"}) as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    paths["truncated"] = write_truncated(faststart, d / "gop2s_truncated.mp4", keep=0.5)
    return paths


def one_pass_frames(path: Path, size: int) -> list[np.ndarray]:
    """Every frame that decodes, in order, as the PyAV backend read them before it seeked: the reference."""
    frames = []
    with av.open(str(path)) as container:
        try:
            for frame in container.decode(container.streams.video[0]):
                frames.append(frame.to_ndarray(format="rgb24", width=size, height=size, interpolation="BILINEAR"))
        except av.FFmpegError:  # a truncated file ends here
            pass
    return frames


@pytest.fixture()
def decoded_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the frames PyAV's decoder puts out through `container.decode`, whatever the backend's code."""
    count = [0]
    real_open = av.open

    class Counting:
        def __init__(self, container):
            self._container = container

        def __getattr__(self, name):
            return getattr(self._container, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._container.__exit__(*exc)

        def decode(self, *args, **kwargs):
            for frame in self._container.decode(*args, **kwargs):
                count[0] += 1
                yield frame

    monkeypatch.setattr(av, "open", lambda *args, **kwargs: Counting(real_open(*args, **kwargs)))
    return count


def window_indices(window: tuple[float, float], num_frames: int = 8) -> list[int]:
    start, end = int(window[0] * LONG_FPS), int(window[1] * LONG_FPS)
    return np.arange(start, end, (end - start) / num_frames, dtype=int).tolist()


@pytest.fixture(scope="module")
def long_references(long_videos: dict[str, Path]) -> dict[str, list[np.ndarray]]:
    return {name: one_pass_frames(long_videos[name], 64) for name in ("gop2s", "gop10s_b")}


@pytest.mark.parametrize("name", ["gop2s", "gop10s_b"])
@pytest.mark.parametrize("window", [(110.0, 120.0), (61.3, 62.1), (0.0, 10.0)])
def test_window_returns_the_frames_a_pass_from_the_start_returns(long_videos, long_references, name, window):
    expected = window_indices(window)
    config = preset_config("tiny", num_frames=8, img_size=64)
    clip = load_video(long_videos[name], config, window=window, backend="pyav")
    assert [read_frame_index(f) for f in denormalize(clip)] == expected
    reference = long_references[name]
    assert len(reference) == LONG_FRAMES
    frames = decode_frames(long_videos[name], expected, size=64, backend="pyav").numpy()
    assert all(np.array_equal(f, reference[i]) for f, i in zip(frames, expected))  # the very same pixels
    if decord_available():
        assert frame_ids(decode_frames(long_videos[name], expected, size=64, backend="decord")) == expected


@pytest.mark.parametrize("name, gop", [("gop2s", 50), ("gop10s_b", 250)])
def test_window_at_the_end_decodes_about_a_gop_not_the_file(long_videos, decoded_count, name, gop):
    config = preset_config("tiny", num_frames=8, img_size=64)
    clip = load_video(long_videos[name], config, window=(110.0, 120.0), backend="pyav")
    assert [read_frame_index(f) for f in denormalize(clip)] == window_indices((110.0, 120.0))
    # a pass from the start decoded 2968 frames; the window is 250 frames, plus the GOP it starts in
    assert decoded_count[0] <= 250 + 2 * gop


def test_sparse_frames_of_a_long_gop_file_take_one_pass_not_a_gop_each(long_videos, decoded_count):
    indices = list(range(0, LONG_FRAMES, 75))  # 40 frames, 3 s apart: closer than the 10 s key frames
    assert frame_ids(decode_frames(long_videos["gop10s_b"], indices, size=32, backend="pyav")) == indices
    assert decoded_count[0] <= LONG_FRAMES + 16  # a seek per frame would re-decode most GOPs several times


def test_sparse_frames_further_apart_than_a_gop_are_sought(long_videos, decoded_count):
    indices = list(range(0, LONG_FRAMES, 375))  # 15 s apart, key frames every 2 s
    assert frame_ids(decode_frames(long_videos["gop2s"], indices, size=32, backend="pyav")) == indices
    assert decoded_count[0] <= len(indices) * 50 + 16


@pytest.mark.parametrize("suffix", ["mp4", "mkv", "ts"])
def test_first_pts_not_zero_and_b_frames(long_videos, decoded_count, suffix):
    path = long_videos[f"offset.{suffix}"]
    with av.open(str(path)) as container:
        assert container.streams.video[0].start_time > 0
    window = (35.0, 39.9)
    expected = window_indices(window)
    config = preset_config("tiny", num_frames=8, img_size=64)
    clip = load_video(path, config, window=window, backend="pyav")
    assert [read_frame_index(f) for f in denormalize(clip)] == expected
    if suffix != "ts":  # MPEG-TS has no index: its seeks land late, so it is read from the start
        assert decoded_count[0] <= 122 + 2 * 50 + 16
    groups = [np.array([0, 999, 500]), np.array([998, 1, 1])]  # any order, repeats, both ends
    _, clips = decode_clips(path, groups, size=32, backend="pyav")
    assert [frame_ids(c) for c in clips] == [g.tolist() for g in groups]


def test_segments_across_a_long_file_in_one_open(long_videos, decoded_count):
    config = preset_config("tiny", num_frames=4, img_size=32)
    windows = [(0.0, 10.0), (60.0, 70.0), (112.5, 117.5)]
    clips = list(iter_video_clips(long_videos["gop2s"], config, windows, backend="pyav"))
    for c in clips:
        assert [read_frame_index(f) for f in denormalize(c.frames)] == c.frame_indices.tolist()
    assert [c.frame_indices[0] for c in clips] == [0, 1500, 2812]
    assert decoded_count[0] <= 250 + 250 + 125 + 3 * 50


@pytest.mark.parametrize("window", [(20.0, 30.0), (100.0, 110.0)])
def test_window_in_or_past_the_cut_of_a_truncated_file(long_videos, window, caplog):
    path = long_videos["truncated"]
    reference = one_pass_frames(path, 32)
    last = len(reference) - 1
    assert 1000 < last < 2000  # half the file's bytes: the frames before the cut decode
    expected = [min(i, last) for i in window_indices(window)]
    with caplog.at_level(logging.WARNING, logger="model.decode"):
        frames = decode_frames(path, window_indices(window), size=32, backend="pyav").numpy()
    assert [read_frame_index(f) for f in frames] == expected
    assert all(np.array_equal(f, reference[i]) for f, i in zip(frames, expected))
    assert ("frames decode" in caplog.text) == (expected[-1] == last)


@pytest.mark.parametrize("name", ["text", "garbage", "truncated_no_index", "header_only", "index_only"])
def test_broken_files_raise_for_a_late_window_too(broken, name):
    # a late first frame would be sought; the file must still fail as one where no frame decodes
    with pytest.raises(VideoDecodeError):
        decode_frames(broken[name], [80, 85, 89], size=32, backend="pyav")


# --- the whole pipeline ---------------------------------------------------------------------------


def denormalize(frames: torch.Tensor) -> np.ndarray:
    """float (T, 3, H, W) normalised -> uint8-range (T, H, W, 3)."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((frames * std + mean) * 255).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_video_uniform(videos, backend):
    config = preset_config("base")
    clip = load_video(videos["h264"], config, backend=backend)
    assert clip.shape == (8, 3, 224, 224) and clip.dtype == torch.float32
    assert [read_frame_index(f) for f in denormalize(clip)] == [i * 37 for i in range(8)]


def test_load_video_window_and_tiny_config(videos):
    config = preset_config("tiny", num_frames=4, img_size=64)
    clip = load_video(videos["h264"], config, window=(2.0, 4.0))  # frames [60, 120)
    assert clip.shape == (4, 3, 64, 64)
    assert [read_frame_index(f) for f in denormalize(clip)] == [60 + i * 15 for i in range(4)]


def test_iter_video_clips_splits_a_video_into_segments(videos):
    config = preset_config("tiny", num_frames=4, img_size=64)

    def segments(info):
        return [(t, min(t + 2.5, info.duration_s)) for t in np.arange(0.0, info.duration_s, 2.5)]

    clips = list(iter_video_clips(videos["h264"], config, segments))
    assert [(c.start_s, c.end_s) for c in clips] == [(0.0, 2.5), (2.5, 5.0), (5.0, 7.5), (7.5, 10.0)]
    for c in clips:
        ids = [read_frame_index(f) for f in denormalize(c.frames)]
        assert ids == c.frame_indices.tolist()
        assert all(int(c.start_s * 30) <= i < int(c.end_s * 30) for i in ids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_sampling_is_fast(videos, backend):
    indices = [i * 37 for i in range(8)]
    decode_frames(videos["h264"], indices, size=224, backend=backend)  # warm caches
    best = min(_timed(lambda: decode_frames(videos["h264"], indices, size=224, backend=backend)) for _ in range(3))
    assert best < 0.5  # measured about 0.03-0.04 s; this only catches pathological regressions


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
