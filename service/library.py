"""The library as a user browses it: video listings and details, failures, and the files behind them
(original video, browser preview, thumbnails), with paths shown relative to the library folder that holds
them. Every look-up is blocking and runs on the engine's database threads (`run_db`)."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

from store.layout import DataDir

from . import schemas
from .catalog import Catalog, FileCheck, SegmentRow, check_library_file
from .errors import (NotFoundError, UnavailableError, VideoFileChangedError, VideoFileMissingError, VideoNotFoundError,
                     VideoOutsideLibraryError)
from .ranking import prefix_folder, under_path

ROOTS_TTL_S = 30.0  # library folders change only when an indexer run adds one; re-read them this often

RunDb = Callable[..., Awaitable[Any]]


def stream_url(video_id: str) -> str:
    return f"/videos/{video_id}/stream"


def preview_url(video_id: str) -> str:
    return f"/videos/{video_id}/preview"


def segment_thumbnail_url(video_id: str, segment_index: int) -> str:
    return f"/videos/{video_id}/segments/{segment_index}/thumbnail"


def with_utc(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its naive datetimes marked UTC (what the indexer wrote; SQLite hands them back naive)."""
    return {k: v.replace(tzinfo=timezone.utc) if isinstance(v, datetime) and v.tzinfo is None else v
            for k, v in row.items()}


def relative_to_roots(path: str, roots: tuple[str, ...]) -> str:
    """`path` relative to the deepest recorded library folder holding it; its file name where none does."""
    best = ""
    for root in roots:
        folder = prefix_folder(root)
        if under_path(path, folder) and len(folder) >= len(best) and path != folder:
            best = folder
    if best or any(prefix_folder(r) == "" for r in roots):
        return path[len(best):].lstrip("/")
    return os.path.basename(path)


