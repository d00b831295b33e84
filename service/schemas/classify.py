"""POST /classify: zero-shot labels through ALPRO's entity prompts, for one video or over the library."""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, Field, StringConstraints, StrictInt, field_validator

from .common import Request, VideoId
from .search import Moment, SearchHit

MAX_LABELS = 100
MAX_LABEL_CHARS = 100
MAX_TEMPLATES = 32
MAX_TEMPLATE_CHARS = 200
MAX_PROMPTS = 1200  # labels x templates per request: the text encoder's work is bounded
MAX_CLASSIFY_TOP_K = 50
DEFAULT_CLASSIFY_TOP_K = 5

Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_LABEL_CHARS)]
Template = Annotated[str, StringConstraints(min_length=2, max_length=MAX_TEMPLATE_CHARS)]


class ClassifyRequest(Request):
    labels: list[Label] = Field(min_length=1, max_length=MAX_LABELS, description=f"1 to {MAX_LABELS} distinct labels")
    video_id: Optional[VideoId] = Field(None, description="score the labels on this video; without it, each label's "
                                        "top videos in the library")
    templates: Optional[list[Template]] = Field(
        None, min_length=1, max_length=MAX_TEMPLATES, description="prompt templates, each with `{}` once where the "
        "label goes; default: the 12 video templates of ALPRO's prompter (\"A footage of a {}.\", ...), ensembled by "
        "averaging their normalised text features")
    top_k: StrictInt = Field(DEFAULT_CLASSIFY_TOP_K, ge=1, le=MAX_CLASSIFY_TOP_K,
                             description="videos per label without `video_id`")

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        seen: set[str] = set()
        for label in labels:
            if label in seen:
                raise ValueError(f"label {label!r} is given twice")
            seen.add(label)
        return labels

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, templates: Optional[list[str]]) -> Optional[list[str]]:
        for template in templates or ():
            if template.count("{}") != 1 or template.replace("{}", "").count("{") or template.replace(
                    "{}", "").count("}"):
                raise ValueError(f"template {template!r} must hold {{}} exactly once and no other braces")
        return templates


class LabelMatch(SearchHit):
    """A library video for a label (without `video_id`)."""

    probability: float = Field(description="this label's share of the softmax over the request's labels at the "
                               "video's best moment")


class LabelScore(BaseModel):
    label: str
    probability: Optional[float] = Field(None, description="with `video_id`: softmax over the labels of cosine / "
                                         "the model's temperature, each label at its best segment")
    similarity: Optional[float] = Field(None, description="with `video_id`: cosine of the label's prompt feature "
                                        "and its best segment")
    moment: Optional[Moment] = Field(None, description="with `video_id`: the segment that scores this label highest")
    videos: list[LabelMatch] = Field(default_factory=list, description="without `video_id`: the label's top videos")


class ClassifyResponse(BaseModel):
    video_id: Optional[str]
    labels: list[LabelScore] = Field(description="with `video_id`: most probable first; without: in request order")
    templates: int = Field(description="prompt templates ensembled")
    temperature: float = Field(description="the retrieval model's VTC temperature the softmax divides by")
    index_version: int
    took_ms: float
