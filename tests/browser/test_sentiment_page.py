"""Sentiment on the page, in headless Chromium: the agent sees the customer's opinions per
brand and category on the customer page, marketing the sentiment report per brand and
category; no rule of the page's Content-Security-Policy is broken on the way."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from services.profiles.domain import SentimentCounts
from services.reports.sentiment import Opinion
from services.reports.store import opinion_fact
from tests.browser.population import CARD, TODAY, TOKENS, UTC, World, build_world
from tests.browser.support import CHROMIUM, run_async, serve, shoot, sign_in

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (apt-get install chromium)"),
]


async def with_opinions() -> World:
    world = await build_world()
    profile = await world.profiles.get(world.customer_id)
    assert profile is not None
    profile.sentiment_by_brand = {
        "acme": SentimentCounts(positive=3, negative=1),
        "globex": SentimentCounts(negative=2),
    }
    profile.sentiment_by_category = {"coffee": SentimentCounts(positive=2, neutral=1)}
    profile.version += 1
    await world.profiles.save_many([profile])
    at = dt.datetime.combine(TODAY, dt.time(10), tzinfo=UTC)
    opinions = [
        Opinion("interaction:o-1", "c-1", at, "positive", brand="acme", category="coffee"),
        Opinion("interaction:o-2", "c-2", at, "positive", brand="acme"),
        Opinion("interaction:o-3", "c-3", at - dt.timedelta(days=7), "negative", brand="acme"),
        Opinion("interaction:o-4", "c-3", at, "negative", brand="globex", category="coffee"),
    ]
    await world.reports.add([opinion_fact(o) for o in opinions])
    return world


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    world = run_async(with_opinions())
    with serve(world.api()) as base:
        yield base


def csp_violations(page: Any) -> list[str]:
    found: list[str] = []
    page.on(
        "console",
        lambda message: (
            found.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    return found


def test_the_agent_sees_the_customers_opinions_per_brand_and_category(
    site: str, browser: Any
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    violations = csp_violations(page)
    sign_in(page, site, TOKENS["agent"])
    page.wait_for_selector("#customer:not([hidden])")
    page.fill("#card", CARD)
    page.keyboard.press("Enter")
    page.wait_for_selector("#customer-sentiment table", timeout=15_000)
    brands = page.locator("#customer-sentiment table").nth(0).inner_text()
    assert "acme" in brands
    assert "+50.0" in brands  # (3 - 1) / 4
    assert "globex" in brands
    assert "-100.0" in brands
    categories = page.locator("#customer-sentiment table").nth(1).inner_text()
    assert "coffee" in categories
    assert page.locator("#customer-sentiment td.net-negative").count() == 1
    page.locator("#customer-sentiment").scroll_into_view_if_needed()
    shoot(page, "customer-sentiment")
    page.close()
    assert violations == []


def test_marketing_reads_sentiment_per_brand_and_category_on_a_phone(
    site: str, browser: Any
) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})
    violations = csp_violations(page)
    sign_in(page, site, TOKENS["marketing"])
    page.click("nav button[data-page=sentiment]")
    page.wait_for_selector("#sentiment-tables table", timeout=15_000)
    text = page.inner_text("#sentiment-tables")
    assert "acme" in text
    assert "+33.3" in text  # acme over the period: 2 positive, 1 negative
    assert "globex" in text
    assert "coffee" in text
    assert "to " in page.inner_text("#sentiment-period")
    assert page.evaluate("document.querySelector('header').scrollWidth") <= 390
    shoot(page, "sentiment-phone")
    page.close()
    assert violations == []
