"""API docs that the service serves itself: no request leaves the machine that opens /docs.

FastAPI's own /docs and /redoc load Swagger UI and ReDoc from a public CDN
(and Swagger UI then asks an online validator for a badge), so they break
behind a firewall and tell a third party who reads the docs. Here the pages
load the copies bundled in the `fastapi-offline` package, served from
DOCS_ASSETS, and the validator is off.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

DOCS, REDOC = "/docs", "/redoc"
OAUTH2_REDIRECT = f"{DOCS}/oauth2-redirect"
DOCS_ASSETS = "/docs/assets"
# file -> media type; fastapi-offline ships exactly these.
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
          "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}


def asset_folder() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def install_docs(app: FastAPI) -> set[str]:
    """Add /docs, its OAuth2 redirect, /redoc and their assets to `app` (created with docs_url=None,
    redoc_url=None); returns every path added, for the guard to leave open."""
    folder, title, openapi_url = asset_folder(), app.title, app.openapi_url
    missing = [name for name in ASSETS if not (folder / name).is_file()]
    if missing:  # a fastapi-offline release that moved its files: say so at start-up, not on a blank page
        raise RuntimeError(f"fastapi-offline has no {', '.join(missing)} in {folder}")
    asset = {name: f"{DOCS_ASSETS}/{name}" for name in ASSETS}

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{title} - Swagger UI", oauth2_redirect_url=OAUTH2_REDIRECT,
            swagger_js_url=asset["swagger-ui-bundle.js"], swagger_css_url=asset["swagger-ui.css"],
            swagger_favicon_url=asset["favicon.png"],
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None})

    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi_url, title=f"{title} - ReDoc",
                              redoc_js_url=asset["redoc.standalone.js"], redoc_favicon_url=asset["favicon.png"],
                              with_google_fonts=False)

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    app.add_api_route(DOCS, swagger_ui, include_in_schema=False)
    app.add_api_route(OAUTH2_REDIRECT, oauth2_redirect, include_in_schema=False)
    app.add_api_route(REDOC, redoc, include_in_schema=False)
    for name, media_type in ASSETS.items():
        app.add_api_route(asset[name], _file_route(folder / name, media_type), include_in_schema=False)
    return {DOCS, OAUTH2_REDIRECT, REDOC, *asset.values()}


def _file_route(file: Path, media_type: str) -> object:
    """A handler with no parameters (FastAPI would read any as query parameters) serving one file."""
    async def serve() -> FileResponse:
        return FileResponse(file, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})

    return serve
