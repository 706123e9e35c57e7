"""One contract for both offers repositories: SQLite (file and memory) and MongoDB.

MongoDB is the SecantusDB server the suite starts (or `CRM_TEST_MONGO_URL`), opened through
`open_repository` like the service does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from services.offers.campaigns import changed, created
from services.offers.domain import OfferRecord, coupon_code_for, offer_id_for
from services.offers.engine import Days
from services.offers.erasure import unlinked
from services.offers.ledger import ConsentPoint, Decision, Ledger
from services.offers.store import (
    Changes,
    Erasure,
    LedgerRow,
    OffersRepository,
    Spend,
    open_repository,
)
from services.offers.store_sqlite import SqliteOffersRepository
from shared.campaigns import Budget, CampaignChanged, CampaignSpec
from shared.errors import Conflict
from shared.events import OfferIssued, OfferRedeemed
from shared.settings import StoreSettings
from shared.storage import StoreLocation

KEY = b"k"
UTC = dt.UTC
NOW = dt.datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.fixture
async def repo(every_store: StoreSettings) -> AsyncIterator[OffersRepository]:
    async with open_repository(every_store) as repository:
        yield repository


def offer(
    customer_id: str = "c-1",
    *,
    rule_key: str = "MILK",
    day: dt.date = dt.date(2026, 3, 1),
    valid_days: int = 14,
    state: str = "issued",
) -> OfferRecord:
    offer_id = offer_id_for("frequent_item", customer_id, rule_key, day.isoformat())
    return OfferRecord(
        issued=OfferIssued(
            offer_id=offer_id,
            customer_id=customer_id,
            kind="frequent_item",
            coupon_code=coupon_code_for(offer_id, KEY),
            discount_percent=Decimal("12.5"),
            sku=rule_key,
            valid_from=day,
            valid_until=day + dt.timedelta(days=valid_days),
            issued_at=dt.datetime.combine(day, dt.time(9), tzinfo=UTC),
            template="frequent_item",
            scope="sku",
        ),
        rule_key=rule_key,
        state=state,  # type: ignore[arg-type]
    )


def ledger(customer_id: str = "c-1", *, version: int = 1, **fields: object) -> Ledger:
    return Ledger(customer_id=customer_id, version=version, **fields)  # type: ignore[arg-type]


def row(customer_id: str = "c-1", **fields: object) -> LedgerRow:
    columns = {
        k: fields.pop(k)
        for k in ("birth_md", "anniversary_date", "win_back_due", "last_fact_at")
        if k in fields
    }
    return LedgerRow(ledger=ledger(customer_id, **fields), **columns)  # type: ignore[arg-type]


async def test_ledgers_come_back_equal_and_a_stale_write_is_refused(repo: OffersRepository) -> None:
    first = ledger(
        cards=["card-1"],
        consent=[ConsentPoint(at=NOW, event_id="s-1", value=True)],
    )
    await repo.save(Changes(ledgers=[LedgerRow(first)]))
    assert await repo.ledgers(["c-1", "c-unknown"]) == {"c-1": first}
    newer = first.model_copy(update={"version": 2, "total_visits": 5})
    await repo.save(Changes(ledgers=[LedgerRow(newer)]))
    stale = first.model_copy(update={"version": 2, "total_visits": 9})
    with pytest.raises(Conflict):
        await repo.save(Changes(ledgers=[LedgerRow(stale)], offers=[offer()]))
    assert (await repo.ledgers(["c-1"]))["c-1"].total_visits == 5
    assert await repo.offers_of("c-1") == []  # nothing of the refused batch was written
    with pytest.raises(Conflict):
        await repo.save(Changes(ledgers=[LedgerRow(ledger(version=1))]))


async def test_offers_are_found_by_customer_by_code_and_sorted(repo: OffersRepository) -> None:
    late, early, other = offer(day=dt.date(2026, 3, 5)), offer(rule_key="EGGS"), offer("c-2")
    await repo.save(Changes(offers=[late, early, other]))
    assert await repo.offers_of("c-1") == [early, late]
    assert set(await repo.offers_of_customers(["c-1", "c-2"])) == {
        late.offer_id,
        early.offer_id,
        other.offer_id,
    }
    assert await repo.offer_by_code(other.coupon_code) == other
    assert await repo.offer_by_code("NOPE-NOPE-NOPE") is None
    assert await repo.owners([early.coupon_code, other.coupon_code, "NOPE"]) == {
        early.coupon_code: "c-1",
        other.coupon_code: "c-2",
    }
    redeemed = late.model_copy(update={"state": "redeemed"})
    await repo.save(Changes(offers=[redeemed]))
    assert await repo.offers_of("c-1") == [early, redeemed]


async def test_a_coupon_code_belongs_to_one_offer(repo: OffersRepository) -> None:
    first = offer()
    other = offer(rule_key="EGGS")
    clash = other.model_copy(
        update={"issued": other.issued.model_copy(update={"coupon_code": first.coupon_code})}
    )
    await repo.save(Changes(offers=[first]))
    with pytest.raises(Conflict):
        await repo.save(Changes(offers=[clash]))
    assert await repo.offers_of("c-1") == [first]


async def test_completed_days_are_kept(repo: OffersRepository) -> None:
    assert await repo.days() == Days()
    days = Days(dt.date(2026, 3, 1), dt.date(2026, 3, 9))
    await repo.save(Changes(days=days))
    assert await repo.days() == days
    await repo.save(Changes(days=Days(dt.date(2026, 2, 27), dt.date(2026, 3, 9))))
    assert await repo.days() == Days(dt.date(2026, 2, 27), dt.date(2026, 3, 9))


async def test_a_days_candidates_come_from_each_index_in_pages_and_never_aliases(
    repo: OffersRepository,
) -> None:
    day = dt.date(2026, 3, 20)
    await repo.save(
        Changes(
            ledgers=[
                row("c-birthday", birth_md="03-20"),
                row("c-other-birthday", birth_md="03-21"),
                row("c-anniversary", anniversary_date=day),
                row("c-due", win_back_due=day - dt.timedelta(days=3)),
                row("c-not-due", win_back_due=day + dt.timedelta(days=1)),
                row("c-alias", birth_md="03-20", merged_into="c-birthday"),
            ],
            offers=[
                offer("c-expiring", day=dt.date(2026, 3, 1), valid_days=14),
                offer("c-open", day=dt.date(2026, 3, 10), valid_days=14),
                offer("c-used", day=dt.date(2026, 3, 1), valid_days=14, state="redeemed"),
            ],
        )
    )
    expected = ["c-anniversary", "c-birthday", "c-due", "c-expiring"]
    assert await repo.candidates(day, ("03-20",), after=None, limit=100) == expected
    pages: list[str] = []
    after = None
    while page := await repo.candidates(day, ("03-20",), after=after, limit=2):
        pages += page
        after = page[-1]
    assert pages == expected


async def test_cards_lead_to_their_customer_and_an_aliases_cards_to_no_one(
    repo: OffersRepository,
) -> None:
    await repo.save(Changes(ledgers=[row("c-1", cards=["card-1", "card-2"])]))
    assert await repo.customer_of_card("card-2") == "c-1"
    assert await repo.customer_of_card("card-9") is None
    await repo.save(
        Changes(
            ledgers=[row("c-2", cards=["card-2"]), row("c-3", cards=["card-3"], merged_into="c-2")]
        )
    )
    assert await repo.customer_of_card("card-2") == "c-2"
    assert await repo.customer_of_card("card-3") is None


async def test_a_lane_holds_a_coupon_until_it_ends_or_a_checkout_lists_it(
    repo: OffersRepository,
) -> None:
    later = NOW + dt.timedelta(minutes=2)
    assert await repo.reserve("CODE", "lane-1", later, NOW)
    assert not await repo.reserve("CODE", "lane-2", later, NOW + dt.timedelta(seconds=1))
    assert await repo.reserve("CODE", "lane-1", later, NOW + dt.timedelta(seconds=1))  # renewed
    assert await repo.reserve(
        "CODE", "lane-2", later + dt.timedelta(minutes=2), later + dt.timedelta(seconds=1)
    )
    await repo.save(Changes(released={"CODE"}))
    assert await repo.reserve("CODE", "lane-3", later, NOW)


async def test_two_lanes_racing_for_one_coupon_never_both_hold_it(repo: OffersRepository) -> None:
    until = NOW + dt.timedelta(minutes=2)
    results = await asyncio.gather(
        *(repo.reserve("RACE", f"lane-{n}", until, NOW) for n in range(10))
    )
    assert sum(results) == 1


async def test_an_offers_e_mail_outcome_is_recorded(repo: OffersRepository) -> None:
    record = offer()
    await repo.save(Changes(offers=[record]))
    await repo.record_deliveries({record.offer_id: ("sent", "<m@x>"), "unknown": ("sent", "<n>")})
    [stored] = await repo.offers_of("c-1")
    assert (stored.delivery, stored.message_id) == ("sent", "<m@x>")


async def test_operator_looking_ids_are_data(repo: OffersRepository) -> None:
    await repo.save(Changes(offers=[offer()], ledgers=[row("c-1", cards=["card-1"])]))
    for hostile in ('{"$gt": ""}', "' OR '1'='1", "%", "_"):
        assert await repo.offers_of(hostile) == []
        assert await repo.ledgers([hostile]) == {}
        assert await repo.customer_of_card(hostile) is None
        assert await repo.offer_by_code(hostile) is None
    with pytest.raises(TypeError):
        await repo.offers_of({"$gt": ""})  # type: ignore[arg-type]


async def test_sqlite_file_store_survives_reopening(tmp_path: Path) -> None:
    location = StoreLocation.parse(f"sqlite:///{tmp_path}")
    record = offer()
    first = await SqliteOffersRepository.open(location)
    await first.save(Changes(offers=[record], ledgers=[row()]))
    await first.close()
    second = await SqliteOffersRepository.open(location)
    assert await second.offers_of("c-1") == [record]
    assert set(await second.ledgers(["c-1"])) == {"c-1"}
    await second.close()


async def test_sqlite_day_candidates_use_their_indexes() -> None:
    repository = await SqliteOffersRepository.open(StoreLocation.parse("memory://"))
    statements: list[str] = []

    def trace(db: sqlite3.Connection) -> None:
        db.set_trace_callback(statements.append)  # gets the SQL with its values bound

    def plan_of(sql: str) -> Callable[[sqlite3.Connection], str]:
        def explain(db: sqlite3.Connection) -> str:
            db.set_trace_callback(None)
            rows = db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
            db.set_trace_callback(statements.append)
            return " ".join(str(r[-1]) for r in rows)

        return explain

    await repository.read(trace)
    await repository.candidates(dt.date(2026, 3, 1), ("03-01",), after="c-1", limit=10)
    [sql] = [s for s in statements if "FROM ledgers WHERE" in s]
    plan = await repository.read(plan_of(sql))
    for index in (
        "ledgers_birth_md",
        "ledgers_anniversary",
        "ledgers_win_back_due",
        "offers_state_until",
    ):
        assert f"INDEX {index}" in plan, plan
    await repository.close()


async def test_decisions_are_counted_over_all_customers(repo: OffersRepository) -> None:
    def decision(key: str, outcome: str, reason: str | None = None) -> dict[str, object]:
        return {
            "key": key,
            "kind": "frequent_item",
            "at": NOW,
            "outcome": outcome,
            "reason": reason,
            "offer_id": key,
            "trigger": {"type": "purchase", "event_ids": ["e"]},
            "decided_at": NOW,
            "valid_from": NOW.date(),
            "valid_until": NOW.date(),
            "discount_percent": "10",
            "template": "t",
        }

    one = Ledger.model_validate(
        {
            "customer_id": "c-1",
            "version": 1,
            "decisions": {
                "a": decision("a", "issued"),
                "b": decision("b", "suppressed", "consent"),
            },
        }
    )
    two = Ledger.model_validate(
        {
            "customer_id": "c-2",
            "version": 1,
            "decisions": {"c": decision("c", "suppressed", "consent")},
        }
    )
    await repo.save(Changes(ledgers=[LedgerRow(one), LedgerRow(two)]))
    assert await repo.decision_counts() == {
        ("frequent_item", "issued", None): 1,
        ("frequent_item", "suppressed", "consent"): 2,
    }


# ---------------------------------------------------------------- campaigns and budgets


def _campaign(campaign_id: str = "coffee-lovers") -> CampaignChanged:
    spec = CampaignSpec.model_validate(
        {
            "name": "Coffee lovers",
            "trigger": {"type": "purchase", "sku": "COFFEE", "min_checkouts": 2},
            "offer": {"discount_percent": "15", "scope": "sku", "sku": "COFFEE"},
        }
    )
    return created(campaign_id, spec, at=NOW, by="token")


def _spend(n: int, *, customer: str | None = None, store: str = "S001") -> Spend:
    return Spend(
        campaign_id="coffee-lovers",
        offer_id=f"offer-{n}",
        customer_id=customer or f"c-{n}",
        store_id=store,
        day=dt.date(2026, 3, 1),
        discount=Decimal("1.50"),
    )


async def test_a_campaign_record_is_kept_unless_the_stored_one_knows_more(
    repo: OffersRepository,
) -> None:
    first = _campaign()
    assert await repo.save_campaign(first)
    paused = changed(first, status="paused", at=NOW, by="token", action="paused")
    assert await repo.save_campaign(paused)
    assert not await repo.save_campaign(first)  # older: the paused record stays
    assert await repo.campaigns() == {"coffee-lovers": paused}


async def test_a_budget_charges_each_offer_once_and_refuses_what_would_overspend(
    repo: OffersRepository,
) -> None:
    budget = Budget(max_redemptions=3, max_discount=Decimal("4.00"))
    assert await repo.spend(_spend(1), budget)
    assert await repo.spend(_spend(1), budget)  # the same redemption again: charged once
    assert await repo.spend(_spend(2), budget)
    assert not await repo.spend(_spend(3), budget)  # 4.50 would pass 4.00
    assert await repo.budget_usage() == {"coffee-lovers": (2, Decimal("3.00"))}
    per_customer = Budget(max_per_customer=1)
    assert not await repo.spend(_spend(4, customer="c-1"), per_customer)
    per_store_day = Budget(max_per_store_day=2)
    assert not await repo.spend(_spend(5, store="S001"), per_store_day)
    assert await repo.spend(_spend(6, store="S.$2"), per_store_day)


@pytest.mark.parametrize("kind", ["sqlite-file", pytest.param("mongo", marks=pytest.mark.mongo)])
async def test_lanes_redeeming_at_once_through_two_instances_never_overspend(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = (
        StoreSettings(store_url=f"sqlite://{tmp_path}")
        if kind == "sqlite-file"
        else request.getfixturevalue("mongo_store")
    )
    budget = Budget(max_redemptions=7, max_per_customer=2)
    async with open_repository(store) as one, open_repository(store) as two:
        results = await asyncio.gather(
            *(
                (one if n % 2 else two).spend(_spend(n, customer=f"c-{n % 5}"), budget)
                for n in range(40)
            )
        )
        assert sum(results) == 7
        count, _ = (await one.budget_usage())["coffee-lovers"]
        assert count == 7


async def test_customers_with_triggers_since_a_time_are_found_in_pages(
    repo: OffersRepository,
) -> None:
    rows = [
        LedgerRow(ledger(f"c-{n}"), last_fact_at=NOW + dt.timedelta(minutes=n)) for n in range(5)
    ]
    rows.append(LedgerRow(ledger("c-alias", merged_into="c-0"), last_fact_at=NOW))
    await repo.save(Changes(ledgers=rows))
    since = NOW + dt.timedelta(minutes=2)
    assert await repo.customers_since(since, after=None, limit=2) == ["c-2", "c-3"]
    assert await repo.customers_since(since, after="c-3", limit=2) == ["c-4"]
    page = await repo.ledger_page(after="c-3", limit=10)
    assert [lg.customer_id for lg in page] == ["c-4", "c-alias"]
    await repo.set_win_back_due({"c-4": dt.date(2026, 3, 1)})
    assert await repo.candidates(dt.date(2026, 3, 2), [], after=None, limit=10) == ["c-4"]


async def test_campaign_counts_sum_offers_by_state_and_held_out_decisions(
    repo: OffersRepository,
) -> None:
    def of_campaign(
        record: OfferRecord, campaign_id: str | None, variant: str | None
    ) -> OfferRecord:
        issued = record.issued.model_copy(update={"campaign_id": campaign_id, "variant": variant})
        return record.model_copy(update={"issued": issued})

    await repo.save(
        Changes(
            offers=[
                of_campaign(offer("c-1"), "coffee-lovers", "a"),
                of_campaign(offer("c-2", state="expired"), "coffee-lovers", "a"),
                of_campaign(offer("c-3", state="revoked"), "coffee-lovers", "b"),
                of_campaign(offer("c-4"), None, None),  # from before campaigns
            ]
        )
    )
    counts = await repo.campaign_counts()
    assert counts[("coffee-lovers", "a")].issued == 2
    assert counts[("coffee-lovers", "a")].expired == 1
    assert counts[("coffee-lovers", "b")].revoked == 1
    assert counts[("frequent-item", None)].issued == 1


# ---------------------------------------------------------------- erasure


async def test_an_erasure_unlinks_the_customers_offers_and_keeps_the_counts(
    repo: OffersRepository,
) -> None:
    redeemed = offer("c-1", rule_key="MILK", state="redeemed")
    redeemed = redeemed.model_copy(
        update={
            "redemption": OfferRedeemed(
                offer_id=redeemed.offer_id,
                customer_id="c-1",
                kind="frequent_item",
                coupon_code=redeemed.coupon_code,
                redeemed_at=NOW,
                checkout_event_id="checkout-1",
                store_id="S001",
                basket_total=Decimal("10.00"),
                discount=Decimal("1.25"),
            ),
            "delivery": "sent",
            "message_id": "<m@crm>",
        }
    )
    held = Decision.model_validate(
        {
            "key": "frequent_item|BREAD|e",
            "kind": "frequent_item",
            "at": NOW,
            "outcome": "held_out",
            "offer_id": "held-1",
            "trigger": {"type": "purchase", "event_ids": ["checkout-0"]},
            "decided_at": NOW,
            "valid_from": NOW.date(),
            "valid_until": NOW.date(),
            "discount_percent": "10",
            "template": "t",
        }
    )
    mine = ledger("c-1", cards=["card-1"], decisions={held.key: held})
    other = offer("c-2", rule_key="BREAD")
    await repo.save(Changes(ledgers=[LedgerRow(mine)], offers=[redeemed, other]))
    budget = Budget(max_per_customer=5)
    charge = Spend(
        campaign_id="coffee-lovers",
        offer_id=redeemed.offer_id,
        customer_id="c-1",
        store_id="S001",
        day=NOW.date(),
        discount=Decimal("1.25"),
    )
    assert await repo.spend(charge, budget)
    before = await repo.campaign_counts()

    kept, decisions, new_ids = unlinked(mine, {redeemed.offer_id: redeemed}, "erased-t1")
    erasure = Erasure(
        customer_id="c-1",
        version=1,
        aliases=(),
        codes=(redeemed.coupon_code,),
        offers=tuple(kept),
        ledger=decisions,
        offer_ids=new_ids,
        token="erased-t1",
    )
    stale = replace(erasure, version=0)
    with pytest.raises(Conflict):
        await repo.save(Changes(erasures=[stale]))
    await repo.save(Changes(erasures=[erasure]))

    # Nothing of the customer is found by id, card or code any more.
    assert await repo.offers_of("c-1") == []
    assert await repo.ledgers(["c-1"]) == {}
    assert await repo.customer_of_card("card-1") is None
    assert await repo.offer_by_code(redeemed.coupon_code) is None
    assert await repo.owners([redeemed.coupon_code]) == {}
    assert await repo.erased(["c-1", "c-2"]) == {"c-1"}
    # What stays is under the token, with no trigger and no Message-ID; the counts are the same.
    (unlinked_offer,) = await repo.offers_of("erased-t1")
    assert unlinked_offer.issued.trigger is None
    assert unlinked_offer.message_id is None
    assert unlinked_offer.redemption is not None
    assert unlinked_offer.redemption.checkout_event_id == ""
    assert (unlinked_offer.state, unlinked_offer.delivery) == ("redeemed", "sent")
    assert await repo.campaign_counts() == before
    assert before[("frequent-item", None)].held_out == 1
    assert await repo.budget_usage() == {"coffee-lovers": (1, Decimal("1.25"))}
    assert await repo.offers_of("c-2") == [other]
