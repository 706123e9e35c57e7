"""The five services crm-stream runs, by their declarations (`crm run`, the demo, the bench)."""

from __future__ import annotations

from typing import Any

from services import ingest, notifier, offers, profiles, reports
from shared.skeleton import ServiceSpec

SERVICES: tuple[ServiceSpec[Any, Any], ...] = (
    ingest.SPEC,
    profiles.SPEC,
    offers.SPEC,
    notifier.SPEC,
    reports.SPEC,
)
"""In pipeline order: each one's input is an earlier one's output (reports reads them all)."""

PIPELINE: tuple[ServiceSpec[Any, Any], ...] = SERVICES[:4]
"""The services a checkout crosses on its way to an e-mail."""

BY_NAME: dict[str, ServiceSpec[Any, Any]] = {spec.name: spec for spec in SERVICES}
"""For the command line, which names services by their name."""
