"""Every request and response body of the HTTP API, with its limits (the OpenAPI schema is made from here), one
module per route family."""

from .classify import (DEFAULT_CLASSIFY_TOP_K, MAX_CLASSIFY_TOP_K, MAX_LABELS, MAX_PROMPTS, MAX_TEMPLATES,
                       ClassifyRequest, ClassifyResponse, LabelMatch, LabelScore)
from .common import MAX_DURATION_S, MAX_QUERY_CHARS, VIDEO_ID_PATTERN, QueryText, Request, VideoId
from .library import (MAX_LIST_OFFSET, MAX_PAGE_LIMIT, FailureInfo, FailurePage, SegmentInfo, VideoDetail, VideoPage,
                      VideoSort, VideoSummary)
from .qa import DEFAULT_QA_TOP_K, MAX_QA_TOP_K, Answer, AnswerMoment, ExaminedMoment, QARequest, QAResponse
from .search import (DEFAULT_TOP_K, EXAMPLE_TOLERANCE_S, MAX_CURSOR_CHARS, MAX_IMAGE_CHARS, MAX_MOMENTS, MAX_OFFSET,
                     MAX_PATH_PREFIX_CHARS, MAX_RERANK, MAX_TOP_K, Example, Moment, QueryType, SearchFilters,
                     SearchHit, SearchRequest, SearchResponse, StageTimings)
from .system import (CheckpointInfo, ErrorResponse, HealthResponse, IndexInfo, ReadyResponse, StatsResponse)

__all__ = [
    "DEFAULT_CLASSIFY_TOP_K", "MAX_CLASSIFY_TOP_K", "MAX_LABELS", "MAX_PROMPTS", "MAX_TEMPLATES", "ClassifyRequest",
    "ClassifyResponse", "LabelMatch", "LabelScore", "MAX_DURATION_S", "MAX_QUERY_CHARS", "VIDEO_ID_PATTERN",
    "QueryText", "Request", "VideoId", "MAX_LIST_OFFSET", "MAX_PAGE_LIMIT", "FailureInfo", "FailurePage",
    "SegmentInfo", "VideoDetail", "VideoPage", "VideoSort", "VideoSummary", "DEFAULT_QA_TOP_K", "MAX_QA_TOP_K",
    "Answer", "AnswerMoment", "ExaminedMoment", "QARequest", "QAResponse", "DEFAULT_TOP_K", "EXAMPLE_TOLERANCE_S",
    "MAX_CURSOR_CHARS", "MAX_IMAGE_CHARS", "MAX_MOMENTS", "MAX_OFFSET", "MAX_PATH_PREFIX_CHARS", "MAX_RERANK",
    "MAX_TOP_K", "Example", "Moment", "QueryType", "SearchFilters", "SearchHit", "SearchRequest", "SearchResponse",
    "StageTimings", "CheckpointInfo", "ErrorResponse", "HealthResponse", "IndexInfo", "ReadyResponse",
    "StatsResponse",
]
