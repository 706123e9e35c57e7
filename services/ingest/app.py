"""Ingest's composition root: the broker, the repository and one thin batch handler."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from aiokafka import ConsumerRecord
from faststream import FastStream
from faststream.kafka.annotations import KafkaMessage

from services.ingest.service import IngestService
from services.ingest.settings import IngestSettings
from services.ingest.store import IngestRepository, open_repository
from shared.kafka import BatchGuard, batch_subscriber, new_broker, publish_all
from shared.logging import get_logger
from shared.settings import Settings
from shared.topics import GROUP_INGEST, RAW_TOPICS

log = get_logger(__name__)

SERVICE_KEY = "ingest_service"
"""Where the app's context holds the IngestService."""


def create_app(
    settings: Settings | None = None,
    *,
    repository: IngestRepository | None = None,
    ingest_settings: IngestSettings | None = None,
) -> FastStream:
    """Build the ingest app; the repository opens at start-up unless one is given."""
    settings = settings or Settings()
    own = ingest_settings or IngestSettings()
    broker = new_broker(settings.kafka, client_id="crm-ingest")
    app = FastStream(broker)
    holder: dict[str, IngestService] = {}
    guard = BatchGuard(broker, service="ingest")

    def build(repo: IngestRepository) -> IngestService:
        holder["service"] = IngestService(
            repo,
            card_key=settings.privacy.card_key.get_secret_value().encode(),
            calendar=settings.calendar,
        )
        app.context.set_global(SERVICE_KEY, holder["service"])
        return holder["service"]

    if repository is not None:
        build(repository)

    @batch_subscriber(broker, settings.kafka, GROUP_INGEST, *RAW_TOPICS)
    async def on_raw(_: list[bytes], message: KafkaMessage) -> None:
        await guard.run(message.raw_message, process)

    async def process(records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        service = holder["service"]
        result = await service.process(records)
        await publish_all(broker, result.outgoing)
        await service.record(result)

    @app.on_startup
    async def open_store() -> None:
        if settings.privacy.card_key_is_default:
            log.warning("card_key_default", hint="set CRM_CARD_KEY: the development key is public")
        if "service" not in holder:
            repo = await open_repository(settings.store, dedup_days=own.dedup_days)
            cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=own.dedup_days)
            await repo.forget_before(cutoff)
            build(repo)

    @app.after_shutdown
    async def close_store() -> None:
        if repository is None and "service" in holder:
            await holder["service"].repository.close()

    return app


def service_of(app: FastStream) -> IngestService:
    """The app's IngestService (for metrics and tests)."""
    service: IngestService = app.context.get(SERVICE_KEY)
    return service
