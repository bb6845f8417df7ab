"""The web page at ``/`` (plain HTML and a little JavaScript over the JSON API, no build step) and the
OpenAPI docs at ``/docs``, whose Swagger UI is served from the ``swagger_ui_bundle`` package: no CDN, so
the page works on an offline host and the Content-Security-Policy can stay ``script-src 'self'``."""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

router = APIRouter(include_in_schema=False)
INDEX = Path(__file__).resolve().parent.parent / "web" / "index.html"
SWAGGER_DIR = Path(swagger_ui_bundle.swagger_ui_path)
#: mounted by the app at /docs/static
swagger_assets = StaticFiles(directory=SWAGGER_DIR)

_DOCS = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>dyntta gateway - API docs</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script>
</body>
</html>
"""


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(INDEX, media_type="text/html")


@router.get("/docs")
async def docs() -> HTMLResponse:
    return HTMLResponse(_DOCS)
