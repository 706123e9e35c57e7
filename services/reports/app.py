"""The reports service, declared: it keeps facts of `crm.events`, `crm.offers`,
`crm.deliveries` and `crm.campaigns` (topics other services own) and serves the reports, the
charts and the page.

It publishes nothing. The HTTP side lives in `api.py`; its names are also importable from here,
where the command line and the tests have always found them.
"""

from __future__ import annotations

from services.reports.api import (
    ReportsLoader,
    add_web_routes,
    build_report,
    build_reports_router,
    report_csv,
    reports_routes,
)
from services.reports.service import ReportsService
from services.reports.store import ReportsRepository, open_repository
from shared.campaigns import CampaignChanged
from shared.edge import foreign, json_decoder
from shared.events import NORMALIZED_EVENT, OFFER_EVENT, DeliveryRecorded
from shared.settings import Settings
from shared.skeleton import ServiceApp, ServiceSpec
from shared.topics import CAMPAIGNS, DELIVERIES, EVENTS, GROUP_REPORTS, OFFERS
from shared.vault import sealed_decoder

__all__ = [
    "SPEC",
    "ReportsLoader",
    "add_web_routes",
    "build_report",
    "build_reports_router",
    "create_app",
    "report_csv",
]


def build(settings: Settings, repository: ReportsRepository) -> ReportsService:
    return ReportsService(repository, calendar=settings.calendar)


SPEC: ServiceSpec[ReportsRepository, ReportsService] = ServiceSpec(
    name="reports",
    group=GROUP_REPORTS,
    decoders={
        # Blind: reports needs no personal field, and gets no data key to open one.
        EVENTS: foreign(sealed_decoder(NORMALIZED_EVENT, blind=True)),
        OFFERS: foreign(json_decoder(OFFER_EVENT)),
        DELIVERIES: foreign(json_decoder(DeliveryRecorded)),
        # Offers owns it: each campaign's name, schedule and arms, for the per-campaign rows.
        CAMPAIGNS: foreign(json_decoder(CampaignChanged)),
    },
    open_store=lambda settings: open_repository(settings.store),
    build=build,
    # Nothing is published: the facts are saved and that is all.
    order="save_then_publish",
    routes=reports_routes,
)


def create_app(
    settings: Settings | None = None, *, repository: ReportsRepository | None = None
) -> ServiceApp[ReportsService]:
    """The reports service; a passed repository is used as is (and not closed)."""
    return ServiceApp(SPEC, settings, repository=repository)
