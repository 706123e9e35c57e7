"""The offers app through FastStream's TestKafkaBroker, with an in-memory SQLite repository."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from faststream import TestApp
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.offers.app import SPEC, create_app
from services.offers.domain import OfferRecord, OfferState
from services.offers.engine import Days
from services.offers.service import OffersService
from services.offers.settings import OffersSettings, RulesFileError
from services.offers.store_sqlite import SqliteOffersRepository
from shared.edge import dump
from shared.events import OFFER_EVENT as OFFERS_TOPIC_EVENT
from shared.events import (
    ClockTicked,
    DeadLetter,
    DeliveryRecorded,
    OfferIssued,
    OfferRedeemed,
)
from shared.events import OfferEvent as OffersTopicEvent
from shared.settings import KafkaSettings, Settings, StoreSettings
from shared.skeleton import NotStarted, ServiceApp
from shared.storage import StoreLocation
from shared.topics import CLOCK, DEADLETTER, DELIVERIES, OFFERS, PROFILES_CHANGED
from tests.unit.test_offers_domain import consent, purchase, signup

UTC = dt.UTC
DAY1 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


@dataclass
class Harness:
    app: ServiceApp[OffersService]
    broker: KafkaBroker
    repository: SqliteOffersRepository
    offers: list[tuple[bytes, OffersTopicEvent]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)

    def of_type(self, kind: str) -> list[OffersTopicEvent]:
        return [event for _, event in self.offers if event.type == kind]

    async def stored(self, customer_id: str, state: OfferState) -> list[OfferRecord]:
        """The customer's stored offers in one state."""
        return [o for o in await self.repository.offers_of(customer_id) if o.state == state]


def settings() -> Settings:
    return Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url="memory://"),
    )


async def start(page_size: int = 1000) -> AsyncIterator[Harness]:
    repository = await SqliteOffersRepository.open(StoreLocation.parse("memory://"))
    app = create_app(
        settings(),
        repository=repository,
        offers_settings=OffersSettings(rules_file=None, offers_page_size=page_size),
    )
    offers: list[tuple[bytes, OffersTopicEvent]] = []
    dead: list[DeadLetter] = []

    @app.broker.subscriber(OFFERS, batch=False)
    async def collect_offers(_: object, message: KafkaMessage) -> None:
        offers.append((message.raw_message.key, OFFERS_TOPIC_EVENT.validate_json(message.body)))

    @app.broker.subscriber(DEADLETTER, batch=False)
    async def collect_dead(_: object, message: KafkaMessage) -> None:
        dead.append(DeadLetter.model_validate_json(message.body))

    async with TestKafkaBroker(app.broker) as broker:
        yield Harness(app, broker, repository, offers, dead)
    await repository.close()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async for h in start():
        yield h


def signed_up(
    customer: str = "c-1", *, birth: dt.date | None = None, consent: bool = True
) -> bytes:
    return dump(
        signup(
            dt.datetime(2020, 1, 1, tzinfo=UTC),
            consent=consent,
            birth=birth,
            event_id=f"s-{customer}",
            customer=customer,
        )
    )


def bought(
    event_id: str,
    when: dt.datetime = DAY1,
    skus: tuple[str, ...] = ("MILK",),
    *,
    customer: str = "c-1",
    coupons: tuple[str, ...] = (),
) -> bytes:
    return dump(purchase(event_id, when, skus, coupons=coupons, customer=customer))


async def milk_three_times(harness: Harness, customer: str = "c-1") -> None:
    await harness.broker.publish(signed_up(customer), PROFILES_CHANGED, key=customer.encode())
    for n, days_before in enumerate((20, 5, 0)):
        await harness.broker.publish(
            bought(f"{customer}-m{n}", DAY1 - dt.timedelta(days=days_before), customer=customer),
            PROFILES_CHANGED,
            key=customer.encode(),
        )


def tick(day: dt.date) -> bytes:
    return orjson.dumps({"date": day.isoformat()})


