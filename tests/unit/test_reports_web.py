"""The page's files as served: everything it loads is ours (no CDN, works offline), and data
reaches the DOM as text only (the one markup it inserts is our own server's chart SVG)."""

from __future__ import annotations

import re

from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from services.reports.api import WEB_DIR, WEB_FILES, add_web_routes


def client() -> TestClient:
    router = APIRouter()
    add_web_routes(router)
    app = FastAPI()
    app.include_router(router)
    return TestClient(app)


def test_every_script_and_stylesheet_the_page_loads_is_served_from_the_page_itself() -> None:
    with client() as http:
        page = http.get("/ui/")
        assert page.status_code == 200
        loaded = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert loaded, "the page loads its script and stylesheet"
        for path in loaded:
            assert path.startswith("/ui/"), path
            assert http.get(path).status_code == 200, path
        assert "/ui/campaigns.js" in loaded
        assert http.get("/ui/elsewhere.js").status_code == 404


def test_nothing_is_fetched_from_another_origin() -> None:
    for name, _media in WEB_FILES.values():
        text = (WEB_DIR / name).read_text(encoding="utf-8")
        assert not re.search(r"https?://", text), name
        assert "@import" not in text, name


def test_data_reaches_the_dom_as_text_only() -> None:
    for name in ("app.js", "campaigns.js", "reports.js"):
        text = (WEB_DIR / name).read_text(encoding="utf-8")
        assert "insertAdjacentHTML" not in text
        assert "outerHTML" not in text
        assert "document.write" not in text
        assert "eval(" not in text
        # not even the charts: they are images of the SVG (a blob: URL), never parsed into the page
        assert "innerHTML" not in text
