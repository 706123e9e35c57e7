"""The notifier's HTTP routes: the unsubscribe link of every e-mail (RFC 8058 one-click).

`GET /unsubscribe?token=…` shows a confirmation page with a button (mail scanners open links,
so a GET changes nothing); `POST` with the same token records the opt-out at once in the
notifier's contacts (queued e-mails of that customer are cancelled by the same code path that
handles a consent change from profiles) and publishes a `ConsentChanged` on `crm.events`, so
the profile and the offers service learn it too. Tokens are signed with `CRM_UNSUBSCRIBE_KEY`
(a key of its own: the services that hold the coupon key cannot forge them). Opting out again
answers the same page and publishes nothing. Links do not expire: an opt-out is harmless to
replay, and RFC 8058 asks that the link in an old e-mail still works.
"""

from __future__ import annotations

import html

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import HTMLResponse

from services.notifier.domain import verify_unsubscribe_token
from services.notifier.service import NotifierService
from shared.skeleton import NotStarted, ServiceApp

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}
button{{font-size:1rem;padding:.6rem 1.2rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>"""


def _page(title: str, body: str, code: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status_code=code)


def unsubscribe_routes(app: ServiceApp[NotifierService]) -> APIRouter:
    """The unsubscribe link's routes, served with the notifier (on CRM_HTTP_PORT)."""
    router = APIRouter(tags=["e-mail"])
    key = app.settings.privacy.unsubscribe_key.get_secret_value()

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
        try:
            service = app.service
        except NotStarted as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "not started") from exc
        await app.publish(await service.opt_out(customer_id, service.clock()))
        return _page("Unsubscribed", "<p>Done: you will receive no more offers by e-mail.</p>")

    return router
