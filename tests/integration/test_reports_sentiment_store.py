"""The reports' opinions (interactions' sentiment about a brand or category) in both
repositories, SQLite (file and memory) and the MongoDB-wire server the suite starts: written
once per event id, read back equal, and unlinked from a customer who is erased."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest

from services.reports.sentiment import Opinion, sentiment_report
from services.reports.store import (
    ReportsRepository,
    erased_fact,
    open_repository,
    opinion_fact,
)
from shared.erasure import is_unlinked
from shared.settings import StoreSettings

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
async def repo(every_store: StoreSettings) -> AsyncIterator[ReportsRepository]:
    async with open_repository(every_store) as repository:
        yield repository


OPINIONS = [
    Opinion("interaction:i-1", "c-1", T0, "positive", brand="acme", category="coffee"),
    Opinion("interaction:i-2", "c-2", T0 + dt.timedelta(days=1), "negative", brand="acme"),
    Opinion("interaction:i-3", "c-1", T0 + dt.timedelta(days=8), "neutral", category="dairy"),
]


async def test_opinions_come_back_equal_and_a_redelivered_one_counts_once(
    repo: ReportsRepository,
) -> None:
    await repo.add([opinion_fact(o) for o in OPINIONS])
    await repo.add([opinion_fact(OPINIONS[0]), opinion_fact(OPINIONS[1])])
    facts = await repo.load()
    assert facts.opinions == OPINIONS
    report = sentiment_report(facts.opinions)
    acme = next(r for r in report.rows if (r.label, r.week) == ("acme", "all"))
    assert (acme.positive, acme.neutral, acme.negative, acme.total) == (1, 0, 1, 2)


async def test_an_erasure_unlinks_the_customers_opinions_and_keeps_their_counts(
    repo: ReportsRepository,
) -> None:
    await repo.add([opinion_fact(OPINIONS[0])])
    await repo.add([erased_fact("c-1"), opinion_fact(OPINIONS[1])])
    # one of the customer's opinions arriving after the erasure is unlinked too
    await repo.add([opinion_fact(OPINIONS[2])])
    assert await repo.facts_of_customer("c-1") == []
    assert [f.kind for f in await repo.facts_of_customer("c-2")] == ["opinion"]
    opinions = {o.event_id: o for o in (await repo.load()).opinions}
    assert len(opinions) == 3
    first, late = opinions["interaction:i-1"], opinions["interaction:i-3"]
    assert first.customer_id is not None
    assert is_unlinked(first.customer_id)
    assert late.customer_id is not None
    assert is_unlinked(late.customer_id)
    assert (first.sentiment, first.brand, first.category) == ("positive", "acme", "coffee")
