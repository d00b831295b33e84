"""The index_versions table: which versions were published, with what, and which retention has deleted.

A record per version, kept after its files go, so that version numbers never repeat (a snapshot's number
names one content for good) and operators can see when each version was made.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .tables import IndexVersion


def next_version(session: Session) -> int:
    return int(session.scalar(select(func.max(IndexVersion.version))) or 0) + 1


def record_version(session: Session, *, version: int, created_at: datetime, fingerprint: str, num_videos: int,
                   num_segments: int, index_type: str, recall_at_10: float | None) -> None:
    session.merge(IndexVersion(version=version, created_at=created_at, checkpoint_fingerprint=fingerprint,
                               num_videos=num_videos, num_segments=num_segments, index_type=index_type,
                               status="published", recall_at_10=recall_at_10))
    session.commit()


def mark_versions_deleted(session: Session, versions: Iterable[int]) -> None:
    versions = list(versions)
    if versions:
        session.execute(update(IndexVersion).where(IndexVersion.version.in_(versions)).values(status="deleted"))
        session.commit()


__all__ = ["mark_versions_deleted", "next_version", "record_version"]
