"""The offers service layer: decode a Kafka batch, run the engine, persist, return what to publish."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from typing import Any, TypeVar

from aiokafka import ConsumerRecord
from pydantic import ValidationError

from services.offers.domain import OfferEngine, Outcome, normalize_code
from services.offers.store import OffersRepository
from shared.events import ClockTicked, ProfileChanged
from shared.kafka import Outgoing, dead_letter, dead_letter_message, dump
from shared.logging import get_logger
from shared.topics import CLOCK, OFFERS, PROFILES_CHANGED

log = get_logger(__name__)

M = TypeVar("M", ProfileChanged, ClockTicked)

SERVICE = "offers"


class RepositoryNotOpen(RuntimeError):
    """A batch arrived before the repository was opened."""


class OffersService:
    """Processes batches of `crm.profiles.changed` and `crm.clock` records.

    `stats` counts what it did: `profiles_applied`, `clock_days`, `issued_<kind>`, `redeemed`,
    `rejected_<reason>`, `expired`, `republished` (replays), `suppressed_<reason>`
    (consent, no_email, erased, cooldown, cap) and `dead_letter_<reason>`.
    """

    def __init__(
        self,
        *,
        engine: OfferEngine,
        repository: OffersRepository | None = None,
        page_size: int = 1000,
    ) -> None:
        self.engine = engine
        self.repository = repository
        self.page_size = page_size
        self.stats: Counter[str] = Counter()

    @property
    def _repo(self) -> OffersRepository:
        if self.repository is None:
            raise RepositoryNotOpen("the offers repository is not open")
        return self.repository

    async def handle(self, records: Sequence[ConsumerRecord[Any, Any]]) -> list[Outgoing]:
        """One Kafka batch: profile changes first (one read, one write), then clock days in order.

        The two topics have no order between them, so grouping them is free.
        """
        outgoing: list[Outgoing] = []
        profiles: list[ProfileChanged] = []
        days: list[dt.date] = []
        for record in records:
            if record.topic == PROFILES_CHANGED:
                profile = self._decode(record, ProfileChanged, outgoing)
                if profile is not None:
                    profiles.append(profile)
            elif record.topic == CLOCK:
                tick = self._decode(record, ClockTicked, outgoing)
                if tick is not None:
                    days.append(tick.date)
            else:
                self._dead_letter(
                    record, "unexpected_topic", f"offers does not read {record.topic}", outgoing
                )
        if profiles:
            outgoing += await self.on_profiles(profiles)
        for day in days:
            outgoing += await self.on_day(day)
        log.debug(
            "batch_processed",
            records=len(records),
            profiles=len(profiles),
            days=[day.isoformat() for day in days],
            published=len(outgoing),
        )
        return outgoing

    async def on_profiles(self, profiles: Sequence[ProfileChanged]) -> list[Outgoing]:
        codes = {
            code
            for profile in profiles
            if profile.purchase is not None
            for code in self._codes(profile)
        }
        snapshot = await self._repo.load({p.customer_id for p in profiles}, codes)
        outcome = self.engine.on_profiles(profiles, snapshot)
        await self._repo.apply(outcome.changes)
        return self._publish(outcome)

    async def on_day(self, day: dt.date) -> list[Outgoing]:
        """A clock day: expire what ran out, then each calendar rule over its indexed customers.

        Pages are persisted one by one; a crash mid-day replays the day, which republishes what
        was persisted and carries on.
        """
        repo = self._repo
        outgoing: list[Outgoing] = []
        after: str | None = None
        while True:
            offers = await repo.offers_to_expire(day, after=after, limit=self.page_size)
            if not offers:
                break
            outcome = self.engine.expire(day, offers)
            await repo.apply(outcome.changes)
            outgoing += self._publish(outcome)
            if len(offers) < self.page_size:
                break
            after = offers[-1].offer_id
        for query in self.engine.day_queries(day):
            after = None
            while True:
                snapshot = await repo.customers_for_day(query, after=after, limit=self.page_size)
                if not snapshot.customers:
                    break
                outcome = self.engine.on_day(day, query, snapshot)
                await repo.apply(outcome.changes)
                outgoing += self._publish(outcome)
                if len(snapshot.customers) < self.page_size:
                    break
                after = max(snapshot.customers)
        self.stats["clock_days"] += 1
        log.info("clock_day_processed", day=day.isoformat(), messages=len(outgoing))
        return outgoing

    def _codes(self, profile: ProfileChanged) -> list[str]:
        purchase = profile.purchase
        return [normalize_code(c) for c in purchase.coupons] if purchase else []

    def _publish(self, outcome: Outcome) -> list[Outgoing]:
        self.stats.update(outcome.stats)
        return [(OFFERS, event.customer_id.encode(), dump(event)) for event in outcome.events]

    def _decode(
        self, record: ConsumerRecord[Any, Any], model: type[M], outgoing: list[Outgoing]
    ) -> M | None:
        value = record.value
        if not isinstance(value, bytes) or not value:
            self._dead_letter(record, "empty_message", "the message has no value", outgoing)
            return None
        try:
            return model.model_validate_json(value)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            reason = (
                "invalid_json"
                if errors and errors[0]["type"] == "json_invalid"
                else "invalid_event"
            )
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(message)'}: {e['msg']}"
                for e in errors[:5]
            )
            self._dead_letter(record, reason, detail, outgoing)
            return None

    def _dead_letter(
        self, record: ConsumerRecord[Any, Any], reason: str, detail: str, outgoing: list[Outgoing]
    ) -> None:
        log.warning(
            "dead_lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=reason,
        )
        self.stats[f"dead_letter_{reason}"] += 1
        letter = dead_letter(service=SERVICE, record=record, reason=reason, detail=detail)
        outgoing.append(dead_letter_message(letter))
