"""Leads: a sign-up with an e-mail address and no card is a contact of its own (a lead, `l-…`,
the keyed hash of the normalised address); a card's sign-up or a link_card with the same
address makes it that card's customer, with its history, whatever the order.

Ingest, profiles and offers run in-process through their real edges and services on memory
stores (one settings object, so one key vault); what the tests look at is what goes out: the
records on the topics, the look-up's response bytes, the data keys in the vault.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services import ingest, offers, profiles
from services.ingest.store_sqlite import SqliteIngestRepository
from services.offers.store_sqlite import SqliteOffersRepository
from services.profiles.api import lookup_routes
from services.profiles.store_sqlite import SqliteProfilesRepository
from shared.auth import token_hash
from shared.privacy import card_id, customer_id_for_card, lead_id
from shared.settings import HttpSettings, PrivacySettings, Settings, StoreSettings
from shared.skeleton import ServiceApp
from shared.storage import StoreLocation
from shared.topics import (
    CHECKOUTS_RAW,
    CLOCK,
    CONTACTS,
    CUSTOMERS_RAW,
    DATA_KEYS,
    DEADLETTER,
    EVENTS,
    OFFERS,
    PROFILES_CHANGED,
)
from shared.vault import vault_for
from tests.reliability.harness import record

T0 = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)
KEY = "leads-test-card-key-of-at-least-32-bytes"
CARD_A, CARD_B = "6035 0000 0000 1111", "6035 0000 0000 2222"
ANA = "ana@example.com"
AGENT = "agent-token"
MEMORY = StoreLocation.parse("memory://")

Outgoing = list[tuple[str, bytes | None, bytes | None]]
Message = tuple[str, bytes]
"""A raw message: its topic and value."""


def raw(n: int, day: float, kind: str, **fields: Any) -> Message:
    at = T0 + dt.timedelta(days=day)
    value = json.dumps(
        {"event_id": f"cus-{n}", "type": kind, "occurred_at": at.isoformat(), **fields}
    )
    return CUSTOMERS_RAW, value.encode()


def checkout(n: int, day: float, card: str) -> Message:
    at = T0 + dt.timedelta(days=day)
    doc = {
        "event_id": f"chk-{n}",
        "store_id": "S001",
        "occurred_at": at.isoformat(),
        "card_number": card,
        "lines": [{"sku": "MILK", "quantity": 1, "unit_price": "2.00"}],
    }
    return CHECKOUTS_RAW, json.dumps(doc).encode()


def lead_signup(n: int = 1, day: float = 0, email: str = "  Ana@Example.COM ") -> Message:
    return raw(
        n,
        day,
        "signup",
        email=email,
        first_name="Ana",
        birth_date="1990-03-05",
        marketing_consent=True,
        store_id="S002",
    )


def card_signup(n: int, day: float, card: str = CARD_A, email: str | None = ANA) -> Message:
    fields: dict[str, Any] = {"card_number": card, "marketing_consent": False}
    if email is not None:
        fields["email"] = email
    return raw(n, day, "signup", **fields)


class Pipeline:
    """Ingest, profiles and offers, each batch through the real edge and service."""

    def __init__(self) -> None:
        self.settings = Settings(
            privacy=PrivacySettings(card_key=KEY),
            http=HttpSettings(api_tokens=f"agent:{token_hash(AGENT)}"),
            store=StoreSettings(store_url="memory://"),
        )
        self.offset = 0
        self.published: Outgoing = []

    async def open(self) -> None:
        settings = self.settings
        self.ingest = ServiceApp(
            ingest.SPEC, settings, repository=await SqliteIngestRepository.open(MEMORY)
        )
        self.profiles = ServiceApp(
            profiles.SPEC, settings, repository=await SqliteProfilesRepository.open(MEMORY)
        )
        self.offers = offers.create_app(
            settings, repository=await SqliteOffersRepository.open(MEMORY)
        )

    def key(self) -> bytes:
        return KEY.encode()

    def lead(self, email: str = ANA) -> str:
        return lead_id(email, self.key())

    def customer(self, card: str) -> str:
        return customer_id_for_card(card_id(card, self.key()))

    def _records(self, messages: Sequence[tuple[str, bytes | None, bytes | None]]) -> list[Any]:
        first = self.offset + 1
        self.offset += len(messages)
        return [
            record(
                topic,
                value,
                first + n,
                key,
                timestamp=int(dt.datetime.now(dt.UTC).timestamp() * 1000),
            )
            for n, (topic, key, value) in enumerate(messages)
        ]

    async def _step(self, app: Any, messages: Outgoing) -> Outgoing:
        if not messages:
            return []
        outgoing, handled = await app.prepare(self._records(messages))
        await handled.save()
        self.published.extend(outgoing)
        return list(outgoing)

    async def send(self, *messages: Message) -> Outgoing:
        """One batch of raw messages through ingest, then profiles, then offers."""
        out = await self._step(self.ingest, [(topic, None, v) for topic, v in messages])
        events = [m for m in out if m[0] == EVENTS]
        changes = await self._step(self.profiles, events)
        await self._step(self.offers, [m for m in changes if m[0] == PROFILES_CHANGED])
        # The wrapped data keys ingest also publishes are checked by the vault's own tests.
        return [m for m in out if m[0] != DATA_KEYS]

    async def tick(self, day: dt.date) -> None:
        clock = json.dumps({"date": day.isoformat()}).encode()
        await self._step(self.offers, [(CLOCK, None, clock)])

    def on(self, topic: str) -> Outgoing:
        return [m for m in self.published if m[0] == topic]

    async def live_profiles(self) -> list[dict[str, Any]]:
        repository: Any = self.profiles.service.repository

        def work(db: Any) -> set[str]:
            return {row[0] for row in db.execute("SELECT customer_id FROM profiles")}

        ids: set[str] = await repository.read(work)
        found = await repository.get_many(ids)
        return sorted(
            (p.content() for p in found.values() if not p.erased and p.merged_into is None),
            key=lambda c: str(c["customer_id"]),
        )

    async def lookup(self, card: str) -> httpx.Response:
        api = FastAPI()
        api.include_router(lookup_routes(self.profiles))
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://crm.test") as client:
            return await client.post(
                "/api/customers/lookup",
                json={"card_number": card},
                headers={"Authorization": f"Bearer {AGENT}"},
            )

    async def close(self) -> None:
        for app in (self.ingest, self.profiles, self.offers):
            await app.service.repository.close()


@pytest.fixture
async def pipeline() -> AsyncIterator[Pipeline]:
    made = Pipeline()
    await made.open()
    yield made
    await made.close()


async def run(*batches: Sequence[Message]) -> list[dict[str, Any]]:
    """The live profiles after the batches, each in a new pipeline."""
    made = Pipeline()
    await made.open()
    try:
        for batch in batches:
            await made.send(*batch)
        return await made.live_profiles()
    finally:
        await made.close()


def kid_of(value: bytes | None) -> str:
    """The data key id sealing the record's e-mail address."""
    assert value is not None
    envelope = json.loads(value)["email"]
    return str(envelope["kid"])


