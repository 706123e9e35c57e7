"""Composition root of the profiles service: broker, repository, one batch handler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka import ConsumerRecord
from fastapi import APIRouter
from faststream import FastStream
from faststream.kafka.annotations import KafkaMessage

from services.profiles.service import ProfilesService
from services.profiles.settings import ProfilesSettings
from services.profiles.store import ProfilesRepository, open_repository
from shared.kafka import BatchGuard, batch_subscriber, new_broker, publish_all
from shared.logging import get_logger
from shared.settings import Settings
from shared.topics import EVENTS, GROUP_PROFILES

SERVICE_KEY = "profiles_service"
"""Where the app's `ProfilesService` sits in `app.context` (for metrics and tests)."""

log = get_logger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    repository: ProfilesRepository | None = None,
    profile_settings: ProfilesSettings | None = None,
) -> FastStream:
    """The profiles app; a passed repository is used as is (and not closed)."""
    settings = settings or Settings()
    profile_settings = profile_settings or ProfilesSettings()
    broker = new_broker(settings.kafka, client_id="crm-profiles")
    service = ProfilesService(repository, options=profile_settings.fold_options())
    app = FastStream(broker)
    app.context.set_global(SERVICE_KEY, service)
    owned: list[ProfilesRepository] = []
    guard = BatchGuard(broker, service="profiles")

    @batch_subscriber(broker, settings.kafka, GROUP_PROFILES, EVENTS)
    async def on_events(_: list[bytes], message: KafkaMessage) -> None:
        await guard.run(message.raw_message, process)

    async def process(records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        folded = await service.fold(records)
        await publish_all(broker, folded.outgoing)
        await service.save(folded)

    @app.on_startup
    async def open_store() -> None:
        if repository is None:
            opened = await open_repository(settings.store)
            owned.append(opened)
            service.repository = opened
            log.info("profiles_store_opened")

    @app.after_shutdown
    async def close_store() -> None:
        while owned:
            await owned.pop().close()
        if repository is None:
            service.repository = None

    return app


def service_of(app: FastStream) -> ProfilesService:
    """The service object of an app built by `create_app` (its `stats`, its repository)."""
    service = app.context.get(SERVICE_KEY)
    if not isinstance(service, ProfilesService):
        raise LookupError("not a profiles app")
    return service


def create_router(app: FastStream, settings: Settings) -> APIRouter:
    """The call-centre look-up API (services/profiles/api.py), served by `crm run`."""
    from services.profiles.api import create_lookup_router

    return create_lookup_router(app, settings)
