"""The reports over HTTP: the reports API (JSON or CSV), the charts (SVG) and the web page.

`GET /api/reports/{name}` and `GET /api/charts/{name}.svg` need the `marketing` (or `admin`)
role; the page under `/ui/` is static and fetches both with the user's token.
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' Annotated
# dependencies, which name local variables, at definition time.

import asyncio
import csv
import datetime as dt
import io
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from fastapi.responses import FileResponse, RedirectResponse

from services.reports import charts
from services.reports.domain import (
    AnyReport,
    Facts,
    ReportName,
    campaigns_report,
    products_report,
    segments_report,
    stores_report,
    tables_of,
)
from services.reports.sentiment import DEFAULT_WEEKS, sentiment_report
from services.reports.service import ReportsService
from services.reports.settings import ReportsSettings
from services.reports.store import ReportsRepository, customer_export
from shared.auth import Principal, TokenTable, require
from shared.csv_cells import csv_cell
from shared.export import export_router
from shared.skeleton import NotStarted, ServiceApp

WEB_DIR = Path(__file__).parent / "web"

ChartName = Literal["issued", "lift", "products", "stores", "teams"]

CHART_WEEKS = 12
"""The campaign charts' default period: the last 12 campaign weeks."""

Weeks = Annotated[
    int | None,
    Query(
        ge=1,
        le=520,
        description="campaigns: the period is the last N campaign weeks up to `as_of` (default: "
        "every offer; the charts: 12); products: weeks of checkouts the bought-together pairs "
        "are read from (default `CRM_AFFINITY_WEEKS`); sentiment: the last N ISO weeks up to "
        "`as_of` (default 12).",
    ),
]


def build_report(
    name: ReportName,
    facts: Facts,
    options: ReportsSettings,
    *,
    as_of: dt.date | None = None,
    since: dt.date | None = None,
    weeks: int | None = None,
) -> AnyReport:
    """One report of the read model's facts."""
    if name == "campaigns":
        return campaigns_report(facts, as_of, weeks=weeks, since=since)
    if name == "products":
        return products_report(
            facts,
            as_of,
            days=options.report_period_days,
            top=options.report_top,
            affinity_weeks=weeks or options.affinity_weeks,
            min_support=options.affinity_min_support,
        )
    if name == "stores":
        return stores_report(facts, options.store_goals, as_of, options.store_teams)
    if name == "sentiment":
        return sentiment_report(facts.opinions, as_of, since, weeks=weeks or DEFAULT_WEEKS)
    return segments_report(facts, as_of, since)


def report_csv(report: AnyReport) -> str:
    """A report as CSV: each table under a `# title` line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for n, table in enumerate(tables_of(report)):
        if n:
            buffer.write("\n")
        buffer.write(f"# {table.title}\n")
        writer.writerow([csv_cell(c) for c in table.columns])
        # SKUs, names and store ids come from tills: a cell like `=HYPERLINK(...)` is text
        writer.writerows([csv_cell(v) for v in row] for row in table.rows)
    return buffer.getvalue()


def chart_svg(
    name: ChartName,
    facts: Facts,
    options: ReportsSettings,
    *,
    weeks: int | None = None,
    since: dt.date | None = None,
) -> str:
    """A chart; the campaign charts over the period of `weeks` (default 12) or `since`."""
    if name in ("issued", "lift"):
        period = campaigns_report(
            facts, weeks=(weeks or CHART_WEEKS) if since is None else None, since=since
        )
        if name == "issued":
            return charts.issued_redeemed_chart(period)
        return charts.lift_chart(period)
    if name == "products":
        return charts.products_chart(
            products_report(facts, days=options.report_period_days, top=options.report_top)
        )
    stores = stores_report(facts, options.store_goals, teams=options.store_teams)
    if name == "teams":
        return charts.teams_chart(stores)
    return charts.stores_chart(stores)


class ReportsLoader:
    """Loads the facts from the running service's repository, or from the one given."""

    def __init__(
        self,
        app: ServiceApp[ReportsService] | None = None,
        repository: ReportsRepository | None = None,
    ) -> None:
        self._app = app
        self._repository = repository

    def repository(self) -> ReportsRepository:
        repository = self._repository
        if repository is None and self._app is not None:
            try:
                repository = self._app.service.repository
            except NotStarted:
                repository = None
        if repository is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "not started")
        return repository

    async def __call__(self) -> Facts:
        return await self.repository().load()


