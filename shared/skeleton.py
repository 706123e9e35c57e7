"""One skeleton for every service: a declaration (`ServiceSpec`) and the one factory that builds it.

A service says what it is: its name and consumer group, the topics it reads with the decoder
of each, how its store opens (an async context manager), how its service object is built on
that store, and whether a batch's messages are published before or after its state is saved.
`ServiceApp` builds any service from that declaration, the way qserv-kafka's `factory.py` and
cosmicpython's `bootstrap.py` wire theirs: the broker, the edge, the back-pressure guard, one
thin batch handler, and the lifespan (start-up check, store, background task). `crm run`, the
HTTP endpoints and the metrics read the same declaration.

The batch handler is the whole of the Kafka side of a service:

    records -> edge.decode -> service.handle(events) -> Handled(outgoing, rejected, save)
            -> publish then save, or save then publish (the declaration's `order`)
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from aiokafka import ConsumerRecord
from fastapi import APIRouter
from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from shared.edge import Decoder, Edge, Foreign, Outgoing, Received, Source
from shared.errors import Rejected
from shared.kafka import BatchGuard, batch_subscriber, new_broker, publish_all
from shared.logging import get_logger
from shared.settings import Settings
from shared.tracing import tracing_middlewares

log = get_logger(__name__)

Order = Literal["publish_then_save", "save_then_publish"]
"""`publish_then_save`: a crash between the two re-reads the batch and publishes the same
messages again (consumers are idempotent), nothing is lost. `save_then_publish`: the service
makes its state durable in `handle` (or `save`) before anything is announced."""


async def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Handled:
    """What a service made of a batch: messages to publish, events it rejected, the save."""

    outgoing: Sequence[Outgoing] = ()
    rejected: Sequence[tuple[Source, Rejected]] = ()
    save: Callable[[], Awaitable[None]] = _nothing


class BatchService(Protocol):
    """What the skeleton asks of a service object."""

    @property
    def stats(self) -> Counter[str]: ...

    async def handle(self, batch: Sequence[Received[Any]]) -> Handled: ...


R = TypeVar("R")
S = TypeVar("S", bound=BatchService)


@dataclass(frozen=True, slots=True)
class AfterReplay(Generic[S]):
    """A rebuilt store reconciled with the service's own output topic: `keep(service,
    payloads)` answers what to publish and save so that nothing it published before is lost
    (an offer revoked on the way, which the rebuild did not issue again)."""

    topic: str
    keep: Callable[[S, Sequence[bytes]], Awaitable[Handled]]


@dataclass(frozen=True, slots=True)
class ServiceSpec(Generic[R, S]):
    """What a service is. The five declarations are the architecture, one screen each."""

    name: str
    group: str
    """Kafka consumer group."""
    decoders: Mapping[str, Decoder[Any] | Foreign[Any]]
    """Topic -> decoder of its records; the keys are the topics the service reads. A topic
    another service owns is declared `foreign(decoder)`: what does not decode is that
    owner's to dead-letter, and only counted here."""
    open_store: Callable[[Settings], AbstractAsyncContextManager[R]]
    build: Callable[[Settings, R], S]
    order: Order
    routes: Callable[[ServiceApp[S]], APIRouter] | None = None
    """HTTP routes besides health and metrics (served by `crm run` on CRM_HTTP_PORT)."""
    check: Callable[[Settings], Awaitable[None]] | None = None
    """Refuses to start (raises) when the environment is unusable (a refused SMTP login)."""
    background: Callable[[ServiceApp[S]], AbstractAsyncContextManager[None]] | None = None
    """A task that runs while the service is up (after the broker started)."""
    after_replay: AfterReplay[S] | None = None
    """What `crm replay` does once the store is rebuilt, with what the service published."""
    secrets: tuple[str, ...] = ()
    """Environment variables of the secret keys the service uses (`shared.keys`): `crm run`
    refuses to start while one of them is a development key or shorter than 32 bytes."""
    writes: tuple[str, ...] = ()
    """Topics the service publishes to, its routes and dead letters included: what its Kafka
    principal may write (deploy/k8s/overlays/prod/kafka-users.yaml is checked against it)."""
    tables: tuple[str, ...] = ()
    """Compacted topics every instance reads whole, outside its group (`GlobalTable`)."""
    published: Callable[[Sequence[Outgoing]], None] | None = None
    """Told what a batch published, once Kafka acknowledged it (metrics: offers measures the
    freshness of the offers it issued)."""

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(self.decoders)


class NotStarted(RuntimeError):
    """The service's store is not open yet (the app has not started)."""


class ServiceApp(Generic[S]):
    """A service built from its declaration: FastStream app, broker, edge, guard and lifespan.

    `repository` (tests, tools) is used as it is and not closed; otherwise the store opens when
    the app starts and closes when it stops. `build` replaces the declaration's (tests pass
    fakes: a transport, a clock).
    """

    def __init__(
        self,
        spec: ServiceSpec[R, S],
        settings: Settings | None = None,
        *,
        repository: R | None = None,
        build: Callable[[Settings, R], S] | None = None,
    ) -> None:
        self.spec: ServiceSpec[Any, S] = spec
        self.settings = settings = settings or Settings()
        self.broker: KafkaBroker = new_broker(settings.kafka, client_id=f"crm-{spec.name}")
        for middleware in tracing_middlewares(spec.name, settings.observability):
            # After the Prometheus middleware: `traceparent` in and out of every record.
            self.broker.add_middleware(middleware)
        self.faststream = FastStream(self.broker)
        self.edge = Edge(service=spec.name, decoders=spec.decoders)
        self.guard = BatchGuard(self.broker, service=spec.name)
        self._build = build or spec.build
        self._service: S | None = None
        self._owns_store = False
        self._stack = AsyncExitStack()
        self._background = AsyncExitStack()
        if repository is not None:
            self._service = self._build(settings, repository)

        @batch_subscriber(self.broker, settings.kafka, spec.group, *spec.topics)
        async def on_batch(_: list[bytes], message: KafkaMessage) -> None:
            await self.guard.run(message.raw_message, self.process)

        app = self.faststream
        app.on_startup(self._open)
        app.after_startup(self._start_background)
        app.on_shutdown(self._stop_background)
        app.after_shutdown(self._close)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def service(self) -> S:
        if self._service is None:
            raise NotStarted(f"{self.spec.name}: the store is not open yet")
        return self._service

    @property
    def started(self) -> bool:
        return self._service is not None

    @property
    def stats(self) -> Counter[str]:
        """The service's counters (empty before it started)."""
        return self._service.stats if self._service is not None else Counter()

    async def prepare(
        self, records: Sequence[ConsumerRecord[Any, Any]]
    ) -> tuple[list[Outgoing], Handled]:
        """Decode a batch at the edge and hand it to the service: what to publish (dead
        letters first) and the service's answer, whose `save` is not run yet."""
        service = self.service
        stats = service.stats
        received, letters = self.edge.decode(records, stats)
        handled = await service.handle(received)
        outgoing = list(letters)
        outgoing.extend(self.edge.reject(source, why, stats) for source, why in handled.rejected)
        outgoing.extend(handled.outgoing)
        return outgoing, handled

    async def process(self, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        """One batch: decode at the edge, one call into the service, publish and save."""
        outgoing, handled = await self.prepare(records)
        if self.spec.order == "publish_then_save":
            await publish_all(self.broker, outgoing)
            await handled.save()
        else:
            await handled.save()
            await publish_all(self.broker, outgoing)
        if self.spec.published is not None:
            self.spec.published(outgoing)

    async def publish(self, outgoing: Sequence[Outgoing]) -> None:
        """Publish what an HTTP route produced (the same producer as the batches)."""
        await publish_all(self.broker, outgoing)

    # -- lifespan

    async def _open(self) -> None:
        if self.spec.check is not None:
            await self.spec.check(self.settings)
        if self._service is None:
            repository = await self._stack.enter_async_context(self.spec.open_store(self.settings))
            self._service = self._build(self.settings, repository)
            self._owns_store = True
            log.info("store_opened", service_name=self.spec.name)

    async def _start_background(self) -> None:
        if self.spec.background is not None:
            await self._background.enter_async_context(self.spec.background(self))

    async def _stop_background(self) -> None:
        await self._background.aclose()

    async def _close(self) -> None:
        await self._stack.aclose()
        if self._owns_store:
            self._service = None
            self._owns_store = False

    async def start(self) -> None:
        await self.faststream.start()

    async def stop(self) -> None:
        await self.faststream.stop()


@contextlib.asynccontextmanager
async def running(app: ServiceApp[Any]) -> Any:
    """Start an app and stop it afterwards (tests and tools)."""
    await app.start()
    try:
        yield app
    finally:
        await app.stop()
