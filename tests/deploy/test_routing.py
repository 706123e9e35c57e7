"""The Ingress of each overlay and the compose file's reverse proxy send every public path to the
service that serves it. The expected routing is read from the services' own FastAPI apps (every
route of their OpenAPI documents, and the web page), so a route added to a service, or moved to
another, fails here until the Ingress and the Caddyfile follow."""

from __future__ import annotations

import dataclasses
import re
from functools import cache
from typing import Any

import pytest
from starlette.routing import Match

from crm.registry import SERVICES
from shared.http import HttpEndpoints
from shared.settings import HttpSettings, KafkaSettings, Settings, StoreSettings
from shared.skeleton import ServiceApp
from tests.deploy.test_deploy_files import (
    REPO,
    by_name,
    compose_file,
    ingress_allowed,
    of_kind,
    pod_templates,
    rendered,
)

OVERLAYS = ("dev", "prod")
CADDYFILE = REPO / "deploy" / "compose" / "Caddyfile"
NOT_ROUTED = {
    "/healthz": "probes, inside the cluster",
    "/readyz": "probes, inside the cluster",
    "/openapi.json": "admin tooling, per service",
    "/metrics": "Prometheus, on its own port",
    "/api/customers/{customer_id}/decisions": "offers' answer for agents inside the cluster: "
    "/api/customers belongs to profiles",
}
"""Paths the services serve that no outside client reaches, and why. The admin exports
(`/api/admin/...`, one per service) are not routed either: `crm` gathers them inside."""
PAGES = {"/": "reports", "/ui/": "reports", "/ui/app.js": "reports", "/ui/style.css": "reports"}
"""The web page's own paths (not in any OpenAPI document) and their service."""


@cache
def endpoints() -> dict[str, HttpEndpoints]:
    """Each service's HTTP app as `crm run <service>` builds it (not started: no store, no
    broker is needed to read its routes)."""
    settings = Settings(
        kafka=KafkaSettings(kafka_bootstrap="localhost:9092"),
        store=StoreSettings(store_url="sqlite:///routing-test-never-opened"),
        http=HttpSettings(http_port=0),
    )
    apps = {}
    for spec in SERVICES:
        app = ServiceApp(dataclasses.replace(spec, check=None, background=None), settings)
        apps[spec.name] = HttpEndpoints([app], settings)
    return apps


def concrete(template: str) -> str:
    """A request path for a route's path template: each parameter filled in."""
    return re.sub(r"\{[^}]+\}", "c1", template)


def serves(service: str, path: str) -> bool:
    """Whether the service's app has a route for this path (whatever the method)."""
    scope: dict[str, Any] = {"type": "http", "path": path, "method": "GET", "root_path": ""}
    return any(
        route.matches({**scope, "path_params": {}})[0] != Match.NONE
        for route in endpoints()[service].api.routes
    )


def public_paths() -> dict[str, str]:
    """Every path an outside client may call (a concrete example of each route) -> the service
    that serves it."""
    expected = dict(PAGES)
    for name, app in endpoints().items():
        for template in app.api.openapi()["paths"]:
            if template in NOT_ROUTED or template.startswith("/api/admin/"):
                continue
            path = concrete(template)
            assert expected.setdefault(path, name) == name, f"{path}: two services serve it"
    return expected


# Routing as each front door does it ----------------------------------------------------------


def ingress_rules(overlay: str) -> list[tuple[str, str, str]]:
    """(path, pathType, service) of the overlay's Ingress crm-web."""
    ingress = by_name(rendered(overlay), "Ingress", "crm-web")
    return [
        (p["path"], p["pathType"], p["backend"]["service"]["name"].removeprefix("crm-"))
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    ]


def ingress_route(overlay: str, path: str) -> str | None:
    """The service the Ingress sends a path to: an Exact path first, then the longest Prefix
    matching whole path elements (networking.k8s.io/v1 semantics)."""
    rules = ingress_rules(overlay)
    for rule_path, kind, service in rules:
        if kind == "Exact" and rule_path == path:
            return service
    best: tuple[int, str] | None = None
    for rule_path, kind, service in rules:
        assert kind in ("Exact", "Prefix"), f"{rule_path}: {kind} is controller-specific"
        prefix = rule_path.rstrip("/")
        matches = kind == "Prefix" and (path == prefix or path.startswith(prefix + "/"))
        if matches and (best is None or len(prefix) > best[0]):
            best = (len(prefix), service)
    return best[1] if best else None


def caddy_rules() -> list[tuple[list[str], str]]:
    """(path patterns, upstream service) of the Caddyfile's named matchers."""
    text = CADDYFILE.read_text(encoding="utf-8")
    matchers = {
        m.group(1): m.group(2).split() for m in re.finditer(r"^\s*@(\w+) path (.+)$", text, re.M)
    }
    handles = re.finditer(r"handle @(\w+) \{\s*reverse_proxy (\S+):(\d+)\s*\}", text)
    rules = []
    for handle in handles:
        assert handle.group(3) == "8080", "the services listen on CRM_HTTP_PORT, 8080"
        rules.append((matchers[handle.group(1)], handle.group(2)))
    assert len(rules) == len(matchers), "every matcher has its upstream"
    return rules


