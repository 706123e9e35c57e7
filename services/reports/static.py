"""The campaigns dashboard as one static HTML file (charts inlined as SVG), for `crm demo`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from jinja2 import Environment, select_autoescape

from services.reports import charts
from services.reports.domain import (
    CampaignResultRow,
    CampaignRow,
    CampaignsReport,
    Facts,
    campaigns_report,
)
from services.reports.store import open_repository
from shared.settings import StoreSettings

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>crm-stream campaigns report, {{ report.as_of }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1rem; color: #1d2125; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 1rem; }
.charts svg { width: 100%; height: auto; }
.wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { border-bottom: 1px solid #dde; padding: .3rem .5rem; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
caption { text-align: left; padding: .5rem 0; }
th { background: #f1f3f5; }
</style></head>
<body>
<h1>Campaigns report</h1>
<p>As of {{ report.as_of }}. Lift: spend per customer over the offer's validity, treated minus held out, with a 95 % interval.</p>
<div class="charts">{{ issued_svg | safe }}{{ lift_svg | safe }}</div>
<div class="wrap"><table>
<caption>Per offer kind and campaign week; <em>all</em> rows sum every week</caption>
<thead><tr>{% for c in columns %}<th scope="col">{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in report.rows %}<tr>{% for c in columns %}<td>{{ row[c] if row[c] is not none else "" }}</td>{% endfor %}</tr>{% endfor %}</tbody>
</table></div>
<div class="wrap"><table>
<caption>Per campaign, each followed by its A/B arms; lift against the campaign's own hold-out</caption>
<thead><tr>{% for c in campaign_columns %}<th scope="col">{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in report.campaigns %}<tr>{% for c in campaign_columns %}<td>{{ row[c] if row[c] is not none else "" }}</td>{% endfor %}</tr>{% endfor %}</tbody>
</table></div>
</body></html>
"""


def render_static_report(report: CampaignsReport) -> str:
    """The campaigns report as a self-contained HTML page (no script, no external asset)."""
    env = Environment(autoescape=select_autoescape(default=True))
    return env.from_string(_TEMPLATE).render(
        report={
            "as_of": report.as_of,
            "rows": [row.model_dump() for row in report.rows],
            "campaigns": [row.model_dump() for row in report.campaigns],
        },
        issued_svg=charts.issued_redeemed_chart(report),
        lift_svg=charts.lift_chart(report),
        columns=list(CampaignRow.model_fields),
        campaign_columns=list(CampaignResultRow.model_fields),
    )


async def load_facts(store_url: str) -> Facts:
    """The reports read model's facts in the store at `store_url`."""
    async with open_repository(StoreSettings(store_url=store_url)) as repository:
        return await repository.load()


def write_static_report(store_url: str, path: Path) -> Path:
    """Write the campaigns dashboard (table and charts) of the reports read model to `path`.

    Synchronous, for the end of `crm demo`; returns the path written.
    """
    html = render_static_report(campaigns_report(asyncio.run(load_facts(store_url))))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
