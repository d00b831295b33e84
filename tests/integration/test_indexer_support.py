"""Fixtures and helpers shared by the indexer tests (no tests here): a tiny checkpoint, real libraries,
running the CLI, and reading a data dir back into comparable form."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

import model
from store.layout import DataDir
from indexer.settings import IndexSettings
from store.tables import Failure, Segment, Video
from tests.video_factory import write_broken_files, write_video

ROOT = Path(__file__).resolve().parents[2]
GOOD = ("clip.mp4", "nested/deeper/clip.webm", "clip.avi", "long.mp4", "no_extension_video")
BROKEN = ("empty.mp4", "notes.mp4", "garbage.mp4", "truncated_no_index.mp4", "header_only.mp4", "index_only.mp4")
LONG_SEGMENTS = 3  # long.mp4: 30 s at 10 fps with --segment-seconds 10


@dataclass
class Library:
    root: Path
    good: dict[str, Path]
    broken: dict[str, Path]


def write_good_videos(root: Path, offset: int = 0) -> dict[str, Path]:
    """Distinct real videos (frame counts differ, so contents differ); `offset` makes another set."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "nested/deeper").mkdir(parents=True, exist_ok=True)
    o = offset
    return {
        "clip.mp4": write_video(root / "clip.mp4", 40 + o, codec="h264", width=96, height=64),
        "nested/deeper/clip.webm": write_video(root / "nested/deeper/clip.webm", 30 + o, codec="vp9", width=96,
                                               height=64),
        "clip.avi": write_video(root / "clip.avi", 24 + o, codec="mpeg4", width=96, height=64),
        # 30 s at 10 fps: three 10 s moments
        "long.mp4": write_video(root / "long.mp4", 300 + o, codec="h264", width=80, height=48, fps=10),
        # an mp4 without an extension: found by its signature, not its name
        "no_extension_video": write_video(root / "no_extension_video.tmpname.mp4", 20 + o, codec="h264", width=64,
                                          height=48).rename(root / "no_extension_video"),
    }


def make_library(root: Path, *, broken: bool = True) -> Library:
    good = write_good_videos(root)
    bad: dict[str, Path] = {}
    if broken:
        fast = write_video(root.parent / f"{root.name}_faststart.mp4", 12, faststart=True, width=64, height=48)
        files = write_broken_files(root / "broken", good["clip.mp4"], fast)
        fast.unlink()
        bad = {p.name: p for name, p in files.items() if name != "missing"}
    (root / "readme.txt").write_text("not a video\n")
    (root / "meta.json").write_text("{}\n")
    (root / ".hidden.mp4").write_text("hidden files are ignored\n")
    return Library(root, good, bad)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.create_model("tiny").save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model with different random weights (a different fingerprint)."""
    import torch

    torch.manual_seed(1234)
    directory = tmp_path_factory.mktemp("ckpt2") / "tiny2"
    model.create_model("tiny").save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def library_template(tmp_path_factory: pytest.TempPathFactory) -> Library:
    return make_library(tmp_path_factory.mktemp("lib") / "videos")


@pytest.fixture
def library(library_template: Library, tmp_path: Path) -> Library:
    """A private copy (tests rename and delete files); copy2 keeps mtimes."""
    root = tmp_path / "videos"
    shutil.copytree(library_template.root, root, copy_function=shutil.copy2)
    rel = lambda p: p.relative_to(library_template.root)  # noqa: E731
    return Library(root, {k: root / rel(v) for k, v in library_template.good.items()},
                   {k: root / rel(v) for k, v in library_template.broken.items()})


def settings_for(videos: Path, data: Path, checkpoint: Path, **overrides) -> IndexSettings:
    values = dict(videos_dir=videos, data_dir=data, checkpoint=checkpoint, num_workers=0, progress=False,
                  segment_seconds=10.0, thumbnail_width=64)
    values.update(overrides)
    return IndexSettings(**values)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "indexer", *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def run_cli_json(*args: str, **kwargs) -> tuple[subprocess.CompletedProcess, dict]:
    proc = run_cli(*args, "--json", "--no-progress", **kwargs)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no JSON on stdout; rc={proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"
    return proc, json.loads(lines[-1])


def main_json(args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch | None = None,
              env: dict[str, str] | None = None) -> tuple[int, dict | None, str]:
    """Run the CLI's main() in this process (no interpreter start-up): (exit code, JSON summary, stderr)."""
    from indexer.cli import main

    for name, value in (env or {}).items():
        assert monkeypatch is not None
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = main([*args, "--json", "--no-progress"])
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.strip()]
    return code, (json.loads(lines[-1]) if lines else None), err


@dataclass
class IndexState:
    """A data dir read back: comparable across data dirs (segment ids are per data dir)."""

    version: int
    videos: dict[str, str]  # id -> path
    segments: dict[tuple[str, int], tuple[float, float, str | None]]  # (video, index) -> start, end, thumbnail
    vectors: dict[tuple[str, int], np.ndarray]  # (video, index) -> stored vector
    failures: dict[str, str]  # path -> error type
    num_vectors: int


def read_state(data: Path) -> IndexState:
    datadir = DataDir(data)
    try:
        with datadir.session() as session:
            videos = {v.id: v.path for v in session.scalars(select(Video))}
            seg_rows = list(session.scalars(select(Segment)))
            failures = {f.path: f.error_type for f in session.scalars(select(Failure))}
        with datadir.open_index() as snapshot:
            ids = snapshot.segment_ids()
            located = snapshot.locate(ids)
            vectors = snapshot.vectors(ids)
            version = snapshot.version
        by_id = {s.id: s for s in seg_rows}
        # the index and the database must agree exactly: same ids, same (video, index) for each
        assert sorted(by_id) == sorted(ids.tolist()), "index ids differ from segment rows"
        assert len(set(located)) == len(located), "duplicate (video, index) in the index"
        for seg_id, (video_id, index) in zip(ids.tolist(), located):
            assert (by_id[seg_id].video_id, by_id[seg_id].index) == (video_id, index)
        segments = {(s.video_id, s.index): (s.start_s, s.end_s, s.thumbnail) for s in seg_rows}
        return IndexState(version, videos, segments, dict(zip(located, vectors)), failures, len(ids))
    finally:
        datadir.dispose()


def assert_same_content(a: IndexState, b: IndexState, atol: float = 1e-5) -> None:
    assert a.videos.keys() == b.videos.keys()
    assert a.segments == b.segments
    assert a.failures == b.failures
    assert a.num_vectors == b.num_vectors
    for key, vector in a.vectors.items():
        np.testing.assert_allclose(vector, b.vectors[key], atol=atol, err_msg=str(key))
