"""The offers service layer: profile changes and clock days in, the offer events to publish out.

Profile changes of a batch are folded with one `load` and one `apply`; then each clock day runs,
in order, page by page. Every page is persisted inside `handle`, before anything is published
(the declaration's `save_then_publish`): a day's later pages and the next day read what the
earlier ones wrote, and an offer is never announced before it is stored.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence

from services.offers.domain import OfferEngine, Outcome, normalize_code
from services.offers.store import OffersRepository
from shared.edge import Outgoing, Received, dump
from shared.events import ClockTicked, ProfileChanged
from shared.logging import get_logger
from shared.skeleton import Handled
from shared.topics import OFFERS

log = get_logger(__name__)


class OffersService:
    """Processes batches of `crm.profiles.changed` and `crm.clock` events.

    `stats` counts what it did: `profiles_applied`, `clock_days`, `issued_<kind>`, `redeemed`,
    `rejected_<reason>`, `expired`, `republished` (replays), `held_out_<kind>`,
    `suppressed_<reason>` (consent, no_email, erased, cooldown, cap); the edge adds
    `dead_lettered_<reason>` for records that do not decode.
    """

    def __init__(
        self, *, engine: OfferEngine, repository: OffersRepository, page_size: int = 1000
    ) -> None:
        self.engine = engine
        self.repository = repository
        self.page_size = page_size
        self.stats: Counter[str] = Counter()

    async def handle(self, batch: Sequence[Received[ProfileChanged | ClockTicked]]) -> Handled:
        """One batch: profile changes first (one read, one write), then clock days in order.

        The two topics have no order between them, so grouping them is free. The state is
        written here (`save` stays the default no-op), before the skeleton publishes.
        """
        profiles = [r.event for r in batch if isinstance(r.event, ProfileChanged)]
        days = [r.event.date for r in batch if isinstance(r.event, ClockTicked)]
        outgoing: list[Outgoing] = []
        if profiles:
            outgoing += await self.on_profiles(profiles)
        for day in days:
            outgoing += await self.on_day(day)
        log.debug(
            "batch_processed",
            events=len(batch),
            profiles=len(profiles),
            days=[day.isoformat() for day in days],
            published=len(outgoing),
        )
        return Handled(outgoing=outgoing)

    async def on_profiles(self, profiles: Sequence[ProfileChanged]) -> list[Outgoing]:
        codes = {
            normalize_code(code)
            for profile in profiles
            if profile.purchase is not None
            for code in profile.purchase.coupons
        }
        snapshot = await self.repository.load({p.customer_id for p in profiles}, codes)
        outcome = self.engine.on_profiles(profiles, snapshot)
        await self.repository.apply(outcome.changes)
        return self._publish(outcome)

    async def on_day(self, day: dt.date) -> list[Outgoing]:
        """A clock day: expire what ran out, then each calendar rule over its indexed customers.

        Pages are persisted one by one; a crash mid-day replays the day, which republishes what
        was persisted and carries on.
        """
        repo = self.repository
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

    def _publish(self, outcome: Outcome) -> list[Outgoing]:
        self.stats.update(outcome.stats)
        return [(OFFERS, event.customer_id.encode(), dump(event)) for event in outcome.events]
