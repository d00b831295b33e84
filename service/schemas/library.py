"""The index's videos as the library routes show them: listings, one video's details, indexing failures."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Optional

from pydantic import BaseModel, Field


class SegmentInfo(BaseModel):
    index: int
    start: float
    end: float
    thumbnail_url: Optional[str]


class VideoDetail(BaseModel):
    video_id: str
    path: str
    relative_path: str = Field(description="relative to the library folder that holds it")
    name: str
    codec: Optional[str] = Field(None, description="video codec, as FFmpeg names it")
    container: Optional[str] = Field(None, description="container format, as FFmpeg names it")
    preview_url: Optional[str] = Field(None, description="a browser-playable MP4 of the video, where one was made")
    size_bytes: Optional[int] = None
    mtime: Optional[float] = None
    duration_s: Optional[float] = None
    fps: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    num_frames: Optional[int] = None
    indexed_at: Optional[datetime] = None
    checkpoint_fingerprint: Optional[str] = None
    partial: Optional[bool] = Field(None, description="only part of the file decodes (cut short, corrupt): its "
                                    "segments cover that span; null where indexed before this was recorded")
    partial_reason: Optional[str] = Field(None, description='why, e.g. "decodable to 12.4 s of 30.0 s: stream ends '
                                          'early"')
    stream_url: str
    thumbnail_url: Optional[str]
    segments: list[SegmentInfo]


VideoSort = Literal["path", "indexed_at", "mtime", "duration", "size"]
MAX_PAGE_LIMIT = 200  # videos or failures per page of a listing
MAX_LIST_OFFSET = 10_000_000


class VideoSummary(BaseModel):
    """A video in a listing (`GET /videos/{id}` has its segments)."""

    video_id: str
    path: str
    relative_path: str
    name: str
    size_bytes: Optional[int] = None
    mtime: Optional[float] = Field(None, description="the file's modification time, seconds since the epoch")
    duration_s: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    codec: Optional[str] = None
    indexed_at: Optional[datetime] = None
    partial: Optional[bool] = None
    segments: int = Field(description="moments indexed")
    thumbnail_url: Optional[str]
    stream_url: str
    preview_url: Optional[str] = None


class VideoPage(BaseModel):
    total: int = Field(description="videos that pass the filters")
    offset: int
    limit: int
    videos: list[VideoSummary]


class FailureInfo(BaseModel):
    """A file the indexer could not index, the last time it tried."""

    path: str
    relative_path: str
    name: str
    reason: str
    error_type: str
    size_bytes: Optional[int] = None
    recorded_at: Optional[datetime] = None


class FailurePage(BaseModel):
    total: int
    offset: int
    limit: int
    failures: list[FailureInfo]


