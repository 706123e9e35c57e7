"""The profiles service through FastStream's in-memory test broker."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
import pytest
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.profiles.app import create_app
from services.profiles.service import ProfilesService
from services.profiles.store_sqlite import SqliteProfilesRepository
from shared.campaigns import SegmentDefined, SegmentRule
from shared.edge import Source
from shared.events import (
    BasketLine,
    CardLinked,
    ConsentChanged,
    ContactChanged,
    CustomerErased,
    CustomerSignedUp,
    DeadLetter,
    OfferIssued,
    OfferRedeemed,
    OfferRevoked,
    ProfileChanged,
    PurchaseLine,
    PurchaseRecorded,
    RedemptionRejected,
)
from shared.settings import KafkaSettings, Settings, StoreSettings
from shared.skeleton import ServiceApp
from shared.storage import StoreLocation
from shared.topics import CLOCK, CONTACTS, DEADLETTER, EVENTS, OFFERS, PROFILES_CHANGED, SEGMENTS
from shared.vault import Opener, Pending, sealed_decoder
from shared.vault_sqlite import SqliteVault

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
NOW = T0 + dt.timedelta(days=60)
"""The wall clock of the tests' service (clock days up to a day after it are taken)."""


@dataclass
class Collected:
    changed: list[ProfileChanged] = field(default_factory=list)
    contacts: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    segments: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    """(key, value) of each record published on crm.segments, as published."""
    order: list[tuple[str, str]] = field(default_factory=list)
    """(topic, cause) of profile changes and segment changes, in publishing order."""


@dataclass
class Harness:
    app: ServiceApp[ProfilesService]
    repo: SqliteProfilesRepository
    out: Collected
    broker: TestKafkaBroker

    async def send_batch(self, *payloads: bytes) -> None:
        """Several records delivered to the handler as one batch."""
        await self.app.broker.publish_batch(*payloads, topic=EVENTS)

    async def send(self, *payloads: bytes, key: bytes = b"c-1") -> None:
        for payload in payloads:
            await self.app.broker.publish(payload, EVENTS, key=key)

    async def tick(self, day: dt.date) -> None:
        await self.app.broker.publish(orjson.dumps({"date": day.isoformat()}), CLOCK)

    async def define(self, name: str, rule: dict[str, Any], version: int = 1) -> None:
        """A segment definition, as the service takes it from crm.segment-definitions."""
        await self.app.service.apply_definitions(
            [
                SegmentDefined(
                    name=name,
                    rule=SegmentRule.model_validate(rule),
                    version=version,
                    defined_at=T0 - dt.timedelta(days=30),
                    defined_by="token-1",
                )
            ]
        )

    def segment_changes(self, segment: str) -> list[dict[str, Any]]:
        """The records published on crm.segments for one segment, read from their bytes."""
        found = [orjson.loads(value) for _, value in self.out.segments]
        return [r for r in found if r["segment"] == segment]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    settings = Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url="memory://"),
    )
    repo = await SqliteProfilesRepository.open(StoreLocation.parse("memory://"))
    app = create_app(settings, repository=repo, clock=lambda: NOW, page_size=2)
    broker = app.broker
    assert broker is not None
    out = Collected()

    @broker.subscriber(PROFILES_CHANGED, batch=False)
    async def on_changed(_: Any, message: KafkaMessage) -> None:
        changed = ProfileChanged.model_validate_json(message.body)
        out.changed.append(changed)
        out.order.append((PROFILES_CHANGED, changed.cause_event_id))

    @broker.subscriber(SEGMENTS, batch=False)
    async def on_segment(_: Any, message: KafkaMessage) -> None:
        out.segments.append((message.raw_message.key, message.body))  # type: ignore[union-attr]
        out.order.append((SEGMENTS, orjson.loads(message.body)["cause_event_id"]))

    @broker.subscriber(CONTACTS, batch=False)
    async def on_contact(_: Any, message: KafkaMessage) -> None:
        out.contacts.append((message.raw_message.key, message.body))  # type: ignore[union-attr]

    @broker.subscriber(DEADLETTER, batch=False)
    async def on_dead(_: Any, message: KafkaMessage) -> None:
        out.dead.append(DeadLetter.model_validate_json(message.body))

    async with TestKafkaBroker(broker) as test_broker:
        yield Harness(app, repo, out, test_broker)
    await repo.close()


