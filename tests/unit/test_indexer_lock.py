"""The data dir lock: exclusive between processes, released when its holder is killed, not inherited by
forked children (decoder workers that outlive a killed indexer must not keep it)."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from indexer.lock import DataDirLock, DataDirLockedError, DataDirLockError

ROOT = Path(__file__).resolve().parents[2]

HOLDER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from indexer.lock import DataDirLock
    lock = DataDirLock(Path(sys.argv[1]))
    lock.acquire()
    if sys.argv[2] == "fork":
        child = os.fork()
        if child == 0:              # a worker that outlives its parent, like an orphaned DataLoader worker
            sys.stdin.read()
            os._exit(0)
        print(child, flush=True)
    print("locked", flush=True)
    sys.stdin.read()                # hold until killed
""")


def start_holder(path: Path, mode: str) -> tuple[subprocess.Popen, int | None]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = int(proc.stdout.readline()) if mode == "fork" else None
    assert proc.stdout.readline().strip() == "locked"
    return proc, child


@pytest.mark.parametrize("mode", ["plain", "fork"])
def test_lock_excludes_others_and_dies_with_its_holder(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "data" / "indexer.lock"
    proc, child = start_holder(path, mode)
    try:
        with pytest.raises(DataDirLockedError, match=f"pid {proc.pid}"):
            DataDirLock(path).acquire()
        proc.send_signal(signal.SIGKILL)  # no clean-up runs; the file and its content stay behind
        proc.wait()
        assert path.read_text()  # a stale lock file
        with DataDirLock(path):  # taken over: the kernel dropped the dead holder's lock
            with pytest.raises(DataDirLockedError):
                DataDirLock(path).acquire()  # also exclusive within one process's new opens
        assert path.read_text() == ""
    finally:
        proc.kill()
        proc.wait()
        if child is not None:
            os.kill(child, signal.SIGKILL)


def _lockf_raising(err: int):
    def lockf(fd: int, cmd: int, *args: object) -> None:
        raise OSError(err, os.strerror(err))

    return lockf


@pytest.mark.parametrize("err", [errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES])
def test_a_conflict_means_another_indexer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    monkeypatch.setattr(fcntl, "lockf", _lockf_raising(err))
    with pytest.raises(DataDirLockedError, match="another indexer is running"):
        DataDirLock(tmp_path / "indexer.lock").acquire()


@pytest.mark.parametrize("err", [errno.ENOLCK, errno.EOPNOTSUPP, errno.EIO])
def test_other_lock_failures_name_the_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    """e.g. NFS without a lock daemon (ENOLCK): not "another indexer", but the errno, the file and a hint."""
    path = tmp_path / "indexer.lock"
    monkeypatch.setattr(fcntl, "lockf", _lockf_raising(err))
    with pytest.raises(DataDirLockError) as info:
        DataDirLock(path).acquire()
    assert not isinstance(info.value, DataDirLockedError)
    message = str(info.value)
    assert errno.errorcode[err] in message and str(path) in message and "support" in message
    assert "another indexer" not in message
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == err
    monkeypatch.undo()
    with DataDirLock(path):  # nothing was left marked as held by this process
        pass
