"""Crash safety: the real CLI killed with SIGKILL at several points, then rerun, ends with exactly the index
and database of an uninterrupted run on the same library (same ids, segments, failures, vectors)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import model
from store.layout import DataDir
from indexer.pipeline import run_index
from tests.integration.test_indexer_support import (ROOT, assert_same_content, make_library, read_state,
                                                    settings_for)
from tests.integration.test_indexer_support import tiny_checkpoint  # noqa: F401
from tests.video_factory import write_video

EXTRA_VIDEOS = 30


@pytest.fixture(scope="module")
def crash_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lib = make_library(tmp_path_factory.mktemp("crash") / "videos")
    (lib.root / "many").mkdir()
    for i in range(EXTRA_VIDEOS):  # enough work that a kill after a few videos lands mid-run
        write_video(lib.root / "many" / f"v{i:02d}.mp4", 50 + i, width=64, height=48)
    return lib.root


def start_cli(videos: Path, data: Path, checkpoint: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "indexer", str(videos), "--data-dir", str(data), "--checkpoint", str(checkpoint),
            "--num-workers", "1", "--batch-size", "2", "--thumbnail-width", "64", "--no-progress", "-v"]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def kill_at(proc: subprocess.Popen, marker: str, count: int = 1) -> list[str]:
    """Read the child's log until `marker` has appeared `count` times, then SIGKILL it at once."""
    seen, lines = 0, []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if marker in line:
            seen += 1
            if seen == count:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return lines
    proc.wait()
    pytest.fail(f"the indexer finished (rc={proc.returncode}) before {count} x {marker!r}:\n{''.join(lines)[-3000:]}")


def count_videos(data: Path) -> int:
    datadir = DataDir(data)
    try:
        with datadir.session() as session:
            from store.tables import Video

            return session.query(Video).count()
    finally:
        datadir.dispose()


def test_sigkill_then_rerun_equals_uninterrupted_run(crash_library: Path, tmp_path: Path,
                                                     tiny_checkpoint: Path) -> None:  # noqa: F811
    net = model.load_pretrained(tiny_checkpoint)
    reference_dir = tmp_path / "reference"
    reference = run_index(settings_for(crash_library, reference_dir, tiny_checkpoint, num_workers=1, batch_size=3),
                          model=net)
    total_videos = reference.indexed
    assert total_videos > EXTRA_VIDEOS

    data = tmp_path / "crashed"
    # 1: killed while embedding, right after the third video was committed
    kill_at(start_cli(crash_library, data, tiny_checkpoint), "INFO indexer.writer: indexed ", 3)
    done = count_videos(data)
    assert 3 <= done < total_videos
    assert DataDir(data).current_version() is None  # nothing published yet

    # 2: killed again mid-run; the videos of run 1 are not decoded again
    lines = kill_at(start_cli(crash_library, data, tiny_checkpoint), "INFO indexer.writer: indexed ", 4)
    assert done + 4 <= count_videos(data) < total_videos

    # 3: killed while writing the index version
    kill_at(start_cli(crash_library, data, tiny_checkpoint), "writing index version")
    assert count_videos(data) == total_videos

    # 4: the last run finishes the job
    final = run_index(settings_for(crash_library, data, tiny_checkpoint, num_workers=1), model=net)
    assert final.decoded == 0  # every video was already embedded by the killed runs
    assert final.published and final.index_version is not None
    assert not list((data / "index").glob(".tmp-*")) and not list((data / "cache").rglob("*.tmp-*"))
    assert_same_content(read_state(data), read_state(reference_dir))
    assert lines  # the killed runs did log progress
