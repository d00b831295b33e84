"""Scale-out: torchrun with 2 gloo processes on the CPU builds the same index as one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_indexer_support import ROOT, assert_same_content, make_library, read_state, run_cli_json
from tests.integration.test_indexer_support import tiny_checkpoint  # noqa: F401
from tests.video_factory import write_video


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path: Path, tiny_checkpoint: Path) -> None:  # noqa: F811
    lib = make_library(tmp_path / "videos")
    for i in range(6):
        write_video(lib.root / f"extra{i}.mp4", 25 + i, width=64, height=48)
    common = ["--checkpoint", str(tiny_checkpoint), "--num-workers", "1", "--thumbnail-width", "64"]

    single = tmp_path / "single"
    proc, one = run_cli_json(str(lib.root), "--data-dir", str(single), *common)
    assert proc.returncode == 0, proc.stderr[-3000:]

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    sharded = tmp_path / "sharded"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m",
                          "indexer", str(lib.root), "--data-dir", str(sharded), *common, "--json", "--no-progress",
                          "--device", "cpu"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-5000:]
    two = json.loads([line for line in run.stdout.splitlines() if line.startswith("{")][-1])  # rank 0 prints
    assert two["world_size"] == 2
    for key in ("indexed", "failed", "segments", "found", "skipped"):
        assert two[key] == one[key], key
    assert two["pipeline"]["processes"] == 2
    assert_same_content(read_state(sharded), read_state(single))

    # a second sharded run finds everything unchanged
    again = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "indexer",
                            str(lib.root), "--data-dir", str(sharded), *common, "--json", "--no-progress",
                            "--device", "cpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-5000:]
    summary = json.loads([line for line in again.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["decoded"] == 0 and summary["unchanged"] == one["indexed"]
