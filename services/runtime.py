"""Running services: which apps exist, start-up checks, and a clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
from collections.abc import Sequence
from typing import Protocol

from faststream import FastStream

from shared.kafka import KafkaConfigError, ensure_topics, require_bootstrap
from shared.logging import get_logger
from shared.settings import Settings
from shared.store import StoreLocation

log = get_logger(__name__)

SERVICES: tuple[str, ...] = ("ingest", "profiles", "offers", "notifier")


class AppFactory(Protocol):
    def __call__(self, settings: Settings | None = None) -> FastStream: ...


def app_factory(name: str) -> AppFactory:
    """The `create_app` of a service, imported only when that service runs."""
    module = importlib.import_module(f"services.{name}.app")
    factory: AppFactory = module.create_app
    return factory


class ConfigurationError(RuntimeError):
    """The environment does not say where Kafka or the store is."""


def check_configuration(settings: Settings) -> None:
    """Refuse to start without Kafka and a store, with a message that says what to set."""
    try:
        require_bootstrap(settings.kafka)
        StoreLocation.parse(settings.store.store_url)
    except (KafkaConfigError, ValueError) as exc:
        raise ConfigurationError(str(exc)) from exc


async def serve(
    names: Sequence[str], settings: Settings, stop: asyncio.Event | None = None
) -> None:
    """Start the named services in this process and run until SIGTERM/SIGINT (or `stop`).

    Stopping is graceful: FastStream stops the consumers, the batch in flight finishes and its
    offsets are committed, then the stores close.
    """
    check_configuration(settings)
    if settings.kafka.create_topics:
        await ensure_topics(settings.kafka)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    apps = [app_factory(name)(settings) for name in names]
    started: list[FastStream] = []
    try:
        for name, app in zip(names, apps, strict=True):
            await app.start()
            started.append(app)
            log.info("service_started", service_name=name)
        await stop.wait()
    finally:
        for app in reversed(started):
            await app.stop()
        log.info("services_stopped", services=list(names))