def build_reports_router(
    load: ReportsLoader, tokens: TokenTable, options: ReportsSettings
) -> APIRouter:
    """The reports API and the charts over a `ReportsLoader` (tests give it a repository)."""
    router = APIRouter(tags=["reports"])
    marketing = require(tokens, "marketing")

    @router.get("/api/reports/{name}", response_model=None)
    async def report(
        name: ReportName,
        _: Annotated[Principal, Depends(marketing)],
        as_of: Annotated[dt.date | None, Query(description="Last day reported.")] = None,
        since: Annotated[
            dt.date | None,
            Query(
                description="First date: segments, the date compared with; campaigns and "
                "sentiment, the first day of the period (instead of `weeks`)."
            ),
        ] = None,
        weeks: Weeks = None,
        format: Annotated[Literal["json", "csv"], Query(description="json or csv.")] = "json",
    ) -> AnyReport | Response:
        """A report: campaigns (with lift), products (with what is bought together), stores
        (and teams, against goals), segments, or sentiment (per brand and category, weekly)."""
        built = build_report(name, await load(), options, as_of=as_of, since=since, weeks=weeks)
        if format == "csv":
            return Response(report_csv(built), media_type="text/csv")
        return built

    @router.get("/api/charts/{name}.svg", response_class=Response)
    async def chart(
        name: ChartName,
        _: Annotated[Principal, Depends(marketing)],
        weeks: Weeks = None,
        since: Annotated[
            dt.date | None, Query(description="Campaign charts: first day of the period.")
        ] = None,
    ) -> Response:
        """A chart as SVG (drawn on the server); the campaign charts over the last 12 weeks
        unless `weeks` or `since` says otherwise."""
        facts = await load()
        # matplotlib is slow and holds a lock: draw off the event loop.
        svg = await asyncio.to_thread(chart_svg, name, facts, options, weeks=weeks, since=since)
        return Response(svg, media_type="image/svg+xml")

    @router.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=status.HTTP_307_TEMPORARY_REDIRECT)

    async def export(customer_id: str) -> dict[str, object]:
        return await customer_export(load.repository(), customer_id)

    router.include_router(export_router("reports", tokens, export))
    return router


WEB_FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "campaigns.js": ("campaigns.js", "text/javascript; charset=utf-8"),
    "reports.js": ("reports.js", "text/javascript; charset=utf-8"),
    "sentiment.js": ("sentiment.js", "text/javascript; charset=utf-8"),
    "journey.js": ("journey.js", "text/javascript; charset=utf-8"),
    "style.css": ("style.css", "text/css; charset=utf-8"),
}


def add_web_routes(router: APIRouter) -> None:
    """The static page under /ui/: our own small JavaScript and CSS, no CDN, nothing fetched."""

    @router.get("/ui/", include_in_schema=False)
    @router.get("/ui/{name}", include_in_schema=False)
    async def web(name: str = "") -> FileResponse:
        if name not in WEB_FILES:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
        file, media_type = WEB_FILES[name]
        return FileResponse(WEB_DIR / file, media_type=media_type)


def reports_routes(app: ServiceApp[ReportsService]) -> APIRouter:
    """The reports API, the charts and the page of a running reports service (`crm run`)."""
    settings = app.settings
    tokens = TokenTable.parse(
        settings.http.api_tokens.get_secret_value() if settings.http.api_tokens else None
    )
    router = build_reports_router(ReportsLoader(app), tokens, ReportsSettings())
    add_web_routes(router)
    return router
