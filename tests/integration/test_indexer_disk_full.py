"""The data dir's disk fills up during a run (a real, small tmpfs): alpro-index fails with a clear message,
the current version stays current and servable, and the next run with space succeeds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from store.layout import DataDir
from tests.integration.test_service_support import make_videos


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


pytestmark = pytest.mark.skipif(not _can_mount(), reason="mounting a tmpfs needs root (CI runs as root)")


@pytest.fixture
def small_disk():
    mount_point = Path(tempfile.mkdtemp(prefix="alpro-tmpfs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        mount_point.rmdir()


def index(videos: Path, data: Path, checkpoint: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALPRO_")}
    return subprocess.run([str(Path(sys.executable).parent / "alpro-index"), str(videos), "--data-dir", str(data),
                           "--checkpoint", str(checkpoint), "--segment-seconds", "1", "--num-workers", "0",
                           "--store-tokens", "--no-progress"], env=env, capture_output=True, text=True, timeout=600)


def test_a_full_disk_fails_clearly_and_loses_nothing(small_disk, tmp_path):
    from tests.integration.test_service_support import make_checkpoints

    retrieval, _ = make_checkpoints(tmp_path / "checkpoints")
    videos = tmp_path / "videos"
    make_videos(videos, ("red", "blue"))
    data = small_disk / "data"
    first = index(videos, data, retrieval)
    assert first.returncode == 0, first.stderr
    assert DataDir(data).current_version() == 1

    make_videos(videos, ("green", "yellow", "black"))
    free = shutil.disk_usage(small_disk).free
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # leave about what one more video's tokens need, not what a version needs
        f.write(b"\0" * max(0, free - 96 * 1024))
    full = index(videos, data, retrieval)
    assert full.returncode != 0, full.stdout
    assert "no space left" in full.stderr.lower() and "Traceback" not in full.stderr, full.stderr
    datadir = DataDir(data)
    assert datadir.current_version() == 1
    with datadir.open_index() as snapshot:  # the current version is whole and servable
        assert snapshot.num_vectors == 4

    filler.unlink()
    again = index(videos, data, retrieval)
    assert again.returncode == 0, again.stderr
    assert DataDir(data).current_version() == 2
    with DataDir(data).open_index() as snapshot:
        assert snapshot.num_vectors == 10  # five 2-second videos, 1-second moments
    leftovers = [p.name for p in (data / "index").iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert not leftovers, leftovers
