"""The FastAPI application factory: `create_app(settings)`; the lifespan loads models and index once."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from settings import load_settings

from .deps import require_api_key
from .engine import Engine
from .errors import StartupError, install_error_handlers
from .fastpath import SEARCH_PATH, SearchFastPath
from .metrics import Metrics, MetricsMiddleware
from .middleware import BodyLimitMiddleware, Drain, DrainMiddleware, ErrorBodyMiddleware, JSONCORSMiddleware
from .routes import search, system, ui, videos
from .routes.docs import install_docs
from .routes.ui import STATIC_DIR
from .settings import FLAGS, Settings

logger = logging.getLogger(__name__)

API_VERSION = "1"
DESCRIPTION = """Search a folder of videos in plain language and ask questions about a video (ALPRO).

Every 4xx and 5xx response is JSON `{"error": code, "message": text}`: `error` is a stable machine-readable
code, `message` says what went wrong for people. A 422, and only a 422, adds `detail`, a list of
`{"loc", "msg", "type"}`. Every 503 carries `Retry-After`. Status and codes:

- 400 `bad_request` (e.g. a Range that is not `bytes=`), `cors_rejected` (a CORS pre-flight not allowed)
- 401 `unauthorized`: missing or wrong API key (`X-API-Key`)
- 404 `not_found` (route, segment), `video_not_found`, `video_file_missing`, `video_outside_library`
- 405 `method_not_allowed` (see `Allow`); 409 `video_file_changed`: re-index it
- 413 `payload_too_large`: body over the server's limit
- 415 `unsupported_media_type`: a request body whose Content-Type is not `application/json` (or
  `application/*+json`), or that has none
- 416 `range_not_satisfiable`: a Range outside the file
- 422 `invalid_request` (a field, named in the message and `detail`), `invalid_json` (the body is not JSON:
  the message names line, column and character), `video_undecodable`
- 500 `internal_error` (see the server log); 501 `qa_not_configured`: no QA checkpoint on this server
- 503 `index_unavailable` (no index yet), `database_unavailable`, `overloaded`, `shutting_down`,
  `unavailable`, and `not_ready` from /readyz
- 504 `deadline_exceeded`: the request took longer than the server's limit
"""


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    """A new app; nothing is loaded until its lifespan starts (uvicorn, or TestClient as a context manager)."""
    settings = settings if settings is not None else load_settings(Settings, flags=FLAGS)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            engine = await asyncio.to_thread(Engine.load, settings, metrics)
        except StartupError as e:
            logger.error("alpro-serve cannot start: %s", e)
            raise
        await engine.start()
        app.state.engine = engine
        logger.info("ready: data dir %s, index version %s, device %s", settings.data_dir, engine.index.version,
                    engine.device)
        try:
            yield
        finally:
            app.state.engine = None
            await engine.stop()

    app = FastAPI(
        title="ALPRO video search", version=API_VERSION, description=DESCRIPTION, lifespan=lifespan,
        docs_url=None, redoc_url=None, openapi_url="/openapi.json" if settings.docs else None)  # docs: install_docs
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = None
    install_error_handlers(app)

    # without a configured key there is nothing to check (and nothing to document): no per-request dependency
    protected = [Depends(require_api_key)] if settings.api_key is not None else []
    app.include_router(system.health_router)
    app.include_router(search.router, dependencies=protected)
    app.include_router(videos.router, dependencies=protected)
    app.include_router(system.router, dependencies=protected)
    app.include_router(ui.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if settings.docs:
        install_docs(app)  # /docs and /redoc from installed assets, not a CDN

    # added innermost first: metrics sees everything, CORS headers go on 413s too, every error leaves in the
    # error format; the /search fast path answers plain searches before CORS, the body limit and the router
    # (it hands every other case on)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       path_limits={SEARCH_PATH: settings.search_body_bytes})
    if settings.cors_origins:
        app.add_middleware(JSONCORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "HEAD"], allow_headers=["Content-Type", "X-API-Key", "Range"],
                           expose_headers=["Content-Range", "Accept-Ranges", "Retry-After"])
    app.add_middleware(ErrorBodyMiddleware, retry_after_s=settings.retry_after_s)
    if settings.search_fast_path:
        app.add_middleware(SearchFastPath, owner=app, settings=settings)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.drain = Drain()
    app.add_middleware(DrainMiddleware, drain=app.state.drain, retry_after_s=settings.retry_after_s)
    return app