# ---------------------------------------------------------------- ingest


async def test_a_sign_up_without_a_card_is_a_lead_keyed_by_its_normalised_address(
    pipeline: Pipeline,
) -> None:
    out = await pipeline.send(lead_signup(email="  Ana@Example.COM "))
    assert [m[0] for m in out] == [EVENTS]
    [(_, key, value)] = out
    assert value is not None
    event = json.loads(value)
    lead = pipeline.lead(ANA)
    assert lead.startswith("l-")
    assert key == lead.encode()
    assert event["type"] == "customer_signed_up"
    assert event["customer_id"] == lead
    assert event["card_id"] is None
    assert event["merged_customer_id"] is None
    assert event["marketing_consent"] is True
    # The address travels sealed, never in clear, in any spelling.
    assert b"example.com" not in value.lower()
    assert event["email"]["enc"] == "aes256gcm"


async def test_a_sign_up_without_card_or_email_is_dead_lettered_as_missing_card(
    pipeline: Pipeline,
) -> None:
    out = await pipeline.send(raw(1, 0, "signup", first_name="Ana", marketing_consent=True))
    [(topic, _, value)] = out
    assert topic == DEADLETTER
    assert value is not None
    letter = json.loads(value)
    assert letter["reason"] == "missing_card"
    assert letter["field"] == "card_number"
    assert "email" in letter["detail"]
    assert b"Ana" not in value


