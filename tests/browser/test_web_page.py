"""The web page in headless Chromium (Debian's, driven by Playwright; no browser is downloaded)."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from crm.embedded import free_port
from tests.browser.population import CARD, TOKENS, World, build_world

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "screenshots"
DOCS = ROOT / "docs" / "images"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[str, World]]:
    world = asyncio.run(build_world())
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            world.api(), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "web server did not start"
    try:
        yield f"http://127.0.0.1:{port}", world
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _shoot(page: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    DOCS.mkdir(parents=True, exist_ok=True)
    target = SHOTS / f"{name}.png"
    page.screenshot(path=str(target), full_page=True)  # type: ignore[attr-defined]
    shutil.copyfile(target, DOCS / f"{name}.png")


def _sign_in(page: object, base: str, role: str) -> None:
    page.goto(f"{base}/ui/")  # type: ignore[attr-defined]
    page.fill("#token", TOKENS[role])  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]


def test_agent_signs_in_searches_a_card_and_sees_the_coupons(
    site: tuple[str, World], browser: object
) -> None:
    base, world = site
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    _sign_in(page, base, "agent")
    page.wait_for_selector("#customer:not([hidden])")
    page.fill("#card", CARD)
    page.keyboard.press("Enter")  # the form is keyboard-operable
    page.wait_for_selector(f"text={world.open_code}", timeout=15_000)
    text = page.inner_text("#customer-view")
    assert world.open_code in text
    assert world.used_code in text
    assert "support_ticket" in text
    _shoot(page, "customer-360")
    page.close()


def test_marketing_opens_the_campaigns_dashboard_and_the_charts_render(
    site: tuple[str, World], browser: object
) -> None:
    base, _ = site
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    _sign_in(page, base, "marketing")
    page.click("nav button[data-page=campaigns]")
    page.wait_for_selector("#chart-issued svg path", timeout=20_000)
    page.wait_for_selector("#chart-lift svg path", timeout=20_000)
    for chart in ("#chart-issued svg", "#chart-lift svg"):
        box = page.locator(chart).bounding_box()
        assert box is not None
        assert box["width"] > 100
        assert box["height"] > 50
        assert page.locator(f"{chart} path").count() > 5
    assert "frequent_item" in page.inner_text("#campaigns-table")
    _shoot(page, "campaigns-dashboard")
    page.close()


def test_product_and_store_pages_render_on_a_phone(
    site: tuple[str, World], browser: object
) -> None:
    base, _ = site
    page = browser.new_page(viewport={"width": 390, "height": 844})  # type: ignore[attr-defined]
    _sign_in(page, base, "admin")
    for name in ("products", "stores"):
        page.click(f"nav button[data-page={name}]")
        page.wait_for_selector(f"#chart-{name} svg path", timeout=20_000)
        assert page.locator(f"#{name}-table table").count() >= 1
        # readable on a phone: nothing wider than the screen but the scrollable tables
        width = page.evaluate("document.querySelector('header').scrollWidth")
        assert width <= 390
        _shoot(page, f"{name}-phone")
    page.close()