async def test_frequent_buyer_gets_a_coupon_keyed_by_customer(harness: Harness) -> None:
    await milk_three_times(harness)
    [(key, offer)] = harness.offers
    assert key == b"c-1"
    assert isinstance(offer, OfferIssued)
    assert (offer.kind, offer.sku, offer.customer_id) == ("frequent_item", "MILK", "c-1")
    assert offer.trigger is not None
    assert offer.trigger.event_ids == ("c-1-m0", "c-1-m1", "c-1-m2")
    [stored] = await harness.stored("c-1", "issued")
    assert stored.issued == offer
    assert harness.app.service.stats["issued_frequent_item"] == 1


async def test_a_batch_delivered_again_publishes_nothing_new_and_stores_once(
    harness: Harness,
) -> None:
    await milk_three_times(harness)
    await harness.broker.publish_batch(
        bought("c-1-m2", DAY1),
        bought("c-1-m1", DAY1 - dt.timedelta(days=5)),
        topic=PROFILES_CHANGED,
    )
    assert len(harness.of_type("offer_issued")) == 1
    assert len(await harness.repository.offers_of("c-1")) == 1
    assert harness.app.service.stats["duplicates"] == 2


async def test_birthday_clock_day_published_twice_issues_once(harness: Harness) -> None:
    await harness.broker.publish(signed_up(birth=dt.date(1990, 3, 20)), PROFILES_CHANGED)
    await harness.broker.publish(tick(dt.date(2026, 3, 20)), CLOCK)
    await harness.broker.publish(tick(dt.date(2026, 3, 20)), CLOCK)
    [first] = harness.of_type("offer_issued")
    assert isinstance(first, OfferIssued)
    assert first.kind == "birthday"
    assert first.trigger is not None
    assert first.trigger.day == dt.date(2026, 3, 20)
    assert len(await harness.stored("c-1", "issued")) == 1


async def test_a_missed_day_is_completed_when_a_later_day_arrives(harness: Harness) -> None:
    await harness.broker.publish(signed_up(birth=dt.date(1990, 3, 20)), PROFILES_CHANGED)
    await harness.broker.publish(tick(dt.date(2026, 3, 18)), CLOCK)
    await harness.broker.publish(tick(dt.date(2026, 3, 22)), CLOCK)  # 19, 20, 21 were missed
    [offer] = harness.of_type("offer_issued")
    assert isinstance(offer, OfferIssued)
    assert offer.valid_from == dt.date(2026, 3, 20)
    assert await harness.repository.days() == Days(dt.date(2026, 3, 18), dt.date(2026, 3, 22))
    assert harness.app.service.stats["clock_days"] == 5


async def test_a_day_published_late_still_issues_that_days_offers(harness: Harness) -> None:
    await harness.broker.publish(signed_up(birth=dt.date(1990, 3, 20)), PROFILES_CHANGED)
    await harness.broker.publish(tick(dt.date(2026, 3, 25)), CLOCK)
    await harness.broker.publish(tick(dt.date(2026, 3, 20)), CLOCK)
    [offer] = harness.of_type("offer_issued")
    assert isinstance(offer, OfferIssued)
    assert offer.valid_from == dt.date(2026, 3, 20)


async def test_a_day_more_than_a_day_ahead_is_dead_lettered(harness: Harness) -> None:
    today = dt.datetime.now(UTC).date()
    await harness.broker.publish(tick(today + dt.timedelta(days=1)), CLOCK)
    await harness.broker.publish(tick(today + dt.timedelta(days=2)), CLOCK)
    [letter] = harness.dead
    assert (letter.reason, letter.source_topic) == ("future_day", CLOCK)
    assert (await harness.repository.days()).last == today + dt.timedelta(days=1)
    assert harness.app.service.stats["dead_lettered_future_day"] == 1


async def test_calendar_rules_page_through_all_matching_customers() -> None:
    async for h in start(page_size=2):
        for i in range(5):
            await h.broker.publish(
                signed_up(f"c-{i}", birth=dt.date(1990, 3, 20)), PROFILES_CHANGED
            )
        await h.broker.publish(tick(dt.date(2026, 3, 20)), CLOCK)
        customers = sorted(event.customer_id for event in h.of_type("offer_issued"))
        assert customers == [f"c-{i}" for i in range(5)]


