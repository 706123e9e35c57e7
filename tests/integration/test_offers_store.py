"""One contract for both offers repositories: SQLite (file and memory) and MongoDB.

MongoDB is the SecantusDB server the suite starts (or `CRM_TEST_MONGO_URL`), opened through
`open_repository` like the service does.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.offers.domain import (
    Changes,
    CustomerQuery,
    CustomerRecord,
    OfferRecord,
    coupon_code_for,
    offer_id_for,
)
from services.offers.store import OffersRepository, open_repository
from services.offers.store_sqlite import SqliteOffersRepository
from shared.errors import Conflict
from shared.events import OfferExpired, OfferIssued, OfferRedeemed, RedemptionRejected
from shared.settings import StoreSettings
from shared.storage import StoreLocation

KEY = b"k"
UTC = dt.UTC


@pytest.fixture(
    params=["sqlite-file", "sqlite-memory", pytest.param("mongo", marks=pytest.mark.mongo)]
)
async def repo(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OffersRepository]:
    if request.param == "sqlite-file":
        store = StoreSettings(store_url=f"sqlite://{tmp_path}")
    elif request.param == "sqlite-memory":
        store = StoreSettings(store_url="memory://")
    else:
        store = request.getfixturevalue("mongo_store")
    async with open_repository(store) as repository:
        yield repository


def offer(
    customer_id: str = "c-1",
    *,
    kind: str = "frequent_item",
    rule_key: str = "MILK",
    day: dt.date = dt.date(2026, 3, 1),
    valid_days: int = 14,
) -> OfferRecord:
    offer_id = offer_id_for(kind, customer_id, rule_key, day.isoformat())  # type: ignore[arg-type]
    return OfferRecord(
        issued=OfferIssued(
            offer_id=offer_id,
            customer_id=customer_id,
            kind=kind,  # type: ignore[arg-type]
            coupon_code=coupon_code_for(offer_id, KEY),
            discount_percent=Decimal("12.5"),
            sku=rule_key if kind == "frequent_item" else None,
            product_name="Milk" if kind == "frequent_item" else None,
            valid_from=day,
            valid_until=day + dt.timedelta(days=valid_days),
            issued_at=dt.datetime.combine(day, dt.time(9), tzinfo=UTC),
            template=kind,
        ),
        rule_key=rule_key,
    )


async def in_state(repo: OffersRepository, customer_id: str, state: str) -> list[OfferRecord]:
    """The customer's offers in one state (issued: open; redeemed: used)."""
    return [o for o in await repo.offers_of(customer_id) if o.state == state]


def customer(customer_id: str = "c-1", **fields: Any) -> CustomerRecord:
    base: dict[str, Any] = {"marketing_consent": True, "has_email": True, "visits": 1}
    base.update(fields)
    return CustomerRecord(customer_id=customer_id, **base)


def redeemed(record: OfferRecord, checkout: str = "e-9") -> OfferRecord:
    redemption = OfferRedeemed(
        offer_id=record.offer_id,
        customer_id=record.customer_id,
        kind=record.kind,
        coupon_code=record.coupon_code,
        redeemed_at=dt.datetime(2026, 3, 3, 12, tzinfo=UTC),
        checkout_event_id=checkout,
        store_id="S001",
        basket_total=Decimal("19.99"),
    )
    return OfferRecord(
        issued=record.issued, rule_key=record.rule_key, state="redeemed", redemption=redemption
    )


def rejection(customer_id: str = "c-1", code: str = "NOPE") -> RedemptionRejected:
    return RedemptionRejected(
        rejection_id=f"r-{customer_id}-{code}",
        customer_id=customer_id,
        coupon_code=code,
        reason="unknown_code",
        checkout_event_id="e-1",
        store_id="S001",
        rejected_at=dt.datetime(2026, 3, 3, tzinfo=UTC),
    )


