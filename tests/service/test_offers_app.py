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
from services.offers.service import OffersService
from services.offers.settings import OffersSettings, RulesFileError
from services.offers.store_sqlite import SqliteOffersRepository
from shared.edge import dump
from shared.events import OFFER_EVENT as OFFERS_TOPIC_EVENT
from shared.events import (
    ClockTicked,
    DeadLetter,
    OfferIssued,
    OfferRedeemed,
    ProfileChanged,
    PurchaseSummary,
)
from shared.events import OfferEvent as OffersTopicEvent
from shared.settings import KafkaSettings, Settings, StoreSettings
from shared.skeleton import NotStarted, ServiceApp
from shared.storage import StoreLocation
from shared.topics import CLOCK, DEADLETTER, OFFERS, PROFILES_CHANGED

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


def purchase(
    *,
    customer: str = "c-1",
    when: dt.datetime = DAY1,
    event_id: str = "e-1",
    skus: dict[str, int] | None = None,
    coupons: tuple[str, ...] = (),
    **fields: object,
) -> bytes:
    """A ProfileChanged for a purchase; each SKU was in N distinct checkouts up to `when`."""
    skus = skus or {}
    event = ProfileChanged(
        customer_id=customer,
        cause_event_id=event_id,
        cause_type="purchase_recorded",
        occurred_at=when,
        marketing_consent=fields.pop("marketing_consent", True),  # type: ignore[arg-type]
        has_email=True,
        purchase=PurchaseSummary(
            event_id=event_id,
            store_id="S001",
            total=Decimal("20.00"),
            coupons=coupons,
            products={sku: sku.title() for sku in skus} or {"BREAD": "Bread"},
        ),
        sku_checkouts={
            sku: tuple(when - dt.timedelta(days=2 * i) for i in range(n)) for sku, n in skus.items()
        },
        first_purchase_at=fields.pop("first_purchase_at", when),  # type: ignore[arg-type]
        last_purchase_at=when,
        visits=fields.pop("visits", 3),  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )
    return dump(event)


def tick(day: dt.date) -> bytes:
    return orjson.dumps({"date": day.isoformat()})


async def test_frequent_buyer_gets_a_coupon_keyed_by_customer(harness: Harness) -> None:
    await harness.broker.publish(purchase(skus={"MILK": 3}), PROFILES_CHANGED, key=b"c-1")
    [(key, offer)] = harness.offers
    assert key == b"c-1"
    assert isinstance(offer, OfferIssued)
    assert (offer.kind, offer.sku, offer.customer_id) == ("frequent_item", "MILK", "c-1")
    [stored] = await harness.stored("c-1", "issued")
    assert stored.issued == offer
    assert harness.app.service.stats["issued_frequent_item"] == 1


async def test_replayed_batch_republishes_the_same_offer_and_stores_it_once(
    harness: Harness,
) -> None:
    message = purchase(skus={"MILK": 3})
    await harness.broker.publish_batch(message, purchase(event_id="e-0"), topic=PROFILES_CHANGED)
    await harness.broker.publish_batch(message, purchase(event_id="e-0"), topic=PROFILES_CHANGED)
    first, second = harness.of_type("offer_issued")
    assert first == second
    assert len(await harness.stored("c-1", "issued")) == 1
    assert len(await harness.repository.offers_of("c-1")) == 1  # c-1 is the only customer
    assert harness.app.service.stats["republished"] == 1


async def test_birthday_clock_day_published_twice_issues_once(harness: Harness) -> None:
    await harness.broker.publish(
        purchase(birth_date=dt.date(1990, 3, 20)), PROFILES_CHANGED, key=b"c-1"
    )
    await harness.broker.publish(tick(dt.date(2026, 3, 20)), CLOCK)
    await harness.broker.publish(tick(dt.date(2026, 3, 20)), CLOCK)
    first, second = harness.of_type("offer_issued")
    assert first == second
    assert isinstance(first, OfferIssued)
    assert first.kind == "birthday"
    assert len(await harness.stored("c-1", "issued")) == 1


async def test_a_day_published_late_still_issues_that_days_offers(harness: Harness) -> None:
    await harness.broker.publish(
        purchase(birth_date=dt.date(1990, 3, 20)), PROFILES_CHANGED, key=b"c-1"
    )
    await harness.broker.publish(tick(dt.date(2026, 3, 25)), CLOCK)
    await harness.broker.publish(tick(dt.date(2026, 3, 20)), CLOCK)
    [offer] = harness.of_type("offer_issued")
    assert isinstance(offer, OfferIssued)
    assert offer.valid_from == dt.date(2026, 3, 20)