def purchase(event_id: str, when: dt.datetime = T0, customer: str | None = "c-1") -> bytes:
    lines = (
        PurchaseLine(
            sku="MILK",
            name="Milk 1 l",
            quantity=Decimal(2),
            unit_price=Decimal("1.19"),
            amount=Decimal("2.38"),
        ),
        PurchaseLine(
            sku="MILK",
            name="Milk 1 l",
            quantity=Decimal(1),
            unit_price=Decimal("1.19"),
            amount=Decimal("1.19"),
        ),
        PurchaseLine(
            sku="BREAD", quantity=Decimal(1), unit_price=Decimal("2.00"), amount=Decimal("2.00")
        ),
    )
    event = PurchaseRecorded(
        event_id=event_id,
        occurred_at=when,
        customer_id=customer,
        card_id="card-1" if customer else None,
        store_id="S001",
        currency="EUR",
        lines=lines,
        total=Decimal("5.57"),
        coupons=("C-1",),
    )
    return event.model_dump_json().encode()


def signup(event_id: str = "s1", when: dt.datetime = T0) -> bytes:
    return (
        CustomerSignedUp(
            event_id=event_id,
            occurred_at=when,
            customer_id="c-1",
            card_id="card-1",
            email="ana@example.com",
            first_name="Ana",
            marketing_consent=True,
        )
        .model_dump_json()
        .encode()
    )


async def test_purchase_updates_the_profile_and_publishes_profile_changed(
    harness: Harness,
) -> None:
    await harness.send(purchase("e1"), purchase("e2", T0 + dt.timedelta(days=2)))
    changed = harness.out.changed
    assert [c.cause_event_id for c in changed] == ["e1", "e2"]
    last = changed[-1]
    assert last.customer_id == "c-1"
    assert last.cause_type == "purchase_recorded"
    assert last.visits == 2
    assert last.purchase is not None
    assert last.purchase.products == {"MILK": "Milk 1 l", "BREAD": None}
    assert last.purchase.coupons == ("C-1",)
    assert last.purchase.card_id == "card-1"
    assert last.purchase.lines == (
        BasketLine(sku="BREAD", amount=Decimal("2.00")),
        BasketLine(sku="MILK", amount=Decimal("3.57")),
    )
    assert last.card_ids == ("card-1",)
    stored = await harness.repo.get("c-1")
    assert stored is not None
    assert stored.visits == 2
    assert stored.skus["MILK"].quantity == 6
    assert stored.total_spend == Decimal("11.14")
    assert (await harness.repo.find_by_card("card-1")) == stored
    stats = harness.app.service.stats
    assert stats["events_applied"] == 2
    assert stats["applied_purchase_recorded"] == 2


async def test_duplicate_swipe_is_counted_once(harness: Harness) -> None:
    await harness.send(purchase("e1"))
    await harness.send(purchase("e1"))
    stored = await harness.repo.get("c-1")
    assert stored is not None
    assert stored.visits == 1
    assert stored.version == 1
    assert [c.cause_event_id for c in harness.out.changed] == ["e1"]
    assert harness.app.service.stats["duplicates"] == 1


async def test_undecodable_event_is_dead_lettered_and_the_batch_goes_on(
    harness: Harness,
) -> None:
    await harness.send(b"{not json", b'{"type": "purchase_recorded"}', purchase("e1"))
    assert [d.reason for d in harness.out.dead] == ["invalid_json", "invalid_event"]
    assert harness.out.dead[0].source_topic == EVENTS
    assert harness.out.dead[0].service == "profiles"
    assert [c.cause_event_id for c in harness.out.changed] == ["e1"]
    assert harness.app.service.stats["dead_lettered_invalid_event"] == 1
    assert harness.app.service.stats["dead_lettered_invalid_json"] == 1


async def test_anonymous_purchase_builds_no_profile(harness: Harness) -> None:
    await harness.send(purchase("e1", customer=None), key=b"S001")
    assert await harness.repo.count() == 0
    assert harness.out.changed == []
    assert harness.app.service.stats["anonymous_purchases"] == 1


