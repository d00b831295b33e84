"""Reader and embedder stages on real files: the same frames and arithmetic as model.preprocess."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import model
from indexer.embedder import Embedder, autocast_dtype, pipeline_key
from indexer.reader import (ReaderOptions, VideoReaderDataset, WorkItem, read_video, segment_windows,
                            thumbnail_size)
from model.decode import VideoInfo
from tests.video_factory import read_frame_index, write_video


def info(num_frames: int, fps: float = 10.0, width: int = 320, height: int = 240) -> VideoInfo:
    return VideoInfo(num_frames=num_frames, fps=fps, duration_s=num_frames / fps, width=width, height=height)


@pytest.mark.parametrize(("seconds", "target", "expected"), [
    (5.0, 10.0, [(0.0, 5.0)]),  # shorter than a window: one
    (10.0, 10.0, [(0.0, 10.0)]),
    (14.0, 10.0, [(0.0, 14.0)]),  # 1.4 windows round to one
    (15.0, 10.0, [(0.0, 7.5), (7.5, 15.0)]),  # 1.5 rounds up
    (30.0, 10.0, [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)]),
    (25.0, 10.0, [(0.0, 25 / 3), (25 / 3, 50 / 3), (50 / 3, 25.0)]),
    (100.0, 0.0, [(0.0, 100.0)]),  # 0 disables splitting
])
def test_segment_windows(seconds: float, target: float, expected: list[tuple[float, float]]) -> None:
    windows = segment_windows(info(int(seconds * 10)), target)
    assert len(windows) == len(expected)
    for (a, b), (c, d) in zip(windows, expected):
        assert a == pytest.approx(c) and b == pytest.approx(d)


def test_thumbnail_size_keeps_aspect() -> None:
    assert thumbnail_size(info(1, width=1280, height=720), 320) == (180, 320)
    assert thumbnail_size(info(1, width=96, height=64), 320) == (64, 96)  # never upscaled
    assert thumbnail_size(info(1, width=101, height=77), 64) == (48, 64)  # even sides


@pytest.fixture(scope="module")
def tiny() -> model.AlproModel:
    return model.create_model("tiny")


def test_reader_frames_match_iter_video_clips(tmp_path: Path, tiny: model.AlproModel) -> None:
    """Every clip equals what model.preprocess.iter_video_clips returns for the same window, bit for bit."""
    path = write_video(tmp_path / "long.mp4", 250, width=80, height=48, fps=10)  # 25 s -> 3 windows
    config = tiny.config.replace(num_frames=4)
    options = ReaderOptions.from_config(config, 10.0, chunk_clips=2, thumbnail_width=40)
    chunks = list(read_video(WorkItem(0, "vid", str(path)), options))
    assert [(c.first, c.num_clips, c.final) for c in chunks] == [(0, 2, False), (2, 1, True)]
    final = chunks[-1]
    assert final.error is None and len(final.windows) == 3 and final.info.num_frames == 250
    clips = torch.cat([c.clips for c in chunks])  # uint8 (3, T, H, W, 3)
    assert clips.dtype == torch.uint8 and clips.shape == (3, 4, 32, 32, 3)
    embedder = Embedder(tiny, torch.device("cpu"))
    ours = embedder.normalize(clips)  # (3, T, 3, H, W)
    reference = list(model.iter_video_clips(path, config, final.windows))
    for mine, ref in zip(ours, reference):
        torch.testing.assert_close(mine, ref.frames, rtol=0, atol=0)
    # frames come from inside each window: the coded frame numbers say so
    for clip, (start, end) in zip(clips, final.windows):
        numbers = [read_frame_index(frame.numpy()) for frame in clip]
        assert all(int(start * 10) <= n < end * 10 for n in numbers), (numbers, start, end)  # int(t * fps) rule
    # a thumbnail per window: the window's middle frame, 40 px wide
    assert len(final.thumbnails) == 3
    for jpeg, (start, end) in zip(final.thumbnails, final.windows):
        image = Image.open(io.BytesIO(jpeg))
        assert image.size == (40, 24)
        assert abs(read_frame_index(np.asarray(image.convert("RGB").resize((80, 48)))) - (start + end) * 5) <= 2


def test_reader_turns_broken_files_into_failure_chunks(tmp_path: Path, tiny: model.AlproModel) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 10)
    good = write_video(tmp_path / "ok.mp4", 12, width=64, height=48)
    options = ReaderOptions.from_config(tiny.config, 10.0)
    items = [WorkItem(i, f"id{i}", str(p)) for i, p in enumerate([empty, text, good])]
    chunks = list(VideoReaderDataset(items, options))  # all in this process
    errors = {c.pos: c.error for c in chunks if c.error}
    assert set(errors) == {0, 1}
    assert errors[0] == ("VideoDecodeError", "empty file")
    assert errors[1][0] == "VideoDecodeError"
    ok = [c for c in chunks if c.pos == 2]
    assert len(ok) == 1 and ok[0].final and ok[0].num_clips == 1


def test_embedder_matches_model_encode_video(tmp_path: Path, tiny: model.AlproModel) -> None:
    path = write_video(tmp_path / "a.mp4", 20, width=64, height=48)
    options = ReaderOptions.from_config(tiny.config, 10.0)
    chunk = next(iter(read_video(WorkItem(0, "a", str(path)), options)))
    embedder = Embedder(tiny, torch.device("cpu"), store_tokens=True)
    out = embedder.encode(chunk.clips)
    frames = model.load_video(path, tiny.config)
    with torch.no_grad():
        expected = tiny.encode_video(frames[None]).numpy()
        tokens = tiny.video_tokens(frames[None]).numpy()
    np.testing.assert_allclose(out.embeddings, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-6)
    assert out.tokens.dtype == np.float16
    np.testing.assert_allclose(out.tokens.astype(np.float32), tokens, atol=2e-3, rtol=2e-3)
    assert embedder.clips_encoded == 1


def test_precision_and_pipeline_key() -> None:
    assert autocast_dtype(torch.device("cpu")) is None  # fp32 on the CPU
    assert autocast_dtype(torch.device("cuda"), "fp16") == torch.float16
    assert autocast_dtype(torch.device("cuda"), "fp32") is None
    key = pipeline_key("fp", 10.0, "uniform")
    assert key == pipeline_key("fp", 10, "uniform")
    assert len({key, pipeline_key("fp2", 10.0, "uniform"), pipeline_key("fp", 5.0, "uniform"),
                pipeline_key("fp", 10.0, "rand"), pipeline_key("fp", 10.0, "uniform", "bf16")}) == 5
    assert pipeline_key("fp", 10.0, "uniform", "fp32") == key  # keys made before precision counted stay valid
    assert autocast_dtype(torch.device("cpu"), "bf16") == torch.bfloat16  # asked for explicitly: honoured
