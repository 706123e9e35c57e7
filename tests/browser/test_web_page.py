"""The web page in headless Chromium (Debian's, driven by Playwright; no browser is downloaded)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.population import CARD, TOKENS, World, build_world
from tests.browser.support import CHROMIUM, run_async, serve, shoot, sign_in

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[str, World]]:
    world = run_async(build_world())
    with serve(world.api()) as base:
        yield base, world


def _shoot(page: object, name: str) -> None:
    shoot(page, name)


def _sign_in(page: object, base: str, role: str) -> None:
    sign_in(page, base, TOKENS[role])


def _wait_drawn(page: Any, selector: str) -> None:
    """The chart's image is there and its SVG decoded (a broken image has no natural width)."""
    page.wait_for_selector(selector, timeout=20_000)
    page.wait_for_function(
        "s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0 }",
        arg=selector,
        timeout=20_000,
    )


def test_the_page_breaks_no_rule_of_its_content_security_policy(
    site: tuple[str, World], browser: Any
) -> None:
    base, _ = site
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    response = page.goto(f"{base}/ui/")
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    sign_in(page, base, TOKENS["admin"])
    for name, chart in (("campaigns", "issued"), ("products", "products"), ("stores", "stores")):
        page.click(f"nav button[data-page={name}]")
        _wait_drawn(page, f"#chart-{chart} img")
    page.close()
    assert violations == []


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


def _top(page: Any, selector: str) -> float:
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    return float(box["y"])


def test_marketing_opens_the_campaigns_dashboard_headline_first_then_the_charts_then_the_table(
    site: tuple[str, World], browser: object
) -> None:
    base, _ = site
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    _sign_in(page, base, "marketing")
    page.click("nav button[data-page=campaigns]")
    for chart in ("#chart-issued img", "#chart-lift img"):
        _wait_drawn(page, chart)
        box = page.locator(chart).bounding_box()
        assert box is not None
        assert box["width"] > 100
        assert box["height"] > 50
        assert page.locator(chart).get_attribute("alt")
    page.wait_for_selector('#campaigns-headline [data-figure="lift"]')
    # the last 12 weeks by default: 3 weeks of 2 kinds of 60 eligible, 1 in 6 held out, 1 in 3
    # redeemed for 20 each
    figures = {
        name: page.inner_text(f'#campaigns-headline [data-figure="{name}"] dd >> nth=0')
        for name in ("issued", "redeemed", "revenue", "lift")
    }
    assert (figures["issued"], figures["redeemed"], figures["revenue"]) == ("300", "120", "2400")
    assert "95 %" in figures["lift"]
    assert page.input_value("#campaigns-weeks") == "12"
    assert "Offers valid from" in page.inner_text("#campaigns-period")
    # headline, chart, table per campaign, and only then the campaigns to manage
    tops = [
        _top(page, s)
        for s in ("#campaigns-headline", "#chart-issued", "#campaigns-table", "#campaign-list")
    ]
    assert tops == sorted(tops)
    table = page.inner_text("#campaigns-table")
    assert "frequent-item" in table
    # the week-by-week rows are there on demand only
    assert not page.locator("#campaigns-weekly-table").is_visible()
    page.click("#campaigns-weekly summary")
    assert "frequent_item" in page.inner_text("#campaigns-weekly-table")
    page.click("#campaigns-weekly summary")
    page.evaluate("window.scrollTo(0, 0)")
    _shoot(page, "campaigns-dashboard")
    page.close()


def test_the_campaigns_dashboard_fits_a_phone(site: tuple[str, World], browser: object) -> None:
    base, _ = site
    page = browser.new_page(viewport={"width": 390, "height": 844})  # type: ignore[attr-defined]
    _sign_in(page, base, "marketing")
    page.click("nav button[data-page=campaigns]")
    _wait_drawn(page, "#chart-issued img")
    _wait_drawn(page, "#chart-lift img")
    page.wait_for_selector('#campaigns-headline [data-figure="lift"]')
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for selector in ("#campaigns-headline", "#chart-issued img", "#campaigns-table"):
        box = page.locator(selector).bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= 390, selector
    # the headline figures come before the charts on the phone too
    assert _top(page, '#campaigns-headline [data-figure="lift"]') < _top(page, "#chart-issued")
    # what the phone's screen shows first: the headline figures and the chart
    page.evaluate("window.scrollTo(0, 0)")
    shoot(page, "campaigns-dashboard-phone", full_page=False)
    page.close()


def test_products_show_what_is_bought_together_and_stores_their_teams_against_goals(
    site: tuple[str, World], browser: object
) -> None:
    base, _ = site
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    _sign_in(page, base, "marketing")
    page.click("nav button[data-page=products]")
    page.wait_for_selector("#products-pairs td")
    pairs = page.inner_text("#products-pairs")
    assert "COFFEE + MILK-1L" in pairs
    assert "BREAD + EGGS-10" in pairs
    page.click("nav button[data-page=stores]")
    _wait_drawn(page, "#chart-teams img")
    assert "Team revenue against goal" in (
        page.locator("#chart-teams img").get_attribute("alt") or ""
    )
    teams = page.inner_text("#teams-table")
    assert "North" in teams
    assert "S001, S002" in teams
    assert "goal to date" in page.inner_text("#stores-table")
    page.close()


def test_product_and_store_pages_render_on_a_phone(
    site: tuple[str, World], browser: object
) -> None:
    base, _ = site
    page = browser.new_page(viewport={"width": 390, "height": 844})  # type: ignore[attr-defined]
    _sign_in(page, base, "admin")
    for name in ("products", "stores"):
        page.click(f"nav button[data-page={name}]")
        _wait_drawn(page, f"#chart-{name} img")
        assert page.locator(f"#{name}-table table").count() >= 1
        # readable on a phone: nothing wider than the screen but the scrollable tables
        width = page.evaluate("document.querySelector('header').scrollWidth")
        assert width <= 390
        _shoot(page, f"{name}-phone")
    page.close()
