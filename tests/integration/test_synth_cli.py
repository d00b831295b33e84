"""`alpro-synth` end to end: real mp4 files through libx264, annotations, determinism, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from training.synth import ClipSpec, main, render_clip

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--videos", "24", "--size", "64", "--frames-per-video", "8", "--fps", "8", "--test-videos", "6"]
SPLITS = ("train", "val", "test")


def decode(path: Path) -> np.ndarray:
    """All frames of a video file as RGB. # (T, H, W, 3) uint8"""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack(frames)


def pixel_format(path: Path) -> str:
    with av.open(str(path)) as container:
        return container.streams.video[0].codec_context.pix_fmt


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.synth", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "corpus"
    result = run_cli(str(out), *SMALL, "--seed", "7", "--json", "--workers", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    return out, json.loads(lines[0])


def test_cli_writes_the_layout_and_a_json_summary(corpus):
    out, summary = corpus
    assert summary["videos"] == {"train": 16, "val": 2, "test": 6}
    assert summary["seed"] == 7 and Path(summary["out"]) == out
    for name in ("corpus.json", "annotations/ans2label.json", "annotations/entities.txt",
                 *(f"annotations/{s}.jsonl" for s in SPLITS), *(f"annotations/qa_{s}.jsonl" for s in SPLITS)):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "corpus.json").read_text())
    assert manifest["seed"] == 7 and manifest["version"] and manifest["videos"] == summary["videos"]
    assert len(list((out / "videos").glob("*.mp4"))) == 24
    entities = (out / "annotations/entities.txt").read_text().splitlines()
    assert "circle" in entities and "blue square" in entities


def test_every_annotation_points_at_a_decodable_video(corpus):
    out, _ = corpus
    seen = set()
    for split in SPLITS:
        rows = read_jsonl(out / f"annotations/{split}.jsonl")
        assert len(rows) == {"train": 16, "val": 2, "test": 6}[split]
        for row in rows:
            path = out / row["video"]
            assert not Path(row["video"]).is_absolute() and path.is_file()
            frames = decode(path)
            assert frames.shape == (8, 64, 64, 3)
            assert pixel_format(path) == "yuv420p"
            assert path.stat().st_size < 20_000
            # The file holds what the Python API renders, up to H.264 / 4:2:0 loss.
            spec = ClipSpec.from_dict(row["spec"])
            rendered = render_clip(spec, 64, 8).astype(int)
            assert np.abs(frames.astype(int) - rendered).mean() < 4
            captions = row["caption"] if split == "train" else [row["caption"]]
            assert isinstance(captions, list) and all(isinstance(c, str) and c for c in captions)
            assert spec.caption() == captions[0]
            seen.add(row["video"])
    assert len(seen) == 24


def test_held_out_captions_are_distinct_and_qa_matches_the_splits(corpus):
    out, _ = corpus
    test_rows = read_jsonl(out / "annotations/test.jsonl")
    assert len({r["caption"] for r in test_rows}) == len(test_rows)
    ans2label = json.loads((out / "annotations/ans2label.json").read_text())
    assert sorted(ans2label.values()) == list(range(len(ans2label)))
    train_answers = set()
    for split in SPLITS:
        videos = {r["video"] for r in read_jsonl(out / f"annotations/{split}.jsonl")}
        qa = read_jsonl(out / f"annotations/qa_{split}.jsonl")
        assert {q["video"] for q in qa} == videos  # every clip has questions, none from another split
        for q in qa:
            assert set(q) == {"video", "question", "answer", "answer_type"}
            assert q["question"].endswith("?") and q["answer"]
        if split == "train":
            train_answers = {q["answer"] for q in qa}
    assert set(ans2label) == train_answers


def test_same_seed_same_corpus_any_worker_count_different_seed_differs(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    assert main([str(again), *SMALL, "--seed", "7", "--workers", "1"]) == 0
    other = tmp_path / "other"
    assert main([str(other), *SMALL, "--seed", "8", "--workers", "1"]) == 0
    for name in [f"annotations/{s}.jsonl" for s in SPLITS] + [f"annotations/qa_{s}.jsonl" for s in SPLITS] + \
            ["annotations/ans2label.json", "corpus.json"]:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    assert (other / "annotations/train.jsonl").read_text() != (out / "annotations/train.jsonl").read_text()
    for path in sorted((out / "videos").glob("*.mp4")):
        np.testing.assert_array_equal(decode(again / "videos" / path.name), decode(path))
        assert (again / "videos" / path.name).read_bytes() == path.read_bytes()
    assert any(not np.array_equal(decode(other / "videos" / p.name), decode(p))
               for p in sorted((out / "videos").glob("*.mp4")))


def test_cli_prints_a_short_summary_and_refuses_to_clobber(tmp_path):
    out = tmp_path / "c"
    result = run_cli(str(out), "--videos", "5", "--seed", "1", "--size", "32", "--frames-per-video", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "wrote 5 videos" in result.stdout and "QA pairs" in result.stdout
    again = run_cli(str(out), "--videos", "5", "--seed", "1", "--size", "32", "--frames-per-video", "4")
    assert again.returncode == 2 and "not empty" in again.stderr
    replaced = run_cli(str(out), "--videos", "6", "--seed", "1", "--size", "32", "--frames-per-video", "4",
                       "--overwrite", "--json")
    assert replaced.returncode == 0 and json.loads(replaced.stdout)["videos"]["train"] == 4
    assert len(list((out / "videos").glob("*.mp4"))) == 6


@pytest.mark.parametrize("args", [["--size", "33"], ["--videos", "0"], ["--val-fraction", "2"]])
def test_cli_rejects_bad_settings(tmp_path, args):
    result = run_cli(str(tmp_path / "bad"), "--videos", "5", "--seed", "1", *args)
    assert result.returncode == 2 and "alpro-synth: error" in result.stderr
    assert not (tmp_path / "bad" / "corpus.json").exists()
