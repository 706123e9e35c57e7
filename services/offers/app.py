"""The offers service, declared: it folds `crm.profiles.changed`, `crm.segments` and
`crm.clock` into each customer's ledger, takes the offer decisions again from the earliest time
new facts touch, with the campaigns of `crm.campaigns` (read whole by every instance),
publishes what changed on `crm.offers`, then saves; it serves the till, the agents' "why" of a
coupon and marketing's campaigns API, and keeps each offer's e-mail outcome from
`crm.deliveries`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from functools import partial

from fastapi import APIRouter
from pydantic import ValidationError

from services.offers.api import till_routes
from services.offers.campaigns import seeds
from services.offers.campaigns_api import campaign_routes
from services.offers.engine import OfferDecider
from services.offers.service import OffersService
from services.offers.settings import OfferRules, OffersSettings
from services.offers.store import OffersRepository, open_repository
from shared.campaigns import CampaignChanged, SegmentMembershipChanged
from shared.edge import Outgoing, dump, foreign, json_decoder
from shared.events import CONSUMER_EXTRA, ClockTicked, DeliveryRecorded, ProfileChanged
from shared.global_table import GlobalTable
from shared.keys import CARD_KEY, COUPON_KEY
from shared.logging import get_logger
from shared.metrics import observe_offers_published
from shared.settings import Settings
from shared.skeleton import AfterReplay, ServiceApp, ServiceSpec
from shared.topics import (
    CAMPAIGNS,
    CLOCK,
    DEADLETTER,
    DELIVERIES,
    GROUP_OFFERS,
    OFFERS,
    PROFILES_CHANGED,
    SEGMENTS,
)

log = get_logger(__name__)


def _service(
    settings: Settings,
    repository: OffersRepository,
    *,
    rules: OfferRules,
    offers_settings: OffersSettings,
    wait_for_campaigns: bool = False,
) -> OffersService:
    # The campaigns start as the built-in ones the rules describe, until `crm.campaigns`
    # says more.
    decider = OfferDecider(
        rules=rules,
        coupon_key=settings.privacy.coupon_key.get_secret_value().encode(),
        calendar=settings.calendar,
        lateness=offers_settings.allowed_lateness,
        global_control_percent=offers_settings.global_control_percent,
    )
    return OffersService(
        decider=decider,
        repository=repository,
        page_size=offers_settings.offers_page_size,
        campaigns_ready=asyncio.Event() if wait_for_campaigns else None,
    )


def build(settings: Settings, repository: OffersRepository) -> OffersService:
    """The service on an open store, its rules from `CRM_RULES_FILE` (or the defaults); it
    waits for the campaigns on `crm.campaigns` before deciding anything."""
    offers_settings = OffersSettings()
    return _service(
        settings,
        repository,
        rules=offers_settings.rules(),
        offers_settings=offers_settings,
        wait_for_campaigns=True,
    )


async def check(settings: Settings) -> None:
    """A rules file that does not describe valid rules refuses start-up, before the store opens."""
    OffersSettings().rules()


def _decode_campaign(_: bytes | None, value: bytes | None) -> CampaignChanged | None:
    if value is None:
        return None
    try:
        return CampaignChanged.model_validate_json(value, extra=CONSUMER_EXTRA)
    except ValidationError:
        return None


@contextlib.asynccontextmanager
async def campaigns_table(app: ServiceApp[OffersService]) -> AsyncIterator[None]:
    """`crm.campaigns` read whole (every instance needs every campaign); once read, the
    built-in campaigns the rules file describes are published where the topic lacks them or
    where the rules file changed since it last seeded them."""
    service = app.service
    seen: dict[str, CampaignChanged] = {}

    async def apply(records: Sequence[CampaignChanged]) -> None:
        for record in records:
            seen[record.campaign_id] = record
        await service.apply_campaigns(records)

    table = GlobalTable(
        app.settings.kafka, CAMPAIGNS, decode=_decode_campaign, apply=apply, name="campaigns"
    )
    if service.campaigns_ready is not None:
        table.ready = service.campaigns_ready

    async def seed() -> None:
        await table.ready.wait()
        records = seeds(seen, OffersSettings().rules(), dt.datetime.now(dt.UTC))
        if records:
            await service.apply_campaigns(records)
            await app.publish([(CAMPAIGNS, r.campaign_id.encode(), dump(r)) for r in records])
            log.info("campaigns_seeded", campaigns=len(records))

    async with table.running():
        task = asyncio.create_task(seed(), name="seed-campaigns")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def offers_published(outgoing: Sequence[Outgoing]) -> None:
    """Freshness of the offers a batch published: from their trigger's event time to now."""
    observe_offers_published(outgoing, dt.datetime.now(dt.UTC), topic=OFFERS)


def routes(app: ServiceApp[OffersService]) -> APIRouter:
    """The till's coupon API, the agents' decisions, marketing's campaigns."""
    router = till_routes(app)
    router.include_router(campaign_routes(app))
    return router


SPEC: ServiceSpec[OffersRepository, OffersService] = ServiceSpec(
    name="offers",
    group=GROUP_OFFERS,
    decoders={
        PROFILES_CHANGED: json_decoder(ProfileChanged),
        CLOCK: json_decoder(ClockTicked),
        DELIVERIES: foreign(json_decoder(DeliveryRecorded)),
        SEGMENTS: foreign(json_decoder(SegmentMembershipChanged)),
    },
    open_store=lambda settings: open_repository(settings.store),
    build=build,
    order="publish_then_save",
    routes=routes,
    check=check,
    background=campaigns_table,
    after_replay=AfterReplay(OFFERS, OffersService.keep_published),
    secrets=(CARD_KEY, COUPON_KEY),  # the till API hashes card numbers; coupon codes
    writes=(OFFERS, CAMPAIGNS, DEADLETTER),
    tables=(CAMPAIGNS,),
    published=offers_published,
)


def create_app(
    settings: Settings | None = None,
    *,
    repository: OffersRepository | None = None,
    rules: OfferRules | None = None,
    offers_settings: OffersSettings | None = None,
) -> ServiceApp[OffersService]:
    """The offers service; a passed repository is used as is (and not closed).

    Rules come from `rules`, else from `CRM_RULES_FILE`: an invalid file is refused here. The
    campaigns are the built-in ones (tests publish campaign records to the service directly).
    """
    offers_settings = offers_settings or OffersSettings()
    chosen = rules if rules is not None else offers_settings.rules()
    # The rules are checked above; the declaration's check would read `CRM_RULES_FILE` again,
    # which these rules may not come from.
    return ServiceApp(
        dataclasses.replace(SPEC, check=None, background=None),
        settings,
        repository=repository,
        build=partial(_service, rules=chosen, offers_settings=offers_settings),
    )
