"""The notifier service, declared: it reads issued and revoked offers and contacts, e-mails each
offer once (SMTP or .eml outbox), saves each delivery before publishing its outcome, serves the
unsubscribe link and, from a background poller, sends what the send grace and the quiet hours
held back."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import orjson
from pydantic import ValidationError

from services.notifier.api import notifier_routes
from services.notifier.domain import ContactUpdate, OfferChange, QuietPolicy, Renderer
from services.notifier.mailer import Transport, transport_for, verify_smtp_login
from services.notifier.service import Clock, NotifierService, utc_now
from services.notifier.settings import NotifierSettings
from services.notifier.store import NotifierRepository, open_repository
from shared.edge import Source, describe
from shared.errors import Rejected
from shared.events import CONSUMER_EXTRA, ContactChanged, OfferIssued, OfferRevoked
from shared.keys import UNSUBSCRIBE_KEY
from shared.logging import get_logger
from shared.settings import Settings
from shared.skeleton import ServiceApp, ServiceSpec
from shared.topics import CONTACTS, DEADLETTER, DELIVERIES, EVENTS, GROUP_NOTIFIER, OFFERS
from shared.vault import KeyReader, Pending, sealed_decoder, vault_for, with_vault

log = get_logger(__name__)

POLLER_STOP_TIMEOUT_S = 30.0
"""How long shutdown waits for a poll in progress (its sends are recorded) before cancelling."""


# ---------------------------------------------------------------- decoders


def _type_of(value: bytes) -> str | None:
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    return kind if isinstance(kind, str) else None


def decode_offer(source: Source) -> OfferChange | None:
    """An issued or a revoked offer; None for the other offer events (redeemed, expired, held
    out...), which are not the notifier's; `invalid_offer` for anything else."""
    if source.value is None:
        return None
    try:
        return OfferIssued.model_validate_json(source.value, extra=CONSUMER_EXTRA)
    except ValidationError as exc:
        kind = _type_of(source.value)
        if kind == "offer_revoked":
            try:
                return OfferRevoked.model_validate_json(source.value, extra=CONSUMER_EXTRA)
            except ValidationError as revoked_exc:
                raise Rejected("invalid_offer", describe(revoked_exc)) from None
        if kind is not None and kind != "offer_issued":
            return None
        raise Rejected("invalid_offer", describe(exc)) from None


_decode_sealed_contact = sealed_decoder(ContactChanged, invalid="invalid_contact")


def decode_contact(source: Source) -> ContactUpdate | tuple[str, Pending[ContactChanged]]:
    """The contact update of a record; a tombstone erases the contact of the key's customer.
    A sealed contact is opened by the service, at the edge of its handler."""
    if source.value is None:
        key = source.key.decode(errors="replace") if source.key else ""
        if not key:
            raise Rejected("missing_key", "tombstone without a key")
        return (key, None)
    contact = _decode_sealed_contact(source)
    if isinstance(contact, Pending):
        return (contact.event.customer_id, contact)
    return (contact.customer_id, contact)


# ---------------------------------------------------------------- wiring


def build_service(
    settings: Settings,
    repository: NotifierRepository,
    *,
    transport: Transport | None = None,
    notifier_settings: NotifierSettings | None = None,
    clock: Clock = utc_now,
    vault: KeyReader | None = None,
) -> NotifierService:
    """The service object on an open repository (tests pass a transport, settings, a clock,
    a key vault)."""
    calendar = settings.calendar
    return NotifierService(
        repository,
        transport=transport or transport_for(settings.smtp),
        renderer=Renderer(
            sender=settings.smtp.smtp_from,
            public_url=settings.smtp.public_url,
            unsubscribe_key=settings.privacy.unsubscribe_key.get_secret_value(),
        ),
        quiet=QuietPolicy(window=calendar.quiet_window(), zone_of=calendar.zone_of),
        settings=notifier_settings or NotifierSettings(),
        clock=clock,
        vault=vault or vault_for(settings.store),
    )


def build(settings: Settings, repository: NotifierRepository) -> NotifierService:
    return build_service(settings, repository)


async def check_smtp(settings: Settings) -> None:
    """Refuse to start when the SMTP server refuses the configured login."""
    await verify_smtp_login(settings.smtp)


async def _poll(app: ServiceApp[NotifierService], stop: asyncio.Event) -> None:
    service = app.service
    while not stop.is_set():
        try:
            outgoing = await service.run_due()
            if outgoing:
                await app.publish(outgoing)
            if service.due_backlog:
                # A full poll: more are due (every e-mail passes here once its grace ends),
                # so go on at once rather than a tick later.
                continue
        except Exception:
            # The store or Kafka is down: try again at the next tick.
            log.exception("due_poll_failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=service.settings.due_poll_interval_s)


@contextlib.asynccontextmanager
async def due_poller(app: ServiceApp[NotifierService]) -> AsyncIterator[None]:
    """Every few seconds, send the deliveries whose grace or quiet hours are over. Started after
    the broker (it publishes outcomes); on shutdown a poll in progress finishes first."""
    stop = asyncio.Event()
    task = asyncio.create_task(_poll(app, stop), name="notifier-due-poller")
    try:
        yield
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=POLLER_STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("due_poller_cancelled")


SPEC: ServiceSpec[NotifierRepository, NotifierService] = ServiceSpec(
    name="notifier",
    group=GROUP_NOTIFIER,
    decoders={OFFERS: decode_offer, CONTACTS: decode_contact},
    open_store=with_vault(lambda settings: open_repository(settings.store)),
    build=build,
    order="save_then_publish",
    routes=notifier_routes,
    check=check_smtp,
    background=due_poller,
    secrets=(UNSUBSCRIBE_KEY,),
    writes=(DELIVERIES, EVENTS, DEADLETTER),
)


def create_app(
    settings: Settings | None = None,
    *,
    repository: NotifierRepository | None = None,
    transport: Transport | None = None,
    notifier_settings: NotifierSettings | None = None,
    clock: Clock | None = None,
    poll: bool = True,
    vault: KeyReader | None = None,
) -> ServiceApp[NotifierService]:
    """The notifier; a passed repository is used as is (and not closed).

    `transport`, `notifier_settings`, `clock` and `vault` are for tests; `poll=False` leaves
    the due poller off (tests drive `NotifierService.run_due` themselves).
    """
    spec = SPEC if poll else dataclasses.replace(SPEC, background=None)
    return ServiceApp(
        spec,
        settings,
        repository=repository,
        build=lambda settings, repo: build_service(
            settings,
            repo,
            transport=transport,
            notifier_settings=notifier_settings,
            clock=clock or utc_now,
            vault=vault,
        ),
    )
