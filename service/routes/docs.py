"""/docs (Swagger UI) and /redoc (ReDoc) served from assets installed with the package, so both work offline.

FastAPI's own doc pages load Swagger UI and ReDoc from a CDN: on a machine without internet they are blank.
These are FastAPI's documented self-hosting set-up (the app is built with docs_url=None, redoc_url=None;
these routes call `get_swagger_ui_html` / `get_redoc_html` with local asset URLs). The assets are those the
`fastapi-offline` package ships (Swagger UI 5 and ReDoc 2 standalone builds, refreshed with its releases);
only its files are used, not its app factory. Nothing the pages load comes from the internet: ReDoc's
Google fonts stay off, and its script is served with its one outside request (the Redocly logo in the side
menu, from Redocly's CDN) pointed at an empty inline image.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS_DIR = Path(str(resources.files("fastapi_offline") / "static"))
ASSETS_URL = "/docs/assets"
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
REDOC_SCRIPT_URL = "/docs/redoc.js"
REDOCLY_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_IMAGE = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"

router = APIRouter(include_in_schema=False)


def install_docs(app: FastAPI) -> None:
    """The two pages, Swagger UI's OAuth2 redirect page and the assets' mount (no API key needed: the schema
    they read, /openapi.json, is public too)."""
    missing = [name for name in ASSET_FILES if not (ASSETS_DIR / name).is_file()]
    if missing:  # a fastapi-offline release that moved its files: say so at start-up, not as blank pages
        raise FileNotFoundError(f"fastapi-offline installed without {', '.join(missing)} in {ASSETS_DIR}; "
                                f"reinstall the serve extra (scripts/install.sh)")
    app.include_router(router)
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")  # behind a proxy that serves the app under a prefix


@router.get(DOCS_URL)
async def swagger_ui(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=root + (app.openapi_url or ""), title=f"{app.title} - Swagger UI",
        oauth2_redirect_url=root + (app.swagger_ui_oauth2_redirect_url or ""),
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js", swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        # no badge that sends the schema to validator.swagger.io
        swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None})


@router.get("/docs/oauth2-redirect")
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(REDOC_URL)
async def redoc(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    root = _root(request)
    return get_redoc_html(openapi_url=root + (app.openapi_url or ""), title=f"{app.title} - ReDoc",
                          redoc_js_url=root + REDOC_SCRIPT_URL,
                          redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png", with_google_fonts=False)


@functools.cache
def _redoc_script() -> bytes:
    """ReDoc's standalone build without its request to Redocly's CDN (read once: about 1 MB)."""
    return (ASSETS_DIR / "redoc.standalone.js").read_bytes().replace(REDOCLY_LOGO, EMPTY_IMAGE)


@router.get(REDOC_SCRIPT_URL)
async def redoc_script() -> Response:
    return Response(_redoc_script(), media_type="text/javascript", headers={"Cache-Control": "public, max-age=3600"})
