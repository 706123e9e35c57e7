"""The public HTTP surface of a process, seen as a client sees it: raw bytes over a socket to a
real uvicorn server. Body limits before parsing and authentication, security headers,
no-store, the docs and metrics off the public port, rate limits and failed logins."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import structlog
import uvicorn
from prometheus_client import REGISTRY

from services.notifier.app import SPEC as NOTIFIER
from services.offers.app import SPEC as OFFERS
from services.profiles.app import SPEC as PROFILES
from services.reports.app import SPEC as REPORTS
from shared.auth import token_hash
from shared.http import HttpEndpoints
from shared.settings import HttpSettings, KafkaSettings, Settings, StoreSettings
from shared.skeleton import ServiceApp

TOKENS = {"agent": "agent-token-1", "admin": "admin-token-1", "marketing": "marketing-token-1"}
LOOKUP_LIMIT = 1024


def settings(**http: Any) -> Settings:
    tokens = ",".join(f"{role}:{token_hash(token)}" for role, token in TOKENS.items())
    return Settings(
        kafka=KafkaSettings(kafka_bootstrap="localhost:9092"),
        store=StoreSettings(store_url="memory://"),
        http=HttpSettings(api_tokens=tokens, **http),  # type: ignore[arg-type]
    )


def endpoints(**http: Any) -> HttpEndpoints:
    config = settings(http_host="127.0.0.1", http_port=0, **http)
    apps = [ServiceApp(spec, config) for spec in (PROFILES, OFFERS, NOTIFIER, REPORTS)]
    return HttpEndpoints(apps, config)


@contextmanager
def serving(server: uvicorn.Server) -> Iterator[int]:
    """A process's real uvicorn server, in a thread; yields the port it bound."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "server did not start"
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with serving(endpoints().server()) as bound:
        yield bound


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(10)  # a failure guard: the answer must come while the body is unfinished
    return sock


