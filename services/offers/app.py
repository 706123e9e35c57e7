"""Composition root of the offers service: broker, engine, repository and the batch handler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka import ConsumerRecord
from faststream import FastStream
from faststream.kafka.annotations import KafkaMessage

from services.offers.domain import OfferEngine
from services.offers.service import OffersService
from services.offers.settings import OfferRules, OffersSettings
from services.offers.store import OffersRepository, open_repository
from shared.kafka import BatchGuard, batch_subscriber, new_broker, publish_all
from shared.settings import Settings
from shared.topics import CLOCK, GROUP_OFFERS, PROFILES_CHANGED

SERVICE_KEY = "offers_service"
"""Name of the `OffersService` in the app's context (`app.context.get(SERVICE_KEY)`)."""


def create_app(
    settings: Settings | None = None,
    *,
    repository: OffersRepository | None = None,
    rules: OfferRules | None = None,
    offers_settings: OffersSettings | None = None,
) -> FastStream:
    """The offers app. Rules come from `rules`, else from `CRM_RULES_FILE` (refused if invalid)."""
    settings = settings or Settings()
    offers_settings = offers_settings or OffersSettings()
    if rules is None:
        rules = offers_settings.rules()
    engine = OfferEngine(
        rules=rules,
        coupon_key=settings.privacy.coupon_key.get_secret_value().encode(),
        calendar=settings.calendar,
    )
    service = OffersService(
        engine=engine, repository=repository, page_size=offers_settings.offers_page_size
    )
    owns_repository = repository is None
    broker = new_broker(settings.kafka, client_id="crm-offers")
    guard = BatchGuard(broker, service="offers")

    @batch_subscriber(broker, settings.kafka, GROUP_OFFERS, PROFILES_CHANGED, CLOCK)
    async def on_profiles_and_clock(_: list[bytes], message: KafkaMessage) -> None:
        await guard.run(message.raw_message, process)

    async def process(records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        outgoing = await service.handle(records)
        await publish_all(broker, outgoing)

    app = FastStream(broker)
    app.context.set_global(SERVICE_KEY, service)

    @app.on_startup
    async def open_store() -> None:
        if service.repository is None:
            service.repository = await open_repository(settings.store)

    @app.after_shutdown
    async def close_store() -> None:
        if owns_repository and service.repository is not None:
            await service.repository.close()
            service.repository = None

    return app


def service_of(app: FastStream) -> OffersService:
    """The app's service object (its `stats`, its repository)."""
    service = app.context.get(SERVICE_KEY)
    if not isinstance(service, OffersService):
        raise LookupError("not an offers app")
    return service