async def test_load_returns_customers_their_offers_and_offers_by_code(
    repo: OffersRepository,
) -> None:
    mine, theirs, other = offer("c-1"), offer("c-2"), offer("c-3")
    await repo.apply(
        Changes(
            customers={
                c.customer_id: c for c in (customer("c-1", birth_md="05-17"), customer("c-2"))
            },
            new_offers={o.offer_id: o for o in (mine, theirs, other)},
        )
    )
    snapshot = await repo.load(["c-1", "unknown"], [theirs.coupon_code])
    assert snapshot.customers == {"c-1": customer("c-1", birth_md="05-17")}
    assert snapshot.offers == {mine.offer_id: mine, theirs.offer_id: theirs}
    empty = await repo.load([], [])
    assert (empty.customers, empty.offers) == ({}, {})


async def test_operator_looking_ids_are_data(repo: OffersRepository) -> None:
    await repo.apply(Changes(customers={"c-1": customer("c-1")}))
    snapshot = await repo.load(['{"$gt": ""}', "' OR 1=1 --"], ['{"$ne": null}'])
    assert snapshot.customers == {}
    assert snapshot.offers == {}


async def test_apply_is_idempotent_and_never_duplicates_an_offer(repo: OffersRepository) -> None:
    record = offer()
    changes = Changes(customers={"c-1": customer()}, new_offers={record.offer_id: record})
    await repo.apply(changes)
    await repo.apply(changes)
    assert await repo.offers_of("c-1") == [record]
    assert [(o.kind, o.state) for o in await repo.offers_of("c-1")] == [("frequent_item", "issued")]
    assert (await repo.load(["c-1"], [])).customers == {"c-1": customer()}


async def test_customer_record_is_replaced_by_the_latest(repo: OffersRepository) -> None:
    await repo.apply(Changes(customers={"c-1": customer(visits=1, birth_md="05-17")}))
    latest = customer(visits=2, marketing_consent=False, last_visit_date=dt.date(2026, 3, 1))
    await repo.apply(Changes(customers={"c-1": latest}))
    assert (await repo.load(["c-1"], [])).customers == {"c-1": latest}


async def test_redemption_moves_an_offer_from_open_to_used_once(repo: OffersRepository) -> None:
    record = offer()
    await repo.apply(Changes(new_offers={record.offer_id: record}))
    used = redeemed(record)
    await repo.apply(Changes(redeemed={record.offer_id: used}))
    await repo.apply(Changes(redeemed={record.offer_id: redeemed(record, "e-10")}))
    assert await in_state(repo, "c-1", "issued") == []
    assert await in_state(repo, "c-1", "redeemed") == [used]
    # a late expiry does not undo the redemption
    expired = OfferRecord(
        issued=record.issued, rule_key="MILK", state="expired", expired_on=dt.date(2026, 4, 1)
    )
    await repo.apply(Changes(expired={record.offer_id: expired}))
    assert await in_state(repo, "c-1", "redeemed") == [used]
    assert await repo.offers_of("c-1") == [used]


async def test_new_offer_already_redeemed_in_its_batch_is_stored_redeemed(
    repo: OffersRepository,
) -> None:
    used = redeemed(offer())
    await repo.apply(Changes(new_offers={used.offer_id: used}))
    assert await in_state(repo, "c-1", "redeemed") == [used]


