"""The notifier's HTTP routes: the unsubscribe link of every e-mail (RFC 8058 one-click).

`GET /unsubscribe?token=…` shows a confirmation page with a button (mail scanners open links,
so a GET changes nothing); `POST` with the same token records the opt-out at once in the
notifier's contacts (queued e-mails of that customer are cancelled by the same code path that
handles a consent change from profiles) and publishes a `ConsentChanged` on `crm.events`, so
the profile and the offers service learn it too.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable

from aiokafka import ConsumerRecord
from fastapi import APIRouter, Query, Response
from fastapi.responses import HTMLResponse
from faststream import FastStream

from services.notifier.domain import verify_unsubscribe_token
from services.notifier.service import NotifierService
from shared.events import ConsentChanged, ContactChanged
from shared.kafka import Outgoing, dump, publish_all
from shared.logging import get_logger
from shared.settings import Settings
from shared.topics import CONTACTS, EVENTS

log = get_logger(__name__)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}
button{{font-size:1rem;padding:.6rem 1.2rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status_code=status)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def opt_out(
    app: FastStream, service: NotifierService, customer_id: str, now: dt.datetime
) -> None:
    """Record the opt-out locally (cancelling queued e-mails) and tell the rest of the system."""
    contacts = await service.repository.get_contacts([customer_id])
    outgoing: list[Outgoing] = []
    contact = contacts.get(customer_id)
    if contact is not None:
        change = ContactChanged(
            customer_id=customer_id,
            email=contact.email,
            first_name=contact.first_name,
            marketing_consent=False,
            home_store_id=contact.home_store_id,
            changed_at=now,
        )
        record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
            topic=CONTACTS,
            partition=-1,
            offset=-1,
            timestamp=int(now.timestamp() * 1000),
            timestamp_type=0,
            key=customer_id.encode(),
            value=dump(change),
            checksum=None,
            serialized_key_size=-1,
            serialized_value_size=-1,
            headers=(),
        )
        outgoing.extend(await service.handle_batch([record]))
    consent = ConsentChanged(
        event_id=f"unsubscribe:{customer_id}:{now.isoformat()}",
        occurred_at=now,
        customer_id=customer_id,
        marketing_consent=False,
    )
    outgoing.append((EVENTS, customer_id.encode(), dump(consent)))
    broker = app.broker
    if broker is not None:
        await publish_all(broker, outgoing)  # type: ignore[arg-type]
    service.stats["unsubscribed"] += 1
    log.info("unsubscribed", customer_id=customer_id)


def create_router(
    app: FastStream,
    settings: Settings,
    *,
    service_of: Callable[[FastStream], NotifierService],
    clock: Callable[[], dt.datetime] = _utcnow,
) -> APIRouter:
    """Routes served with the notifier (on CRM_HTTP_PORT)."""
    router = APIRouter(tags=["e-mail"])
    key = settings.privacy.coupon_key.get_secret_value()

    @router.get("/unsubscribe", response_class=HTMLResponse, summary="Confirm unsubscribing")
    async def confirm(token: str = Query(max_length=1024)) -> Response:
        if verify_unsubscribe_token(token, key) is None:
            return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 400)
        form = (
            f'<form method="post" action="?token={html.escape(token)}">'
            "<p>You will receive no more offers by e-mail.</p>"
            '<button type="submit" name="List-Unsubscribe" value="One-Click">Unsubscribe</button>'
            "</form>"
        )
        return _page("Unsubscribe", form)

    @router.post("/unsubscribe", response_class=HTMLResponse, summary="Unsubscribe (one click)")
    async def unsubscribe(token: str = Query(max_length=1024)) -> Response:
        customer_id = verify_unsubscribe_token(token, key)
        if customer_id is None:
            return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 400)
        await opt_out(app, service_of(app), customer_id, clock())
        return _page("Unsubscribed", "<p>Done: you will receive no more offers by e-mail.</p>")

    return router
