"""The FastAPI application factory: `create_app(settings)`; the lifespan loads models and index once."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from .deps import require_api_key
from .engine import Engine
from .errors import StartupError, install_error_handlers
from .fastpath import SearchFastPath
from .metrics import Metrics, MetricsMiddleware
from .middleware import BodyLimitMiddleware, Drain, DrainMiddleware
from .routes import search, system, ui, videos
from .routes.ui import STATIC_DIR
from .settings import Settings

logger = logging.getLogger(__name__)

API_VERSION = "1"
DESCRIPTION = """Search a folder of videos in plain language and ask questions about a video (ALPRO).

Errors are JSON `{"error": code, "message": text}`: 401 bad API key, 404 unknown video, 413 body too large,
422 invalid input, 501 QA not configured, 503 no index yet or overloaded (with Retry-After)."""


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    """A new app; nothing is loaded until its lifespan starts (uvicorn, or TestClient as a context manager)."""
    settings = settings if settings is not None else Settings()
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
        docs_url="/docs" if settings.docs else None, redoc_url="/redoc" if settings.docs else None,
        openapi_url="/openapi.json" if settings.docs else None)
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

    # added innermost first: metrics sees everything, CORS headers go on 413s too; the /search fast path
    # answers plain searches before CORS, the body limit and the router (it hands every other case on)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "HEAD"],
                           allow_headers=["Content-Type", "X-API-Key", "Range"],
                           expose_headers=["Content-Range", "Accept-Ranges", "Retry-After"])
    if settings.search_fast_path:
        app.add_middleware(SearchFastPath, owner=app, settings=settings)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.drain = Drain()
    app.add_middleware(DrainMiddleware, drain=app.state.drain, retry_after_s=settings.retry_after_s)
    return app
