"""Erasure reaches every store's bytes: each service on its SQLite file (with its -wal and -shm),
driven through FastStream's TestKafkaBroker (profiles through its repository, as its batches
write it). After the erasure no byte of the files holds the customer's e-mail address, name or
customer id, while what the figures need is still counted."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.notifier.app import create_app as notifier_app
from services.notifier.settings import NotifierSettings
from services.notifier.store_sqlite import SqliteNotifierRepository
from services.offers.app import SPEC
from services.offers.app import create_app as offers_app
from services.offers.settings import OffersSettings
from services.offers.store_sqlite import SqliteOffersRepository
from services.profiles.store_sqlite import SqliteProfilesRepository
from services.reports.app import create_app as reports_app
from services.reports.domain import campaigns_report
from services.reports.store_sqlite import SqliteReportsRepository
from shared.campaigns import SegmentMembershipChanged
from shared.edge import dump
from shared.events import (
    OFFER_EVENT,
    CardLinked,
    CustomerErased,
    CustomerSignedUp,
    DeliveryRecorded,
    OfferIssued,
    OfferRedeemed,
    OfferRevoked,
    PurchaseLine,
    PurchaseRecorded,
    RedemptionRejected,
)
from shared.settings import CalendarSettings, KafkaSettings, Settings, SmtpSettings, StoreSettings
from shared.storage import StoreLocation
from shared.topics import CONTACTS, DELIVERIES, EVENTS, OFFERS, PROFILES_CHANGED, SEGMENTS
from tests.integration.test_profiles_store import apply
from tests.service.test_offers_app import DAY1, bought, milk_three_times, signed_up, start
from tests.unit.test_offers_domain import change

CUSTOMER = "cust-7f3a9c"
MERGED = "cust-merged-2b7e"
EMAIL = "anastasia.quill@example.com"
NAME = "Anastasia"
AT = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)


def settings(folder: Path) -> Settings:
    return Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url=f"sqlite://{folder}"),
        smtp=SmtpSettings(smtp_host=None, outbox_dir=folder / "outbox"),
        calendar=CalendarSettings(timezone="UTC", quiet_hours="off"),
    )


def stored_bytes(folder: Path, service: str) -> bytes:
    """The service's database file with its WAL and shared-memory files, as on disk."""
    files = sorted(folder.glob(f"{service}.sqlite3*"))
    assert files, service
    return b"".join(path.read_bytes() for path in files)


def personal(content: bytes) -> list[str]:
    return [v for v in (CUSTOMER, EMAIL, NAME) if v.encode() in content]


