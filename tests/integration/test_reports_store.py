"""One contract for both reports repositories: SQLite (file and memory) and MongoDB.

MongoDB is the SecantusDB server the suite starts (or `CRM_TEST_MONGO_URL`), opened through
`open_repository` like the service does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from services.reports.domain import Campaign, Line, Purchase, Redemption, basket_affinity
from services.reports.store import (
    Fact,
    ReportsRepository,
    alias_fact,
    campaign_fact,
    definition_fact,
    delivery_fact,
    erased_fact,
    open_repository,
    purchase_fact,
    redemption_fact,
    revocation_fact,
)
from shared.campaigns import (
    CampaignChange,
    CampaignChanged,
    CampaignOffer,
    CampaignSpec,
    CampaignTrigger,
    Variant,
)
from shared.settings import StoreSettings

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
DAY = T0.date()


@pytest.fixture
async def repo(every_store: StoreSettings) -> AsyncIterator[ReportsRepository]:
    async with open_repository(every_store) as repository:
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


async def test_an_erasure_unlinks_every_fact_of_the_customer_to_one_token(
    repo: ReportsRepository,
) -> None:
    await repo.add(
        [
            purchase_fact(purchase("p1", "c1")),
            purchase_fact(purchase("p2", "c2", hours=1)),
            campaign_fact(campaign("o1", "c1")),
            redemption_fact(Redemption("o1", T0, Decimal("10"), Decimal("1")), "c1"),
            delivery_fact("o1", "c1", "sent"),
        ]
    )
    await repo.add([purchase_fact(purchase("p3", "c1", hours=2)), erased_fact("c1")])
    assert await repo.facts_of_customer("c1") == []
    facts = await repo.load()
    assert "c1" not in facts.erased  # only its one-way mark is kept
    tokens = {p.customer_id for p in facts.purchases if p.event_id != "p2"}
    tokens |= {c.customer_id for c in facts.campaigns}
    (token,) = tokens  # one token: the lift still sees one customer's spend after the offer
    assert token is not None
    assert token.startswith("erased-")
    assert [(p.event_id, p.customer_id) for p in facts.purchases] == [
        ("p1", token),
        ("p2", "c2"),
        ("p3", token),
    ]
    # The figures stay: the offer, its redemption and its e-mail still count.
    assert [c.offer_id for c in facts.campaigns] == ["o1"]
    assert facts.redemptions["o1"].discount == Decimal("1")
    assert facts.deliveries == {"o1": "sent"}
    assert [f.kind for f in await repo.facts_of_customer("c2")] == ["purchase"]


async def test_a_fact_arriving_after_the_erasure_is_unlinked_too(repo: ReportsRepository) -> None:
    await repo.add([campaign_fact(campaign("o1", "c1")), erased_fact("c1")])
    await repo.add(
        [
            purchase_fact(purchase("p4", "c1", hours=3)),
            delivery_fact("o1", "c1", "bounced"),
            revocation_fact("o2", "c1", T0, "erased"),
        ]
    )
    assert await repo.facts_of_customer("c1") == []
    facts = await repo.load()
    assert all(
        p.customer_id is not None and p.customer_id.startswith("erased-") for p in facts.purchases
    )
    assert facts.deliveries == {"o1": "bounced"}
    assert facts.revoked == {"o2"}
    # The erasure delivered again changes nothing.
    await repo.add([erased_fact("c1")])
    assert await repo.facts_of_customer("c1") == []


async def test_an_erasure_unlinks_the_facts_of_a_card_merged_into_the_customer(
    repo: ReportsRepository,
) -> None:
    # c9 was the customer of a second card until a card link merged it into c1.
    await repo.add([purchase_fact(purchase("p1", "c9")), campaign_fact(campaign("o9", "c9"))])
    await repo.add([alias_fact("c9", "c1"), purchase_fact(purchase("p2", "c1", hours=1))])
    await repo.add([erased_fact("c1")])
    assert await repo.facts_of_customer("c1") == []
    assert await repo.facts_of_customer("c9") == []
    facts = await repo.load()
    (token,) = {p.customer_id for p in facts.purchases} | {c.customer_id for c in facts.campaigns}
    assert token is not None
    assert token.startswith("erased-")
    # A fact of the merged id that arrives after the erasure is unlinked too.
    await repo.add([delivery_fact("o9", "c9", "sent")])
    assert await repo.facts_of_customer("c9") == []


def revocation(offer_id: str, customer: str) -> Fact:
    return revocation_fact(offer_id, customer, T0 + dt.timedelta(hours=1), "consent")


async def test_a_redemptions_discount_comes_back_exact(repo: ReportsRepository) -> None:
    redemption = Redemption("o1", T0, Decimal("30.10"), Decimal("3.015"))
    await repo.add([redemption_fact(redemption, "c1")])
    assert (await repo.load()).redemptions == {"o1": redemption}


async def test_a_revocation_holds_until_the_offer_is_issued_again(repo: ReportsRepository) -> None:
    await repo.add([campaign_fact(campaign("o1", "c1")), campaign_fact(campaign("o2", "c2"))])
    await repo.add([revocation("o1", "c1"), revocation("o2", "c2")])
    assert (await repo.load()).revoked == {"o1", "o2"}
    await repo.add([revocation("o1", "c1")])  # redelivered: the same
    assert (await repo.load()).revoked == {"o1", "o2"}
    # o2 is issued again by a later correction (same id): no longer revoked.
    await repo.add([campaign_fact(campaign("o2", "c2"))])
    facts = await repo.load()
    assert facts.revoked == {"o1"}
    assert [c.offer_id for c in facts.campaigns] == ["o1", "o2"]


async def test_a_revocation_before_its_offer_is_kept_when_the_offer_arrives(
    repo: ReportsRepository,
) -> None:
    # From another partition, the revocation overtook the offer it withdraws.
    await repo.add([revocation("o1", "c1")])
    await repo.add([campaign_fact(campaign("o1", "c1"))])
    assert (await repo.load()).revoked == {"o1"}
    # Once the offer is known, issuing it again is a re-issue.
    await repo.add([campaign_fact(campaign("o1", "c1"))])
    assert (await repo.load()).revoked == set()


async def test_revocations_and_reissues_in_one_batch_apply_in_order(
    repo: ReportsRepository,
) -> None:
    await repo.add(
        [
            # o1: issued, revoked, issued again; o2: issued, revoked; o3: revoked, then issued
            campaign_fact(campaign("o1", "c1")),
            campaign_fact(campaign("o2", "c2")),
            revocation("o1", "c1"),
            revocation("o3", "c3"),
            revocation("o2", "c2"),
            campaign_fact(campaign("o1", "c1")),
            campaign_fact(campaign("o3", "c3")),
            purchase_fact(purchase("p1", "c1")),
        ]
    )
    facts = await repo.load()
    assert facts.revoked == {"o2", "o3"}
    assert [c.offer_id for c in facts.campaigns] == ["o1", "o2", "o3"]
    assert [p.event_id for p in facts.purchases] == ["p1"]


async def test_an_offers_campaign_variant_and_control_group_come_back(
    repo: ReportsRepository,
) -> None:
    from dataclasses import replace

    arm = replace(campaign("o1", "c1"), campaign_id="coffee", variant="b")
    control = replace(
        campaign("o2", "c2", held_out=True), campaign_id="coffee", global_control=True
    )
    old = campaign("o3", "c3")  # from before campaigns: no campaign id
    await repo.add([campaign_fact(arm), campaign_fact(control), campaign_fact(old)])
    facts = await repo.load()
    assert facts.campaigns == [arm, control, old]
    assert [c.campaign for c in facts.campaigns] == ["coffee", "coffee", "birthday"]


def coffee(*changes: tuple[int, str]) -> CampaignChanged:
    """The campaign's record after `changes` (hours after T0, status), each a new version."""
    spec = CampaignSpec(
        name="Coffee lovers",
        trigger=CampaignTrigger(type="purchase", sku="COFFEE-1KG", min_checkouts=2),
        offer=CampaignOffer(discount_percent=Decimal(15), scope="sku"),
        variants=(
            Variant(name="a", offer=CampaignOffer(discount_percent=Decimal(10))),
            Variant(name="b", offer=CampaignOffer(discount_percent=Decimal(20))),
        ),
        ends_on=DAY + dt.timedelta(days=30),
    )
    history = tuple(
        CampaignChange(
            at=T0 + dt.timedelta(hours=h),
            version=1,
            status=status,
            by="t",
            action="created" if n == 0 else "paused" if status == "paused" else "resumed",
        )
        for n, (h, status) in enumerate(changes)
    )
    return CampaignChanged(campaign_id="coffee", versions=(spec,), history=history)


