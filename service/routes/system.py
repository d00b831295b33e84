"""Health, readiness, statistics and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ..deps import EngineDep, error_responses
from ..errors import error_body
from ..schemas import HealthResponse, ReadyResponse, StatsResponse

health_router = APIRouter(tags=["health"])
router = APIRouter(tags=["system"])


@health_router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process is alive (no API key needed)."""
    return HealthResponse()


@health_router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(request: Request) -> JSONResponse:
    """200 when the model and an index are loaded, else 503 with the reason (no API key needed)."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        body = ReadyResponse(ready=False, model=False, index_version=None, qa=False, reason="starting up")
    else:
        body = engine.readiness()
    if body.ready:
        return JSONResponse(body.model_dump())
    # a 503 like any other: the error format beside the readiness fields (Retry-After: ErrorBodyMiddleware)
    return JSONResponse({**body.model_dump(), **error_body("not_ready", body.reason or "not ready")}, status_code=503)


@router.get("/stats", response_model=StatsResponse, responses=error_responses(401, 503))
async def stats(engine: EngineDep) -> StatsResponse:
    """Counts of videos, segments, failures and partial videos; the served checkpoint(s) and index version."""
    return await engine.stats()


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}},
                                                            **error_responses(401)})
async def metrics(request: Request) -> Response:
    """Prometheus text format: per-stage latency histograms, request counts, cache hits, batch sizes."""
    registry = request.app.state.metrics
    return Response(registry.render(), media_type=registry.content_type)