async def test_anniversary_and_win_back_on_their_clock_days(harness: Harness) -> None:
    await harness.broker.publish(signed_up(), PROFILES_CHANGED)
    first = dt.datetime(2025, 3, 16, 9, tzinfo=UTC)
    for n in range(5):  # five visits, the last on 20 March 2025, each of another product
        when = first + dt.timedelta(days=n)
        await harness.broker.publish(bought(f"v-{n}", when, (f"P{n}",)), PROFILES_CHANGED)
    await harness.broker.publish(tick(dt.date(2025, 5, 19)), CLOCK)  # day 60: no win-back
    await harness.broker.publish(tick(dt.date(2025, 5, 20)), CLOCK)  # day 61: win-back
    await harness.broker.publish(tick(dt.date(2026, 3, 16)), CLOCK)  # anniversary
    kinds = [(e.kind, e.valid_from) for e in harness.of_type("offer_issued")]  # type: ignore[union-attr]
    assert ("win_back", dt.date(2025, 5, 20)) in kinds
    assert ("anniversary", dt.date(2026, 3, 16)) in kinds
    assert kinds == sorted(kinds, key=lambda k: k[1])


async def test_checkout_listing_the_code_redeems_it_once(harness: Harness) -> None:
    await milk_three_times(harness)
    [offer] = harness.of_type("offer_issued")
    assert isinstance(offer, OfferIssued)
    later = DAY1 + dt.timedelta(days=3)
    await harness.broker.publish(
        bought("e-2", later, ("MILK", "BREAD"), coupons=(offer.coupon_code,)), PROFILES_CHANGED
    )
    await harness.broker.publish(
        bought("e-3", later, coupons=(offer.coupon_code, "WHAT-EVER-CODE")), PROFILES_CHANGED
    )
    [redeemed] = harness.of_type("offer_redeemed")
    assert isinstance(redeemed, OfferRedeemed)
    assert (redeemed.offer_id, redeemed.checkout_event_id) == (offer.offer_id, "e-2")
    assert redeemed.discount == Decimal("0.25")  # 10 % of the milk line of 2.50
    reasons = sorted(e.reason for e in harness.of_type("redemption_rejected"))  # type: ignore[union-attr]
    assert reasons == ["already_redeemed", "unknown_code"]
    assert [o.offer_id for o in await harness.stored("c-1", "redeemed")] == [offer.offer_id]
    assert await harness.stored("c-1", "issued") == []
    stats = harness.app.service.stats
    assert (stats["redeemed"], stats["rejected_already_redeemed"]) == (1, 1)


async def test_a_product_coupon_listed_for_a_basket_without_it_is_rejected(
    harness: Harness,
) -> None:
    await milk_three_times(harness)
    [offer] = harness.of_type("offer_issued")
    assert isinstance(offer, OfferIssued)
    later = DAY1 + dt.timedelta(days=3)
    await harness.broker.publish(
        bought("e-2", later, ("BREAD",), coupons=(offer.coupon_code,)), PROFILES_CHANGED
    )
    [rejected] = harness.of_type("redemption_rejected")
    assert rejected.reason == "not_in_basket"  # type: ignore[union-attr]
    assert await harness.stored("c-1", "redeemed") == []


async def test_clock_day_expires_offers_past_their_last_day_once(harness: Harness) -> None:
    await milk_three_times(harness)
    [offer] = harness.of_type("offer_issued")
    assert isinstance(offer, OfferIssued)
    await harness.broker.publish(tick(offer.valid_until), CLOCK)
    assert harness.of_type("offer_expired") == []
    day_after = offer.valid_until + dt.timedelta(days=1)
    await harness.broker.publish(tick(day_after), CLOCK)
    await harness.broker.publish(tick(day_after + dt.timedelta(days=1)), CLOCK)
    [expired] = harness.of_type("offer_expired")
    assert expired.offer_id == offer.offer_id
    stored = await harness.repository.offers_of("c-1")
    assert [(o.kind, o.state) for o in stored] == [("frequent_item", "expired")]