async def test_the_newest_definition_of_a_campaign_wins_whatever_order_it_comes_in(
    repo: ReportsRepository,
) -> None:
    created = coffee((0, "active"))
    paused = coffee((0, "active"), (2, "paused"))
    resumed = coffee((0, "active"), (2, "paused"), (4, "active"))
    await repo.add([definition_fact(paused)])
    await repo.add([definition_fact(resumed), definition_fact(created)])
    await repo.add([definition_fact(paused)])  # redelivered, late
    definition = (await repo.load()).definitions["coffee"]
    assert (definition.name, definition.changes, definition.trigger) == (
        "Coffee lovers",
        3,
        "purchase",
    )
    assert definition.variants == ("a", "b")
    assert (definition.starts_on, definition.ends_on) == (None, DAY + dt.timedelta(days=30))
    assert [status for _, status in definition.history] == ["active", "paused", "active"]
    assert definition.history[1][0] == T0 + dt.timedelta(hours=2)
    assert definition.status_on(DAY) == "active"


async def test_checkouts_baskets_come_back_whole_for_what_is_bought_together(
    repo: ReportsRepository,
) -> None:
    def basket(n: int, skus: str, customer: str | None) -> Fact:
        lines = tuple(Line(s, "grocery", Decimal(1), Decimal("2.50")) for s in skus.split())
        at = T0 + dt.timedelta(hours=n)
        return purchase_fact(Purchase(f"b{n}", customer, "S001", at, DAY, Decimal(5), lines))

    # anonymous checkouts count too: a basket needs no customer
    await repo.add(
        [
            basket(1, "TEA LEMON", "c1"),
            basket(2, "TEA LEMON", None),
            basket(3, "TEA", "c2"),
            basket(4, "LEMON", None),
        ]
    )
    affinity = basket_affinity((await repo.load()).purchases, DAY, DAY)
    assert affinity.baskets == 4
    (pair,) = affinity.pairs
    assert (pair.sku_a, pair.sku_b, pair.baskets, pair.support) == (
        "LEMON",
        "TEA",
        2,
        Decimal("0.5000"),
    )
    assert (pair.confidence_a_b, pair.lift) == (Decimal("0.6667"), Decimal("0.89"))
