"""Leases on index versions: a reader (the service) holds a shared lock on the version it serves, and
retention deletes only versions no reader holds (indexer/README.md, "Retention").

Plain `flock` on DATA_DIR/index/leases/vNNNNNN.lock: it holds across processes and containers of one host,
not across NFS clients. A reader that cannot write the data dir serves without a lease (logged).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)

LEASES_DIR = "leases"


def lease_path(index_dir: Path, version: int) -> Path:
    return index_dir / LEASES_DIR / f"v{version:06d}.lock"


class VersionLease:
    """A reader's shared lock on one version: retention never deletes a version while a lease on it is held."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @classmethod
    def acquire(cls, index_dir: Path, version: int) -> "VersionLease":
        path = lease_path(index_dir, version)
        try:
            path.parent.mkdir(exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            logger.warning("no lease on index version %d (%s): retention may delete it while it is served", version, e)
            return cls(None)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


@contextlib.contextmanager
def version_unleased(index_dir: Path, version: int) -> Iterator[bool]:
    """Yields whether no reader holds a lease on this version; while True, none can take one (retention deletes
    the version inside this block; a reader that comes later finds the version gone)."""
    path = lease_path(index_dir, version)
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # created if need be, so a reader cannot slip in unseen
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            yield False
            return
        yield True
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)
