"""What stands in front of every HTTP route: body limits, security headers and rate limits.

- **Body limit per route**: Starlette's request body limit, which FastAPI applies per app
  (`DEFAULT_BODY_LIMIT`) and per route (`max_body_size=` on the route decorator). It counts the
  bytes as they are received, before FastAPI parses the body and so before the dependencies
  that authenticate: a declared `Content-Length` over the limit, or a (chunked) body that
  passes it, is answered 413 without reading the rest, and nothing over the limit is kept.
  The 413 closes the connection, so a client sending 50 MB is not read to the end.
- **Security headers** on every response: a strict Content-Security-Policy, nosniff, no
  referrer, and `Cache-Control: no-store` on everything but the page's static files (the API
  answers carry personal data: a look-up, an audit entry, an export, a CSV).
- **Rate limits**: a token bucket per bearer token (its short hash id), answered 429 with
  `Retry-After`; and failed authentications (recorded by `shared.auth.require`) limited per
  client address: an address over its budget gets 429 on the API unless it shows a valid token.
  Written here because the well-kept limiters (slowapi) decorate each route and run after the
  body is parsed; these are a few lines of pure ASGI in front of everything.
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

import orjson
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logging import get_logger

log = get_logger(__name__)

DEFAULT_BODY_LIMIT = 4 * 1024
"""Bytes of request body a route takes unless it declares its own (FastAPI's `max_body_size`
on the route decorator)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
"""No inline script or style, nothing from another origin, never framed. The page draws charts
as `<img>` of the SVG it fetched (a `blob:` URL), so the SVG's own styles need no exception."""


def policy_with_style(style: str) -> str:
    """The policy for a page that carries its own `<style>` element: that one, by its hash."""
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    return CONTENT_SECURITY_POLICY.replace(
        "style-src 'self'", f"style-src 'self' 'sha256-{digest}'", 1
    )


STATIC_PREFIX = "/ui/"
"""The page's own files: the only responses that may be cached (they hold no personal data)."""

FAILED_AUTH = Counter(
    "crm_api_auth_failures",
    "API requests refused for their token: missing, unknown (401) or of a wrong role (403).",
    ["outcome"],
)
RATE_LIMITED = Counter("crm_api_rate_limited", "API requests answered 429, by limit.", ["limit"])


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


async def _answer(
    send: Send, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class SecurityHeadersMiddleware:
    """Adds the security headers to every response (a header the app set itself is kept)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra: list[tuple[bytes, bytes]] = [
            (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]
        if not str(scope.get("path", "")).startswith(STATIC_PREFIX):
            extra.append((b"cache-control", b"no-store"))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {bytes(key).lower() for key, _ in headers}
                headers.extend((key, value) for key, value in extra if key not in present)
                if message["status"] == 413 and b"connection" not in present:
                    # stop reading a body that is too large: the server closes after this
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class TokenBuckets:
    """Token buckets by key (`rate` per second, at most `burst`), the least recently used
    forgotten beyond `capacity` keys so that memory stays bounded."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        capacity: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._capacity = capacity
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, key: str) -> tuple[float, float]:
        now = self._clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        return tokens, now

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._capacity:
            self._buckets.popitem(last=False)

    def wait(self, key: str) -> float:
        """0 when `key` has a token left, else the seconds until it has one (nothing taken)."""
        tokens, _ = self._level(key)
        if tokens >= 1:
            return 0.0
        return (1 - tokens) / self.rate if self.rate > 0 else math.inf

    def take(self, key: str) -> float:
        """Take a token: 0 when there was one, else the seconds until there is (none taken)."""
        tokens, now = self._level(key)
        if tokens >= 1:
            self._store(key, tokens - 1, now)
            return 0.0
        self._store(key, tokens, now)
        return (1 - tokens) / self.rate if self.rate > 0 else math.inf


class AuthFailures:
    """Failed authentications per client address: `shared.auth.require` records them, the
    rate-limit middleware refuses an address over its budget."""

    SCOPE_KEY = "crm.auth_failures"

    def __init__(self, per_minute: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.buckets = (
            TokenBuckets(per_minute / 60.0, per_minute, clock=clock) if per_minute > 0 else None
        )

    def record(self, client: str) -> None:
        if self.buckets is not None:
            self.buckets.take(client)

    def wait(self, client: str) -> float:
        return self.buckets.wait(client) if self.buckets is not None else 0.0


def bearer_token(scope: Scope) -> str | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _retry_after(wait: float) -> list[tuple[bytes, bytes]]:
    seconds = 3600 if math.isinf(wait) else max(1, math.ceil(wait))
    return [(b"retry-after", str(seconds).encode())]


class _Principal(Protocol):
    @property
    def role(self) -> str: ...

    @property
    def token_id(self) -> str: ...


class RateLimitMiddleware:
    """429 with `Retry-After` for a token over its rate, and for an address that failed to
    authenticate too often (on the API, unless the request shows a valid token)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        identify: Callable[[str], _Principal | None],
        per_token: TokenBuckets | None,
        failures: AuthFailures,
    ) -> None:
        self.app = app
        self._identify = identify
        self._per_token = per_token
        self._failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[AuthFailures.SCOPE_KEY] = self._failures
        token = bearer_token(scope)
        principal = self._identify(token) if token is not None else None
        if principal is None and str(scope.get("path", "")).startswith(("/api/", "/openapi")):
            wait = self._failures.wait(client_address(scope))
            if wait:
                RATE_LIMITED.labels(limit="failed_auth").inc()
                await _answer(send, 429, "too many failed authentications", _retry_after(wait))
                return
        if principal is not None and self._per_token is not None:
            wait = self._per_token.take(principal.token_id)
            if wait:
                RATE_LIMITED.labels(limit="token").inc()
                log.info("api_rate_limited", role=principal.role, token_id=principal.token_id)
                await _answer(send, 429, "rate limit exceeded", _retry_after(wait))
                return
        await self.app(scope, receive, send)


def failed_auth(scope: Scope, *, outcome: str, token: str | None, route: str) -> None:
    """Log and count a refused token, and charge the client address (never the token itself:
    only a short id of its hash, or `missing`)."""
    client = client_address(scope)
    token_id = hashlib.sha256(token.encode()).hexdigest()[:12] if token else "missing"
    FAILED_AUTH.labels(outcome=outcome).inc()
    log.warning("api_auth_failed", outcome=outcome, token_id=token_id, route=route, client=client)
    failures = scope.get(AuthFailures.SCOPE_KEY)
    if outcome != "forbidden" and isinstance(failures, AuthFailures):
        failures.record(client)


__all__ = [
    "CONTENT_SECURITY_POLICY",
    "DEFAULT_BODY_LIMIT",
    "AuthFailures",
    "RateLimitMiddleware",
    "SecurityHeadersMiddleware",
    "TokenBuckets",
    "failed_auth",
    "policy_with_style",
]
