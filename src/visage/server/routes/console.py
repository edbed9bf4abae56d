"""The web console: static files in ``visage/server/console/`` (packaged with the wheel), and
``GET /`` leading to it.

The console is plain HTML, CSS and one script that calls the same ``/v1`` routes with the key
the person signs in with (kept in ``sessionStorage``): it has no rules of its own, so what it
shows follows the key's scopes and collections exactly as the API does (docs/console.md).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from ...errors import NotFound

router = APIRouter(include_in_schema=False)

ASSETS = files("visage.server") / "console"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
"""The console's files by suffix: only these are served, each with its exact type."""


@router.get("/")
def root() -> RedirectResponse:
    """A browser opening the server lands on the console."""
    return RedirectResponse("/console/", status_code=307)


@router.get("/console/")
def console_index() -> Response:
    return console_asset("index.html")


@router.get("/console/{name}")
def console_asset(name: str) -> Response:
    """One of the console's files by name (no folders: nothing outside the assets is reached)."""
    suffix = name[name.rfind(".") :] if "." in name else ""
    asset = ASSETS / name
    if "/" in name or "\\" in name or suffix not in MEDIA_TYPES or not asset.is_file():
        raise NotFound(f"no console file {name!r}")
    return Response(
        asset.read_bytes(),
        media_type=MEDIA_TYPES[suffix],
        headers={"Cache-Control": "no-cache"},
    )
