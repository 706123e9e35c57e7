"""One contract for both profile repositories: SQLite (file and memory) and MongoDB.

MongoDB is the SecantusDB server the suite starts (or `CRM_TEST_MONGO_URL`), opened through
`open_repository` like the service does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal

import orjson
import pytest

from services.profiles.domain import Coupon, CustomerProfile, ProfileBook
from services.profiles.store import ProfilesRepository, open_repository
from services.profiles.store_mongo import MongoProfilesRepository
from shared.campaigns import SegmentDefined, SegmentRule
from shared.errors import Conflict
from shared.events import (
    CardLinked,
    CustomerErased,
    CustomerSignedUp,
    CustomerUpdated,
    NormalizedEvent,
    PurchaseLine,
    PurchaseRecorded,
)
from shared.settings import StoreSettings

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)


@pytest.fixture
async def repo(every_store: StoreSettings) -> AsyncIterator[ProfilesRepository]:
    async with open_repository(every_store) as repository:
        yield repository


def purchase(event_id: str, customer: str, when: dt.datetime, card: str) -> PurchaseRecorded:
    return PurchaseRecorded(
        event_id=event_id,
        occurred_at=when,
        customer_id=customer,
        card_id=card,
        store_id="S001",
        currency="EUR",
        lines=(
            PurchaseLine(
                sku="MILK",
                quantity=Decimal("1.5"),
                unit_price=Decimal("1.19"),
                amount=Decimal("1.785"),
            ),
        ),
        total=Decimal("1.785"),
    )


def signup(event_id: str, customer: str, card: str, birth: dt.date) -> CustomerSignedUp:
    return CustomerSignedUp(
        event_id=event_id,
        occurred_at=T0,
        customer_id=customer,
        card_id=card,
        email=f"{customer}@example.com",
        birth_date=birth,
        marketing_consent=True,
    )


async def apply(repo: ProfilesRepository, events: list[NormalizedEvent]) -> list[str]:
    """One batch the way the service runs it; returns the ids saved."""
    book = ProfileBook()
    ids = book.ids_of(events)
    while ids:
        book.add(ids, await repo.get_many(ids))
        ids = book.needs()
    for event in events:
        book.apply(event)
    changed = book.changed()
    await repo.save_many(changed)
    return [p.customer_id for p in changed]


async def test_saved_profiles_come_back_equal(repo: ProfilesRepository) -> None:
    await apply(
        repo,
        [
            signup("s1", "c-1", "card-1", dt.date(1990, 5, 17)),
            purchase("e1", "c-1", T0, "card-1"),
            purchase("e2", "c-2", T0, "card-2"),
        ],
    )
    found = await repo.get_many(["c-1", "c-2", "c-unknown"])
    assert set(found) == {"c-1", "c-2"}
    one = found["c-1"]
    assert one.total_spend == Decimal("1.785")
    assert one.skus["MILK"].quantity == Decimal("1.5")
    assert one.last_purchase_at == T0
    assert one.birth_date == dt.date(1990, 5, 17)
    assert one.version == 1
    assert await repo.get("c-1") == one
    assert await repo.get("c-unknown") is None


async def test_reapplying_a_batch_persists_nothing_new(repo: ProfilesRepository) -> None:
    events: list[NormalizedEvent] = [
        purchase("e1", "c-1", T0, "card-1"),
        purchase("e2", "c-1", T0 + dt.timedelta(days=1), "card-1"),
    ]
    assert await apply(repo, events) == ["c-1"]
    before = await repo.get("c-1")
    assert await apply(repo, events) == []
    assert await repo.get("c-1") == before


async def test_a_stale_write_is_refused_and_changes_nothing(repo: ProfilesRepository) -> None:
    await apply(repo, [purchase("e1", "c-1", T0, "card-1")])
    stored = await repo.get("c-1")
    assert stored is not None
    newer = stored.model_copy(update={"version": 2, "visits": 5})
    await repo.save_many([newer])
    stale = stored.model_copy(update={"version": 2, "visits": 9})
    with pytest.raises(Conflict):
        await repo.save_many([stale])
    again = await repo.get("c-1")
    assert again is not None
    assert again.visits == 5
    with pytest.raises(Conflict):
        await repo.save_many([CustomerProfile(customer_id="c-1", version=1)])


async def test_find_by_card_follows_merges_and_erasures(repo: ProfilesRepository) -> None:
    await apply(
        repo,
        [
            purchase("e1", "c-1", T0, "card-1"),
            purchase("e2", "c-2", T0, "card-2"),
            purchase("e3", "c-3", T0, "card-3"),
        ],
    )
    found = await repo.find_by_card("card-2")
    assert found is not None
    assert found.customer_id == "c-2"
    link = CardLinked(
        event_id="l1",
        occurred_at=T0 + dt.timedelta(hours=1),
        customer_id="c-1",
        card_id="card-2",
        merged_customer_id="c-2",
    )
    erase = CustomerErased(event_id="x1", occurred_at=T0 + dt.timedelta(hours=1), customer_id="c-3")
    await apply(repo, [link, erase])
    merged = await repo.find_by_card("card-2")
    assert merged is not None
    assert merged.customer_id == "c-1"
    assert merged.visits == 2
    assert await repo.find_by_card("card-3") is None
    assert await repo.find_by_card("card-unknown") is None
    assert await repo.count() == 1


async def test_export_holds_all_stored_data_as_json(repo: ProfilesRepository) -> None:
    await apply(
        repo,
        [
            signup("s1", "c-1", "card-1", dt.date(1990, 5, 17)),
            purchase("e1", "c-1", T0, "card-1"),
            CardLinked(
                event_id="l1",
                occurred_at=T0,
                customer_id="c-1",
                card_id="card-9",
                merged_customer_id="c-9",
            ),
        ],
    )
    export = await repo.export("c-1")
    assert orjson.loads(orjson.dumps(export)) == export
    assert export["customer_id"] == "c-1"
    assert export["aliases"] == ["c-9"]
    document = export["document"]
    assert document["email"] == "c-1@example.com"
    assert document["total_spend"] == "1.785"
    assert document["card_ids"] == ["card-1", "card-9"]
    assert (await repo.export("c-unknown"))["document"] is None


async def test_coupons_are_saved_with_the_batch_and_read_per_customer(
    repo: ProfilesRepository,
) -> None:
    def coupon(offer_id: str, customer: str, day: int, state: str = "issued") -> Coupon:
        return Coupon.model_validate(
            {
                "offer_id": offer_id,
                "customer_id": customer,
                "kind": "frequent_item",
                "coupon_code": f"CODE-{offer_id}",
                "discount_percent": "10",
                "sku": "MILK",
                "valid_from": dt.date(2026, 3, day),
                "valid_until": dt.date(2026, 3, day + 14),
                "state": state,
            }
        )

    await repo.save_many(
        [], [coupon("o2", "c-1", 5), coupon("o1", "c-1", 2), coupon("o3", "c-2", 1)]
    )
    assert [c.offer_id for c in await repo.coupons_of("c-1")] == ["o1", "o2"]
    await repo.save_many([], [coupon("o1", "c-1", 2, "redeemed")])
    assert (await repo.get_coupons(["o1", "o9"]))["o1"].state == "redeemed"
    assert set(await repo.get_coupons(["o1", "o9"])) == {"o1"}
    assert (await repo.export("c-2"))["coupons"][0]["coupon_code"] == "CODE-o3"


async def test_an_erased_customer_keeps_no_coupon_even_one_announced_after_the_erasure(
    repo: ProfilesRepository,
) -> None:
    def coupon(offer_id: str, customer: str, state: str = "issued") -> Coupon:
        return Coupon.model_validate(
            {
                "offer_id": offer_id,
                "customer_id": customer,
                "kind": "frequent_item",
                "coupon_code": f"CODE-{offer_id}",
                "discount_percent": "10",
                "valid_from": dt.date(2026, 3, 1),
                "valid_until": dt.date(2026, 3, 15),
                "state": state,
            }
        )

    await apply(
        repo,
        [
            signup("s1", "c-1", "card-1", dt.date(1990, 5, 17)),
            signup("s2", "c-2", "card-2", dt.date(1991, 6, 18)),
        ],
    )
    await repo.save_many([], [coupon("o1", "c-1"), coupon("o2", "c-2")])
    erase = CustomerErased(event_id="x1", occurred_at=T0 + dt.timedelta(hours=1), customer_id="c-1")
    await apply(repo, [erase])
    assert await repo.coupons_of("c-1") == []
    # Offers revokes the erased customer's coupon after the erasure: profiles keeps none.
    await repo.save_many([], [coupon("o1", "c-1", "revoked")])
    assert await repo.coupons_of("c-1") == []
    assert await repo.get_coupons(["o1"]) == {}
    assert [c.offer_id for c in await repo.coupons_of("c-2")] == ["o2"]


async def test_lookup_values_are_data_not_queries(repo: ProfilesRepository) -> None:
    await apply(repo, [purchase("e1", "c-1", T0, "card-1")])
    with pytest.raises(TypeError):
        await repo.find_by_card({"$gt": ""})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await repo.get_many([{"$ne": None}])  # type: ignore[list-item]
    assert await repo.get("c-1' OR '1'='1") is None
    assert await repo.find_by_card("' OR 1=1 --") is None
    assert await repo.coupons_of("%") == []


async def test_large_batches_are_read_and_written_whole(repo: ProfilesRepository) -> None:
    events: list[NormalizedEvent] = [
        purchase(f"e{i}", f"c-{i:04}", T0, f"card-{i}") for i in range(620)
    ]
    assert len(await apply(repo, events)) == 620
    found = await repo.get_many([f"c-{i:04}" for i in range(620)])
    assert len(found) == 620
    assert await repo.count() == 620


async def test_stamps_and_coupon_states_come_back_as_saved(repo: ProfilesRepository) -> None:
    events: list[NormalizedEvent] = [
        signup("s1", "c-1", "card-1", dt.date(1990, 5, 17)),
        CustomerUpdated(
            event_id="u1",
            occurred_at=T0 + dt.timedelta(days=1),
            customer_id="c-1",
            email="new@example.com",
            marketing_consent=False,
        ),
        purchase("e1", "c-1", T0, "card-1"),
    ]
    book = ProfileBook()
    book.add(["c-1"], {})
    for event in events:
        book.apply(event)
    [saved] = book.changed()
    coupon = Coupon.model_validate(
        {
            "offer_id": "o1",
            "customer_id": "c-1",
            "kind": "birthday",
            "coupon_code": "CODE-o1",
            "discount_percent": "15",
            "valid_from": dt.date(2026, 3, 1),
            "valid_until": dt.date(2026, 3, 15),
            "state": "revoked",
            "redeemed_at": T0,
            "discount": "3.00",
        }
    )
    await repo.save_many([saved], [coupon])
    stored = await repo.get("c-1")
    assert stored is not None
    assert stored.content() == saved.content()
    assert stored.stamps["email"].event_id == "u1"
    assert stored.stamps["email"].at == T0 + dt.timedelta(days=1)
    assert stored.skus["MILK"].last_event_id == "e1"
    assert await repo.coupons_of("c-1") == [coupon]


# ---------------------------------------------------------------- segments


def entered(days: int) -> dt.datetime:
    return T0 + dt.timedelta(days=days)


async def test_memberships_are_saved_with_the_batch_counted_and_listed_per_segment(
    repo: ProfilesRepository,
) -> None:
    await apply(repo, [purchase(f"e{i}", f"c-{i}", T0, f"card-{i}") for i in range(5)])
    await repo.save_many(
        [],
        memberships={
            ("vip", "c-3"): entered(1),
            ("vip", "c-1"): entered(2),
            ("vip", "c-4"): entered(3),
            ("all", "c-1"): entered(0),
        },
    )
    assert await repo.segment_counts(["vip", "all", "empty"]) == {"vip": 3, "all": 1, "empty": 0}
    assert await repo.memberships_of(["c-1", "c-2", "c-3"]) == {
        "c-1": {"all": entered(0), "vip": entered(2)},
        "c-3": {"vip": entered(1)},
    }
    assert await repo.segment_members("vip", after=None, limit=2) == ["c-1", "c-3"]
    assert await repo.segment_members("vip", after="c-3", limit=2) == ["c-4"]
    assert await repo.segment_members("nobody", after=None, limit=2) == []
    # Left, and entered again later: the row goes, then comes back with its new time.
    await repo.save_many([], memberships={("vip", "c-1"): None, ("vip", "c-2"): entered(4)})
    assert await repo.segment_members("vip", after=None, limit=10) == ["c-2", "c-3", "c-4"]
    await repo.save_many([], memberships={("vip", "c-1"): entered(5)})
    assert (await repo.memberships_of(["c-1"]))["c-1"]["vip"] == entered(5)
    assert (await repo.export("c-1"))["segments"] == {
        "all": entered(0).isoformat(),
        "vip": entered(5).isoformat(),
    }


async def test_an_erased_customer_or_an_alias_keeps_no_membership(repo: ProfilesRepository) -> None:
    await apply(repo, [purchase(f"e{i}", f"c-{i}", T0, f"card-{i}") for i in range(3)])
    await repo.save_many(
        [],
        memberships={(s, f"c-{i}"): T0 for s in ("all", "vip") for i in range(3)},
    )
    erase = CustomerErased(event_id="x1", occurred_at=T0 + dt.timedelta(hours=1), customer_id="c-1")
    link = CardLinked(
        event_id="l1",
        occurred_at=T0 + dt.timedelta(hours=1),
        customer_id="c-0",
        card_id="card-2",
        merged_customer_id="c-2",
    )
    await apply(repo, [erase, link])
    assert set(await repo.memberships_of(["c-0", "c-1", "c-2"])) == {"c-0"}
    assert await repo.segment_counts(["all", "vip"]) == {"all": 1, "vip": 1}


async def test_a_refused_write_saves_no_membership(repo: ProfilesRepository) -> None:
    await apply(repo, [purchase("e1", "c-1", T0, "card-1")])
    stored = await repo.get("c-1")
    assert stored is not None
    stale = stored.model_copy(update={"version": 5})
    with pytest.raises(Conflict):
        await repo.save_many([stale], memberships={("vip", "c-1"): T0}, clock_day=T0.date())
    if not isinstance(repo, MongoProfilesRepository):  # one transaction in SQLite
        assert await repo.memberships_of(["c-1"]) == {}
        assert await repo.last_clock_day() is None


async def test_live_profiles_come_a_page_at_a_time_without_aliases_or_erased(
    repo: ProfilesRepository,
) -> None:
    await apply(repo, [purchase(f"e{i}", f"c-{i}", T0, f"card-{i}") for i in range(5)])
    erase = CustomerErased(event_id="x1", occurred_at=T0 + dt.timedelta(hours=1), customer_id="c-1")
    link = CardLinked(
        event_id="l1",
        occurred_at=T0 + dt.timedelta(hours=1),
        customer_id="c-0",
        card_id="card-3",
        merged_customer_id="c-3",
    )
    await apply(repo, [erase, link])
    first = await repo.live_profiles(after=None, limit=2)
    assert [p.customer_id for p in first] == ["c-0", "c-2"]
    rest = await repo.live_profiles(after="c-2", limit=2)
    assert [p.customer_id for p in rest] == ["c-4"]
    assert first[0].visits == 2
    assert await repo.live_profiles(after="c-4", limit=2) == []


async def test_segment_definitions_are_kept_and_replaced_by_name(repo: ProfilesRepository) -> None:
    def record(name: str, version: int, spend: str) -> SegmentDefined:
        return SegmentDefined(
            name=name,
            description="Big spenders",
            rule=SegmentRule.model_validate(
                {"min_spend": spend, "bought": [{"category": "tea", "within_days": 90}]}
            ),
            version=version,
            defined_at=T0 + dt.timedelta(minutes=version),
            defined_by="abc123",
        )

    assert await repo.definitions() == []
    await repo.save_definitions([record("vip", 1, "100"), record("big", 1, "50.5")])
    await repo.save_definitions([record("vip", 2, "200")])
    assert await repo.definitions() == [record("big", 1, "50.5"), record("vip", 2, "200")]


async def test_the_latest_clock_day_only_moves_forward(repo: ProfilesRepository) -> None:
    assert await repo.last_clock_day() is None
    await repo.save_many([], clock_day=dt.date(2026, 3, 5))
    await repo.save_many([], clock_day=dt.date(2026, 3, 4))
    assert await repo.last_clock_day() == dt.date(2026, 3, 5)
    await repo.save_many([], clock_day=dt.date(2026, 3, 6))
    assert await repo.last_clock_day() == dt.date(2026, 3, 6)


async def test_segment_look_ups_are_data_not_queries(repo: ProfilesRepository) -> None:
    await repo.save_many([], memberships={("vip", "c-1"): T0})
    assert await repo.segment_counts(["' OR 1=1 --"]) == {"' OR 1=1 --": 0}
    assert await repo.segment_members("%", after=None, limit=10) == []
    with pytest.raises(TypeError):
        await repo.segment_members({"$ne": None}, after=None, limit=10)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await repo.memberships_of([{"$gt": ""}])  # type: ignore[list-item]