async def test_signup_publishes_contact_details_sealed_with_the_customers_key(
    harness: Harness,
) -> None:
    vault = harness.app.service.vault
    assert isinstance(vault, SqliteVault)
    await vault.create(["c-1"], T0)  # as ingest does on the customer's first personal data
    await harness.send(signup())
    [(key, body)] = harness.out.contacts
    assert key == b"c-1"
    assert b"ana@example.com" not in body
    assert b"Ana" not in body
    pending = sealed_decoder(ContactChanged)(Source(CONTACTS, 0, 0, key, body))
    assert isinstance(pending, Pending)
    [contact] = await Opener(vault, Counter()).open([pending])
    assert contact.email == "ana@example.com"
    assert contact.first_name == "Ana"
    assert contact.marketing_consent
    assert harness.out.changed[0].has_email


async def test_a_contact_without_a_data_key_goes_out_without_personal_fields(
    harness: Harness,
) -> None:
    await harness.send(signup())
    [(_, body)] = harness.out.contacts
    assert b"ana@example.com" not in body
    sent = ContactChanged.model_validate_json(body)
    assert sent.email is None
    assert b'"personal_withheld":true' in body  # so the notifier keeps the address it knows
    assert harness.app.service.stats["contacts_without_key"] == 1


async def test_erasure_publishes_a_contact_tombstone_and_blocks_later_events(
    harness: Harness,
) -> None:
    erase = CustomerErased(event_id="x1", occurred_at=T0 + dt.timedelta(hours=1), customer_id="c-1")
    await harness.send(signup(), purchase("e1"), erase.model_dump_json().encode())
    await harness.send(purchase("e2", T0 + dt.timedelta(hours=2)))
    key, value = harness.out.contacts[-1]
    assert key == b"c-1"
    assert not value  # a tombstone (the in-memory broker shows the null value as b"")
    assert harness.out.changed[-1].erased
    assert harness.out.changed[-1].cause_event_id == "x1"
    stored = await harness.repo.get("c-1")
    assert stored is not None
    assert stored.erased
    assert stored.email is None
    assert stored.visits == 0
    assert await harness.repo.find_by_card("card-1") is None
    assert harness.app.service.stats["ignored_erased"] == 1


async def test_duplicate_in_one_batch_is_applied_once(harness: Harness) -> None:
    await harness.send_batch(purchase("e1"), purchase("e1"), purchase("e2"))
    stored = await harness.repo.get("c-1")
    assert stored is not None
    assert stored.visits == 2
    assert stored.version == 1  # one write for the batch
    assert [c.cause_event_id for c in harness.out.changed] == ["e1", "e2"]
    assert harness.app.service.stats["batches"] == 1


async def test_card_link_merges_profiles_and_later_events_reach_the_target(
    harness: Harness,
) -> None:
    other = PurchaseRecorded.model_validate_json(purchase("b1")).model_copy(
        update={"customer_id": "c-2", "card_id": "card-2"}
    )
    link = CardLinked(
        event_id="l1",
        occurred_at=T0 + dt.timedelta(hours=1),
        customer_id="c-1",
        card_id="card-2",
        merged_customer_id="c-2",
    )
    later = other.model_copy(update={"event_id": "b2", "occurred_at": T0 + dt.timedelta(hours=2)})
    await harness.send(signup(), other.model_dump_json().encode())
    await harness.send(link.model_dump_json().encode())
    await harness.send(later.model_dump_json().encode(), key=b"c-2")
    target = await harness.repo.get("c-1")
    alias = await harness.repo.get("c-2")
    assert target is not None
    assert alias is not None
    assert alias.merged_into == "c-1"
    assert target.visits == 2
    assert target.card_ids == ["card-1", "card-2"]
    assert (await harness.repo.find_by_card("card-2")) == target
    assert harness.out.changed[-1].customer_id == "c-1"
    assert harness.out.changed[-1].visits == 2
    merged_away = [
        c for c in harness.out.changed if c.customer_id == "c-2" and c.merged_into == "c-1"
    ]
    assert [c.cause_event_id for c in merged_away] == ["l1"]
    assert await harness.repo.count() == 1
    assert harness.app.service.stats["merges"] == 1