class Library:
    """Listings, details and files of the indexed videos."""

    def __init__(self, catalog: Catalog, data_dir: DataDir, run_db: RunDb) -> None:
        self.catalog = catalog
        self.data_dir = data_dir
        self._run_db = run_db
        self._roots: tuple[str, ...] = ()
        self._roots_read_at = -float("inf")
        self._roots_lock = threading.Lock()

    # --- paths as users see them

    def roots(self) -> tuple[str, ...]:
        """The library folders the indexer recorded, re-read at most every ROOTS_TTL_S. Blocking.

        Both the recorded (resolved) folders and the paths as found are compared, so a library reached through a
        link still shows relative names where its videos' paths were recorded through the link's target."""
        now = time.monotonic()
        with self._roots_lock:
            if now - self._roots_read_at < ROOTS_TTL_S:
                return self._roots
        try:
            roots = self.catalog.library_roots()
        except UnavailableError:
            with self._roots_lock:
                self._roots_read_at = now  # not again before the TTL: searches must not queue on a dead database
            raise
        with self._roots_lock:
            self._roots, self._roots_read_at = roots, now
        return roots

    def cached_roots(self) -> tuple[str, ...]:
        """The roots last read, without touching the database (for the search path, which must not wait on it)."""
        return self._roots

    def roots_stale(self) -> bool:
        return time.monotonic() - self._roots_read_at >= ROOTS_TTL_S

    def relative(self, path: str) -> str:
        return relative_to_roots(path, self._roots)

    def has_preview(self, video_id: str) -> bool:
        return self.data_dir.preview_path(video_id).is_file()

    # --- listings

    async def videos(self, *, offset: int, limit: int, sort: str, order: str, path_prefix: Optional[str],
                     min_duration: Optional[float], max_duration: Optional[float]) -> schemas.VideoPage:
        return await self._run_db(self._list_videos, offset, limit, sort, order == "desc", path_prefix,
                                  min_duration, max_duration)

    def _list_videos(self, offset: int, limit: int, sort: str, descending: bool, path_prefix: Optional[str],
                     min_duration: Optional[float], max_duration: Optional[float]) -> schemas.VideoPage:
        roots = self.roots()
        listing = self.catalog.list_videos(offset=offset, limit=limit, sort=sort, descending=descending,
                                           path_prefix=path_prefix, min_duration=min_duration,
                                           max_duration=max_duration)
        videos = []
        for row in map(with_utc, listing.videos):
            video_id = row["id"]
            fields = {k: v for k, v in row.items() if k in schemas.VideoSummary.model_fields and k != "segments"}
            videos.append(schemas.VideoSummary(
                **fields, video_id=video_id, relative_path=relative_to_roots(row["path"], roots),
                name=os.path.basename(row["path"]), segments=int(row.get("segments") or 0),
                thumbnail_url=f"/videos/{video_id}/thumbnail" if row.get("thumbnails") else None,
                stream_url=stream_url(video_id), preview_url=self._preview_url(video_id, row)))
        return schemas.VideoPage(total=listing.total, offset=offset, limit=limit, videos=videos)

    async def failures(self, *, offset: int, limit: int) -> schemas.FailurePage:
        return await self._run_db(self._failures, offset, limit)

    def _failures(self, offset: int, limit: int) -> schemas.FailurePage:
        roots = self.roots()
        total, rows = self.catalog.failures(offset=offset, limit=limit)
        return schemas.FailurePage(total=total, offset=offset, limit=limit, failures=[
            schemas.FailureInfo(**row, relative_path=relative_to_roots(row["path"], roots),
                                name=os.path.basename(row["path"])) for row in map(with_utc, rows)])

    # --- one video

    async def video(self, video_id: str) -> schemas.VideoDetail:
        return await self._run_db(self._video, video_id)

    def _video(self, video_id: str) -> schemas.VideoDetail:
        record = self.catalog.video(video_id)
        if record is None:
            raise VideoNotFoundError(f"no video with id {video_id}")
        roots = self.roots()
        segments = self.catalog.video_segments(video_id)
        fields = {k: v for k, v in with_utc(record).items() if k in schemas.VideoDetail.model_fields}
        has_thumbnail = any(s.thumbnail for s in segments)
        return schemas.VideoDetail(
            **fields, video_id=video_id, relative_path=relative_to_roots(record["path"], roots),
            name=Path(record["path"]).name, stream_url=stream_url(video_id),
            preview_url=self._preview_url(video_id, record),
            thumbnail_url=f"/videos/{video_id}/thumbnail" if has_thumbnail else None,
            segments=[schemas.SegmentInfo(index=s.index, start=s.start_s, end=s.end_s,
                                          thumbnail_url=thumbnail_url(s)) for s in segments])

    def _preview_url(self, video_id: str, record: dict[str, Any]) -> Optional[str]:
        # the database says whether the indexer made one; the file decides (it may have been deleted since)
        if record.get("preview_bytes") is None and "preview_bytes" in record:
            return None
        return preview_url(video_id) if self.has_preview(video_id) else None

    # --- files

    async def video_file(self, video_id: str) -> tuple[str, Path, os.stat_result]:
        """(its name, resolved path, checked stat) of a video's file that may be streamed: inside a library folder
        the indexer recorded and still the file it indexed (404 / 409 otherwise)."""
        return await self._run_db(self._servable_file, video_id)

    def _servable_file(self, video_id: str) -> tuple[str, Path, os.stat_result]:
        record = self.catalog.video_file(video_id)
        if record is None:
            raise VideoNotFoundError(f"no video with id {video_id}")
        found = check_library_file(record, self.catalog.library_roots())
        if found.check is FileCheck.MISSING:
            raise VideoFileMissingError(f"the file of video {video_id} is no longer on the server")
        if found.check is FileCheck.NO_ROOTS:
            raise VideoOutsideLibraryError(f"the file of video {video_id} is not served: this index records no video "
                                           "library folder (it predates them); run alpro-index once to record it")
        if found.check is FileCheck.OUTSIDE:
            raise VideoOutsideLibraryError(f"the file of video {video_id} is not inside the indexed video library")
        if found.check is FileCheck.CHANGED:
            raise VideoFileChangedError(f"the file of video {video_id} changed since it was indexed (size or "
                                        "modification time); running alpro-index picks it up")
        assert found.path is not None and found.stat is not None
        return os.path.basename(record.path), Path(found.path), found.stat

    async def preview_file(self, video_id: str) -> tuple[str, Path, os.stat_result]:
        """(a download name, path, stat) of the video's browser preview; 404 when it has none."""
        return await self._run_db(self._preview_file, video_id)

    def _preview_file(self, video_id: str) -> tuple[str, Path, os.stat_result]:
        record = self.catalog.video_file(video_id)
        if record is None:
            raise VideoNotFoundError(f"no video with id {video_id}")
        path = self.data_dir.preview_path(video_id)
        try:
            st = path.stat()
        except OSError:
            raise NotFoundError(f"video {video_id} has no preview: its original plays in browsers, or the indexer "
                                "made none (ALPRO_PREVIEWS); its stream_url serves the original") from None
        return Path(record.path).stem + ".preview.mp4", path, st

    async def thumbnail_file(self, video_id: str, segment_index: Optional[int] = None) -> Path:
        """A segment's thumbnail (the video's first with one when no index is given)."""
        return await self._run_db(self._thumbnail_file, video_id, segment_index)

    def _thumbnail_file(self, video_id: str, segment_index: Optional[int]) -> Path:
        if segment_index is None:
            if self.catalog.video_path(video_id) is None:
                raise VideoNotFoundError(f"no video with id {video_id}")
            rows = [s for s in self.catalog.video_segments(video_id) if s.thumbnail]
            row = rows[0] if rows else None
        else:
            row = self.catalog.segment(video_id, segment_index)
            if row is None:
                if self.catalog.video_path(video_id) is None:
                    raise VideoNotFoundError(f"no video with id {video_id}")
                raise NotFoundError(f"video {video_id} has no segment {segment_index}")
        if row is None or not row.thumbnail:
            raise NotFoundError(f"video {video_id} has no thumbnail" +
                                (f" for segment {segment_index}" if segment_index is not None else ""))
        root = self.data_dir.root.resolve()
        path = (root / row.thumbnail).resolve()
        if not path.is_relative_to(root) or not path.is_file():  # the DB names files inside the data dir only
            raise NotFoundError(f"the thumbnail of video {video_id} segment {row.index} is missing")
        return path


def thumbnail_url(row: SegmentRow) -> Optional[str]:
    return segment_thumbnail_url(row.video_id, row.index) if row.thumbnail else None
