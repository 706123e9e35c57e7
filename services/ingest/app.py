"""The ingest service, declared: it reads the three raw topics, publishes normalized,
pseudonymized events on `crm.events` (and the wrapped data keys that seal them on
`crm.data-keys`), then records the event ids and card links it saw."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator

from fastapi import APIRouter

from services.ingest.domain import RawEvent, decode
from services.ingest.service import IngestService
from services.ingest.settings import IngestSettings
from services.ingest.store import IngestRepository, customer_export, open_repository
from shared.edge import Source
from shared.export import export_routes
from shared.keys import CARD_KEY, KEY_WRAPPING_KEY
from shared.settings import Settings
from shared.skeleton import ServiceApp, ServiceSpec
from shared.topics import DATA_KEYS, DEADLETTER, EVENTS, GROUP_INGEST, RAW_TOPICS
from shared.vault import KeyVault, vault_for, with_vault
from shared.vault_recovery import KeyWrapper


def decode_raw(source: Source) -> RawEvent:
    """A raw record as its tolerant wire model, by its topic (`Rejected` with the reason)."""
    return decode(source.topic, source.value)


@contextlib.asynccontextmanager
async def open_pruned(
    settings: Settings, ingest: IngestSettings | None = None
) -> AsyncIterator[IngestRepository]:
    """The store, rid of event ids older than the dedup window before the first batch."""
    days = (ingest or IngestSettings()).dedup_days
    async with open_repository(settings.store, dedup_days=days) as repository:
        await repository.forget_before(dt.datetime.now(dt.UTC) - dt.timedelta(days=days))
        yield repository


def build(
    settings: Settings, repository: IngestRepository, vault: KeyVault | None = None
) -> IngestService:
    return IngestService(
        repository,
        card_key=settings.privacy.card_key.get_secret_value().encode(),
        calendar=settings.calendar,
        vault=vault or vault_for(settings.store),
        wrapper=KeyWrapper.of(settings),
    )


async def export(service: IngestService, customer_id: str) -> dict[str, object]:
    """Right of access: the card ids ingest links to the customer."""
    return await customer_export(service.repository, customer_id)


def routes(app: ServiceApp[IngestService]) -> APIRouter:
    """The admin's export of what ingest keeps of a customer (its only API route)."""
    return export_routes(app, export)


SPEC: ServiceSpec[IngestRepository, IngestService] = ServiceSpec(
    name="ingest",
    group=GROUP_INGEST,
    decoders={topic: decode_raw for topic in RAW_TOPICS},
    open_store=with_vault(open_pruned),
    build=build,
    order="publish_then_save",
    routes=routes,
    secrets=(CARD_KEY, KEY_WRAPPING_KEY),
    writes=(EVENTS, DATA_KEYS, DEADLETTER),
    # Read whole, outside the group, by a restore run with ingest's identity (the vault's one
    # writer, the wrapping key's one holder): `shared.vault_recovery.recover_keys`.
    tables=(DATA_KEYS,),
)


def create_app(
    settings: Settings | None = None,
    *,
    repository: IngestRepository | None = None,
    ingest_settings: IngestSettings | None = None,
    vault: KeyVault | None = None,
) -> ServiceApp[IngestService]:
    """The ingest service; a passed repository is used as is (not pruned, not closed), and so
    is a passed key vault (tests share one between services)."""
    spec = SPEC
    if ingest_settings is not None:
        own = ingest_settings
        spec = dataclasses.replace(SPEC, open_store=with_vault(lambda s: open_pruned(s, own)))
    return ServiceApp(spec, settings, repository=repository, build=lambda s, r: build(s, r, vault))