def read_head(sock: socket.socket) -> bytes:
    """The status line and headers the server sent (raw bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n\r\n", 1)[0]


def headers_of(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_a_declared_50_mb_body_gets_413_at_once_without_a_token(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(
            b"POST /api/customers/lookup HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 52428800\r\n\r\n"
        )  # not one byte of the body follows: the answer cannot wait for it
        head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 413 ")
    assert headers_of(head)["connection"] == "close"


def test_a_chunked_body_gets_413_after_its_first_chunks_before_authentication(port: int) -> None:
    chunk = b"x" * 512
    with connect(port) as sock:
        sock.sendall(
            b"POST /api/customers/lookup HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        # three chunks pass the look-up's 1 KiB; the 50 MB body would go on, never ends here
        for _ in range(3):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 413 "), head


def test_a_small_body_without_a_token_still_gets_401(port: int) -> None:
    body = b'{"card_number": "6035 1234 5678 9012"}'
    with connect(port) as sock:
        sock.sendall(
            b"POST /api/customers/lookup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 401 ")


@pytest.mark.parametrize(
    ("path", "size", "too_large"),
    [
        ("/api/customers/lookup", LOOKUP_LIMIT + 1, True),  # its own small limit
        ("/api/campaigns", 10 * 1024, False),  # a campaign definition may be larger
        ("/api/campaigns", 16 * 1024 + 1, True),
        ("/api/campaigns/c1/pause", 4 * 1024 + 1, True),  # no limit of its own: the default
        ("/api/coupons/validate", 100 * 1024, False),  # a basket of up to 1,000 lines
    ],
)
def test_each_route_has_its_limit_and_the_default_applies_to_the_others(
    port: int, path: str, size: int, too_large: bool
) -> None:
    response = httpx.post(
        f"http://127.0.0.1:{port}{path}",
        content=b" " * size,
        headers={"Content-Type": "application/json"},
    )
    # under the limit the body is parsed (422: not JSON) or the token refused (401)
    assert (response.status_code == 413) is too_large, response.status_code


SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@pytest.mark.parametrize(
    ("method", "path", "token"),
    [
        ("GET", "/healthz", None),
        ("GET", "/api/customers/c-unknown", None),  # 401
        ("GET", "/api/customers/c-unknown", "agent"),  # 503 from the handler: not started
        ("GET", "/api/audit", "admin"),  # 200: personal data
        ("GET", "/api/reports/products?format=csv", "marketing"),
        ("GET", "/ui/", None),
        ("GET", "/unsubscribe?token=not-valid", None),
    ],
)
def test_every_response_carries_the_security_headers(
    port: int, method: str, path: str, token: str | None
) -> None:
    auth = f"Authorization: Bearer {TOKENS[token]}\r\n".encode() if token else b""
    with connect(port) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode() + auth + b"\r\n")
        headers = headers_of(read_head(sock))
    for name, value in SECURITY.items():
        assert headers[name] == value
    policy = {
        part.strip().split(" ", 1)[0]: part.strip()
        for part in headers["content-security-policy"].split(";")
    }
    assert policy["default-src"] == "default-src 'self'"
    assert policy["script-src"] == "script-src 'self'"  # no inline script
    assert "'unsafe-inline'" not in headers["content-security-policy"]
    assert policy["frame-ancestors"] == "frame-ancestors 'none'"
    assert policy["base-uri"] == "base-uri 'none'"
    assert policy["form-action"] == "form-action 'self'"
    if path.startswith("/api/") or path == "/healthz":
        assert headers["cache-control"] == "no-store"
    assert "server" not in headers


def test_docs_are_not_served_and_the_openapi_document_is_for_admins_only(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/docs").status_code == 404
    assert httpx.get(f"{base}/redoc").status_code == 404
    assert httpx.get(f"{base}/openapi.json").status_code == 401
    agent = {"Authorization": f"Bearer {TOKENS['agent']}"}
    assert httpx.get(f"{base}/openapi.json", headers=agent).status_code == 403
    admin = httpx.get(
        f"{base}/openapi.json", headers={"Authorization": f"Bearer {TOKENS['admin']}"}
    )
    assert admin.status_code == 200
    assert "/api/customers/lookup" in admin.json()["paths"]


def test_metrics_are_on_the_ops_port_when_there_is_one_and_never_public() -> None:
    ops_endpoints = endpoints(metrics_port=0)
    with serving(ops_endpoints.server()) as public:
        on_public = httpx.get(
            f"http://127.0.0.1:{public}/metrics",
            headers={"Authorization": f"Bearer {TOKENS['admin']}"},
        )
    assert on_public.status_code == 404  # an ops port: nothing on the public one
    ops = ops_endpoints.metrics_server()
    assert ops is not None
    with serving(ops) as metrics_port:
        response = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert response.status_code == 200
    assert b"crm_api_auth_failures" in response.content


def test_without_an_ops_port_metrics_are_on_the_http_port_for_admins_only(port: int) -> None:
    assert endpoints().metrics_server() is None  # CRM_METRICS_PORT unset: no ops server
    url = f"http://127.0.0.1:{port}/metrics"
    assert httpx.get(url).status_code == 401
    marketing = httpx.get(url, headers={"Authorization": f"Bearer {TOKENS['marketing']}"})
    assert marketing.status_code == 403
    admin = httpx.get(url, headers={"Authorization": f"Bearer {TOKENS['admin']}"})
    assert admin.status_code == 200
    assert admin.headers["content-type"].startswith("text/plain")
    assert b"crm_api_auth_failures" in admin.content


def _failures(outcome: str) -> float:
    value = REGISTRY.get_sample_value("crm_api_auth_failures_total", {"outcome": outcome})
    return value or 0.0


def test_a_token_over_its_rate_gets_429_with_retry_after() -> None:
    server = endpoints(api_rate_limit=0.001, api_rate_burst=3).server()  # one per 1000 s
    with serving(server) as bound:
        agent = {"Authorization": f"Bearer {TOKENS['agent']}"}
        url = f"http://127.0.0.1:{bound}/api/customers/c1"
        answers = [httpx.get(url, headers=agent) for _ in range(4)]
        other = httpx.get(
            f"http://127.0.0.1:{bound}/api/audit",
            headers={"Authorization": f"Bearer {TOKENS['admin']}"},
        )
    assert [a.status_code for a in answers[:3]] == [503] * 3  # past the guard (not started)
    assert answers[3].status_code == 429
    assert int(answers[3].headers["retry-after"]) >= 1
    assert other.status_code != 429  # another token has its own bucket


def test_failed_logins_are_logged_counted_and_limited_per_address() -> None:
    server = endpoints(api_failed_auth_limit=3).server()
    missing, unknown = _failures("missing"), _failures("unknown")
    with serving(server) as bound, structlog.testing.capture_logs() as logs:
        url = f"http://127.0.0.1:{bound}/api/customers/c1"
        first = httpx.get(url)
        wrong = [httpx.get(url, headers={"Authorization": "Bearer guess-1"}) for _ in range(2)]
        blocked = httpx.get(url, headers={"Authorization": "Bearer guess-2"})
        valid = httpx.get(url, headers={"Authorization": f"Bearer {TOKENS['agent']}"})
        health = httpx.get(f"http://127.0.0.1:{bound}/healthz")
    assert [first.status_code, *(w.status_code for w in wrong)] == [401, 401, 401]
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) >= 1
    assert valid.status_code == 503  # a valid token still gets through from that address
    assert health.status_code == 200
    assert _failures("missing") == missing + 1
    assert _failures("unknown") == unknown + 2
    failed = [e for e in logs if e["event"] == "api_auth_failed"]
    assert [e["token_id"] for e in failed] == ["missing", *[token_hash("guess-1")[:12]] * 2]
    assert all(e["route"] == "/api/customers/{customer_id}" for e in failed)
    assert all(e["client"] == "127.0.0.1" for e in failed)
    assert all("role" not in e for e in failed)
    assert "guess-1" not in repr(logs)


def test_a_number_json_cannot_carry_back_gets_422_not_500(port: int) -> None:
    # 1e999 parses as infinity: FastAPI's own 422 would echo it and fail to encode it (a 500)
    body = (
        b'{"card_number": "6035", "store_id": "S001", "code": "X",'
        b' "lines": [{"sku": "A", "quantity": 1e999, "unit_price": "1"}]}'
    )
    with connect(port) as sock:
        sock.sendall(
            b"POST /api/coupons/validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKENS["admin"].encode() + b"\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 422 "), head


def test_the_unsubscribe_page_allows_its_one_inline_style_by_hash_only(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /unsubscribe?token=not-valid HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"</html>" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    policy = headers_of(head)["content-security-policy"]
    style = body.split(b"<style>")[1].split(b"</style>")[0]
    digest = base64.b64encode(hashlib.sha256(style).digest()).decode()
    assert f"style-src 'self' 'sha256-{digest}'" in policy
    assert "'unsafe-inline'" not in policy
    assert "script-src 'self'" in policy