async def test_a_lead_with_an_invalid_address_is_dead_lettered_without_the_address(
    pipeline: Pipeline,
) -> None:
    out = await pipeline.send(lead_signup(email="ana.at.example"))
    [(topic, _, value)] = out
    assert topic == DEADLETTER
    assert value is not None
    assert json.loads(value)["reason"] == "invalid_email"
    assert b"ana.at.example" not in value


# ---------------------------------------------------------------- profiles


async def test_a_lead_is_a_profile_without_card_with_a_contact_and_its_birthday_offer(
    pipeline: Pipeline,
) -> None:
    await pipeline.send(lead_signup())
    lead = pipeline.lead()
    [profile] = await pipeline.live_profiles()
    assert profile["customer_id"] == lead
    assert profile["card_ids"] == []
    assert profile["registered"] is True
    assert profile["visits"] == 0
    assert profile["email"] == ANA
    assert profile["first_name"] == "Ana"
    assert profile["marketing_consent"] is True
    # The notifier gets the lead's contact, sealed, as for a customer with a card.
    [(_, key, value)] = pipeline.on(CONTACTS)
    assert key == lead.encode()
    assert value is not None
    assert b"example.com" not in value
    # Consent given: the birthday e-card reaches the lead too.
    await pipeline.tick(dt.date(2026, 3, 5))
    issued = [json.loads(v) for _, _, v in pipeline.on(OFFERS) if v]
    assert [(o["type"], o["customer_id"], o["kind"]) for o in issued] == [
        ("offer_issued", lead, "birthday")
    ]


async def test_the_lead_merges_into_the_card_customer_in_either_order() -> None:
    lead, card, buy = lead_signup(1, 0), card_signup(2, 1), checkout(3, 2, CARD_A)
    lead_first = await run([lead], [card], [buy])
    card_first = await run([card], [buy], [lead])
    one_batch = await run([buy, card, lead])
    assert card_first == lead_first
    assert one_batch == lead_first
    [profile] = lead_first
    made = Pipeline()
    assert profile["customer_id"] == made.customer(CARD_A)
    assert profile["card_ids"] == [card_id(CARD_A, made.key())]
    assert profile["merged_from"] == [made.lead()]
    # The lead's history: its sign-up (time, name, birth date, store), with the card's.
    assert profile["registered_at"] == T0.isoformat().replace("+00:00", "Z")
    assert profile["first_name"] == "Ana"
    assert profile["birth_date"] == "1990-03-05"
    assert profile["signup_store_id"] == "S002"
    assert profile["visits"] == 1
    # The card's sign-up is the newer statement of consent.
    assert profile["marketing_consent"] is False


async def test_link_card_with_the_leads_address_merges_it_in_either_order() -> None:
    lead = lead_signup(1, 0)
    card = card_signup(2, 1, email=None)
    link = raw(3, 2, "link_card", card_number=CARD_A, email=" ANA@example.com")
    lead_first = await run([lead], [card], [link])
    link_first = await run([card], [link], [lead])
    assert link_first == lead_first
    [profile] = lead_first
    made = Pipeline()
    assert profile["customer_id"] == made.customer(CARD_A)
    assert profile["merged_from"] == [made.lead()]
    assert profile["first_name"] == "Ana"


