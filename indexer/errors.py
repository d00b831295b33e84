"""Failures of an indexing run that are the environment's, not a bug: the CLI names them and exits non-zero
with a code of their own; nothing of the run is lost that was finished, and the next run resumes."""

from __future__ import annotations

import errno

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class MetadataDatabaseError(RuntimeError):
    """The metadata database failed or went away mid-run (e.g. PostgreSQL stopped): run again when it is back."""


class DiskFullError(OSError):
    """The data dir's disk (or quota) is full: free space and run again."""


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _NO_SPACE


def database_reason(error: BaseException) -> str:
    """The first line of what the database driver said (SQLAlchemy wraps it in `orig`), for one-line messages."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