async def test_undecodable_messages_are_dead_lettered_and_the_batch_goes_on(
    harness: Harness,
) -> None:
    await harness.broker.publish(signed_up(), PROFILES_CHANGED)
    await harness.broker.publish_batch(
        b"not json",
        b'{"customer_id": "c-1"}',
        bought("m-1", DAY1 - dt.timedelta(days=2)),
        bought("m-2", DAY1 - dt.timedelta(days=1)),
        bought("m-3", DAY1),
        topic=PROFILES_CHANGED,
    )
    await harness.broker.publish(b'{"date": "yesterday"}', CLOCK)
    assert sorted(d.reason for d in harness.dead) == [
        "invalid_event",
        "invalid_event",
        "invalid_json",
    ]
    assert {d.source_topic for d in harness.dead} == {PROFILES_CHANGED, CLOCK}
    assert len(harness.of_type("offer_issued")) == 1
    assert harness.app.service.stats["dead_lettered_invalid_json"] == 1


async def test_customer_who_withdrew_consent_gets_nothing(harness: Harness) -> None:
    await harness.broker.publish(signed_up(consent=False), PROFILES_CHANGED)
    for n in range(3):
        await harness.broker.publish(
            bought(f"m-{n}", DAY1 + dt.timedelta(days=n)), PROFILES_CHANGED
        )
    assert harness.offers == []
    assert harness.app.service.stats["suppressed_consent"] == 1


async def test_a_late_consent_withdrawal_revokes_the_offer_it_shows_was_wrong(
    harness: Harness,
) -> None:
    await milk_three_times(harness)
    [offer] = harness.of_type("offer_issued")
    withdrawal = consent(DAY1 - dt.timedelta(days=1), False, "k-1")
    await harness.broker.publish(dump(withdrawal), PROFILES_CHANGED, key=b"c-1")
    [revoked] = harness.of_type("offer_revoked")
    assert (revoked.offer_id, revoked.reason) == (offer.offer_id, "consent")  # type: ignore[union-attr]
    assert [o.state for o in await harness.repository.offers_of("c-1")] == ["revoked"]


async def test_a_rebuild_keeps_an_offer_revoked_on_the_way_so_its_code_still_answers_revoked(
    harness: Harness,
) -> None:
    # The first run issued the offer, then a late withdrawal revoked it; a rebuild that reads
    # the withdrawal first never issues it. The published history keeps it known, as revoked.
    await milk_three_times(harness)
    await harness.broker.publish(
        dump(consent(DAY1 - dt.timedelta(days=1), False, "k-1")), PROFILES_CHANGED, key=b"c-1"
    )
    published = [dump(event) for _, event in harness.offers]
    [issued] = harness.of_type("offer_issued")
    [revocation] = harness.of_type("offer_revoked")
    async for rebuilt in start():
        await rebuilt.broker.publish(signed_up("c-1"), PROFILES_CHANGED, key=b"c-1")
        await rebuilt.broker.publish(
            dump(consent(DAY1 - dt.timedelta(days=1), False, "k-1")), PROFILES_CHANGED
        )
        for n, days_before in enumerate((20, 5, 0)):
            await rebuilt.broker.publish(
                bought(f"c-1-m{n}", DAY1 - dt.timedelta(days=days_before)), PROFILES_CHANGED
            )
        assert rebuilt.offers == []
        assert await rebuilt.repository.offers_of("c-1") == []
        handled = await SPEC.after_replay.keep(rebuilt.app.service, published)  # type: ignore[union-attr]
        await handled.save()
        assert handled.outgoing == []  # its revocation is on the topic already
        [kept] = await rebuilt.repository.offers_of("c-1")
        assert (kept.offer_id, kept.state) == (issued.offer_id, "revoked")
        assert kept.revocation == revocation
        assert await rebuilt.repository.offer_by_code(issued.coupon_code) == kept  # type: ignore[union-attr]
        again = await SPEC.after_replay.keep(rebuilt.app.service, published)  # type: ignore[union-attr]
        assert again.outgoing == []