async def test_the_look_up_by_card_finds_the_customer_with_the_leads_history(
    pipeline: Pipeline,
) -> None:
    await pipeline.send(lead_signup(1, 0))
    await pipeline.send(card_signup(2, 1), checkout(3, 2, CARD_A))
    response = await pipeline.lookup(CARD_A)
    assert response.status_code == 200, response.text
    view = json.loads(response.content)
    assert view["customer_id"] == pipeline.customer(CARD_A)
    assert view["registered"] is True
    assert view["cards"] == 1
    assert view["first_name"] == "Ana"
    assert view["email"] == ANA
    assert view["birth_date"] == "1990-03-05"
    # The lead's contact is withdrawn: the notifier knows the customer only.
    contacts = [(key, value is None) for _, key, value in pipeline.on(CONTACTS)]
    assert (pipeline.lead().encode(), True) in contacts


async def test_a_second_card_with_the_same_address_stays_its_own_customer(
    pipeline: Pipeline,
) -> None:
    await pipeline.send(lead_signup(1, 0))
    await pipeline.send(card_signup(2, 1, CARD_A))
    await pipeline.send(card_signup(3, 2, CARD_B))
    live = await pipeline.live_profiles()
    assert sorted(p["customer_id"] for p in live) == sorted(
        [pipeline.customer(CARD_A), pipeline.customer(CARD_B)]
    )
    [first] = [p for p in live if p["customer_id"] == pipeline.customer(CARD_A)]
    assert first["merged_from"] == [pipeline.lead()]
    # Linking card B to the address is refused: cards merge only by their numbers.
    out = await pipeline.send(raw(4, 3, "link_card", card_number=CARD_B, email=ANA))
    [(topic, _, value)] = out
    assert topic == DEADLETTER
    assert value is not None
    letter = json.loads(value)
    assert (letter["reason"], letter["field"]) == ("invalid_field", "email")
    assert b"example.com" not in value


async def test_an_address_changed_later_does_not_match_a_lead(pipeline: Pipeline) -> None:
    await pipeline.send(card_signup(1, 0, email="old@example.com"))
    await pipeline.send(raw(2, 1, "update", card_number=CARD_A, email=ANA))
    await pipeline.send(lead_signup(3, 2))
    live = await pipeline.live_profiles()
    assert sorted(p["customer_id"] for p in live) == sorted(
        [pipeline.customer(CARD_A), pipeline.lead()]
    )


# ---------------------------------------------------------------- erasure


async def test_a_lead_is_erased_by_its_address_and_its_data_key_destroyed(
    pipeline: Pipeline,
) -> None:
    [(_, _, signed_up)] = await pipeline.send(lead_signup())
    kid = kid_of(signed_up)
    vault = vault_for(pipeline.settings.store)
    assert set(await vault.keys([kid])) == {kid}
    out = await pipeline.send(raw(2, 1, "erase", email=ANA))
    [(topic, key, _)] = out
    assert (topic, key) == (EVENTS, pipeline.lead().encode())
    assert await vault.keys([kid]) == {}
    assert await pipeline.live_profiles() == []
    assert (CONTACTS, pipeline.lead().encode(), None) in pipeline.on(CONTACTS)


async def test_erasing_the_card_customer_destroys_the_merged_leads_key(
    pipeline: Pipeline,
) -> None:
    [(_, _, signed_up)] = await pipeline.send(lead_signup())
    await pipeline.send(card_signup(2, 1))
    kid = kid_of(signed_up)
    vault = vault_for(pipeline.settings.store)
    assert set(await vault.keys([kid])) == {kid}
    await pipeline.send(raw(3, 2, "erase", card_number=CARD_A))
    assert await vault.keys([kid]) == {}
    assert await pipeline.live_profiles() == []
