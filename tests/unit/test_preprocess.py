"""Frame sampling (reference formulas), windows, resizing and normalisation; no video files."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from model.config import CLIP_MEAN, CLIP_STD, PreprocessConfig, preset_config
from model.decode import VideoError, VideoInfo
from model.preprocess import (
    SamplingError,
    normalize_frames,
    resize_frames,
    sample_frame_indices,
    to_channels_first,
    window_frame_range,
)
from tests.conftest import load_reference

# --- uniform ---------------------------------------------------------------------------------------


def test_uniform_300_frames_8_matches_reference_literal():
    # np.arange(0, 300, 37.5, dtype=int): numpy truncates the step to 37
    assert sample_frame_indices(300, 8).tolist() == [0, 37, 74, 111, 148, 185, 222, 259]


@pytest.mark.parametrize("vlen, num", [(300, 8), (13, 8), (8, 8), (1000, 16), (61, 4), (10, 3), (9, 1), (4999, 32)])
def test_uniform_is_start_plus_i_times_floor_step(vlen, num):
    expected = [i * (vlen // num) for i in range(num)]
    assert sample_frame_indices(vlen, num, "uniform").tolist() == expected


def test_uniform_inside_a_window_uses_the_window_length():
    expected = [100 + i * (100 // 8) for i in range(8)]
    assert sample_frame_indices(300, 8, "uniform", start=100, end=200).tolist() == expected


@pytest.mark.parametrize("sampling", ["uniform", "rand", "headtail"])
@pytest.mark.parametrize("vlen, num", [(5, 8), (1, 8), (3, 4)])
def test_fewer_frames_than_asked_repeats_each_frame_in_order(sampling, vlen, num):
    expected = [math.floor(i * vlen / num) for i in range(num)]
    assert sample_frame_indices(vlen, num, sampling, rng=random.Random(0)).tolist() == expected


def test_short_window_repeats_inside_the_window():
    assert sample_frame_indices(300, 4, start=10, end=12).tolist() == [10, 10, 11, 11]


# --- random strategies ----------------------------------------------------------------------------


def test_rand_equals_reference_with_the_same_rng():
    got = sample_frame_indices(200, 8, "rand", rng=random.Random(7))
    assert got.tolist() == sorted(random.Random(7).sample(range(200), 8))
    assert got.dtype == np.int64


def test_rand_with_numpy_generator_is_reproducible_distinct_and_sorted():
    a = sample_frame_indices(50, 16, "rand", rng=np.random.default_rng(3))
    b = sample_frame_indices(50, 16, "rand", rng=np.random.default_rng(3))
    assert a.tolist() == b.tolist()
    assert len(set(a.tolist())) == 16 and a.tolist() == sorted(a.tolist())
    assert a.min() >= 0 and a.max() < 50


def test_rand_inside_a_window():
    got = sample_frame_indices(1000, 8, "rand", start=300, end=330, rng=random.Random(1))
    assert got.min() >= 300 and got.max() < 330 and len(set(got.tolist())) == 8


def test_headtail_equals_reference_with_the_same_rng():
    r = random.Random(11)
    expected = sorted(r.sample(range(50), 4)) + sorted(r.sample(range(50, 100), 4))
    assert sample_frame_indices(100, 8, "headtail", rng=random.Random(11)).tolist() == expected


def test_headtail_odd_count_gives_the_tail_the_extra_frame():
    got = sample_frame_indices(100, 5, "headtail", rng=random.Random(0)).tolist()
    assert len(got) == 5
    assert all(i < 50 for i in got[:2]) and all(50 <= i < 100 for i in got[2:])


@pytest.mark.parametrize(
    "kwargs",
    [dict(vlen=10, num_frames=4, sampling="middle"), dict(vlen=10, num_frames=0), dict(vlen=0, num_frames=4),
     dict(vlen=10, num_frames=4, start=5, end=5), dict(vlen=10, num_frames=4, start=0, end=11)],
)
def test_bad_sampling_requests_raise(kwargs):
    with pytest.raises(SamplingError):
        sample_frame_indices(**kwargs)
    assert issubclass(SamplingError, ValueError)


# --- windows --------------------------------------------------------------------------------------

INFO = VideoInfo(num_frames=300, fps=30.0, duration_s=10.0, width=320, height=240, codec="h264")


@pytest.mark.parametrize(
    "window, expected",
    [((1.0, 2.0), (30, 60)), ((0.0, 10.0), (0, 300)), ((9.99, 12.0), (299, 300)), ((1.0, 1.01), (30, 31))],
)
def test_window_frame_range(window, expected):
    assert window_frame_range(INFO, window) == expected


@pytest.mark.parametrize("window", [(10.5, 11.0), (2.0, 1.0), (-1.0, 1.0), (3.0, 3.0)])
def test_bad_windows_raise(window):
    with pytest.raises(SamplingError):
        window_frame_range(INFO, window)


# --- pixels ---------------------------------------------------------------------------------------


def test_normalize_constant_frames_matches_mean_std_math():
    rgb = (10, 128, 250)
    frames = torch.tensor(rgb, dtype=torch.uint8).view(1, 1, 1, 3).expand(2, 4, 5, 3)  # (T, H, W, 3)
    out = normalize_frames(frames, PreprocessConfig())
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32
    for c in range(3):
        expected = (rgb[c] / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]
        assert torch.allclose(out[:, c], torch.full_like(out[:, c], expected), atol=1e-6)


def test_normalize_accepts_both_layouts_and_configs():
    frames = torch.randint(0, 256, (3, 6, 7, 3), dtype=torch.uint8)
    a = normalize_frames(frames, preset_config("tiny"))
    b = normalize_frames(frames.permute(0, 3, 1, 2), PreprocessConfig())
    assert torch.equal(a, b)


def test_normalize_reproduces_reference_fixture():
    video_uint8 = load_reference("video_uint8.pt")  # (B, T, 3, H, W) uint8, from the official pipeline
    expected = load_reference("video.pt")
    assert torch.allclose(normalize_frames(video_uint8, PreprocessConfig()), expected, atol=1e-6)


def test_resize_straight_to_square_ignores_aspect_and_keeps_dtype():
    frames = torch.zeros(2, 240, 320, 3, dtype=torch.uint8)
    frames[:, :, 160:] = 200  # right half bright
    out = resize_frames(frames, 224)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.uint8
    assert out[:, :, :, :100].max() == 0 and out[:, :, :, 124:].min() == 200  # halves stay halves, no crop
    assert resize_frames(frames.float(), (100, 50)).shape == (2, 3, 100, 50)


def test_resize_keeps_constant_images_constant_and_is_a_no_op_at_size():
    frames = torch.full((1, 3, 37, 53), 77, dtype=torch.uint8)
    assert torch.equal(resize_frames(frames, 16), torch.full((1, 3, 16, 16), 77, dtype=torch.uint8))
    assert resize_frames(frames, (37, 53)) is frames


@pytest.mark.parametrize("shape", [(4, 5), (2, 4, 5, 6)])
def test_bad_frame_shapes_raise(shape):
    with pytest.raises(VideoError):
        to_channels_first(torch.zeros(shape))
