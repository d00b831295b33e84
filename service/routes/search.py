"""POST /search, POST /classify and POST /qa."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import EngineDep, error_responses
from ..schemas import ClassifyRequest, ClassifyResponse, QARequest, QAResponse, SearchRequest, SearchResponse

router = APIRouter(tags=["search"])


@router.post("/search", response_model=SearchResponse, responses=error_responses(401, 404, 413, 415, 422, 503, 504))
async def search(body: SearchRequest, engine: EngineDep) -> Response:
    """Videos matching a text query, an image or an example moment (exactly one), each at its best moment;
    optional VTM re-ranking (text), filters, a score cutoff, pages."""
    result = await engine.search(body)
    # serialised here: the engine built a valid SearchResponse, FastAPI would validate it all over again
    return Response(result.model_dump_json(), media_type="application/json")


@router.post("/classify", response_model=ClassifyResponse,
             responses=error_responses(401, 404, 413, 415, 422, 503, 504))
async def classify(body: ClassifyRequest, engine: EngineDep) -> ClassifyResponse:
    """Zero-shot labels through ALPRO's entity prompts: with `video_id`, each label's probability for that video
    and the moment that scores it highest; without, each label's top videos in the library."""
    return await engine.classify(body)


@router.post("/qa", response_model=QAResponse, responses=error_responses(401, 404, 413, 415, 422, 501, 503))
async def answer(body: QARequest, engine: EngineDep) -> QAResponse:
    """Answers to a question about one video, best first; on a video indexed as several segments, grounded: each
    answer with the moment it comes from, or none (`abstained`) below `min_confidence` (501 when no QA checkpoint
    is configured)."""
    return await engine.answer(body)
