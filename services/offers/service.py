"""The offers service layer: profile changes, clock days and delivery outcomes in; offer events out.

Per batch: fold each profile change into its customer's ledger (a card link moves the alias's
facts into the customer it now feeds), widen the completed calendar days by the ticks (a missed
day is completed with a later one; a day more than one day ahead is refused), find the
customers the new days concern, and take every touched customer's decisions again from the
earliest event time its new facts touch. What changed is published first and saved after
(`publish_then_save`): a crash in between re-reads the batch, takes the same decisions and
publishes the same events again, which every consumer drops.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from services.offers.campaigns import CampaignBook
from services.offers.domain import OfferRecord, birthday_month_days
from services.offers.engine import Days, OfferDecider, Recomputed, codes_listed
from services.offers.erasure import unlinked
from services.offers.ledger import Ledger, fold, fold_segment, merge_into
from services.offers.store import Changes, Erasure, LedgerRow, OffersRepository, Spend
from shared.campaigns import Budget, CampaignChanged, SegmentMembershipChanged
from shared.edge import Outgoing, Received, dump
from shared.erasure import unlinked_token
from shared.errors import Rejected
from shared.events import (
    CONSUMER_EXTRA,
    OFFER_EVENT,
    ClockTicked,
    DeliveryRecorded,
    OfferIssued,
    OfferRedeemed,
    OfferRevoked,
    ProfileChanged,
)
from shared.logging import get_logger
from shared.skeleton import Handled
from shared.topics import OFFERS

log = get_logger(__name__)

MAX_ALIAS_DEPTH = 8
"""Levels of aliases followed (a merged customer merged again, ...)."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(slots=True)
class _Batch:
    """The ledgers a batch touches, and from when on each customer's decisions are taken again."""

    ledgers: dict[str, Ledger] = field(default_factory=dict)
    since: dict[str, dt.datetime] = field(default_factory=dict)
    arrival: dict[str, dt.datetime] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)

    def touch(self, customer_id: str, since: dt.datetime | None, arrival: dt.datetime) -> None:
        self.dirty.add(customer_id)
        if since is not None:
            self.since[customer_id] = min(since, self.since.get(customer_id, since))
        self.arrival[customer_id] = max(arrival, self.arrival.get(customer_id, arrival))


