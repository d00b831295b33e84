"""POST /search and POST /qa."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import EngineDep, error_responses
from ..schemas import QARequest, QAResponse, SearchRequest, SearchResponse

router = APIRouter(tags=["search"])


@router.post("/search", response_model=SearchResponse, responses=error_responses(401, 413, 415, 422, 503))
async def search(body: SearchRequest, engine: EngineDep) -> Response:
    """Videos matching a text query, each at its best moment; optional VTM re-ranking, filters, pages."""
    result = await engine.search(body)
    # serialised here: the engine built a valid SearchResponse, FastAPI would validate it all over again
    return Response(result.model_dump_json(), media_type="application/json")


@router.post("/qa", response_model=QAResponse, responses=error_responses(401, 404, 413, 415, 422, 501, 503))
async def answer(body: QARequest, engine: EngineDep) -> QAResponse:
    """Answers to a question about one video, best first (501 when no QA checkpoint is configured)."""
    return await engine.answer(body)