async def test_offer_events_become_the_customers_coupons_and_others_are_left_alone(
    harness: Harness,
) -> None:
    issued = OfferIssued(
        offer_id="o-1",
        customer_id="c-1",
        kind="frequent_item",
        coupon_code="AAAA-BBBB-CCCC",
        discount_percent=Decimal(10),
        sku="MILK",
        valid_from=T0.date(),
        valid_until=T0.date() + dt.timedelta(days=14),
        issued_at=T0,
        template="frequent_item",
    )
    rejected = RedemptionRejected(
        rejection_id="r-1",
        offer_id=None,  # an unknown code names no offer
        customer_id="c-1",
        coupon_code="ZZZZ-ZZZZ-ZZZZ",
        reason="unknown_code",
        checkout_event_id="e9",
        store_id="S001",
        rejected_at=T0,
    )
    redeemed = OfferRedeemed(
        offer_id="o-1",
        customer_id="c-1",
        kind="frequent_item",
        coupon_code="AAAA-BBBB-CCCC",
        redeemed_at=T0 + dt.timedelta(days=1),
        checkout_event_id="e2",
        store_id="S001",
        basket_total=Decimal("5.57"),
    )
    for event in (rejected, issued, rejected, redeemed, issued):  # again changes nothing
        await harness.app.broker.publish(event.model_dump_json().encode(), OFFERS, key=b"c-1")
    [coupon] = await harness.repo.coupons_of("c-1")
    assert coupon.coupon_code == "AAAA-BBBB-CCCC"
    assert coupon.state == "redeemed"
    assert coupon.redeemed_at == T0 + dt.timedelta(days=1)
    assert harness.out.changed == []  # a coupon is not a profile change
    assert harness.out.dead == []
    assert harness.app.service.stats["coupons_saved"] == 2


async def test_profile_changes_carry_the_facts_of_their_events(harness: Harness) -> None:
    withdraw = ConsentChanged(
        event_id="k1",
        occurred_at=T0 - dt.timedelta(hours=1),  # older than the sign-up: not in force
        customer_id="c-1",
        marketing_consent=False,
    )
    await harness.send(signup(), purchase("e1"), withdraw.model_dump_json().encode())
    signed, bought, late = harness.out.changed
    assert (signed.consent_given, signed.email_given, signed.birth_date_given) == (
        True,
        True,
        False,
    )
    assert signed.card_ids == ("card-1",)
    assert bought.consent_given is None
    assert not bought.email_given
    assert bought.purchase is not None
    assert [(li.sku, li.category, li.amount) for li in bought.purchase.lines] == [
        ("BREAD", None, Decimal("2.00")),
        ("MILK", None, Decimal("3.57")),
    ]
    assert late.consent_given is False
    assert late.marketing_consent  # the sign-up, newer, is still in force
    stored = await harness.repo.get("c-1")
    assert stored is not None
    assert stored.marketing_consent


async def test_a_revoked_coupon_is_saved_revoked_and_a_redemption_keeps_its_discount(
    harness: Harness,
) -> None:
    def issued(offer_id: str) -> OfferIssued:
        return OfferIssued(
            offer_id=offer_id,
            customer_id="c-1",
            kind="birthday",
            coupon_code=f"CODE-{offer_id}",
            discount_percent=Decimal(15),
            valid_from=T0.date(),
            valid_until=T0.date() + dt.timedelta(days=14),
            issued_at=T0,
            template="birthday",
        )

    redeemed = OfferRedeemed(
        offer_id="o-1",
        customer_id="c-1",
        kind="birthday",
        coupon_code="CODE-o-1",
        redeemed_at=T0 + dt.timedelta(days=1),
        checkout_event_id="e2",
        store_id="S001",
        basket_total=Decimal("20.00"),
        discount=Decimal("3.00"),
    )
    revoked = OfferRevoked(
        offer_id="o-2",
        customer_id="c-1",
        kind="birthday",
        coupon_code="CODE-o-2",
        reason="consent",
        revoked_at=T0 + dt.timedelta(hours=1),
    )
    again = redeemed.model_copy(update={"offer_id": "o-2", "coupon_code": "CODE-o-2"})
    for event in (issued("o-1"), issued("o-2"), redeemed, revoked, again):
        await harness.app.broker.publish(event.model_dump_json().encode(), OFFERS, key=b"c-1")
    one, two = await harness.repo.coupons_of("c-1")
    assert (one.state, one.discount) == ("redeemed", Decimal("3.00"))
    assert (two.state, two.redeemed_at, two.discount) == ("revoked", None, None)
    assert harness.out.dead == []


