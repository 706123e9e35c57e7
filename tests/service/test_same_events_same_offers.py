"""Same events, same offers: one customer's events (a sign-up, consent changes, a second card
linked, purchases on either card, clock days), taken through ingest, profiles and offers as
they run (each service's edge and service, on memory stores), in any arrival order and any
batch split, give the same profile and the same offers as in event-time order."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services import ingest, offers, profiles
from services.ingest.store_sqlite import SqliteIngestRepository
from services.offers.settings import HoldOut, OfferRules
from services.offers.store_sqlite import SqliteOffersRepository
from services.profiles.store_sqlite import SqliteProfilesRepository
from shared.settings import PrivacySettings, Settings
from shared.skeleton import ServiceApp
from shared.storage import StoreLocation
from shared.topics import CHECKOUTS_RAW, CLOCK, CUSTOMERS_RAW, EVENTS, PROFILES_CHANGED
from tests.reliability.harness import record

T0 = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)
CARD_A, CARD_B = "6035 0000 0000 1111", "6035 0000 0000 2222"
SKUS = ("MILK", "EGGS", "BREAD")
MEMORY = StoreLocation.parse("memory://")
ARRIVAL_MS = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
"""Every record arrives now: all within the allowed lateness of each other."""


Outcome = tuple[list[Any], dict[str, tuple[Any, ...]], dict[tuple[str, str], tuple[Any, ...]]]


@dataclass(frozen=True)
class Raw:
    """One input: a raw message for ingest, or a clock day for offers; with its event time."""

    topic: str
    value: bytes
    at: dt.datetime


def checkout(n: int, day: float, card: str, skus: Sequence[str]) -> Raw:
    at = T0 + dt.timedelta(days=day)
    doc = {
        "event_id": f"chk-{n}",
        "store_id": "S001",
        "occurred_at": at.isoformat(),
        "card_number": card,
        "lines": [{"sku": s, "quantity": 1, "unit_price": "2.00"} for s in skus],
    }
    return Raw(CHECKOUTS_RAW, json.dumps(doc).encode(), at)


def customer_event(n: int, day: float, kind: str, **fields: Any) -> Raw:
    at = T0 + dt.timedelta(days=day)
    doc = {"event_id": f"cus-{n}", "type": kind, "occurred_at": at.isoformat(), **fields}
    return Raw(CUSTOMERS_RAW, json.dumps(doc).encode(), at)


def clock(day: int) -> Raw:
    date = (T0 + dt.timedelta(days=day)).date()
    start = dt.datetime.combine(date, dt.time(0), tzinfo=dt.UTC)
    return Raw(CLOCK, json.dumps({"date": date.isoformat()}).encode(), start)


@st.composite
def histories(draw: st.DrawFn) -> list[Raw]:
    """A sign-up on card A (born on a day the clock passes), consent changes, card B linked,
    purchases of a few SKUs on either card, and clock days, spread over three weeks."""
    events = [
        customer_event(
            0,
            0,
            "signup",
            card_number=CARD_A,
            email="ana@example.com",
            first_name="Ana",
            birth_date="1990-03-" + f"{draw(st.integers(3, 20)):02d}",
            marketing_consent=draw(st.booleans()),
        )
    ]
    for n in range(draw(st.integers(0, 3))):
        day = draw(st.floats(0.1, 20, allow_nan=False))
        events.append(
            customer_event(
                10 + n, day, "consent", card_number=CARD_A, marketing_consent=draw(st.booleans())
            )
        )
    if draw(st.booleans()):
        day = draw(st.floats(0.1, 20, allow_nan=False))
        events.append(
            customer_event(20, day, "link_card", card_number=CARD_A, other_card_number=CARD_B)
        )
    for n in range(draw(st.integers(3, 12))):
        day = draw(st.floats(0.2, 21, allow_nan=False))
        card = draw(st.sampled_from((CARD_A, CARD_A, CARD_B)))
        skus = draw(st.lists(st.sampled_from(SKUS), min_size=1, max_size=3, unique=True))
        events.append(checkout(n, day, card, skus))
    for day in sorted(draw(st.sets(st.integers(1, 21), max_size=6))):
        events.append(clock(day))
    return events


class Pipeline:
    """Ingest, profiles and offers in-process, each through its real edge and service."""

    def __init__(self, ingest_app: Any, profiles_app: Any, offers_app: Any) -> None:
        self.ingest, self.profiles, self.offers = ingest_app, profiles_app, offers_app
        self.offset = 0

    @classmethod
    async def open(cls, *, holdout: bool = True) -> Pipeline:
        rules = OfferRules() if holdout else OfferRules(holdout=HoldOut(percent=Decimal(0)))
        settings = Settings(privacy=PrivacySettings(card_key="order-card-key"))  # type: ignore[arg-type]
        return cls(
            ServiceApp(ingest.SPEC, settings, repository=await SqliteIngestRepository.open(MEMORY)),
            ServiceApp(
                profiles.SPEC, settings, repository=await SqliteProfilesRepository.open(MEMORY)
            ),
            offers.create_app(
                settings, repository=await SqliteOffersRepository.open(MEMORY), rules=rules
            ),
        )

    def _records(self, messages: Sequence[tuple[str, bytes | None, bytes | None]]) -> list[Any]:
        first = self.offset + 1
        self.offset += len(messages)
        return [
            record(topic, value, first + n, key, timestamp=ARRIVAL_MS)
            for n, (topic, key, value) in enumerate(messages)
        ]

    async def _step(
        self, app: Any, messages: Sequence[tuple[str, Any, Any]], topic: str
    ) -> list[Any]:
        """One batch through one service (dead letters aside); what it publishes on `topic`."""
        if not messages:
            return []
        outgoing, handled = await app.prepare(self._records(messages))
        await handled.save()
        return [m for m in outgoing if m[0] == topic]

    async def deliver(self, batch: Sequence[Raw]) -> None:
        raw = [(r.topic, None, r.value) for r in batch if r.topic != CLOCK]
        events = await self._step(self.ingest, raw, EVENTS)
        changes = await self._step(self.profiles, events, PROFILES_CHANGED)
        ticks = [(r.topic, None, r.value) for r in batch if r.topic == CLOCK]
        await self._step(self.offers, [*changes, *ticks], "crm.offers")

    async def outcome(self) -> Outcome:
        """The live profiles' content, every offer that stands with its state, and every
        decision offers keeps (issued, held out, not made and why)."""
        profile_repo = self.profiles.service.repository
        stored_ids = await _all_profile_ids(profile_repo)
        found = await profile_repo.get_many(stored_ids)
        live = sorted(
            (p.content() for p in found.values() if not p.erased and p.merged_into is None),
            key=lambda c: c["customer_id"],
        )
        offer_repo = self.offers.service.repository
        stored = await offer_repo.offers_of_customers(stored_ids)
        standing = {
            k: (o.state, o.coupon_code, o.valid_from, o.valid_until, o.redemption)
            for k, o in stored.items()
            if o.state != "revoked"
        }
        ledgers = await offer_repo.ledgers(stored_ids)
        decisions = {
            (cid, d.key): (d.outcome, d.reason, d.offer_id)
            for cid, ledger in ledgers.items()
            for d in ledger.decisions.values()
        }
        return live, standing, decisions


async def _all_profile_ids(repository: Any) -> set[str]:
    def work(db: Any) -> set[str]:
        return {row[0] for row in db.execute("SELECT customer_id FROM profiles")}

    found: set[str] = await repository.read(work)
    return found


async def run(batches: Sequence[Sequence[Raw]], *, holdout: bool = True) -> Outcome:
    pipeline = await Pipeline.open(holdout=holdout)
    for batch in batches:
        await pipeline.deliver(batch)
    return await pipeline.outcome()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(events=histories(), data=st.data())
async def test_any_arrival_order_and_batches_give_the_event_time_order_outcome(
    events: list[Raw], data: st.DataObject
) -> None:
    in_order = sorted(events, key=lambda r: (r.at, r.topic != CLOCK))
    expected = await run([[r] for r in in_order])
    arrival = data.draw(st.permutations(events), label="arrival order")
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(arrival) - 1)), max_size=5)))
    batches = [arrival[a:b] for a, b in zip([0, *cuts], [*cuts, len(arrival)], strict=True)]
    assert await run(batches) == expected


async def test_a_known_history_gives_the_same_offers_in_reverse() -> None:
    events = [
        customer_event(
            0,
            0,
            "signup",
            card_number=CARD_A,
            email="a@example.com",
            birth_date="1990-03-05",
            marketing_consent=True,
        ),
        customer_event(1, 1.5, "consent", card_number=CARD_A, marketing_consent=False),
        customer_event(2, 2.5, "consent", card_number=CARD_A, marketing_consent=True),
        customer_event(3, 0.5, "link_card", card_number=CARD_A, other_card_number=CARD_B),
        checkout(0, 1, CARD_A, ["MILK"]),
        checkout(1, 2, CARD_B, ["MILK"]),
        checkout(2, 3, CARD_A, ["MILK", "EGGS"]),
        checkout(3, 4, CARD_B, ["MILK", "EGGS"]),
        checkout(4, 5, CARD_A, ["EGGS"]),
        clock(3),
        clock(5),
    ]
    in_order = sorted(events, key=lambda r: (r.at, r.topic != CLOCK))
    forward = await run([[r] for r in in_order], holdout=False)
    backward = await run([[r] for r in reversed(in_order)], holdout=False)
    assert backward == forward
    profiles_, offers_, decisions = forward
    [profile] = profiles_
    assert profile["visits"] == 5
    assert Decimal(profile["total_spend"]) == Decimal("14.00")
    outcomes = {key: outcome for (_, key), (outcome, *_) in decisions.items()}
    # MILK a third time on day 3 (card B's checkout counts: it is linked), consent back since
    # day 2.5; again on day 4 but in its cooldown; EGGS a third time on day 5; the birthday.
    assert outcomes == {
        "birthday|2026": "issued",
        "frequent_item|MILK|chk-2": "issued",
        "frequent_item|MILK|chk-3": "suppressed",
        "frequent_item|EGGS|chk-4": "issued",
    }
    assert len(offers_) == 3
