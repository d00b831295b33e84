"""POST /qa: a question about one video; answers, grounded in the moment they come from on a long video."""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, Field, StrictInt

from .common import MAX_QUERY_CHARS, QueryText, Request, VideoId

MAX_QA_TOP_K = 20
DEFAULT_QA_TOP_K = 5


class QARequest(Request):
    video_id: VideoId
    question: QueryText = Field(description=f"1 to {MAX_QUERY_CHARS} characters")
    top_k: StrictInt = Field(DEFAULT_QA_TOP_K, ge=1, le=MAX_QA_TOP_K)
    min_confidence: Optional[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] = Field(
        None, description="abstain (no answers, `abstained: true`) when the best answer's probability is below this; "
        "default: the server's ALPRO_QA_MIN_CONFIDENCE for a grounded answer, none for a one-segment video")


class AnswerMoment(BaseModel):
    """The segment of the video an answer comes from."""

    segment_index: int
    start: float = Field(description="seconds")
    end: float = Field(description="seconds")


class ExaminedMoment(AnswerMoment):
    similarity: float = Field(description="cosine similarity of the question and this segment (VTC), -1 to 1")


class Answer(BaseModel):
    answer: str
    score: float = Field(description="softmax probability over the answer vocabulary (grounded: at its moment)")
    moment: Optional[AnswerMoment] = Field(None, description="where in the video the answer comes from (grounded "
                                           "answers); null when the whole video was answered on")


class QAResponse(BaseModel):
    video_id: str
    question: str
    answers: list[Answer] = Field(description="best first; empty when abstained")
    grounded: bool = Field(False, description="the video's segments were ranked by the question and the best few "
                           "answered on (a video indexed as more than one segment)")
    abstained: bool = Field(False, description="the best answer's probability was below `min_confidence`")
    min_confidence: Optional[float] = Field(None, description="the threshold applied, if any")
    moments: list[ExaminedMoment] = Field(default_factory=list, description="grounded: the segments answered on, "
                                          "most similar to the question first")
    cached: bool = Field(description="whether the video's features were already cached")
    took_ms: float
