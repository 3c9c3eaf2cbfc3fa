"""API docs that work with the network cut: Swagger UI and ReDoc served by the service itself.

FastAPI's default ``/docs`` and ``/redoc`` pages load their JavaScript and CSS from a public
CDN, so in the restricted networks federations usually run in they render blank. The assets
come from the ``fastapi-offline`` package (Swagger UI bundle, its CSS, the ReDoc standalone
script, a favicon: files inside the installed wheel) and are served under
:data:`ASSETS_URL`; the pages are FastAPI's own HTML pointed at them. Swagger UI's online
validator badge (an image from another host) is switched off, and the one image ReDoc's
script loads from its vendor's CDN (the sidebar's "API docs by Redocly" logo) is replaced by
a blank inline image when the script is served (:func:`redoc_script`).

Create the app with ``docs_url=None, redoc_url=None`` and call :func:`add_offline_docs`.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
# images the bundled scripts would fetch from another host → a 1×1 transparent GIF
_BLANK_IMAGE = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
EXTERNAL_IMAGES = ("https://cdn.redoc.ly/redoc/logo-mini.svg",)


def assets_dir() -> Path:
    """The directory of the bundled Swagger UI / ReDoc files (checked to be complete)."""
    path = Path(str(files("fastapi_offline") / "static"))
    missing = [f for f in ASSET_FILES if not (path / f).is_file()]
    if missing:
        raise RuntimeError(f"fastapi-offline is missing its bundled docs assets {missing}")
    return path


@cache
def redoc_script() -> bytes:
    """ReDoc's standalone script with its external logo replaced (see module doc)."""
    text = (assets_dir() / "redoc.standalone.js").read_text(encoding="utf-8")
    for url in EXTERNAL_IMAGES:
        text = text.replace(url, _BLANK_IMAGE)
    return text.encode("utf-8")


def add_offline_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve ``docs_url`` (Swagger UI) and ``redoc_url`` (ReDoc) from local assets."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("create the FastAPI app with docs_url=None, redoc_url=None")

    # before the mount, so that this route wins over the file of the same name
    @app.get(f"{ASSETS_URL}/redoc.standalone.js", include_in_schema=False)
    def redoc_js() -> Response:
        return Response(
            redoc_script(),
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = docs_url + "/oauth2-redirect"

    def _root(request: Request) -> str:
        return request.scope.get("root_path", "") or ""

    @app.get(docs_url, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root + oauth2_redirect,
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
