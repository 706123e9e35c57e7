"""The customer's journey on the web page, in headless Chromium: the timeline (in the store's
local time, filtered by type), the interactions' details, the favourite categories, the consent
history, and a note the agent writes on the page that comes back in the timeline.

The profiles service's journey routes are the real ones; what stands in for Kafka is the fold:
a note the route publishes (sealed with the customer's key) is opened with the vault and its
entry written as the profiles service writes it when it consumes crm.events."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from services.profiles.api import LookupApi
from services.profiles.domain import CategoryStats, ConsentRecord
from services.profiles.journey_api import JourneyApi, build_router
from services.profiles.timeline import entry_of_event, entry_of_offer
from shared.auth import TokenTable
from shared.events import (
    ConsentChanged,
    CustomerSignedUp,
    InteractionRecorded,
    NormalizedEvent,
    NoteAdded,
    OfferIssued,
    PurchaseLine,
    PurchaseRecorded,
)
from shared.settings import CalendarSettings
from shared.storage import StoreLocation
from shared.vault import open_value
from shared.vault_sqlite import SqliteVault
from tests.browser.population import CARD, TODAY, TOKENS, World, build_world
from tests.browser.support import CHROMIUM, run_async, serve, shoot, sign_in

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (apt-get install chromium)"),
]

T0 = dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 3, 20, 15, 0, tzinfo=dt.UTC)
NOTE = "Asked about the kettle's warranty; call back on Monday."


class _Service:
    def __init__(self, world: World, vault: SqliteVault) -> None:
        self.repository = world.profiles
        self.vault = vault

    @staticmethod
    def clock() -> dt.datetime:
        return NOW


class _FoldingApp:
    """The profiles app as the journey routes see it; `publish` folds a note as the service
    would once it reads it back from crm.events."""

    def __init__(self, world: World, vault: SqliteVault) -> None:
        self.service = _Service(world, vault)
        self.settings = world.settings.model_copy(
            update={
                "calendar": CalendarSettings(
                    timezone="Europe/Lisbon", store_timezones={"S001": "Europe/Paris"}
                )
            }
        )
        self.vault = vault
        self.world = world

    async def publish(self, records: Sequence[tuple[str, bytes, bytes]]) -> None:
        for _, _, value in records:
            document = orjson.loads(value)
            envelope = document["text"]
            key = (await self.vault.keys([envelope["kid"]]))[envelope["kid"]]
            note = NoteAdded.model_validate(
                {**document, "text": open_value(envelope, key, field="text")}
            )
            entry = entry_of_event(note.customer_id, note)
            assert entry is not None
            await self.world.profiles.save_timeline([entry])


def _journey(customer_id: str) -> list[NormalizedEvent]:
    line = PurchaseLine(
        sku="KETTLE", category="kitchen", quantity=Decimal(1), unit_price=Decimal("24.90"),
        amount=Decimal("24.90"),
    )  # fmt: skip
    return [
        CustomerSignedUp(
            event_id="customer:s1",
            occurred_at=T0,
            customer_id=customer_id,
            card_id="card",
            marketing_consent=True,
            store_id="S001",
            source="till",
            channel="email",
            consent_text_version="2026-01",
        ),
        PurchaseRecorded(
            event_id="till-1",
            occurred_at=T0 + dt.timedelta(days=1),
            customer_id=customer_id,
            card_id="card",
            store_id="S001",
            currency="EUR",
            lines=(line, line.model_copy(update={"sku": "TEA"})),
            total=Decimal("49.80"),
        ),
        InteractionRecorded(
            event_id="interaction:i1",
            occurred_at=T0 + dt.timedelta(days=2),
            customer_id=customer_id,
            interaction_type="social_like",
            channel="instagram",
            details={"brand": "Acme", "sentiment": "positive", "topic": "kettles"},
        ),
        ConsentChanged(
            event_id="customer:c1",
            occurred_at=T0 + dt.timedelta(days=4),
            customer_id=customer_id,
            marketing_consent=False,
            source="unsubscribe_link",
            channel="email",
        ),
    ]


async def _build() -> tuple[World, SqliteVault]:
    world = await build_world()
    # Stores in Paris, the rest in Lisbon: the page's API (look-up and journey) answer in both.
    calendar = CalendarSettings(timezone="Europe/Lisbon", store_timezones={"S001": "Europe/Paris"})
    world.settings = world.settings.model_copy(update={"calendar": calendar})
    cid = world.customer_id
    vault = await SqliteVault.open(StoreLocation.parse("memory://"))
    await vault.create([cid], T0)
    events = _journey(cid)
    offer = OfferIssued(
        offer_id="o-1",
        customer_id=cid,
        kind="frequent_item",
        coupon_code="KET-123",
        discount_percent=Decimal(10),
        sku="KETTLE",
        product_name="Kettle",
        valid_from=dt.date(2026, 3, 2),
        valid_until=dt.date(2026, 3, 16),
        issued_at=T0 + dt.timedelta(days=1, hours=2),
        template="frequent_item",
    )
    entries = [entry_of_event(cid, e) for e in events] + [entry_of_offer(cid, offer)]
    await world.profiles.save_timeline([e for e in entries if e is not None])
    # The profile's consent history, as the profiles service folds it from the same events.
    profile = (await world.profiles.get_many([cid]))[cid]
    history = [
        ConsentRecord(event_id="customer:s1", at=T0, given=True, source="till", channel="email",
                      text_version="2026-01"),
        ConsentRecord(event_id="customer:c1", at=T0 + dt.timedelta(days=4), given=False,
                      source="unsubscribe_link", channel="email"),
    ]  # fmt: skip
    categories = {
        "dairy": CategoryStats(quantity=Decimal(6), spend=Decimal("7.14"), checkouts=3),
        "kitchen": CategoryStats(quantity=Decimal(1), spend=Decimal("24.90"), checkouts=1),
    }
    update = {"consent_history": history, "categories": categories}
    await world.profiles.save_many(
        [profile.model_copy(update=update | {"version": profile.version + 1})]
    )
    return world, vault


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[str, World]]:
    world, vault = run_async(_build())
    app = world.api()
    tokens = TokenTable.parse(world.settings.http.api_tokens.get_secret_value())  # type: ignore[union-attr]
    folding = _FoldingApp(world, vault)
    lookup = LookupApi(folding.settings, world.profiles, audit=world.audit)
    journey = JourneyApi(folding, lookup)  # type: ignore[arg-type]
    app.include_router(build_router(journey, tokens))
    with serve(app) as base:
        yield base, world


def test_the_agent_reads_the_journey_in_the_stores_time_adds_a_note_and_filters_by_type(
    site: tuple[str, World], browser: Any
) -> None:
    base, _ = site
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, base, TOKENS["agent"])
    page.wait_for_selector("#customer:not([hidden])")
    page.fill("#card", CARD)
    page.keyboard.press("Enter")
    page.wait_for_selector("#timeline-list .entry-purchase", timeout=15_000)

    # newest first; the sign-up at 09:30 UTC in S001 shows in Paris time (10:30)
    types = page.eval_on_selector_all("#timeline-list .entry", "l => l.map(e => e.dataset.type)")
    assert types == ["consent", "interaction", "offer_issued", "purchase", "signup"]
    signup = page.inner_text("#timeline-list .entry-signup")
    assert "2026-03-01 10:30" in signup
    assert "Europe/Paris" in signup
    assert "via till" in signup
    assert "wording 2026-01" in signup
    assert "via unsubscribe_link" in page.inner_text("#timeline-list .entry-consent")
    # an entry without a store: the default zone (Lisbon, UTC in winter)
    assert "2026-03-03 09:30" in page.inner_text("#timeline-list .entry-interaction")
    assert "brand: Acme" in page.inner_text("#timeline-list .entry-interaction")
    # interactions' details, favourite categories and the consent history on the page
    assert "topic: billing" in page.inner_text("#customer-interactions")
    categories = page.inner_text("#customer-categories")
    assert categories.index("dairy") < categories.index("kitchen")
    history = page.inner_text("#consent-history")
    assert "unsubscribe_link" in history
    assert "withdrawn" in history
    assert "2026-01" in history
    # the look-up's times too are the store's: the home store S001 is in Paris (UTC+1)
    assert "2026-03-01 10:30" in history
    bought = dt.datetime.combine(TODAY - dt.timedelta(days=2), dt.time(11), tzinfo=dt.UTC)
    in_paris = bought.astimezone(ZoneInfo("Europe/Paris")).strftime("%Y-%m-%d %H:%M")
    assert in_paris in page.inner_text("#customer")
    assert "T11:00:00Z" not in page.inner_text("#customer")

    # a note, written on the page, comes back in the timeline
    page.fill("#note-text", NOTE)
    page.click("#note-form button[type=submit]")
    page.wait_for_selector("#timeline-list .entry-note", timeout=15_000)
    note = page.inner_text("#timeline-list .entry-note")
    assert NOTE in note
    assert "2026-03-20 15:00" in note  # no store: CRM_TIMEZONE's time (Lisbon, UTC+0 in March)
    page.evaluate("window.scrollTo(0, 0)")
    shoot(page, "customer-timeline")

    # only notes and consent
    for group in ("purchases", "interactions", "offers", "emails"):
        page.uncheck(f"#timeline-filters input[value={group}]")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#timeline-list .entry')]"
        ".every(e => ['note', 'signup', 'consent'].includes(e.dataset.type))"
        " && document.querySelectorAll('#timeline-list .entry').length === 3",
        timeout=15_000,
    )
    page.close()
