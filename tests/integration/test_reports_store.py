"""One contract for both reports repositories: SQLite (file and memory) and MongoDB.

MongoDB is the SecantusDB server the suite starts (or `CRM_TEST_MONGO_URL`), opened through
`open_repository` like the service does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from services.reports.domain import Campaign, Line, Purchase, Redemption
from services.reports.store import (
    ReportsRepository,
    campaign_fact,
    delivery_fact,
    erased_fact,
    open_repository,
    purchase_fact,
    redemption_fact,
)
from shared.settings import StoreSettings

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
DAY = T0.date()


@pytest.fixture(
    params=["sqlite-file", "sqlite-memory", pytest.param("mongo", marks=pytest.mark.mongo)]
)
async def repo(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ReportsRepository]:
    if request.param == "sqlite-file":
        store = StoreSettings(store_url=f"sqlite://{tmp_path}")
    elif request.param == "sqlite-memory":
        store = StoreSettings(store_url="memory://")
    else:
        store = request.getfixturevalue("mongo_store")
    async with open_repository(store) as repository:
        yield repository


def purchase(event_id: str, customer: str | None, total: str = "1.785", hours: int = 0) -> Purchase:
    at = T0 + dt.timedelta(hours=hours)
    return Purchase(
        event_id=event_id,
        customer_id=customer,
        store_id="S001",
        at=at,
        day=at.date(),
        total=Decimal(total),
        lines=(
            Line("MILK", "dairy", Decimal("1.5"), Decimal("1.785")),
            Line("BREAD", "uncategorized", Decimal(1), Decimal(0)),
        ),
    )


def campaign(offer_id: str, customer: str, *, held_out: bool = False) -> Campaign:
    return Campaign(
        offer_id=offer_id,
        customer_id=customer,
        kind="birthday",
        at=T0,
        valid_from=DAY,
        valid_until=DAY + dt.timedelta(days=7),
        held_out=held_out,
    )


async def test_added_facts_come_back_equal(repo: ReportsRepository) -> None:
    assert (await repo.load()).purchases == []
    redemption = Redemption("o1", T0 + dt.timedelta(hours=2), Decimal("30.10"))
    await repo.add(
        [
            purchase_fact(purchase("p2", "c2", hours=1)),
            purchase_fact(purchase("p1", "c1", "30.10")),
            purchase_fact(purchase("p3", None, "7", hours=2)),
            campaign_fact(campaign("o2", "c2", held_out=True)),
            campaign_fact(campaign("o1", "c1")),
            redemption_fact(redemption, "c1"),
            delivery_fact("o1", "c1", "sent"),
        ]
    )
    facts = await repo.load()
    # In time order, then by id, whatever order they were written in.
    assert facts.purchases == [
        purchase("p1", "c1", "30.10"),
        purchase("p2", "c2", hours=1),
        purchase("p3", None, "7", hours=2),
    ]
    assert facts.campaigns == [campaign("o1", "c1"), campaign("o2", "c2", held_out=True)]
    assert facts.redemptions == {"o1": redemption}
    assert facts.deliveries == {"o1": "sent"}
    assert facts.erased == set()
    await repo.add([])
    assert await repo.load() == facts


async def test_a_redelivered_fact_changes_nothing(repo: ReportsRepository) -> None:
    batch = [
        purchase_fact(purchase("p1", "c1", "10")),
        campaign_fact(campaign("o1", "c1")),
        redemption_fact(Redemption("o1", T0, Decimal(10)), "c1"),
    ]
    await repo.add(batch)
    before = await repo.load()
    await repo.add(batch)
    assert await repo.load() == before
    # The first write of a fact wins, in a later batch and within one batch alike.
    await repo.add(
        [
            purchase_fact(purchase("p1", "c1", "99")),
            campaign_fact(campaign("o1", "c1", held_out=True)),
            purchase_fact(purchase("p2", "c2", "5")),
            purchase_fact(purchase("p2", "c2", "6")),
        ]
    )
    facts = await repo.load()
    assert [(p.event_id, p.total) for p in facts.purchases] == [
        ("p1", Decimal(10)),
        ("p2", Decimal(5)),
    ]
    assert facts.campaigns == before.campaigns
    assert facts.redemptions == before.redemptions


async def test_a_deliverys_latest_state_wins(repo: ReportsRepository) -> None:
    await repo.add([delivery_fact("o1", "c1", "failed"), delivery_fact("o2", "c2", "sent")])
    await repo.add([delivery_fact("o1", "c1", "sent")])
    assert (await repo.load()).deliveries == {"o1": "sent", "o2": "sent"}
    await repo.add([delivery_fact("o2", "c2", "failed"), delivery_fact("o2", "c2", "bounced")])
    assert (await repo.load()).deliveries == {"o1": "sent", "o2": "bounced"}


async def test_an_erasure_unlinks_the_customers_purchases(repo: ReportsRepository) -> None:
    await repo.add(
        [
            purchase_fact(purchase("p1", "c1")),
            purchase_fact(purchase("p2", "c2", hours=1)),
            campaign_fact(campaign("o1", "c1")),
        ]
    )
    await repo.add([purchase_fact(purchase("p3", "c1", hours=2)), erased_fact("c1")])
    facts = await repo.load()
    assert facts.erased == {"c1"}
    # Still counted for stores and products, no longer for a person.
    assert [(p.event_id, p.customer_id) for p in facts.purchases] == [
        ("p1", None),
        ("p2", "c2"),
        ("p3", None),
    ]
    assert facts.purchases[0] == purchase("p1", None)
    # The reports leave the erased customer's campaigns out; the read model keeps the fact.
    assert [c.offer_id for c in facts.campaigns] == ["o1"]
    # A purchase that arrives after the erasure is unlinked when the erasure is redelivered.
    await repo.add([purchase_fact(purchase("p4", "c1", hours=3))])
    await repo.add([erased_fact("c1")])
    facts = await repo.load()
    assert [p.customer_id for p in facts.purchases] == [None, "c2", None, None]
    assert facts.erased == {"c1"}
