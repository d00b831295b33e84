"""POST /search and GET /videos/{id}/similar: the query (text, image or example moment), its filters and pages,
and the ranked videos with their moments."""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, Field, StrictBool, StrictInt, model_validator

from .common import MAX_DURATION_S, MAX_QUERY_CHARS, QueryText, Request, VideoId

MAX_TOP_K = 100  # results per /search page
DEFAULT_TOP_K = 10
MAX_OFFSET = 1000  # deepest result reachable through offset or cursor
MAX_RERANK = 100  # candidates VTM re-ranks at most
MAX_PATH_PREFIX_CHARS = 4096
MAX_CURSOR_CHARS = 256


class SearchFilters(Request):
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


MAX_IMAGE_CHARS = 100 * 2**20  # base64 characters of an image at most, whatever the settings (they bound it lower)
EXAMPLE_TOLERANCE_S = 0.05  # an example window within this of an indexed segment's ends is that segment


class Example(Request):
    """A moment of an indexed video, to find moments like it."""

    video_id: VideoId
    start: Annotated[float, Field(ge=0, le=MAX_DURATION_S, allow_inf_nan=False)] = Field(description="seconds")
    end: Annotated[float, Field(gt=0, le=MAX_DURATION_S, allow_inf_nan=False)] = Field(description="seconds")

    @model_validator(mode="after")
    def _ordered(self) -> "Example":
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        return self


QueryType = Literal["text", "image", "example", "video"]


class SearchRequest(Request):
    """Exactly one of a text `query`, an `image` or an `example` moment; results are videos, each at its
    best-matching moment."""

    query: Optional[QueryText] = Field(None, description=f"what to look for, 1 to {MAX_QUERY_CHARS} characters")
    image: Optional[Annotated[str, Field(min_length=1, max_length=MAX_IMAGE_CHARS)]] = Field(
        None, description="a PNG or JPEG image, base64 (a `data:image/...;base64,` prefix is accepted): embedded by "
        "the video encoder as a clip of the image repeated over the frames")
    example: Optional[Example] = Field(
        None, description="a moment of an indexed video: its stored vector where it is one of the video's indexed "
        f"segments (both ends within {EXAMPLE_TOLERANCE_S} s), else the window decoded and encoded")
    top_k: StrictInt = Field(DEFAULT_TOP_K, ge=1, le=MAX_TOP_K, description="videos per page")
    rerank: Union[StrictBool, Annotated[StrictInt, Field(ge=0, le=MAX_RERANK)]] = Field(
        False, description="VTM re-ranking (text queries only): true (the server's default count), false/0, or the "
        "number of top candidates to re-rank")
    min_score: Optional[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] = Field(
        None, description="leave out results whose `score` is below this (a page may then hold fewer than top_k)")
    offset: StrictInt = Field(0, ge=0, le=MAX_OFFSET, description="results to skip (or pass `cursor`)")
    cursor: Optional[Annotated[str, Field(min_length=1, max_length=MAX_CURSOR_CHARS)]] = Field(
        None, description="`next_cursor` of the previous page of the same query")
    filters: Optional[SearchFilters] = None

    @model_validator(mode="after")
    def _one_query_one_position(self) -> "SearchRequest":
        given = [name for name in ("query", "image", "example") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of query, image or example" + (f" (got {', '.join(given)})"
                                                                               if given else ""))
        if self.rerank and self.query is None:
            raise ValueError("rerank applies to text queries only")
        if self.cursor is not None and self.offset:
            raise ValueError("give either offset or cursor, not both")
        return self

    @property
    def query_type(self) -> QueryType:
        return "text" if self.query is not None else "image" if self.image is not None else "example"


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
                         "result (`scored_by` \"vtm\") sigmoid(VTM log-odds + (cosine - best re-ranked cosine) / "
                         "the model's temperature), i.e. VTC and VTM evidence together (the VTM match probability "
                         "for the best-cosine candidate); otherwise (1 + cosine similarity) / 2. Re-ranked results "
                         "come first")
    scored_by: Literal["vtc", "vtm"] = Field(description="which score `score` is: \"vtm\" re-ranked (VTC "
                                             "and VTM evidence), \"vtc\" embedding similarity")
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
    query_type: QueryType = Field(description="what searched: a text `query`, an `image`, an `example` moment, or a "
                                  "`video` (GET /videos/{id}/similar)")
    query: Optional[str] = Field(description="the text query; null for the other query types")
    example_source: Optional[Literal["index", "decoded"]] = Field(
        None, description="for an example: its indexed segment's stored vector (`index`) or the window decoded and "
        "encoded (`decoded`)")
    results: list[SearchHit]
    offset: int
    next_cursor: Optional[str] = Field(description="pass as `cursor` for the next page; null on the last")
    reranked: int = Field(description="how many of the top candidates were VTM re-ranked")
    index_version: int
    took_ms: float
    timings: StageTimings
