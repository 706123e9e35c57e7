"""The profiles service, declared: it folds `crm.events` into profiles, `crm.offers` into
each customer's coupons and the bounces on `crm.deliveries` into reachability, evaluates
segments on every profile change and on each `crm.clock` day (their definitions read whole from
`crm.segment-definitions` by every instance), publishes profile changes, contacts and segment
entries and exits, then saves; it serves the call-centre look-up and marketing's segments
API."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Callable, Sequence
from zoneinfo import ZoneInfo

from fastapi import APIRouter
from pydantic import ValidationError

from services.profiles.api import AuditSource, lookup_routes
from services.profiles.journey_api import journey_routes
from services.profiles.segments_api import segment_routes
from services.profiles.service import PAGE_SIZE, ProfilesService
from services.profiles.settings import ProfilesSettings
from services.profiles.store import ProfilesRepository, open_repository
from shared.campaigns import SegmentDefined
from shared.edge import foreign, json_decoder
from shared.events import (
    CONSUMER_EXTRA,
    NORMALIZED_EVENT,
    OFFER_EVENT,
    ClockTicked,
    DeliveryRecorded,
)
from shared.global_table import GlobalTable
from shared.keys import CARD_KEY
from shared.settings import Settings
from shared.skeleton import ServiceApp, ServiceSpec
from shared.topics import (
    CLOCK,
    CONTACTS,
    DEADLETTER,
    DELIVERIES,
    EVENTS,
    GROUP_PROFILES,
    OFFERS,
    PROFILES_CHANGED,
    SEGMENT_DEFINITIONS,
    SEGMENTS,
)
from shared.vault import KeyReader, sealed_decoder, vault_for, with_vault


def build(settings: Settings, repository: ProfilesRepository) -> ProfilesService:
    return ProfilesService(
        repository,
        options=ProfilesSettings().fold_options(),
        zone=ZoneInfo(settings.calendar.timezone),
        vault=vault_for(settings.store),
    )


def _decode_definition(_: bytes | None, value: bytes | None) -> SegmentDefined | None:
    if value is None:
        return None
    try:
        return SegmentDefined.model_validate_json(value, extra=CONSUMER_EXTRA)
    except ValidationError:
        return None


@contextlib.asynccontextmanager
async def definitions_table(app: ServiceApp[ProfilesService]) -> AsyncIterator[None]:
    """`crm.segment-definitions` read whole (every instance evaluates every segment) and
    followed; batches wait until it is read up to where it was at start."""
    service = app.service

    async def apply(records: Sequence[SegmentDefined]) -> None:
        await service.apply_definitions(records)

    table = GlobalTable(
        app.settings.kafka,
        SEGMENT_DEFINITIONS,
        decode=_decode_definition,
        apply=apply,
        name="segment-definitions",
    )
    # Set before this coroutine first waits: the background starts right after the broker,
    # before its consumer can have joined the group and fetched a batch.
    service.definitions_ready = table.ready
    async with table.running():
        yield


def routes(app: ServiceApp[ProfilesService]) -> APIRouter:
    """The call-centre look-up and marketing's segments, on one audit log."""
    audit = AuditSource(app.settings.store)
    router = lookup_routes(app, audit)
    router.include_router(journey_routes(app, audit))
    router.include_router(segment_routes(app, audit))
    return router


SPEC: ServiceSpec[ProfilesRepository, ProfilesService] = ServiceSpec(
    name="profiles",
    group=GROUP_PROFILES,
    decoders={
        EVENTS: sealed_decoder(NORMALIZED_EVENT),
        OFFERS: foreign(json_decoder(OFFER_EVENT)),
        CLOCK: foreign(json_decoder(ClockTicked)),
        DELIVERIES: foreign(json_decoder(DeliveryRecorded)),
    },
    open_store=with_vault(lambda settings: open_repository(settings.store)),
    build=build,
    order="publish_then_save",
    routes=routes,
    background=definitions_table,
    secrets=(CARD_KEY,),  # the look-up API hashes the card number it is given
    # crm.events: the agents' notes (the journey API), folded like every customer event.
    writes=(PROFILES_CHANGED, CONTACTS, SEGMENTS, SEGMENT_DEFINITIONS, EVENTS, DEADLETTER),
    tables=(SEGMENT_DEFINITIONS,),
)


def create_app(
    settings: Settings | None = None,
    *,
    repository: ProfilesRepository | None = None,
    profile_settings: ProfilesSettings | None = None,
    clock: Callable[[], dt.datetime] | None = None,
    page_size: int = PAGE_SIZE,
    vault: KeyReader | None = None,
) -> ServiceApp[ProfilesService]:
    """The profiles service; a passed repository is used as is (and not closed). Without the
    background that reads `crm.segment-definitions`: tests hand definitions to
    `service.apply_definitions`."""
    settings = settings or Settings()
    options = (profile_settings or ProfilesSettings()).fold_options()
    zone = ZoneInfo(settings.calendar.timezone)

    def make(_settings: Settings, repo: ProfilesRepository) -> ProfilesService:
        keys = vault or vault_for(_settings.store)
        if clock is None:
            return ProfilesService(
                repo, options=options, zone=zone, page_size=page_size, vault=keys
            )
        return ProfilesService(
            repo, options=options, zone=zone, clock=clock, page_size=page_size, vault=keys
        )

    return ServiceApp(
        dataclasses.replace(SPEC, background=None), settings, repository=repository, build=make
    )
