"""/: the dashboard, a static page whose scripts read the API from the browser.

The page and its assets hold no data, so they need no token; every request the page makes carries the API token the
user entered (kept in the browser's localStorage), like any other client.
"""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(__file__).resolve().parents[2] / "static" / "dashboard"
ASSETS_URL = "/static/dashboard"

router = APIRouter(include_in_schema=False)
router.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="dashboard")


@router.get("/")
def dashboard() -> FileResponse:
    return FileResponse(ASSETS / "index.html", headers={"Cache-Control": "no-cache"})
