"""Right of access: each service's admin export route and `crm export-customer` return what
the stores keep of a customer: the profile, offers, a redemption, a delivery, the reports'
facts and the look-ups of the audit log. Every store is the services' SQLite file in one
folder; the HTTP routes are the services' own, through an ASGI client."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from faststream.kafka import TestKafkaBroker
from typer.testing import CliRunner

from crm.cli import cli
from services.ingest.app import create_app as create_ingest_app
from services.ingest.app import routes as ingest_routes
from services.ingest.store_sqlite import SqliteIngestRepository
from services.notifier.api import notifier_routes
from services.notifier.app import create_app as notifier_app
from services.notifier.domain import Contact, new_delivery
from services.notifier.store import StoreChanges
from services.notifier.store_sqlite import SqliteNotifierRepository
from services.offers.api import TillApi
from services.offers.api import build_router as offers_router
from services.offers.store import Changes, LedgerRow
from services.offers.store_sqlite import SqliteOffersRepository
from services.profiles.api import LookupApi
from services.profiles.api import build_router as profiles_router
from services.profiles.store_sqlite import SqliteProfilesRepository
from services.profiles.timeline import entry_of_event
from services.reports.api import ReportsLoader, build_reports_router
from services.reports.domain import Campaign, Redemption
from services.reports.settings import ReportsSettings
from services.reports.store import campaign_fact, delivery_fact, redemption_fact
from services.reports.store_sqlite import SqliteReportsRepository
from shared.auth import SqliteAuditLog, TokenTable, token_hash
from shared.events import CustomerSignedUp, NoteAdded, OfferRedeemed
from shared.settings import HttpSettings, KafkaSettings, Settings, SmtpSettings, StoreSettings
from shared.storage import StoreLocation
from tests.integration.test_offers_store import ledger, offer
from tests.integration.test_profiles_store import apply

CUSTOMER = "cust-export-1"
EMAIL = "ana.export@example.com"
NOTE = "Asked to be called back about her order"
AT = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
TOKENS = {"admin": "admin-token", "agent": "agent-token", "marketing": "marketing-token"}
SERVICES = ("ingest", "profiles", "offers", "notifier", "reports")


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def settings(folder: Path) -> Settings:
    tokens = ",".join(f"{role}:{token_hash(token)}" for role, token in TOKENS.items())
    return Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url=f"sqlite://{folder}"),
        smtp=SmtpSettings(smtp_host=None, outbox_dir=folder / "outbox"),
        http=HttpSettings(api_tokens=tokens),
    )


async def fill(folder: Path) -> None:
    """A customer with a profile, a redeemed offer with its e-mail sent, and its facts."""
    location = StoreLocation.parse(f"sqlite://{folder}")
    ingest = await SqliteIngestRepository.open(location)
    await ingest.record(set(), {"card-2": CUSTOMER}, AT)  # a second card linked to the customer
    await ingest.close()
    profiles = await SqliteProfilesRepository.open(location)
    signup = CustomerSignedUp(
        event_id="s-1",
        occurred_at=AT,
        customer_id=CUSTOMER,
        card_id="card-1",
        email=EMAIL,
        first_name="Ana",
        birth_date=dt.date(1990, 5, 17),
        marketing_consent=True,
    )
    await apply(profiles, [signup])
    note = NoteAdded(
        event_id="note:1", occurred_at=AT, customer_id=CUSTOMER, text=NOTE, author="agent-7"
    )
    entries = [entry_of_event(CUSTOMER, e) for e in (signup, note)]
    await profiles.save_timeline([e for e in entries if e is not None])
    await profiles.close()

    redeemed = offer(CUSTOMER, state="redeemed")
    redemption = OfferRedeemed(
        offer_id=redeemed.offer_id,
        customer_id=CUSTOMER,
        kind=redeemed.kind,
        coupon_code=redeemed.coupon_code,
        redeemed_at=AT,
        checkout_event_id="checkout-9",
        store_id="S001",
        basket_total=Decimal("20.00"),
        discount=Decimal("2.50"),
    )
    redeemed = redeemed.model_copy(update={"redemption": redemption, "delivery": "sent"})
    offers = await SqliteOffersRepository.open(location)
    await offers.save(Changes(ledgers=[LedgerRow(ledger(CUSTOMER))], offers=[redeemed]))
    await offers.close()

    notifier = await SqliteNotifierRepository.open(location)
    contact = Contact(CUSTOMER, EMAIL, "Ana", True, "S001", changed_at=AT)
    sent = replace(new_delivery(redeemed.issued, AT), state="sent", attempts=1)
    await notifier.apply(StoreChanges(contacts=[contact], deliveries=[sent]))
    await notifier.close()

    reports = await SqliteReportsRepository.open(location)
    campaign = Campaign(
        redeemed.offer_id, CUSTOMER, "frequent_item", AT, AT.date(), AT.date(), held_out=False
    )
    await reports.add(
        [
            campaign_fact(campaign),
            redemption_fact(
                Redemption(redeemed.offer_id, AT, Decimal("20.00"), Decimal("2.50")), CUSTOMER
            ),
            delivery_fact(redeemed.offer_id, CUSTOMER, "sent"),
        ]
    )
    await reports.close()


@dataclass
class Services:
    http: httpx.AsyncClient
    folder: Path


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    folder = tmp_path / "store"
    await fill(folder)
    config = settings(folder)
    location = StoreLocation.parse(config.store.store_url)
    tokens = TokenTable.parse(config.http.api_tokens.get_secret_value())  # type: ignore[union-attr]
    profiles = await SqliteProfilesRepository.open(location)
    audit = await SqliteAuditLog.open(location)
    offers = await SqliteOffersRepository.open(location)
    reports = await SqliteReportsRepository.open(location)
    notifier = await SqliteNotifierRepository.open(location)
    ingest = await SqliteIngestRepository.open(location)
    app = notifier_app(config, repository=notifier, poll=False)
    ingest_app = create_ingest_app(config, repository=ingest)
    api = FastAPI()
    api.include_router(profiles_router(LookupApi(config, profiles, audit=audit), tokens))
    api.include_router(offers_router(TillApi(config, repository=offers), tokens))
    api.include_router(
        build_reports_router(ReportsLoader(repository=reports), tokens, ReportsSettings())
    )
    api.include_router(notifier_routes(app))
    api.include_router(ingest_routes(ingest_app))
    async with (
        TestKafkaBroker(app.broker),
        TestKafkaBroker(ingest_app.broker),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://crm") as http,
    ):
        yield Services(http, folder)
    for store in (profiles, audit, offers, reports, notifier, ingest):
        await store.close()


def export_path(service: str) -> str:
    return f"/api/admin/customers/{CUSTOMER}/export/{service}"


async def test_each_services_admin_export_holds_what_it_keeps_of_the_customer(
    services: Services,
) -> None:
    http = services.http
    # An agent looks the customer up: the audit log keeps it, and the export shows it.
    assert (await http.get(f"/api/customers/{CUSTOMER}", headers=auth("agent"))).is_success
    parts = {}
    for service in SERVICES:
        answer = await http.get(export_path(service), headers=auth("admin"))
        assert answer.status_code == 200, service
        assert answer.headers["cache-control"] == "no-store"
        body = answer.json()
        assert (body["customer_id"], body["service"]) == (CUSTOMER, service)
        parts[service] = body["data"]
    assert parts["profiles"]["document"]["email"] == EMAIL
    [look_up] = parts["profiles"]["audit"]
    assert (look_up["action"], look_up["role"], look_up["found"]) == ("get_by_id", "agent", True)
    [offered] = parts["offers"]["offers"]
    assert offered["state"] == "redeemed"
    assert offered["redemption"]["discount"] == "2.50"
    assert offered["delivery"] == "sent"
    assert parts["notifier"]["contact"]["email"] == EMAIL
    [delivery] = parts["notifier"]["deliveries"]
    assert (delivery["offer_id"], delivery["state"]) == (offered["issued"]["offer_id"], "sent")
    kinds = sorted(fact["kind"] for fact in parts["reports"]["facts"])
    assert kinds == ["campaign", "delivery", "redemption"]
    assert parts["ingest"]["linked_card_ids"] == ["card-2"]


async def test_the_export_routes_need_the_admin_role(services: Services) -> None:
    for service in SERVICES:
        path = export_path(service)
        assert (await services.http.get(path)).status_code == 401
        wrong = {"Authorization": "Bearer not-a-token"}
        assert (await services.http.get(path, headers=wrong)).status_code == 401
        for role in ("agent", "marketing"):
            assert (await services.http.get(path, headers=auth(role))).status_code == 403


async def look_up(folder: Path) -> None:
    """An agent looks the customer up through the profiles' API (the audit log keeps it)."""
    config = settings(folder)
    location = StoreLocation.parse(config.store.store_url)
    tokens = TokenTable.parse(config.http.api_tokens.get_secret_value())  # type: ignore[union-attr]
    profiles = await SqliteProfilesRepository.open(location)
    audit = await SqliteAuditLog.open(location)
    api = FastAPI()
    api.include_router(profiles_router(LookupApi(config, profiles, audit=audit), tokens))
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://crm") as http:
        assert (await http.get(f"/api/customers/{CUSTOMER}", headers=auth("agent"))).is_success
    await audit.close()
    await profiles.close()


def test_crm_export_customer_holds_every_store_and_the_audit_log(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    asyncio.run(fill(folder))
    asyncio.run(look_up(folder))
    result = CliRunner().invoke(
        cli,
        ["export-customer", "--customer-id", CUSTOMER],
        env={"CRM_STORE_URL": f"sqlite://{folder}"},
    )
    assert result.exit_code == 0, result.output
    exported = json.loads(result.stdout)
    assert exported["ingest"]["linked_card_ids"] == ["card-2"]
    assert exported["profiles"]["document"]["email"] == EMAIL
    journey = [(e["type"], e["details"].get("text")) for e in exported["profiles"]["timeline"]]
    assert sorted(journey, key=str) == [("note", NOTE), ("signup", None)]
    [offered] = exported["offers"]["offers"]
    assert offered["redemption"]["checkout_event_id"] == "checkout-9"
    [delivery] = exported["notifier"]["deliveries"]
    assert delivery["state"] == "sent"
    kinds = sorted(fact["kind"] for fact in exported["reports"]["facts"])
    assert kinds == ["campaign", "delivery", "redemption"]
    [entry] = exported["audit"]
    assert (entry["action"], entry["customer_id"]) == ("get_by_id", CUSTOMER)