# ---------------------------------------------------------------- segments


def consent(event_id: str, given: bool, when: dt.datetime) -> bytes:
    return (
        ConsentChanged(
            event_id=event_id, occurred_at=when, customer_id="c-1", marketing_consent=given
        )
        .model_dump_json()
        .encode()
    )


async def test_a_swipe_that_makes_a_customer_enter_a_segment_publishes_the_entry_in_its_batch(
    harness: Harness,
) -> None:
    await harness.define("milk-buyers", {"bought": [{"sku": "MILK"}], "consent": True})
    await harness.send(signup())
    assert harness.segment_changes("milk-buyers") == []
    batches = harness.app.service.stats["batches"]
    await harness.send(purchase("e1", T0 + dt.timedelta(hours=1)))
    assert harness.app.service.stats["batches"] == batches + 1
    [(key, value)] = [
        (k, v) for k, v in harness.out.segments if orjson.loads(v)["segment"] == "milk-buyers"
    ]
    assert key == b"c-1"
    assert orjson.loads(value) == {
        "type": "segment_entered",
        "schema_version": 1,
        "customer_id": "c-1",
        "segment": "milk-buyers",
        "at": "2026-03-01T11:00:00Z",
        "cause_event_id": "e1",
        "segment_version": 1,
    }
    # Published with the swipe's profile change (its RFM segment moved too), then nothing else.
    swipe = harness.out.order[harness.out.order.index((PROFILES_CHANGED, "e1")) :]
    assert swipe == [(PROFILES_CHANGED, "e1")] + [(SEGMENTS, "e1")] * 3
    assert (await harness.repo.segment_counts(["milk-buyers"])) == {"milk-buyers": 1}
    await harness.send(purchase("e1", T0 + dt.timedelta(hours=1)))  # redelivered: no new entry
    await harness.send(purchase("e2", T0 + dt.timedelta(hours=2)))  # still in: no new entry
    assert len(harness.segment_changes("milk-buyers")) == 1


async def test_built_in_segments_are_entered_and_left_like_any_other(harness: Harness) -> None:
    await harness.send(signup())
    await harness.send(purchase("e1"))
    changes = [orjson.loads(v) for _, v in harness.out.segments]
    assert [(c["type"], c["segment"], c["cause_event_id"]) for c in changes] == [
        ("segment_entered", "all", "s1"),
        ("segment_entered", "rfm-prospect", "s1"),
        ("segment_entered", "rfm-new", "e1"),
        ("segment_exited", "rfm-prospect", "e1"),
    ]


async def test_a_later_change_makes_the_customer_exit(harness: Harness) -> None:
    await harness.define("reachable", {"consent": True, "min_visits": 1})
    await harness.send(signup(), purchase("e1"))
    await harness.send(consent("k1", False, T0 + dt.timedelta(hours=3)))
    changes = harness.segment_changes("reachable")
    assert [(c["type"], c["cause_event_id"], c["at"]) for c in changes] == [
        ("segment_entered", "e1", "2026-03-01T10:00:00Z"),
        ("segment_exited", "k1", "2026-03-01T13:00:00Z"),
    ]
    assert (await harness.repo.memberships_of(["c-1"]))["c-1"].keys() == {"all", "rfm-new"}


