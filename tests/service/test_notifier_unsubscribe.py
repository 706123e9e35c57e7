"""The unsubscribe link of every e-mail: a confirmation page, then a one-click POST that records
the opt-out at once, cancels queued e-mails and tells profiles through a consent event."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from fastapi import FastAPI

from services.notifier.api import unsubscribe_routes
from services.notifier.domain import unsubscribe_token, verify_unsubscribe_token
from shared.topics import CONTACTS, OFFERS
from tests.service.test_notifier_app import (
    DAY,
    Harness,
    contact_payload,
    harness_for,
    offer_payload,
)

NIGHT = dt.datetime(2026, 3, 2, 22, 0, tzinfo=dt.UTC)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    # No send grace: the e-mail with the link is written in the batch of its offer.
    async for harness in harness_for(tmp_path, quiet="21:00-08:00", now=DAY, grace_s=0):
        yield harness


def client_for(h: Harness) -> httpx.AsyncClient:
    api = FastAPI()
    api.include_router(unsubscribe_routes(h.app))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://crm.test")


async def unsubscribe_link(h: Harness) -> str:
    await h.publish(CONTACTS, contact_payload(), key="c-1")
    await h.publish(OFFERS, offer_payload("of-1"), key="c-1")
    [eml] = h.emails()
    # The header as written (RFC 5322 folding undone), not decoded: a plain <URL>.
    raw = re.sub(rb"\r?\n(?=[ \t])", b"", eml.read_bytes())
    match = re.search(rb"^List-Unsubscribe: <(https?://[^>\s]+)>\r?$", raw, re.MULTILINE)
    assert match, raw[:2000]
    return match.group(1).decode()


async def test_link_in_the_email_opts_the_customer_out_in_one_click(h: Harness) -> None:
    consents = h.events  # what the notifier published on crm.events
    url = await unsubscribe_link(h)
    path = url.split("://", 1)[1].split("/", 1)[1]
    async with client_for(h) as client:
        page = await client.get(f"/{path}")
        assert page.status_code == 200
        assert "<form" in page.text  # a GET (mail scanners) changes nothing
        assert consents == []
        done = await client.post(f"/{path}", data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200
    assert [(c.customer_id, c.marketing_consent) for c in consents] == [("c-1", False)]
    contact = (await h.repo.get_contacts(["c-1"]))["c-1"]
    assert contact.marketing_consent is False


async def test_queued_email_is_cancelled_by_unsubscribing(h: Harness) -> None:
    url = await unsubscribe_link(h)
    h.clock.now = NIGHT  # quiet hours: the next offer's e-mail waits
    await h.publish(OFFERS, offer_payload("of-2"), key="c-1")
    assert [d.state for d in (await h.repo.get_deliveries(["of-2"])).values()] == ["pending"]
    path = url.split("://", 1)[1].split("/", 1)[1]
    async with client_for(h) as client:
        assert (await client.post(f"/{path}")).status_code == 200
    assert [d.state for d in (await h.repo.get_deliveries(["of-2"])).values()] == ["suppressed"]


async def test_forged_or_garbled_token_is_refused(h: Harness) -> None:
    async with client_for(h) as client:
        for token in ["", "abc", "YzE.AAAA", "x" * 2000]:
            response = await client.post("/unsubscribe", params={"token": token})
            assert response.status_code in (400, 422), token
    assert (await h.repo.get_contacts(["c-1"])) == {}


def token_of(url: str) -> str:
    return unquote(url.split("token=", 1)[1])


async def test_link_is_signed_with_the_unsubscribe_key_and_a_coupon_key_link_is_refused(
    h: Harness,
) -> None:
    privacy = h.app.settings.privacy
    url = await unsubscribe_link(h)
    unsubscribe_key = privacy.unsubscribe_key.get_secret_value()
    assert verify_unsubscribe_token(token_of(url), unsubscribe_key) == "c-1"
    # Whoever knows the coupon key (every service that makes codes) cannot forge a link.
    forged = unsubscribe_token("c-1", privacy.coupon_key.get_secret_value())
    async with client_for(h) as client:
        response = await client.post("/unsubscribe", params={"token": forged})
    assert response.status_code == 400
    assert h.events == []
    assert (await h.repo.get_contacts(["c-1"]))["c-1"].marketing_consent is True


async def test_opting_out_twice_publishes_one_consent_event(h: Harness) -> None:
    url = await unsubscribe_link(h)
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    async with client_for(h) as client:
        first = await client.post(path)
        again = await client.post(path)  # the same link clicked again, or replayed
        confirm = await client.get(path)
        last = await client.post(path)
    assert first.status_code == again.status_code == last.status_code == 200
    assert first.content == again.content == last.content
    assert confirm.status_code == 200
    assert [(c.customer_id, c.marketing_consent) for c in h.events] == [("c-1", False)]


async def test_unknown_customer_opting_out_twice_publishes_one_consent_event(
    h: Harness,
) -> None:
    token = unsubscribe_token("c-9", h.app.settings.privacy.unsubscribe_key.get_secret_value())
    async with client_for(h) as client:
        for _ in range(3):
            response = await client.post("/unsubscribe", params={"token": token})
            assert response.status_code == 200
    assert [(c.customer_id, c.marketing_consent) for c in h.events] == [("c-9", False)]
    stub = (await h.repo.get_contacts(["c-9"]))["c-9"]
    assert (stub.email, stub.first_name, stub.marketing_consent) == (None, None, False)


async def test_the_consent_event_of_an_unsubscribe_records_its_source_and_channel(
    h: Harness,
) -> None:
    url = await unsubscribe_link(h)
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    async with client_for(h) as client:
        assert (await client.post(path)).status_code == 200
    assert [(c.source, c.channel, c.marketing_consent) for c in h.events] == [
        ("unsubscribe_link", "email", False)
    ]
