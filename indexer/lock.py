"""One indexer per data dir: an exclusive POSIX record lock on DATA_DIR/indexer.lock.

A POSIX (fcntl) lock belongs to the process: the kernel drops it when the process dies, however it dies
(kill -9 included), so a lock can never outlive its owner on a local filesystem, and it is not inherited
by forked decoder workers (a flock would be, and an orphaned worker would keep a dead indexer's lock).
The file's content (pid, host, start time) is only for messages; a file whose lock is free is stale
and simply taken over. Only a conflict (EACCES/EAGAIN from the non-blocking lock) means another indexer;
any other refusal (ENOLCK on NFS without a lock daemon, EOPNOTSUPP, EIO, ...) is reported as itself.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path

logger = logging.getLogger(__name__)

# POSIX locks do not exclude the process that holds them, so locks held here are also tracked here
_HELD: set[str] = set()
_HELD_GUARD = threading.Lock()

# what a non-blocking lockf (fcntl F_SETLK) answers when another process holds a conflicting lock; POSIX
# allows either of the first two, and EWOULDBLOCK is EAGAIN on Linux but not everywhere
_CONFLICT_ERRNOS = frozenset({errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK})


class DataDirLockError(RuntimeError):
    """The data dir's lock could not be taken."""


class DataDirLockedError(DataDirLockError):
    """Another indexer holds the data dir."""


class DataDirLockUnsupportedError(DataDirLockError):
    """The filesystem refused the lock for another reason than a holder (no lock support, I/O error)."""


class DataDirLock:
    """Context manager holding the data dir's lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        with _HELD_GUARD:
            if key in _HELD:
                # checked before opening: closing a second fd of the file would drop the lock we hold
                raise DataDirLockedError(f"this process already runs an indexer on {self.path.parent}")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in _CONFLICT_ERRNOS:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise DataDirLockedError(
                        f"another indexer is running on {self.path.parent} ({holder}); wait for it to finish"
                    ) from e
                os.close(fd)
                name = errno.errorcode.get(e.errno, f"errno {e.errno}") if e.errno is not None else "no errno"
                raise DataDirLockUnsupportedError(
                    f"cannot lock {self.path} ({name}: {e.strerror or e}); the filesystem of the data dir may not "
                    "support POSIX locks (NFS without a lock service, some FUSE or SMB mounts): put the data dir "
                    "on a local filesystem or enable locking there"
                ) from e
            _HELD.add(key)
        previous = _read_holder(fd)
        if previous != "unknown holder":
            logger.info("taking over stale lock %s (%s, no longer running)", self.path, previous)
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # an empty file says "free" to a reader of its content
        finally:
            os.close(self._fd)  # closing drops the lock
            self._fd = None
            with _HELD_GUARD:
                _HELD.discard(str(self.path.resolve()))

    def __enter__(self) -> "DataDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return "unknown holder"
    if not data:
        return "unknown holder"
    return f"pid {data.get('pid')} on {data.get('host')}, started {data.get('started_at')}"


__all__ = ["DataDirLock", "DataDirLockError", "DataDirLockedError", "DataDirLockUnsupportedError"]