async def test_a_clock_day_moves_recency_and_a_day_seen_twice_does_nothing(
    harness: Harness,
) -> None:
    await harness.define("recent", {"max_days_since_last_visit": 7})
    await harness.send(signup(), purchase("e1"))
    for other in ("c-2", "c-3"):  # more profiles than a page
        event = PurchaseRecorded.model_validate_json(purchase("x-" + other)).model_copy(
            update={"customer_id": other, "card_id": "card-" + other}
        )
        await harness.send(event.model_dump_json().encode(), key=other.encode())
    await harness.tick(dt.date(2026, 3, 8))  # 7 days: still recent
    assert [c["type"] for c in harness.segment_changes("recent")] == ["segment_entered"] * 3
    await harness.tick(dt.date(2026, 3, 9))
    exits = harness.segment_changes("recent")[3:]
    assert [(c["customer_id"], c["type"], c["cause_event_id"], c["at"]) for c in exits] == [
        (cid, "segment_exited", "clock:2026-03-09", "2026-03-09T00:00:00Z")
        for cid in ("c-1", "c-2", "c-3")
    ]
    published = len(harness.out.segments)
    await harness.tick(dt.date(2026, 3, 9))
    await harness.tick(dt.date(2026, 3, 5))
    assert len(harness.out.segments) == published
    assert harness.app.service.stats["clock_days_repeated"] == 2
    assert harness.app.service.stats["clock_days_evaluated"] == 2
    assert await harness.repo.last_clock_day() == dt.date(2026, 3, 9)
    # A swipe then, dated before the clock day, is evaluated as of the clock day: in again.
    await harness.send(purchase("e2", T0 + dt.timedelta(days=7, hours=12)))
    [again] = harness.segment_changes("recent")[6:]
    assert (again["type"], again["cause_event_id"]) == ("segment_entered", "e2")


async def test_a_clock_day_far_ahead_of_the_wall_clock_is_ignored(harness: Harness) -> None:
    await harness.define("recent", {"max_days_since_last_visit": 7})
    await harness.send(purchase("e1"))
    await harness.tick(NOW.date() + dt.timedelta(days=2))
    assert harness.segment_changes("recent") == harness.segment_changes("recent")[:1]
    assert harness.app.service.stats["clock_days_future"] == 1
    assert await harness.repo.last_clock_day() is None


async def test_an_erased_customer_leaves_every_segment(harness: Harness) -> None:
    await harness.define("reachable", {"consent": True})
    await harness.send(signup(), purchase("e1"))
    erase = CustomerErased(event_id="x1", occurred_at=T0 + dt.timedelta(hours=1), customer_id="c-1")
    before = len(harness.out.segments)
    await harness.send(erase.model_dump_json().encode())
    exits = [orjson.loads(v) for _, v in harness.out.segments[before:]]
    assert [(c["type"], c["segment"], c["cause_event_id"]) for c in exits] == [
        ("segment_exited", "all", "x1"),
        ("segment_exited", "reachable", "x1"),
        ("segment_exited", "rfm-new", "x1"),
    ]
    assert await harness.repo.memberships_of(["c-1"]) == {}
    assert (await harness.repo.export("c-1"))["segments"] == {}


async def test_a_merged_customer_leaves_its_segments_and_the_target_keeps_its_own(
    harness: Harness,
) -> None:
    other = PurchaseRecorded.model_validate_json(purchase("b1")).model_copy(
        update={"customer_id": "c-2", "card_id": "card-2"}
    )
    await harness.send(signup(), other.model_dump_json().encode())
    link = CardLinked(
        event_id="l1",
        occurred_at=T0 + dt.timedelta(hours=1),
        customer_id="c-1",
        card_id="card-2",
        merged_customer_id="c-2",
    )
    await harness.send(link.model_dump_json().encode())
    changes = [orjson.loads(v) for _, v in harness.out.segments]
    assert [
        (c["customer_id"], c["type"], c["segment"]) for c in changes if c["cause_event_id"] == "l1"
    ] == [
        ("c-1", "segment_entered", "rfm-new"),
        ("c-1", "segment_exited", "rfm-prospect"),
        ("c-2", "segment_exited", "rfm-new"),
    ]
    assert await harness.repo.memberships_of(["c-2"]) == {}


async def test_batches_wait_for_the_segment_definitions(harness: Harness) -> None:
    service = harness.app.service
    service.definitions_ready = asyncio.Event()
    sending = asyncio.create_task(harness.send(purchase("e1")))
    await asyncio.sleep(0.05)
    assert not sending.done()
    assert harness.out.changed == []
    await harness.define("buyers", {"min_visits": 1})  # read from the topic meanwhile
    service.definitions_ready.set()
    await asyncio.wait_for(sending, 5)
    assert [c["cause_event_id"] for c in harness.segment_changes("buyers")] == ["e1"]