async def test_offers_keep_no_link_to_an_erased_customer_and_still_count_the_offer(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "store"
    repository = await SqliteOffersRepository.open(StoreLocation.parse(f"sqlite://{folder}"))
    app = offers_app(
        settings(folder),
        repository=repository,
        offers_settings=OffersSettings(rules_file=None),
    )
    published: list[Any] = []

    @app.broker.subscriber(OFFERS, batch=False)
    async def collect(_: object, message: KafkaMessage) -> None:
        published.append(OFFER_EVENT.validate_json(message.body))

    key = CUSTOMER.encode()
    async with TestKafkaBroker(app.broker) as broker:
        await broker.publish(signed_up(CUSTOMER), PROFILES_CHANGED, key=key)
        for n, days_before in enumerate((20, 5, 0)):
            when = DAY1 - dt.timedelta(days=days_before)
            await broker.publish(
                bought(f"m{n}", when, customer=CUSTOMER), PROFILES_CHANGED, key=key
            )
        [issued] = [e for e in published if isinstance(e, OfferIssued)]
        later = DAY1 + dt.timedelta(days=2)
        await broker.publish(
            bought("m9", later, customer=CUSTOMER, coupons=(issued.coupon_code,)),
            PROFILES_CHANGED,
            key=key,
        )
        assert [type(e) for e in published[1:]] == [OfferRedeemed]
        counted = await repository.campaign_counts()
        erasure = change("x-1", later + dt.timedelta(hours=1), "customer_erased", CUSTOMER)
        await broker.publish(
            dump(erasure.model_copy(update={"erased": True})), PROFILES_CHANGED, key=key
        )
        # Profiles publishes the erased customer's segment exits with the erasure.
        left = SegmentMembershipChanged(
            type="segment_exited",
            customer_id=CUSTOMER,
            segment="all",
            at=later + dt.timedelta(hours=1),
            cause_event_id="x-1",
            segment_version=1,
        )
        await broker.publish(dump(left), SEGMENTS, key=key)
        assert await repository.ledgers([CUSTOMER]) == {}
        content = stored_bytes(folder, "offers")
        # Another customer's checkout listing the erased customer's code: not a code any more.
        await broker.publish(signed_up("c-2"), PROFILES_CHANGED, key=b"c-2")
        await broker.publish(
            bought(
                "o1", later + dt.timedelta(hours=2), customer="c-2", coupons=(issued.coupon_code,)
            ),
            PROFILES_CHANGED,
            key=b"c-2",
        )
    [rejected] = [e for e in published if isinstance(e, RedemptionRejected)]
    assert rejected.reason == "unknown_code"
    assert await repository.offers_of(CUSTOMER) == []
    assert await repository.offer_by_code(issued.coupon_code) is None
    assert await repository.campaign_counts() == counted  # issued 1, redeemed 1, as before
    assert counted[("frequent-item", None)].redeemed == 1
    await repository.close()
    assert personal(content) == []
    for linked in (issued.offer_id, issued.coupon_code, "m9"):
        assert linked.encode() not in content, linked


async def test_the_notifier_keeps_no_address_name_or_offer_of_an_erased_customer(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "store"
    repository = await SqliteNotifierRepository.open(StoreLocation.parse(f"sqlite://{folder}"))
    app = notifier_app(
        settings(folder),
        repository=repository,
        clock=lambda: AT,
        notifier_settings=NotifierSettings(send_grace_s=0),
        poll=False,
    )
    outcomes: list[DeliveryRecorded] = []

    @app.broker.subscriber(DELIVERIES, batch=False)
    async def collect(_: object, message: KafkaMessage) -> None:
        outcomes.append(DeliveryRecorded.model_validate_json(message.body))

    contact = {
        "type": "contact_changed",
        "customer_id": CUSTOMER,
        "email": EMAIL,
        "first_name": NAME,
        "marketing_consent": True,
        "home_store_id": "S001",
        "changed_at": "2026-03-02T09:00:00+00:00",
    }
    offer = OfferIssued(
        offer_id="offer-1",
        customer_id=CUSTOMER,
        kind="frequent_item",
        coupon_code="K7QX-M2PA-9FHT",
        discount_percent=Decimal(10),
        sku="MILK-1L",
        product_name="Milk 1 l",
        valid_from=AT.date(),
        valid_until=AT.date() + dt.timedelta(days=14),
        issued_at=AT,
        template="frequent_item",
    )
    key = CUSTOMER.encode()
    async with TestKafkaBroker(app.broker) as broker:
        await broker.publish(json.dumps(contact).encode(), CONTACTS, key=key)
        await broker.publish(dump(offer), OFFERS, key=key)
        assert [o.state for o in outcomes] == ["written"]
        await broker.publish(None, CONTACTS, key=key)  # the erasure's tombstone
    [kept] = (await repository.get_deliveries(["offer-1"])).values()
    assert (kept.state, kept.offer) == ("written", None)
    assert await repository.deliveries_of(CUSTOMER) == []
    content = stored_bytes(folder, "notifier")
    await repository.close()
    assert personal(content) == []
    assert b"K7QX-M2PA-9FHT" not in content


async def test_a_revocation_for_an_erasure_unlinks_the_notifiers_deliveries(tmp_path: Path) -> None:
    # Offers revokes the erased customer's open coupons; that may reach the notifier before
    # the tombstone on crm.contacts (another topic).
    repository = await SqliteNotifierRepository.open(StoreLocation.parse("memory://"))
    app = notifier_app(
        settings(tmp_path),
        repository=repository,
        clock=lambda: AT,
        notifier_settings=NotifierSettings(send_grace_s=60),
        poll=False,
    )
    offer = OfferIssued(
        offer_id="offer-2",
        customer_id=CUSTOMER,
        kind="birthday",
        coupon_code="K7QX-M2PA-9FHU",
        discount_percent=Decimal(15),
        valid_from=AT.date(),
        valid_until=AT.date() + dt.timedelta(days=7),
        issued_at=AT,
        template="birthday",
    )
    revoked = OfferRevoked(
        offer_id="offer-2",
        customer_id=CUSTOMER,
        kind="birthday",
        coupon_code="K7QX-M2PA-9FHU",
        reason="erased",
        revoked_at=AT,
    )
    key = CUSTOMER.encode()
    async with TestKafkaBroker(app.broker) as broker:
        await broker.publish(dump(offer), OFFERS, key=key)
        assert [d.state for d in await repository.deliveries_of(CUSTOMER)] == ["waiting_contact"]
        await broker.publish(dump(revoked), OFFERS, key=key)
    assert await repository.deliveries_of(CUSTOMER) == []
    [kept] = (await repository.get_deliveries(["offer-2"])).values()
    assert (kept.state, kept.last_error, kept.offer) == ("suppressed", "offer_revoked", None)
    await repository.close()


async def test_reports_keep_no_customer_id_of_an_erased_customer(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    repository = await SqliteReportsRepository.open(StoreLocation.parse(f"sqlite://{folder}"))
    app = reports_app(settings(folder), repository=repository)
    offer = OfferIssued(
        offer_id="offer-1",
        customer_id=CUSTOMER,
        kind="birthday",
        coupon_code="K7QX-M2PA-9FHT",
        discount_percent=Decimal(15),
        valid_from=AT.date(),
        valid_until=AT.date() + dt.timedelta(days=7),
        issued_at=AT,
        template="birthday",
    )
    key = CUSTOMER.encode()
    bought_before = PurchaseRecorded(
        event_id="p-1",
        occurred_at=AT - dt.timedelta(days=3),
        customer_id=MERGED,
        card_id="card-2",
        store_id="S001",
        currency="EUR",
        total=Decimal("2.00"),
        lines=(
            PurchaseLine(
                sku="MILK", quantity=Decimal(1), unit_price=Decimal("2.00"), amount=Decimal("2.00")
            ),
        ),
    )
    linked = CardLinked(
        event_id="l-1",
        occurred_at=AT - dt.timedelta(days=2),
        customer_id=CUSTOMER,
        card_id="card-2",
        merged_customer_id=MERGED,
    )
    async with TestKafkaBroker(app.broker) as broker:
        # A second card's customer, merged into this one by a card link before the erasure.
        await broker.publish(dump(bought_before), EVENTS, key=MERGED.encode())
        await broker.publish(dump(linked), EVENTS, key=key)
        await broker.publish(dump(offer), OFFERS, key=key)
        erased = CustomerErased(event_id="x-1", occurred_at=AT, customer_id=CUSTOMER)
        await broker.publish(dump(erased), EVENTS, key=key)
        # A fact of the customer that arrives after the erasure is unlinked too.
        delivered = DeliveryRecorded(
            offer_id="offer-1",
            customer_id=CUSTOMER,
            state="sent",
            attempts=1,
            message_id="<offer-1@crm>",
            recorded_at=AT,
        )
        await broker.publish(dump(delivered), DELIVERIES, key=key)
    facts = await repository.load()
    row = next(r for r in campaigns_report(facts, AT.date()).rows if r.week == "all")
    assert (row.issued, row.delivered) == (1, 1)
    content = stored_bytes(folder, "reports")
    await repository.close()
    assert personal(content) == []
    assert MERGED.encode() not in content


async def test_profiles_leave_no_erased_value_in_the_database_or_its_wal(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    repository = await SqliteProfilesRepository.open(StoreLocation.parse(f"sqlite://{folder}"))
    signup = CustomerSignedUp(
        event_id="s-1",
        occurred_at=AT,
        customer_id=CUSTOMER,
        card_id="card-1",
        email=EMAIL,
        first_name=NAME,
        birth_date=dt.date(1990, 5, 17),
        marketing_consent=True,
    )
    await apply(repository, [signup])
    assert EMAIL.encode() in stored_bytes(folder, "profiles")
    erasure = CustomerErased(
        event_id="x-1", occurred_at=AT + dt.timedelta(hours=1), customer_id=CUSTOMER
    )
    await apply(repository, [erasure])
    content = stored_bytes(folder, "profiles")
    await repository.close()
    # The tombstone keeps the customer id (later events of the card are ignored by it).
    assert [v for v in (EMAIL, NAME) if v.encode() in content] == []


async def test_a_rebuild_brings_back_no_offer_of_an_erased_customer() -> None:
    # The first run issued the offer, then the customer was erased.
    async for first in start():
        await milk_three_times(first, CUSTOMER)
        erasure = change("x-1", DAY1 + dt.timedelta(days=1), "customer_erased", CUSTOMER)
        await first.broker.publish(
            dump(erasure.model_copy(update={"erased": True})),
            PROFILES_CHANGED,
            key=CUSTOMER.encode(),
        )
        published = [dump(event) for _, event in first.offers]
        [issued] = first.of_type("offer_issued")
    # `crm replay offers`: the store rebuilt from crm.profiles.changed, then the offers
    # published before are kept (as revoked) unless they belong to an erased customer.
    async for rebuilt in start():
        await rebuilt.broker.publish(signed_up(CUSTOMER), PROFILES_CHANGED, key=CUSTOMER.encode())
        await rebuilt.broker.publish(
            dump(erasure.model_copy(update={"erased": True})),
            PROFILES_CHANGED,
            key=CUSTOMER.encode(),
        )
        handled = await SPEC.after_replay.keep(rebuilt.app.service, published)  # type: ignore[union-attr]
        await handled.save()
        assert handled.outgoing == []
        assert await rebuilt.repository.offers_of(CUSTOMER) == []
        assert await rebuilt.repository.offer_by_code(issued.coupon_code) is None  # type: ignore[union-attr]