async def test_expiry_query_pages_issued_offers_past_their_day_and_those_expired_on_it(
    repo: OffersRepository,
) -> None:
    day = dt.date(2026, 4, 1)
    due = [offer(f"c-{i}", valid_days=i) for i in range(4)]  # valid until 1 to 4 March
    not_due = offer("c-9", day=dt.date(2026, 3, 20), valid_days=12)  # until 1 April
    await repo.apply(Changes(new_offers={o.offer_id: o for o in [*due, not_due]}))
    first = await repo.offers_to_expire(day, after=None, limit=3)
    rest = await repo.offers_to_expire(day, after=first[-1].offer_id, limit=3)
    assert len(first) == 3
    assert sorted(o.offer_id for o in first + rest) == sorted(o.offer_id for o in due)
    expired = OfferRecord(issued=due[0].issued, rule_key="MILK", state="expired", expired_on=day)
    await repo.apply(Changes(expired={expired.offer_id: expired}))
    again = await repo.offers_to_expire(day, after=None, limit=10)
    assert expired in again
    assert len(again) == 4
    next_day = await repo.offers_to_expire(day + dt.timedelta(days=1), after=None, limit=10)
    assert expired.offer_id not in {o.offer_id for o in next_day}
    assert not_due.offer_id in {o.offer_id for o in next_day}
    assert isinstance(expired.expired_event(), OfferExpired)


async def test_birthday_query_pages_by_customer_id_with_their_offers(
    repo: OffersRepository,
) -> None:
    customers = {
        f"c-{i}": customer(f"c-{i}", birth_md="02-29" if i % 2 else "02-28") for i in range(5)
    }
    customers["c-x"] = customer("c-x", birth_md="03-01")
    customers["c-e"] = CustomerRecord(customer_id="c-e", erased=True)
    their_offer = offer("c-1")
    await repo.apply(Changes(customers=customers, new_offers={their_offer.offer_id: their_offer}))
    query = CustomerQuery("birthday", month_days=("02-28", "02-29"))
    first = await repo.customers_for_day(query, after=None, limit=3)
    assert list(first.customers) == ["c-0", "c-1", "c-2"]
    assert first.offers == {their_offer.offer_id: their_offer}
    second = await repo.customers_for_day(query, after="c-2", limit=3)
    assert sorted(second.customers) == ["c-3", "c-4"]
    only_28 = await repo.customers_for_day(
        CustomerQuery("birthday", month_days=("02-28",)), after=None, limit=10
    )
    assert sorted(only_28.customers) == ["c-0", "c-2", "c-4"]


async def test_anniversary_and_win_back_queries(repo: OffersRepository) -> None:
    day = dt.date(2026, 3, 1)
    customers = {
        "a": customer("a", first_purchase_date=dt.date(2025, 3, 1)),
        "b": customer("b", first_purchase_date=dt.date(2025, 3, 2)),
        "c": customer("c", last_visit_date=dt.date(2025, 12, 30), visits=5),
        "d": customer("d", last_visit_date=dt.date(2025, 12, 31), visits=5),
        "e": customer("e", last_visit_date=dt.date(2025, 1, 1), visits=4),
        "f": customer("f", last_visit_date=dt.date(2025, 1, 1), visits=50),
    }
    await repo.apply(Changes(customers=customers))
    anniversary = await repo.customers_for_day(
        CustomerQuery("anniversary", on_date=day), after=None, limit=10
    )
    assert list(anniversary.customers) == ["a"]
    lapsed = await repo.customers_for_day(
        CustomerQuery("win_back", on_date=dt.date(2025, 12, 30), min_visits=5),
        after=None,
        limit=10,
    )
    assert sorted(lapsed.customers) == ["c", "f"]


async def test_rejections_are_stored_once(repo: OffersRepository) -> None:
    changes = Changes(rejections={r.rejection_id: r for r in (rejection(), rejection(code="X"))})
    await repo.apply(changes)
    await repo.apply(changes)
    assert await repo.rejections("c-1") == sorted(
        changes.rejections.values(), key=lambda r: r.rejection_id
    )
    assert [r.reason for r in await repo.rejections("c-1")] == ["unknown_code", "unknown_code"]
    assert await repo.rejections("c-2") == []


