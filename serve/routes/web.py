"""The web page at ``/``: plain HTML and a little JavaScript over the JSON API, no build step."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)
INDEX = Path(__file__).resolve().parent.parent / "web" / "index.html"


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(INDEX, media_type="text/html")