async def test_a_rebuild_revokes_a_published_offer_it_did_not_derive_and_nobody_revoked(
    harness: Harness,
) -> None:
    await milk_three_times(harness)
    [(_, issued)] = harness.offers
    async for rebuilt in start():  # the rebuild never saw the purchases
        published = [dump(issued), b"not an event"]
        handled = await SPEC.after_replay.keep(rebuilt.app.service, published)  # type: ignore[union-attr]
        await handled.save()
        [(topic, key, payload)] = handled.outgoing
        assert isinstance(payload, bytes)
        revocation = OFFERS_TOPIC_EVENT.validate_json(payload)
        assert (topic, key, revocation.type) == (OFFERS, b"c-1", "offer_revoked")
        assert revocation.reason == "not_eligible"  # type: ignore[union-attr]
        [kept] = await rebuilt.repository.offers_of("c-1")
        assert (kept.offer_id, kept.state) == (issued.offer_id, "revoked")


async def test_the_e_mail_outcome_of_an_offer_is_kept_from_the_deliveries(
    harness: Harness,
) -> None:
    await milk_three_times(harness)
    [offer] = harness.of_type("offer_issued")
    delivery = DeliveryRecorded(
        offer_id=offer.offer_id,
        customer_id="c-1",
        state="sent",
        attempts=1,
        message_id=f"<offer-{offer.offer_id}@crm-stream>",
        recorded_at=DAY1,
    )
    await harness.broker.publish(dump(delivery), DELIVERIES, key=b"c-1")
    await harness.broker.publish(b"not a delivery", DELIVERIES, key=b"c-1")
    [stored] = await harness.repository.offers_of("c-1")
    assert (stored.delivery, stored.message_id) == ("sent", delivery.message_id)
    assert harness.dead == []  # crm.deliveries is the notifier's: skipped, not dead-lettered
    assert harness.app.service.stats["skipped_invalid"] == 1


def test_bad_rules_file_is_refused_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[win_back]\ncooldown_days = -1\n")
    with pytest.raises(RulesFileError, match=r"win_back\.cooldown_days"):
        create_app(settings(), offers_settings=OffersSettings(rules_file=path))


async def test_bad_rules_file_refuses_start_up_of_the_declared_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[win_back]\ncooldown_days = -1\n")
    monkeypatch.setenv("CRM_RULES_FILE", str(path))
    assert SPEC.check is not None
    with pytest.raises(RulesFileError, match=r"win_back\.cooldown_days"):
        await SPEC.check(settings())


async def test_rules_file_is_read_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("birthday:\n  validity_days: 3\n")
    monkeypatch.setenv("CRM_RULES_FILE", str(path))
    repository = await SqliteOffersRepository.open(StoreLocation.parse("memory://"))
    try:
        decider = create_app(settings(), repository=repository).service.decider
        assert decider.rules.birthday.validity_days == 3
        assert SPEC.build(settings(), repository).decider.rules.birthday.validity_days == 3
    finally:
        await repository.close()


def test_clock_model_is_the_contract_format() -> None:
    assert ClockTicked.model_validate_json(tick(dt.date(2026, 3, 20))).date == dt.date(2026, 3, 20)


async def test_app_opens_its_own_store_at_start_and_closes_it_at_shutdown() -> None:
    app = create_app(settings(), offers_settings=OffersSettings(rules_file=None))
    with pytest.raises(NotStarted):
        _ = app.service
    async with TestKafkaBroker(app.broker) as broker, TestApp(app.faststream):
        repository = app.service.repository
        assert isinstance(repository, SqliteOffersRepository)
        await broker.publish(signed_up(), PROFILES_CHANGED)
        for n in range(3):
            await broker.publish(bought(f"m-{n}", DAY1 + dt.timedelta(days=n)), PROFILES_CHANGED)
        assert len(await repository.offers_of("c-1")) == 1
    assert not app.started
    with pytest.raises(NotStarted):
        _ = app.service
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        await repository.offers_of("c-1")