async def test_offers_of_lists_each_customers_offers_of_every_kind_and_state(
    repo: OffersRepository,
) -> None:
    a, b, c = offer("c-1"), offer("c-2", kind="birthday", rule_key="2026"), offer("c-3")
    await repo.apply(Changes(new_offers={o.offer_id: o for o in (a, b, c)}))
    await repo.apply(Changes(redeemed={a.offer_id: redeemed(a)}))
    assert await repo.offers_of("c-1") == [redeemed(a)]
    assert await repo.offers_of("c-2") == [b]
    assert await repo.offers_of("c-3") == [c]
    assert await repo.offers_of("unknown") == []
    kinds = [(o.kind, o.state) for cid in ("c-1", "c-2", "c-3") for o in await repo.offers_of(cid)]
    assert sorted(kinds) == [
        ("birthday", "issued"),
        ("frequent_item", "issued"),
        ("frequent_item", "redeemed"),
    ]


async def test_offers_of_sorts_by_first_valid_day_then_offer_id(repo: OffersRepository) -> None:
    late = offer(day=dt.date(2026, 3, 9))
    same_day = [offer(rule_key=sku, day=dt.date(2026, 3, 2)) for sku in ("MILK", "EGGS", "TEA")]
    early = offer(kind="birthday", rule_key="2026", day=dt.date(2026, 2, 1))
    expired = OfferRecord(
        issued=early.issued, rule_key="2026", state="expired", expired_on=dt.date(2026, 2, 9)
    )
    await repo.apply(Changes(new_offers={o.offer_id: o for o in (late, *same_day, early)}))
    await repo.apply(Changes(expired={expired.offer_id: expired}))
    await repo.apply(Changes(redeemed={late.offer_id: redeemed(late)}))
    middle = sorted(same_day, key=lambda o: o.offer_id)
    assert await repo.offers_of("c-1") == [expired, *middle, redeemed(late)]


async def test_a_coupon_code_belongs_to_one_offer(repo: OffersRepository) -> None:
    first = offer()
    other = offer(rule_key="EGGS")
    clash = OfferRecord(
        issued=other.issued.model_copy(update={"coupon_code": first.coupon_code}),
        rule_key="EGGS",
    )
    await repo.apply(Changes(new_offers={first.offer_id: first}))
    with pytest.raises(Conflict):
        await repo.apply(Changes(new_offers={clash.offer_id: clash}))
    assert await repo.offers_of("c-1") == [first]


async def test_sqlite_file_store_survives_reopening(tmp_path: Path) -> None:
    location = StoreLocation.parse(f"sqlite:///{tmp_path}")
    record = offer()
    first = await SqliteOffersRepository.open(location)
    await first.apply(Changes(new_offers={record.offer_id: record}))
    await first.close()
    second = await SqliteOffersRepository.open(location)
    assert await second.offers_of("c-1") == [record]
    await second.close()


async def test_sqlite_calendar_queries_use_their_indexes() -> None:
    repository = await SqliteOffersRepository.open(StoreLocation.parse("memory://"))
    statements: list[str] = []

    def trace(db: sqlite3.Connection) -> None:
        db.set_trace_callback(statements.append)  # gets the SQL with its values bound

    def plan_of(sql: str) -> Callable[[sqlite3.Connection], str]:
        def explain(db: sqlite3.Connection) -> str:
            db.set_trace_callback(None)
            rows = db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
            db.set_trace_callback(statements.append)
            return " ".join(str(row[-1]) for row in rows)

        return explain

    await repository.read(trace)
    for query, index in [
        (CustomerQuery("birthday", month_days=("02-28", "02-29")), "customers_birth_md"),
        (CustomerQuery("anniversary", on_date=dt.date(2026, 3, 1)), "customers_anniversary"),
        (
            CustomerQuery("win_back", on_date=dt.date(2026, 1, 1), min_visits=5),
            "customers_last_visit",
        ),
    ]:
        statements.clear()
        await repository.customers_for_day(query, after="c-1", limit=10)
        [sql] = [s for s in statements if "FROM customers WHERE" in s]
        plan = await repository.read(plan_of(sql))
        assert f"USING INDEX {index}" in plan, plan
    await repository.close()
