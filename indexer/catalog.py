"""The indexer's reads and writes of the SQL metadata (store.tables models), one transaction per change.

Every function takes a Session and commits its own unit of work, so a crash loses at most the video
being written. Only portable SQL is used (SQLite and PostgreSQL).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from .discover import FoundFile
from store.rows import VideoRows
from store.tables import FileHash, Failure, LibraryRoot, Segment, Video, utcnow

logger = logging.getLogger(__name__)

_BATCH = 500  # rows per IN (...) list: well under every backend's parameter limit
MTIME_TOLERANCE_S = 1e-6  # a few float64 ulps of a Unix time: the same file read back from the database


@dataclass(frozen=True)
class VideoState:
    """What the database says about an indexed video."""

    id: str
    path: str
    pipeline_key: str
    checkpoint_fingerprint: str
    num_segments: int


def _chunks(items: Sequence, size: int = _BATCH) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def load_hash_cache(session: Session) -> dict[str, tuple[int, int, str]]:
    rows = session.execute(select(FileHash.path, FileHash.size_bytes, FileHash.mtime_ns, FileHash.video_id))
    return {path: (size, mtime_ns, vid) for path, size, mtime_ns, vid in rows}


def record_library_root(session: Session, root: str) -> None:
    """Remember a (resolved) videos folder this run walks; the service streams only files inside one."""
    row = session.get(LibraryRoot, root)
    now = utcnow()
    if row is None:
        session.add(LibraryRoot(path=root, first_indexed_at=now, last_indexed_at=now))
    else:
        row.last_indexed_at = now
    session.commit()


def save_hash_cache(session: Session, files: Sequence[FoundFile], ids: dict[str, str],
                    cached: dict[str, tuple[int, int, str]], forget: Iterable[str] = ()) -> None:
    """Store new or changed (path -> id) entries and forget paths that are gone.

    A video row at one of these paths with the same content takes the file's current size and mtime too
    (a touched or rewritten-but-identical file stays "unchanged" for the plan, but the service streams a
    file only while its size and mtime are the row's).
    """
    _refresh_video_stats(session, files, ids)
    now = utcnow()
    changed = [f for f in files if f.path in ids and cached.get(f.path) != (f.size, f.mtime_ns, ids[f.path])]
    for batch in _chunks(changed):
        paths = [f.path for f in batch]
        session.execute(delete(FileHash).where(FileHash.path.in_(paths)))
        session.add_all(FileHash(path=f.path, size_bytes=f.size, mtime_ns=f.mtime_ns, video_id=ids[f.path],
                                 hashed_at=now) for f in batch)
    for batch in _chunks(list(forget)):
        session.execute(delete(FileHash).where(FileHash.path.in_(batch)))
    session.commit()


def _refresh_video_stats(session: Session, files: Sequence[FoundFile], ids: dict[str, str]) -> None:
    rows = {path: (vid, size, mtime) for vid, path, size, mtime in
            session.execute(select(Video.id, Video.path, Video.size_bytes, Video.mtime))}
    for f in files:
        row = rows.get(f.path)
        if row is None or row[0] != ids.get(f.path):
            continue  # not indexed, or other content now (the plan replaces that video)
        if row[1] != f.size or abs(row[2] - f.mtime) > MTIME_TOLERANCE_S:
            session.execute(update(Video).where(Video.id == row[0], Video.path == f.path)
                            .values(size_bytes=f.size, mtime=f.mtime))


def load_videos(session: Session) -> dict[str, VideoState]:
    counts = dict(session.execute(select(Segment.video_id, func.count(Segment.id)).group_by(Segment.video_id)).all())
    rows = session.execute(select(Video.id, Video.path, Video.pipeline_key, Video.checkpoint_fingerprint))
    return {vid: VideoState(vid, path, key, fp, int(counts.get(vid, 0))) for vid, path, key, fp in rows}


def load_failures(session: Session) -> dict[str, tuple[int, float]]:
    return {path: (size, mtime) for path, size, mtime in
            session.execute(select(Failure.path, Failure.size_bytes, Failure.mtime))}


def fingerprints_in_use(session: Session) -> set[str]:
    return set(session.scalars(select(Video.checkpoint_fingerprint).distinct()))


def record_video(session: Session, *, video_id: str, file: FoundFile, all_paths: Sequence[str], info: dict,
                 starts: Sequence[float], ends: Sequence[float], thumbnails: Sequence[str | None],
                 fingerprint: str, key: str) -> list[int]:
    """Insert (or replace) a video with fresh segment rows; clear failures of its paths. Returns segment ids."""
    video = session.get(Video, video_id)
    if video is None:
        video = Video(id=video_id)
        session.add(video)
    else:
        # rows are never edited: new segment rows get new ids, so an older index version cannot
        # map a vector to a segment it did not embed
        session.execute(delete(Segment).where(Segment.video_id == video_id))
        session.expire(video, ["segments"])
    video.path = file.path
    video.size_bytes = file.size
    video.mtime = file.mtime
    video.duration_s = float(info["duration_s"])
    video.fps = float(info["fps"])
    video.width = int(info["width"])
    video.height = int(info["height"])
    video.num_frames = int(info["num_frames"])
    video.codec = str(info.get("codec", ""))
    # a cache entry written before this was recorded has no such key: unknown (NULL), not whole
    video.partial_reason = info.get("partial_reason") or None
    video.partial = (video.partial_reason is not None) if "partial_reason" in info else None
    video.indexed_at = utcnow()
    video.checkpoint_fingerprint = fingerprint
    video.pipeline_key = key
    segments = [Segment(video_id=video_id, index=i, start_s=float(s), end_s=float(e), thumbnail=t)
                for i, (s, e, t) in enumerate(zip(starts, ends, thumbnails))]
    session.add_all(segments)
    session.execute(delete(Failure).where(Failure.path.in_(list(all_paths))))
    session.flush()
    ids = [s.id for s in segments]
    session.commit()
    return ids


def record_failure(session: Session, file: FoundFile, error_type: str, reason: str) -> None:
    session.execute(delete(Failure).where(Failure.path == file.path))
    session.add(Failure(path=file.path, reason=reason[:2000], error_type=error_type[:128], size_bytes=file.size,
                        mtime=file.mtime, recorded_at=utcnow()))
    session.commit()


def update_paths(session: Session, paths: dict[str, FoundFile]) -> None:
    """A renamed or moved video keeps its id and rows; only where it was seen changes."""
    for video_id, file in paths.items():
        session.execute(update(Video).where(Video.id == video_id)
                        .values(path=file.path, size_bytes=file.size, mtime=file.mtime))
    session.commit()


def delete_failures(session: Session, paths: Iterable[str]) -> None:
    for batch in _chunks(list(paths)):
        session.execute(delete(Failure).where(Failure.path.in_(batch)))
    session.commit()


def delete_videos(session: Session, video_ids: Iterable[str]) -> None:
    for batch in _chunks(list(video_ids)):
        # explicit, not only ON DELETE CASCADE: SQLite enforces it only with foreign_keys=ON
        session.execute(delete(Segment).where(Segment.video_id.in_(batch)))
        session.execute(delete(Video).where(Video.id.in_(batch)))
    session.commit()


# a video's rows as an index version copies them (what a search result shows without the database)
IndexedVideo = VideoRows


def segments_for_index(session: Session, key: str) -> list[IndexedVideo]:
    """Every video made with this pipeline key, by video id, with its segments by index."""
    rows = session.execute(
        select(Segment.video_id, Segment.id, Segment.start_s, Segment.end_s, Segment.thumbnail, Video.path,
               Video.duration_s, Video.preview_bytes)
        .join(Video, Video.id == Segment.video_id)
        .where(Video.pipeline_key == key)
        .order_by(Segment.video_id, Segment.index)
    )
    out: list[IndexedVideo] = []
    for video_id, seg_id, start, end, thumbnail, path, duration, preview_bytes in rows:
        if not out or out[-1].video_id != video_id:
            out.append(IndexedVideo(video_id, path, None if duration is None else float(duration), [], [], [], [],
                                    preview_bytes is not None))
        video = out[-1]
        video.segment_ids.append(int(seg_id))
        video.starts.append(float(start))
        video.ends.append(float(end))
        video.thumbnails.append(bool(thumbnail))
    return out


@dataclass(frozen=True)
class PreviewState:
    """What the database says about a video's browser preview (see store.tables.Video)."""

    id: str
    path: str
    container: str  # "" until probed
    playable: bool | None  # None until probed
    preview_bytes: int | None  # None: no preview
    preview_error: str | None  # why the last try made none


def load_preview_states(session: Session) -> list[PreviewState]:
    rows = session.execute(select(Video.id, Video.path, Video.container, Video.playable, Video.preview_bytes,
                                  Video.preview_error).order_by(Video.id))
    return [PreviewState(*row) for row in rows]


def record_preview(session: Session, video_id: str, *, container: str | None = None, playable: bool | None = None,
                   preview_bytes: int | None, preview_error: str | None) -> None:
    """Store what the previewer found out (container and playable only where given)."""
    values: dict = {"preview_bytes": preview_bytes, "preview_error": preview_error[:2000] if preview_error else None}
    if container is not None:
        values["container"] = container[:64]
    if playable is not None:
        values["playable"] = playable
    session.execute(update(Video).where(Video.id == video_id).values(**values))
    session.commit()


def stale_video_ids(session: Session, key: str) -> list[str]:
    """Videos embedded under another pipeline key (another checkpoint or segmentation)."""
    return list(session.scalars(select(Video.id).where(Video.pipeline_key != key)))


__all__ = ["IndexedVideo", "PreviewState", "VideoState", "delete_failures", "delete_videos", "fingerprints_in_use",
           "load_failures", "load_hash_cache", "load_preview_states", "load_videos", "record_failure",
           "record_library_root", "record_preview", "record_video", "save_hash_cache", "segments_for_index",
           "stale_video_ids", "update_paths"]
