"""Decoding real files with both backends: which frames come back, sizes, broken files, windows."""

from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from model.config import CLIP_MEAN, CLIP_STD, preset_config
from model.decode import (
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