async def test_calendar_rules_page_through_all_matching_customers() -> None:
    async for h in start(page_size=2):
        for i in range(5):
            await h.broker.publish(
                purchase(customer=f"c-{i}", event_id=f"e-{i}", birth_date=dt.date(1990, 3, 20)),
                PROFILES_CHANGED,
            )
        await h.broker.publish(tick(dt.date(2026, 3, 20)), CLOCK)
        customers = sorted(event.customer_id for event in h.of_type("offer_issued"))
        assert customers == [f"c-{i}" for i in range(5)]


async def test_anniversary_and_win_back_on_their_clock_days(harness: Harness) -> None:
    first = dt.datetime(2025, 3, 20, 9, tzinfo=UTC)
    await harness.broker.publish(
        purchase(when=first, first_purchase_at=first, visits=6), PROFILES_CHANGED
    )
    await harness.broker.publish(tick(dt.date(2025, 5, 19)), CLOCK)  # day 60: no win-back
    await harness.broker.publish(tick(dt.date(2025, 5, 20)), CLOCK)  # day 61: win-back
    await harness.broker.publish(tick(dt.date(2026, 3, 20)), CLOCK)  # anniversary
    kinds = [(e.kind, e.valid_from) for e in harness.of_type("offer_issued")]  # type: ignore[union-attr]
    assert kinds == [
        ("win_back", dt.date(2025, 5, 20)),
        ("anniversary", dt.date(2026, 3, 20)),
        ("win_back", dt.date(2026, 3, 20)),
    ]


async def test_checkout_listing_the_code_redeems_it_once(harness: Harness) -> None:
    await harness.broker.publish(purchase(skus={"MILK": 3}), PROFILES_CHANGED)
    [offer] = harness.of_type("offer_issued")
    assert isinstance(offer, OfferIssued)
    later = DAY1 + dt.timedelta(days=3)
    redeeming = purchase(when=later, event_id="e-2", coupons=(offer.coupon_code,))
    await harness.broker.publish(redeeming, PROFILES_CHANGED)
    await harness.broker.publish(
        purchase(when=later, event_id="e-3", coupons=(offer.coupon_code, "WHAT-EVER-CODE")),
        PROFILES_CHANGED,
    )
    [redeemed] = harness.of_type("offer_redeemed")
    assert isinstance(redeemed, OfferRedeemed)
    assert (redeemed.offer_id, redeemed.checkout_event_id) == (offer.offer_id, "e-2")
    reasons = sorted(e.reason for e in harness.of_type("redemption_rejected"))  # type: ignore[union-attr]
    assert reasons == ["already_redeemed", "unknown_code"]
    assert [o.offer_id for o in await harness.stored("c-1", "redeemed")] == [offer.offer_id]
    assert await harness.stored("c-1", "issued") == []
    assert len(await harness.repository.rejections("c-1")) == 2
    stats = harness.app.service.stats
    assert (stats["redeemed"], stats["rejected_already_redeemed"]) == (1, 1)


async def test_clock_day_expires_offers_past_their_last_day_once(harness: Harness) -> None:
    await harness.broker.publish(purchase(skus={"MILK": 3}), PROFILES_CHANGED)
    [offer] = harness.of_type("offer_issued")
    assert isinstance(offer, OfferIssued)
    await harness.broker.publish(tick(offer.valid_until), CLOCK)
    assert harness.of_type("offer_expired") == []
    day_after = offer.valid_until + dt.timedelta(days=1)
    await harness.broker.publish(tick(day_after), CLOCK)
    await harness.broker.publish(tick(day_after + dt.timedelta(days=1)), CLOCK)
    [expired] = harness.of_type("offer_expired")
    assert expired.offer_id == offer.offer_id
    stored = await harness.repository.offers_of("c-1")  # c-1 is the only customer
    assert [(o.kind, o.state) for o in stored] == [("frequent_item", "expired")]


async def test_undecodable_messages_are_dead_lettered_and_the_batch_goes_on(
    harness: Harness,
) -> None:
    await harness.broker.publish_batch(
        b"not json",
        b'{"customer_id": "c-1"}',
        purchase(skus={"MILK": 3}),
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
    await harness.broker.publish(
        purchase(skus={"MILK": 3}, marketing_consent=False), PROFILES_CHANGED
    )
    assert harness.offers == []
    assert harness.app.service.stats["suppressed_consent"] == 1


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
        engine = create_app(settings(), repository=repository).service.engine
        assert engine.rules.birthday.validity_days == 3
        assert SPEC.build(settings(), repository).engine.rules.birthday.validity_days == 3
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
        await broker.publish(purchase(skus={"MILK": 3}), PROFILES_CHANGED)
        assert len(await repository.offers_of("c-1")) == 1
    assert not app.started
    with pytest.raises(NotStarted):
        _ = app.service
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        await repository.offers_of("c-1")
