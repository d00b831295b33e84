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


MAX_MOMENTS = 5  # moments of one video a search result lists


class Moment(BaseModel):
    """A segment of a result's video that matches the query, for markers on the player's timeline."""

    segment_index: int
    start: float = Field(description="seconds")
    end: float = Field(description="seconds")
    similarity: float = Field(description="cosine similarity of the query and this moment, -1 to 1")


class SearchHit(BaseModel):
    video_id: str
    path: str = Field(description="the video file on the server (absolute)")
    relative_path: str = Field(description="the file relative to the library folder that holds it (its name "
                               "where no recorded library folder holds it)")
    name: str = Field(description="the file name")
    score: float = Field(description="relevance from 0 to 1, the key the results are ordered by: for a re-ranked "
                         "result (`scored_by` \"vtm\") the VTM match probability, softmax(itm_logits)[1] as in "
                         "ALPRO's retrieval; otherwise (1 + cosine similarity) / 2. Re-ranked results come first")
    scored_by: Literal["vtc", "vtm"] = Field(description="which score `score` is: \"vtm\" re-ranked (match "
                                             "probability), \"vtc\" embedding similarity")
    start: float = Field(description="moment start, seconds")
    end: float = Field(description="moment end, seconds")
    segment_index: int
    thumbnail_url: Optional[str]
    stream_url: str = Field(description="the original file (HTTP range requests)")
    preview_url: Optional[str] = Field(None, description="a browser-playable H.264/AAC MP4 of the whole video, "
                                       "made at index time for files browsers cannot play; null where none")
    vtc_score: float = Field(description="cosine similarity of the query and the moment, -1 to 1")
    vtm_score: Optional[float] = Field(None, description="VTM match probability, 0 to 1, where re-ranked")
    moments: list[Moment] = Field(default_factory=list, description=f"up to {MAX_MOMENTS} moments of this video "
                                  "among the hits, best first (the first is `start`..`end`)")


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
