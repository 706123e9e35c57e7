"""Running services from their declarations: start-up checks, HTTP, and a clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Sequence
from typing import Any

from shared.http import HttpEndpoints
from shared.kafka import KafkaConfigError, ensure_topics, require_bootstrap
from shared.logging import get_logger
from shared.settings import Settings
from shared.skeleton import ServiceApp, ServiceSpec
from shared.storage import StoreLocation

log = get_logger(__name__)


def run_forever(specs: Sequence[ServiceSpec[Any, Any]], settings: Settings) -> None:
    """Run `serve` on uvloop where it is installed (Linux, macOS), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a Linux/macOS dependency
        asyncio.run(serve(specs, settings))
        return
    uvloop.run(serve(specs, settings))


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
    specs: Sequence[ServiceSpec[Any, Any]], settings: Settings, stop: asyncio.Event | None = None
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
        # Event loops without signal support (Windows) raise here; there Ctrl-C still works.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    apps = [ServiceApp(spec, settings) for spec in specs]
    endpoints = HttpEndpoints(apps, settings)
    server = endpoints.server()
    http_task = asyncio.create_task(server.serve(), name="http")
    metrics_server = endpoints.metrics_server()
    metrics_task = (
        asyncio.create_task(metrics_server.serve(), name="metrics")
        if metrics_server is not None
        else None
    )
    lag_task = asyncio.create_task(endpoints.measure_lag(), name="lag")
    started: list[ServiceApp[Any]] = []
    try:
        for app in apps:
            await app.start()
            started.append(app)
            log.info("service_started", service_name=app.name)
        endpoints.started = True
        # Long-lived objects made at start-up (apps, models, templates) need no more scanning,
        # and per-batch garbage is young: fewer, cheaper collections (measured +40% in profiles).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        await stop.wait()
        log.info("stopping")
    finally:
        endpoints.started = False
        for app in reversed(started):
            await app.stop()
        lag_task.cancel()
        server.should_exit = True
        if metrics_server is not None:
            metrics_server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await lag_task
        await http_task
        if metrics_task is not None:
            await metrics_task
        log.info("services_stopped", services=[spec.name for spec in specs])
