"""`GET /dashboard` and its assets, read from this package."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from pdfleet.vocabulary import MEMORY_TAGS
from router.routes.schemas import errors

router = APIRouter()

REFRESH_MS = 1000
ASSETS = {"dashboard.js": "text/javascript", "display.js": "text/javascript",
          "dashboard.css": "text/css"}
_templates = Environment(
    loader=PackageLoader("router.dashboard", ""), autoescape=select_autoescape(["html"])
)


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard() -> HTMLResponse:
    page = _templates.get_template("dashboard.html").render(
        tags=MEMORY_TAGS, refresh_ms=REFRESH_MS
    )
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


@router.get("/dashboard/{asset}", responses=errors(404))
async def dashboard_asset(asset: str) -> Response:
    media_type = ASSETS.get(asset)
    if media_type is None:
        raise HTTPException(404, detail=f"no dashboard asset {asset!r}")
    body = files("router.dashboard").joinpath(asset).read_bytes()
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})
