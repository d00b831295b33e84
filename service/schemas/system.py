"""The system routes' bodies (/healthz, /readyz, /stats) and the one error body of every 4xx and 5xx."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field


class IndexInfo(BaseModel):
    version: int
    created_at: Optional[str] = None
    index_type: Optional[str] = None
    metric: Optional[str] = None
    num_vectors: int
    num_videos: Optional[int] = None
    has_tokens: bool
    recall_at_10: Optional[float] = None


class CheckpointInfo(BaseModel):
    path: str
    fingerprint: str
    num_frames: int
    answers: Optional[int] = None


class StatsResponse(BaseModel):
    videos: int
    segments: int
    failures: int
    partial: int = Field(0, description="videos that decode only in part (indexed over the span that does)")
    library_roots: list[str] = Field(default_factory=list, description="the video folders the indexer walked "
                                     "(`path_prefix` filters take paths below them)")
    index: Optional[IndexInfo]
    index_error: Optional[str] = Field(None, description="why the newest published version is not served")
    checkpoint: Optional[CheckpointInfo]
    qa_checkpoint: Optional[CheckpointInfo]
    device: str
    uptime_s: float


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    model: bool
    index_version: Optional[int]
    qa: bool
    reason: Optional[str] = None


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx response: `{"error", "message"}`, plus `detail` on a 422 and only there."""

    error: str = Field(description="a stable machine-readable code (e.g. `invalid_json`, `video_not_found`)")
    message: str = Field(description="what went wrong, for people")
    detail: Optional[list[dict]] = Field(None, description="422 only: each problem as {loc, msg, type}")
