"""Composition root of the notifier: broker, repository, transport, renderer, quiet-hours poller."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from aiokafka import ConsumerRecord
from fastapi import APIRouter
from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.notifier.domain import QuietPolicy, Renderer
from services.notifier.mailer import Transport, transport_for, verify_smtp_login
from services.notifier.service import Clock, NotifierService, utc_now
from services.notifier.settings import NotifierSettings
from services.notifier.store import NotifierRepository, open_repository
from shared.kafka import BatchGuard, batch_subscriber, new_broker, publish_all
from shared.logging import get_logger
from shared.settings import Settings
from shared.topics import CONTACTS, GROUP_NOTIFIER, OFFERS

log = get_logger(__name__)

SERVICE_KEY = "notifier_service"
"""Where the app's context holds the NotifierService (for metrics and tests)."""


class DuePoller:
    """Background task: every few seconds, send the deliveries whose quiet hours are over."""

    def __init__(self, service: NotifierService, broker: KafkaBroker, *, interval_s: float) -> None:
        self._service = service
        self._broker = broker
        self._interval = interval_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="notifier-due-poller")

    async def poll_once(self) -> int:
        outgoing = await self._service.run_due()
        if outgoing:
            await publish_all(self._broker, outgoing)
        return len(outgoing)

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.poll_once()
            except Exception:
                # The store or Kafka is down: try again at the next tick.
                log.exception("due_poll_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self._interval)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Let a poll in progress finish (its sends are recorded), then end the task."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(task, timeout=timeout_s)
        except TimeoutError:
            log.warning("due_poller_cancelled")


def build_service(
    settings: Settings,
    *,
    repository: NotifierRepository | None = None,
    transport: Transport | None = None,
    notifier_settings: NotifierSettings | None = None,
    clock: Clock = utc_now,
    **overrides: Any,
) -> NotifierService:
    """The service object with everything but Kafka wired in (tests pass overrides)."""
    calendar = settings.calendar
    return NotifierService(
        repository=repository,
        transport=transport or transport_for(settings.smtp),
        renderer=Renderer(
            sender=settings.smtp.smtp_from,
            public_url=settings.smtp.public_url,
            unsubscribe_key=settings.privacy.coupon_key.get_secret_value(),
        ),
        quiet=QuietPolicy(window=calendar.quiet_window(), zone_of=calendar.zone_of),
        settings=notifier_settings or NotifierSettings(),
        clock=clock,
        **overrides,
    )


def create_app(
    settings: Settings | None = None,
    *,
    repository: NotifierRepository | None = None,
    transport: Transport | None = None,
    notifier_settings: NotifierSettings | None = None,
    clock: Clock | None = None,
    poll: bool = True,
) -> FastStream:
    """The notifier app. Nothing connects until the app starts.

    `transport`, `notifier_settings` and `clock` are for tests; `poll=False` leaves the
    quiet-hours poller off (tests drive `NotifierService.run_due` themselves).
    """
    settings = settings or Settings()
    nsettings = notifier_settings or NotifierSettings()
    broker = new_broker(settings.kafka, client_id="crm-notifier")
    guard = BatchGuard(broker, service="notifier")
    service = build_service(
        settings,
        repository=repository,
        transport=transport,
        notifier_settings=nsettings,
        clock=clock or utc_now,
    )
    poller = DuePoller(service, broker, interval_s=nsettings.due_poll_interval_s)
    owns_repository = repository is None

    @batch_subscriber(broker, settings.kafka, GROUP_NOTIFIER, OFFERS, CONTACTS)
    async def on_offers_and_contacts(_: list[bytes], message: KafkaMessage) -> None:
        await guard.run(message.raw_message, process)

    async def process(records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        outgoing = await service.handle_batch(records)
        await publish_all(broker, outgoing)

    app = FastStream(broker)
    app.context.set_global(SERVICE_KEY, service)

    @app.on_startup
    async def open_store() -> None:
        await verify_smtp_login(settings.smtp)
        if owns_repository:
            service.repository = await open_repository(settings.store)

    @app.after_startup
    async def start_poller() -> None:
        # After the broker is connected: the poller publishes outcomes.
        if poll:
            poller.start()

    @app.on_shutdown
    async def stop_poller() -> None:
        await poller.stop()

    @app.after_shutdown
    async def close_store() -> None:
        if owns_repository:
            await service.repository.close()
            service.repository = None

    return app


def notifier_of(app: FastStream) -> NotifierService:
    """The NotifierService of an app made by `create_app`."""
    service = app.context.get(SERVICE_KEY)
    if not isinstance(service, NotifierService):
        raise LookupError("not a notifier app")
    return service


def create_router(app: FastStream, settings: Settings) -> APIRouter:
    """The notifier's HTTP routes (the unsubscribe link), served on CRM_HTTP_PORT."""
    from services.notifier.api import create_router as unsubscribe_router

    return unsubscribe_router(app, settings, service_of=notifier_of)
