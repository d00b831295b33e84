"""Every request and response body of the HTTP API, with its limits (the OpenAPI schema is made from here)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints, model_validator

# Hard caps. Settings may lower the query length and top_k, never raise them.
MAX_QUERY_CHARS = 1000  # a query or question longer than this is refused (422), not truncated
MAX_TOP_K = 100  # results per /search page
DEFAULT_TOP_K = 10
MAX_OFFSET = 1000  # deepest result reachable through offset or cursor
MAX_RERANK = 100  # candidates VTM re-ranks at most
MAX_QA_TOP_K = 20
DEFAULT_QA_TOP_K = 5
MAX_PATH_PREFIX_CHARS = 4096
MAX_CURSOR_CHARS = 256
MAX_DURATION_S = 1e7
VIDEO_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"  # content-hash ids; an id is never a path

QueryText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUERY_CHARS)]
VideoId = Annotated[str, StringConstraints(pattern=VIDEO_ID_PATTERN, max_length=128)]


class _Request(BaseModel):
    # strict: "5" is not an int and true is not 1; unknown fields are an error, not silently ignored
    model_config = ConfigDict(extra="forbid", strict=True)


class SearchFilters(_Request):
    """Conditions on the video a result comes from."""

    path_prefix: Optional[Annotated[str, Field(min_length=1, max_length=MAX_PATH_PREFIX_CHARS)]] = Field(
        None, description="only videos in this folder or below it, or this one file: the prefix matches whole path "
        "components (`/media/lib` takes `/media/lib/a.mp4` and `/media/lib/x/b.mp4`, not `/media/library2/c.mp4`); "
        "a trailing slash makes no difference; compared with the absolute paths the index stores, as given "
        "(no other normalisation)")
    min_duration: Optional[Annotated[float, Field(ge=0, le=MAX_DURATION_S, allow_inf_nan=False)]] = Field(
        None, description="only videos at least this long, seconds")
    max_duration: Optional[Annotated[float, Field(ge=0, le=MAX_DURATION_S, allow_inf_nan=False)]] = Field(
        None, description="only videos at most this long, seconds")

    @model_validator(mode="after")
    def _ordered(self) -> "SearchFilters":
        if self.min_duration is not None and self.max_duration is not None and self.min_duration > self.max_duration:
            raise ValueError(f"min_duration ({self.min_duration}) is greater than max_duration ({self.max_duration})")
        return self


class SearchRequest(_Request):
    """A text query; results are videos, each at its best-matching moment."""

    query: QueryText = Field(description=f"what to look for, 1 to {MAX_QUERY_CHARS} characters")
    top_k: StrictInt = Field(DEFAULT_TOP_K, ge=1, le=MAX_TOP_K, description="videos per page")
    rerank: Union[StrictBool, Annotated[StrictInt, Field(ge=0, le=MAX_RERANK)]] = Field(
        False, description="VTM re-ranking: true (the server's default count), false/0, or the number of top "
        "candidates to re-rank")
    offset: StrictInt = Field(0, ge=0, le=MAX_OFFSET, description="results to skip (or pass `cursor`)")
    cursor: Optional[Annotated[str, Field(min_length=1, max_length=MAX_CURSOR_CHARS)]] = Field(
        None, description="`next_cursor` of the previous page of the same query")
    filters: Optional[SearchFilters] = None

    @model_validator(mode="after")
    def _one_position(self) -> "SearchRequest":
        if self.cursor is not None and self.offset:
            raise ValueError("give either offset or cursor, not both")
        return self


class SearchHit(BaseModel):
    video_id: str
    path: str = Field(description="the video file on the server")
    name: str = Field(description="the file name")
    score: float = Field(description="cosine similarity, or VTM logit + cosine where re-ranked")
    start: float = Field(description="moment start, seconds")
    end: float = Field(description="moment end, seconds")
    segment_index: int
    thumbnail_url: Optional[str]
    stream_url: str
    vtc_score: float = Field(description="cosine similarity of the query and the moment")
    vtm_score: Optional[float] = Field(None, description="VTM match logit, where re-ranked")


class StageTimings(BaseModel):
    encode_ms: float
    faiss_ms: float
    db_ms: float
    rerank_ms: float


class SearchResponse(BaseModel):
    query: str
    results: list[SearchHit]
    offset: int
    next_cursor: Optional[str] = Field(description="pass as `cursor` for the next page; null on the last")
    reranked: int = Field(description="how many of the top candidates were VTM re-ranked")
    index_version: int
    took_ms: float
    timings: StageTimings


class QARequest(_Request):
    video_id: VideoId
    question: QueryText = Field(description=f"1 to {MAX_QUERY_CHARS} characters")
    top_k: StrictInt = Field(DEFAULT_QA_TOP_K, ge=1, le=MAX_QA_TOP_K)


class Answer(BaseModel):
    answer: str
    score: float = Field(description="softmax probability over the answer vocabulary")


class QAResponse(BaseModel):
    video_id: str
    question: str
    answers: list[Answer]
    cached: bool = Field(description="whether the video's features were already cached")
    took_ms: float


class SegmentInfo(BaseModel):
    index: int
    start: float
    end: float
    thumbnail_url: Optional[str]


class VideoDetail(BaseModel):
    video_id: str
    path: str
    name: str
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
    error: str = Field(description="a stable machine-readable code")
    message: str = Field(description="what went wrong, for people")
    detail: Optional[list[dict]] = Field(None, description="per-field problems of a 422")