def caddy_route(path: str) -> str | None:
    for patterns, service in caddy_rules():
        for pattern in patterns:
            if pattern == path or (
                pattern.endswith("/*") and path.startswith(pattern.removesuffix("*"))
            ):
                return service
    return None


def route(front: str, path: str) -> str | None:
    return caddy_route(path) if front == "compose" else ingress_route(front, path)


FRONTS = (*OVERLAYS, "compose")


# Tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("front", FRONTS)
def test_every_public_route_reaches_the_service_that_serves_it(front: str) -> None:
    expected = public_paths()
    assert {"/api/customers/c1/timeline", "/api/coupons/validate", "/unsubscribe"} <= set(expected)
    wrong = {
        path: (route(front, path), service)
        for path, service in expected.items()
        if route(front, path) != service
    }
    assert not wrong, f"path: (routed to, served by) {wrong}"


@pytest.mark.parametrize("front", FRONTS)
def test_every_routed_path_is_served_by_its_service(front: str) -> None:
    if front == "compose":
        routed = [
            (pattern.removesuffix("/*"), service)
            for patterns, service in caddy_rules()
            for pattern in patterns
        ]
    else:
        routed = [(path, service) for path, _, service in ingress_rules(front)]
    for path, service in routed:
        under = [p for p, s in public_paths().items() if p == path or p.startswith(path + "/")]
        assert under or serves(service, path), f"{path}: {service} serves nothing there"
        assert all(public_paths()[p] == service for p in under), f"{path} is not {service}'s"


@pytest.mark.parametrize("front", FRONTS)
def test_health_metrics_and_admin_exports_are_never_routed(front: str) -> None:
    for path in (*NOT_ROUTED, "/api/admin/customers/c1/export/profiles", "/api/admin"):
        if path == "/api/customers/{customer_id}/decisions":
            continue  # under /api/customers: profiles answers 404
        assert route(front, concrete(path)) is None, path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_names_existing_services_and_its_class(overlay: str) -> None:
    resources = rendered(overlay)
    ingress = by_name(resources, "Ingress", "crm-web")
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert ingress["spec"]["ingressClassName"]
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            service = by_name(resources, "Service", backend["name"])
            assert backend["port"]["name"] in [p["name"] for p in service["spec"]["ports"]]
            assert backend["port"]["name"] == "http", "never the metrics port"


def test_prod_ingress_serves_every_host_over_tls() -> None:
    ingress = by_name(rendered("prod"), "Ingress", "crm-web")
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    covered = {host for tls in ingress["spec"]["tls"] for host in tls["hosts"]}
    assert hosts
    assert hosts <= covered
    assert all(tls["secretName"] for tls in ingress["spec"]["tls"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_the_ingress_controller_reach_every_routed_service(
    overlay: str,
) -> None:
    resources = rendered(overlay)
    policies = of_kind(resources, "NetworkPolicy")
    routed = {service for _, _, service in ingress_rules(overlay)}
    for _, template in pod_templates(resources):
        labels = template["metadata"]["labels"]
        component = labels.get("app.kubernetes.io/component")
        if component in routed:
            assert ingress_allowed(policies, labels, "http", "ingress-nginx"), component


def test_compose_proxy_serves_the_caddyfile_and_the_unsubscribe_links() -> None:
    services = compose_file()["services"]
    web = services["web"]
    assert re.fullmatch(r"caddy:\d+\.\d+\.\d+-alpine", web["image"])
    assert "./deploy/compose/Caddyfile:/etc/caddy/Caddyfile:ro" in web["volumes"]
    published = {port.rsplit(":", 2)[-2]: port.rsplit(":", 1)[-1] for port in web["ports"]}
    assert published == {"8080": "8080"}
    upstreams = {service for _, service in caddy_rules()}
    assert upstreams <= set(services)
    assert set(web["depends_on"]) == upstreams
    public_url = services["notifier"]["environment"]["CRM_PUBLIC_URL"]
    assert public_url == "http://localhost:8080"
    assert caddy_route("/unsubscribe") == "notifier"


def test_caddyfile_needs_no_state_and_hides_nothing_else() -> None:
    text = CADDYFILE.read_text(encoding="utf-8")
    assert "admin off" in text
    assert "auto_https off" in text
    # Anything not routed answers 404 from the proxy itself.
    assert re.search(r"handle \{\s*respond 404\s*\}", text)


def test_a_new_route_would_be_caught() -> None:
    """The drift check itself: a path only a service serves is routed nowhere."""
    assert route("dev", "/api/not-a-route") is None
    assert route("compose", "/api/not-a-route") is None
    assert not serves("profiles", "/ui/")
    assert serves("reports", "/ui/")
