"""The notifier's HTTP routes: the unsubscribe link of every e-mail (RFC 8058 one-click), and
the bounce endpoint.

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

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from services.notifier.bounces import NotADeliveryReport, parse_dsn
from services.notifier.domain import verify_unsubscribe_token
from services.notifier.service import BounceResult, NotifierService
from services.notifier.store import customer_export
from shared.auth import Principal, TokenTable, require
from shared.export import export_routes
from shared.http_guard import policy_with_style
from shared.skeleton import NotStarted, ServiceApp

BOUNCE_BODY_LIMIT = 256 * 1024
"""Bytes of a posted DSN: reports often carry the original message (ours are ~10 KiB), and
some servers attach more."""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}
button{{font-size:1rem;padding:.6rem 1.2rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>"""


# The page's one inline style, allowed by its hash (the Content-Security-Policy allows no other).
_POLICY = policy_with_style(_PAGE.split("<style>")[1].split("</style>")[0].format())


def _page(title: str, body: str, code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(title=html.escape(title), body=body),
        status_code=code,
        headers={"Content-Security-Policy": _POLICY},
    )


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


# ---------------------------------------------------------------- bounces

_bearer = HTTPBearer(
    auto_error=False,
    description="An `admin` token of CRM_API_TOKENS, or the bounce forwarder's token "
    "(CRM_BOUNCE_TOKEN_SHA256).",
)


class BounceAnswer(BaseModel):
    """What a posted delivery status notification did."""

    result: BounceResult = Field(
        description="`bounced` (the e-mail is recorded bounced, the address suppressed), "
        "`already_bounced`, `not_failed` (a delayed or successful report: nothing changes) "
        "or `unknown_message` (not one of our e-mails, or not sent)."
    )


def bounce_routes(app: ServiceApp[NotifierService]) -> APIRouter:
    """`POST /api/bounces`: a DSN (RFC 3464), posted as the raw message, by the mail server's
    bounce pipe or a provider's webhook relay."""
    router = APIRouter(tags=["e-mail"])
    http = app.settings.http
    api_tokens = http.api_tokens.get_secret_value() if http.api_tokens else ""

    def tokens() -> TokenTable:
        # The forwarder's own token: it may report bounces and nothing else (no look-up,
        # no audit log), unlike an admin token.
        try:
            digest = app.service.settings.bounce_token_sha256
        except NotStarted:
            digest = None
        forwarder = f",admin:{digest.lower()}" if digest else ""
        return TokenTable.parse(api_tokens + forwarder)

    async def reporter(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> Principal:
        return await require(tokens(), "admin")(request, credentials)

    @router.post(
        "/api/bounces",
        response_model=BounceAnswer,
        status_code=status.HTTP_202_ACCEPTED,
        max_body_size=BOUNCE_BODY_LIMIT,
        summary="Report a bounce (a delivery status notification)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"message/rfc822": {"schema": {"type": "string"}}},
            }
        },
    )
    async def bounce(
        request: Request,
        _: Principal = Depends(reporter),  # noqa: B008
    ) -> BounceAnswer:
        """A `multipart/report; report-type=delivery-status` message as received (RFC 3464).
        A permanent failure (5.x.x) of one of our e-mails, found by its Message-ID, records
        it bounced on `crm.deliveries` and suppresses the address; a delay (4.x.x) does not."""
        try:
            report = parse_dsn(await request.body())
        except NotADeliveryReport as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        try:
            service = app.service
        except NotStarted as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "not started") from exc
        result, outgoing = await service.record_bounce(report)
        if outgoing:
            await app.publish(outgoing)
        return BounceAnswer(result=result)

    return router


def notifier_routes(app: ServiceApp[NotifierService]) -> APIRouter:
    """Everything the notifier serves on CRM_HTTP_PORT."""
    router = unsubscribe_routes(app)
    router.include_router(bounce_routes(app))
    router.include_router(export_routes(app, notifier_export))
    return router


async def notifier_export(service: NotifierService, customer_id: str) -> dict[str, object]:
    """Right of access: the contact and the deliveries of one customer."""
    return await customer_export(service.repository, customer_id)