class OffersService:
    """Folds profile changes and clock days into ledgers, decisions and offer events.

    `stats`: `profiles_applied`, `duplicates`, `clock_days`, `issued_<kind>`, `held_out_<kind>`,
    `suppressed_<reason>`, `revoked`, `redeemed`, `rejected_<reason>`, `expired`,
    `deliveries_recorded`, `segment_changes`, `campaign_changes`, `budget_refusals`,
    `erased`, `erased_ignored`; the edge adds `dead_lettered_<reason>`.

    `campaigns_ready`: set once the campaigns saved before start-up are read (the running
    service waits for it before deciding anything; tests without the topic pass none).
    """

    def __init__(
        self,
        *,
        decider: OfferDecider,
        repository: OffersRepository,
        page_size: int = 1000,
        clock: Callable[[], dt.datetime] = _utcnow,
        campaigns_ready: asyncio.Event | None = None,
    ) -> None:
        self.decider = decider
        self.repository = repository
        self.page_size = page_size
        self.clock = clock
        self.campaigns_ready = campaigns_ready
        self.stats: Counter[str] = Counter()
        self._changed_since: dt.datetime | None = None
        self._reindex = False

    @property
    def book(self) -> CampaignBook:
        return self.decider.book

    async def apply_campaigns(self, records: Sequence[CampaignChanged]) -> None:
        """Take campaign records in (from `crm.campaigns`, or the API of this instance): keep
        them, and have the next batch take again the decisions of the customers whose
        triggers came after the change (a campaign created at 10:00 applies to a checkout of
        10:00:01 whichever arrived first)."""
        for record in records:
            inactive_before = self._inactive_terms()
            since = self.book.apply(record)
            await self.repository.save_campaign(self.book.campaigns[record.campaign_id])
            if since is None:
                continue
            self.stats["campaign_changes"] += 1
            if since > dt.datetime(1970, 1, 1, tzinfo=dt.UTC):
                self._changed_since = min(since, self._changed_since or since)
            if self._inactive_terms() != inactive_before:
                self._reindex = True
            log.info(
                "campaign_applied", campaign_id=record.campaign_id, changes=len(record.history)
            )

    def _inactive_terms(self) -> list[object]:
        return [
            (c.campaign_id, spec.trigger)
            for c in self.book.ordered()
            for spec in c.versions
            if spec.trigger.type == "inactive"
        ]

    async def handle(
        self,
        batch: Sequence[
            Received[ProfileChanged | ClockTicked | DeliveryRecorded | SegmentMembershipChanged]
        ],
    ) -> Handled:
        if self.campaigns_ready is not None:
            await self.campaigns_ready.wait()
        batch_state = _Batch()
        rejected: list[tuple[Received[object], Rejected]] = []
        changes = [r for r in batch if isinstance(r.event, ProfileChanged)]
        ticks = [r for r in batch if isinstance(r.event, ClockTicked)]
        segments = [r for r in batch if isinstance(r.event, SegmentMembershipChanged)]
        deliveries = {
            r.event.offer_id: (r.event.state, r.event.message_id)
            for r in batch
            if isinstance(r.event, DeliveryRecorded)
        }
        repo = self.repository

        # The calendar: the range of completed days grows with each tick it takes in.
        before = await repo.days()
        days = before
        today = self.clock().astimezone(self.decider._zone).date()
        for item in sorted(ticks, key=lambda r: r.event.date):  # type: ignore[union-attr]
            tick = item.event
            assert isinstance(tick, ClockTicked)
            if tick.date > today + dt.timedelta(days=1):
                rejected.append(
                    (
                        item,
                        Rejected("future_day", f"{tick.date} is more than a day ahead of {today}"),
                    )
                )
                continue
            days = days.with_day(tick.date)
        added = before.added(days)

        # Profile changes, folded into their customers' ledgers.
        await self._load(batch_state, {r.event.customer_id for r in changes})  # type: ignore[union-attr]
        await self._load(
            batch_state,
            {r.event.merged_into for r in changes if r.event.merged_into},  # type: ignore[union-attr]
        )
        for item in changes:
            self._fold(batch_state, item)

        # Segment entries and exits (a segment_entered campaign's triggers, audiences).
        await self._load(batch_state, {r.event.customer_id for r in segments})  # type: ignore[union-attr]
        gone = await self._erased_without_ledger(batch_state, segments)
        for item in segments:
            entry = item.event
            assert isinstance(entry, SegmentMembershipChanged)
            if entry.customer_id in gone:
                self.stats["erased_ignored"] += 1
                continue
            target_id = self._resolve(batch_state, entry.customer_id)
            since = fold_segment(batch_state.ledgers[target_id], entry)
            if since is None:
                self.stats["duplicates"] += 1
                continue
            batch_state.touch(target_id, since, item.source.arrived_at)
            self.stats["segment_changes"] += 1

        # A campaign changed at a time: the customers whose triggers came after it.
        if self._changed_since is not None:
            moment, self._changed_since = self._changed_since, None
            arrival = max((r.source.arrived_at for r in batch), default=self.clock())
            last: str | None = None
            while True:
                page = await repo.customers_since(moment, after=last, limit=self.page_size)
                await self._load(batch_state, set(page))
                for customer_id in page:
                    batch_state.touch(self._resolve(batch_state, customer_id), moment, arrival)
                if len(page) < self.page_size:
                    break
                last = page[-1]
        if self._reindex:
            self._reindex = False
            await self._reindex_dues(days)

        # Customers the newly completed days concern.
        for day in added:
            arrival = max((r.source.arrived_at for r in ticks), default=self.clock())
            start = self.decider.day_start(day)
            after: str | None = None
            while True:
                page = await repo.candidates(
                    day, birthday_month_days(day), after=after, limit=self.page_size
                )
                await self._load(batch_state, set(page))
                for customer_id in page:
                    batch_state.touch(self._resolve(batch_state, customer_id), start, arrival)
                if len(page) < self.page_size:
                    break
                after = page[-1]
            self.stats["clock_days"] += 1
            log.info("clock_day_completed", day=day.isoformat())

        await self._refresh_spent()
        outgoing, store = await self._recompute(batch_state, days)
        store.days = days if added else None
        store.released = {
            code
            for item in changes
            if (purchase := item.event.purchase) is not None  # type: ignore[union-attr]
            for code in purchase.coupons
        }

        async def save() -> None:
            await repo.save(store)
            if deliveries:
                await repo.record_deliveries(deliveries)
                self.stats["deliveries_recorded"] += len(deliveries)

        return Handled(
            outgoing=outgoing, rejected=[(r.source, why) for r, why in rejected], save=save
        )

    # ------------------------------------------------------------ ledgers

    async def _load(self, batch: _Batch, customer_ids: set[str]) -> None:
        """Load the ledgers not loaded yet, following aliases to the customers they feed."""
        wanted = {c for c in customer_ids if c not in batch.ledgers}
        for _ in range(MAX_ALIAS_DEPTH):
            if not wanted:
                return
            found = await self.repository.ledgers(wanted)
            for customer_id in wanted:
                batch.ledgers[customer_id] = found.get(customer_id) or Ledger(
                    customer_id=customer_id
                )
            wanted = {
                ledger.merged_into
                for ledger in found.values()
                if ledger.merged_into is not None and ledger.merged_into not in batch.ledgers
            }

    async def _erased_without_ledger(
        self, batch: _Batch, segments: Sequence[Received[object]]
    ) -> set[str]:
        """The customers of these segment changes that were erased and have no ledger since
        (no sign-up again): profiles publishes their segment exits with the erasure, and
        those must not build a ledger, keyed by the customer id, again."""
        fresh = set()
        for item in segments:
            assert isinstance(item.event, SegmentMembershipChanged)
            ledger = batch.ledgers.get(item.event.customer_id)
            if ledger is not None and ledger.version == 0 and not ledger.seen:
                fresh.add(ledger.customer_id)
        return await self.repository.erased(fresh) if fresh else set()

    def _resolve(self, batch: _Batch, customer_id: str) -> str:
        """The customer whose ledger receives facts addressed to `customer_id`."""
        seen = {customer_id}
        ledger = batch.ledgers.get(customer_id)
        while (
            ledger is not None and ledger.merged_into is not None and ledger.merged_into not in seen
        ):
            customer_id = ledger.merged_into
            seen.add(customer_id)
            ledger = batch.ledgers.get(customer_id)
        return customer_id

    def _fold(self, batch: _Batch, item: Received[object]) -> None:
        change = item.event
        assert isinstance(change, ProfileChanged)
        arrival = item.source.arrived_at
        settled = arrival - self.decider.lateness
        own = batch.ledgers[change.customer_id]
        if change.merged_into is not None:
            # The alias: its own facts stop counting for it (its decisions are taken again,
            # to none), and they move into the customer it now feeds.
            since = fold(own, change, arrived_at=arrival, settled=settled)
            if since is None:
                self.stats["duplicates"] += 1
                return
            batch.touch(own.customer_id, since, arrival)
            target_id = self._resolve(batch, change.merged_into)
            target = batch.ledgers[target_id]
            moved = merge_into(target, own, settled=settled)
            batch.touch(target_id, moved, arrival)
            self.stats["profiles_applied"] += 1
            return
        target_id = self._resolve(batch, change.customer_id)
        since = fold(batch.ledgers[target_id], change, arrived_at=arrival, settled=settled)
        if since is None:
            self.stats["duplicates"] += 1
            return
        batch.touch(target_id, since, arrival)
        self.stats["profiles_applied"] += 1

    # ------------------------------------------------------------ decisions

    async def _recompute(self, batch: _Batch, days: Days) -> tuple[list[Outgoing], Changes]:
        decider = self.decider
        touched = sorted(batch.dirty)
        owners_of_aliases = {alias for cid in touched for alias in batch.ledgers[cid].aliases}
        offers = await self.repository.offers_of_customers({*touched, *owners_of_aliases})
        codes = {
            code
            for cid in touched
            if cid in batch.since
            for code in codes_listed(batch.ledgers[cid], batch.since[cid])
        }
        # Whose code a checkout lists, when it is not the customer's own (a foreign code).
        owners = {o.coupon_code: o.customer_id for o in offers.values()}
        owners |= await self.repository.owners(codes - set(owners))
        outgoing: list[Outgoing] = []
        store = Changes()
        budgeted = {
            cid
            for cid, campaign in self.book.campaigns.items()
            if campaign.spec.budget != _NO_BUDGET
        }
        for customer_id in touched:
            ledger = batch.ledgers[customer_id]
            if customer_id in batch.since:
                mine = {customer_id, *ledger.aliases}
                before = ledger.model_copy(deep=True) if budgeted else None

                def run(on: Ledger, refused: frozenset[str] = frozenset()) -> Recomputed:
                    return decider.recompute(
                        on,
                        since=batch.since[customer_id],  # noqa: B023 - used at once
                        days=days,
                        arrival=batch.arrival[customer_id],  # noqa: B023 - used at once
                        offers={k: o for k, o in offers.items() if o.customer_id in mine},  # noqa: B023
                        owners=owners,
                        refused=refused,
                    )

                result = run(ledger)
                refused = await self._charge(result, budgeted) if budgeted else frozenset()
                if refused and before is not None:
                    # The budget refused a redemption: take the decisions again without it.
                    ledger = batch.ledgers[customer_id] = before
                    result = run(ledger, refused)
                    self.stats["budget_refusals"] += len(refused)
                self.stats.update(result.stats)
                store.offers.extend(result.offers.values())
                for offer in result.offers.values():
                    offers[offer.offer_id] = offer
                outgoing.extend(
                    (OFFERS, event.customer_id.encode(), dump(event)) for event in result.events
                )
            if ledger.erased_now() and not ledger.is_alias():
                # Its open coupons are revoked above; what stays is unlinked from the card.
                store.erasures.append(self._erasure(ledger, offers))
                continue
            ledger.version += 1
            born = ledger.birth_date
            store.ledgers.append(
                LedgerRow(
                    ledger=ledger,
                    birth_md=f"{born.month:02d}-{born.day:02d}" if born else None,
                    anniversary_date=None
                    if ledger.is_alias()
                    else decider.anniversary_date(ledger),
                    win_back_due=decider.win_back_due(ledger, days),
                    last_fact_at=_last_fact(ledger),
                )
            )
        return outgoing, store

    def _erasure(self, ledger: Ledger, offers: Mapping[str, OfferRecord]) -> Erasure:
        """What an erased customer's ledger and offers (and its merged cards') become."""
        mine = {ledger.customer_id, *ledger.aliases}
        theirs = {k: o for k, o in offers.items() if o.customer_id in mine}
        token = unlinked_token()
        kept, decisions, new_ids = unlinked(ledger, theirs, token)
        self.stats["erased"] += 1
        log.info("customer_erased", offers_unlinked=len(kept))
        return Erasure(
            customer_id=ledger.customer_id,
            version=ledger.version,
            aliases=tuple(ledger.aliases),
            codes=tuple(sorted(o.coupon_code for o in theirs.values())),
            offers=tuple(kept),
            ledger=decisions,
            offer_ids=new_ids,
            token=token,
        )

    # ------------------------------------------------------------ campaigns and budgets

    async def _refresh_spent(self) -> None:
        """Which campaigns have used up a campaign-wide budget: they issue nothing new."""
        limited = {
            cid: c.spec.budget
            for cid, c in self.book.campaigns.items()
            if c.spec.budget.max_redemptions is not None or c.spec.budget.max_discount is not None
        }
        if not limited:
            self.book.spent = set()
            return
        usage = await self.repository.budget_usage()
        spent = set()
        for cid, budget in limited.items():
            count, money = usage.get(cid, (0, Decimal(0)))
            if (budget.max_redemptions is not None and count >= budget.max_redemptions) or (
                budget.max_discount is not None and money >= budget.max_discount
            ):
                spent.add(cid)
        self.book.spent = spent

    async def _charge(self, result: Recomputed, budgeted: set[str]) -> frozenset[str]:
        """Charge each new redemption of a campaign with a budget; the ones it refuses."""
        refused: set[str] = set()
        for event in result.events:
            if not isinstance(event, OfferRedeemed):
                continue
            record = result.offers.get(event.offer_id)
            campaign_id = record.issued.campaign_id if record is not None else None
            if campaign_id is None or campaign_id not in budgeted:
                continue
            spend = Spend(
                campaign_id=campaign_id,
                offer_id=event.offer_id,
                customer_id=event.customer_id,
                store_id=event.store_id,
                day=self.decider.store_day(event.redeemed_at, event.store_id),
                discount=event.discount,
            )
            budget = self.book.campaigns[campaign_id].spec.budget
            if not await self.repository.spend(spend, budget):
                refused.add(f"{event.checkout_event_id}|{event.coupon_code}")
        return frozenset(refused)

    async def _reindex_dues(self, days: Days) -> None:
        """The inactivity triggers changed: when each customer may next be due one."""
        after: str | None = None
        while True:
            page = await self.repository.ledger_page(after=after, limit=self.page_size)
            await self.repository.set_win_back_due(
                {ledger.customer_id: self.decider.win_back_due(ledger, days) for ledger in page}
            )
            if len(page) < self.page_size:
                return
            after = page[-1].customer_id

    # ------------------------------------------------------------ after a replay

    async def keep_published(self, published: Sequence[bytes]) -> Handled:
        """After a rebuild from the topics: keep the offers published before that the rebuild
        did not derive again, as revoked.

        Such an offer was issued on the way and revoked by a correction (an event that arrived
        within the lateness): the rebuild read the topics in another interleaving and never
        issued it. Its code must still answer `revoked` at the till, not `unknown_code`, and
        its `offer_revoked` (on the topic, or published now if it is not) tells every consumer.
        """
        issued: dict[str, OfferIssued] = {}
        revoked: dict[str, OfferRevoked] = {}
        for payload in published:
            try:
                event = OFFER_EVENT.validate_json(payload, extra=CONSUMER_EXTRA)
            except ValueError:
                continue  # not an offer event of this version: not the rebuild's concern
            if isinstance(event, OfferIssued):
                issued[event.offer_id] = event
            elif isinstance(event, OfferRevoked):
                revoked[event.offer_id] = event
        # An erased customer's offers were unlinked: the rebuild brings none of them back.
        gone = await self.repository.erased({e.customer_id for e in issued.values()})
        issued = {k: e for k, e in issued.items() if e.customer_id not in gone}
        customers = {e.customer_id for e in issued.values()}
        stored = await self.repository.offers_of_customers(customers)
        ledgers = await self.repository.ledgers(customers)
        kept: list[OfferRecord] = []
        outgoing: list[Outgoing] = []
        for offer_id in sorted(set(issued) - set(stored)):
            event = issued[offer_id]
            ledger = ledgers.get(event.customer_id)
            decision = ledger.decision_of(offer_id) if ledger is not None else None
            revocation = revoked.get(offer_id)
            if revocation is None:
                revocation = OfferRevoked(
                    offer_id=offer_id,
                    customer_id=event.customer_id,
                    kind=event.kind,
                    coupon_code=event.coupon_code,
                    reason=(decision.reason if decision is not None else None)
                    or ("erased" if ledger is not None and ledger.erased_now() else "not_eligible"),
                    revoked_at=event.issued_at,
                )
                outgoing.append((OFFERS, event.customer_id.encode(), dump(revocation)))
            kept.append(
                OfferRecord(
                    issued=event,
                    rule_key=decision.key.split("|")[1] if decision is not None else "once",
                    state="revoked",
                    revocation=revocation,
                )
            )
        self.stats["kept_revoked"] += len(kept)
        log.info("published_offers_kept", revoked=len(kept), revocations_published=len(outgoing))

        async def save() -> None:
            if kept:
                await self.repository.save(Changes(offers=kept))

        return Handled(outgoing=outgoing, rejected=[], save=save)


_NO_BUDGET = Budget()


def _last_fact(ledger: Ledger) -> dt.datetime | None:
    """Event time of the ledger's latest checkout or segment entry."""
    times = [p.at for p in ledger.purchases[-1:]] + [p.at for p in ledger.segments if p.value]
    return max(times, default=None)


def offers_by_id(records: Sequence[OfferRecord]) -> dict[str, OfferRecord]:
    return {record.offer_id: record for record in records}
