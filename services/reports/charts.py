"""Charts as SVG, drawn on the server with matplotlib.

Why server-side SVG: the page and the static demo report then work offline with no JavaScript
chart library to vendor, the SVG is inlined in the static HTML as is, and each chart carries a
`<title>` for screen readers. matplotlib is not thread-safe: one lock around every drawing.

Labels come from tills (SKUs, store ids): matplotlib's math text is off (`text.parse_math`), so
a SKU like `$X^$` is drawn as written instead of failing the chart. Figures are made with
`Figure` directly, never through pyplot, so none is kept in pyplot's global registry (an error
half way leaks nothing).
"""

from __future__ import annotations

import io
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import matplotlib

matplotlib.use("Agg")  # no display: render to files only

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from services.reports.domain import ALL_WEEKS, CampaignsReport, ProductsReport, StoresReport

_LOCK = threading.Lock()
_COLOURS = ("#1f6feb", "#d9480f", "#2f9e44", "#9c36b5", "#868e96")


def _svg(fig: Figure, title: str) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Title": title})
    text = buffer.getvalue()
    start = text.index("<svg")
    svg = text[start:]
    # An accessible name for the chart, and a size that follows its container.
    return svg.replace("<svg ", f'<svg role="img" aria-label="{title}" ', 1)


@contextmanager
def _drawing() -> Iterator[None]:
    """One drawing at a time, with math text off."""
    with _LOCK, matplotlib.rc_context({"text.parse_math": False}):
        yield


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _empty(title: str) -> str:
    fig, ax = _figure(6, 1.5)
    ax.axis("off")
    ax.text(0.5, 0.5, "no data yet", ha="center", va="center")
    return _svg(fig, title)


def issued_redeemed_chart(report: CampaignsReport) -> str:
    """Offers issued and redeemed per campaign week (all kinds)."""
    title = "Offers issued and redeemed per week"
    with _drawing():
        weeks: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for row in report.rows:
            if row.week != ALL_WEEKS:
                weeks[row.week][0] += row.issued
                weeks[row.week][1] += row.redeemed
                weeks[row.week][2] += row.held_out
        if not weeks:
            return _empty(title)
        labels = sorted(weeks)
        x = range(len(labels))
        fig, ax = _figure(7, 3.2)
        width = 0.28
        ax.bar(
            [i - width for i in x],
            [weeks[w][0] for w in labels],
            width,
            label="issued",
            color=_COLOURS[0],
        )
        ax.bar(list(x), [weeks[w][1] for w in labels], width, label="redeemed", color=_COLOURS[2])
        ax.bar(
            [i + width for i in x],
            [weeks[w][2] for w in labels],
            width,
            label="held out",
            color=_COLOURS[4],
        )
        ax.set_xticks(list(x), labels, rotation=30, ha="right")
        ax.set_ylabel("offers")
        ax.set_title(title)
        ax.legend(frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        return _svg(fig, title)


def lift_chart(report: CampaignsReport) -> str:
    """Lift per kind and week, with the 95 % interval where there is one."""
    title = "Lift over time: spend per customer, treated minus held out"
    with _drawing():
        series: dict[str, list[tuple[str, Decimal, Decimal | None, Decimal | None]]] = defaultdict(
            list
        )
        for row in report.rows:
            if row.week != ALL_WEEKS and row.lift is not None:
                series[row.kind].append((row.week, row.lift, row.lift_low, row.lift_high))
        if not series:
            return _empty(title)
        weeks = sorted({w for points in series.values() for w, *_ in points})
        index = {w: i for i, w in enumerate(weeks)}
        fig, ax = _figure(7, 3.2)
        for n, (kind, points) in enumerate(sorted(series.items())):
            xs = [index[w] + (n - len(series) / 2) * 0.08 for w, *_ in points]
            ys = [float(lift) for _, lift, _, _ in points]  # drawing only: figures stay Decimal
            low = [float(lift - lo) if lo is not None else 0.0 for _, lift, lo, _ in points]
            high = [float(hi - lift) if hi is not None else 0.0 for _, lift, _, hi in points]
            ax.errorbar(
                xs, ys, yerr=[low, high], fmt="o-", capsize=3, label=kind, color=_COLOURS[n % 5]
            )
        ax.axhline(0, color="#555", linewidth=0.8)
        ax.set_xticks(range(len(weeks)), weeks, rotation=30, ha="right")
        ax.set_ylabel("lift per customer")
        ax.set_title(title)
        ax.legend(frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        return _svg(fig, title)


def products_chart(report: ProductsReport) -> str:
    title = f"Top SKUs by revenue, {report.start} to {report.as_of}"
    with _drawing():
        if not report.skus:
            return _empty(title)
        rows = list(reversed(report.skus))
        fig, ax = _figure(7, 0.4 * len(rows) + 1)
        ax.barh(
            [r.key for r in rows],
            [float(r.revenue) for r in rows],
            color=_COLOURS[0],
            label="this period",
        )
        ax.barh(
            [r.key for r in rows],
            [float(r.previous_revenue) for r in rows],
            color="none",
            edgecolor=_COLOURS[1],
            label="previous period",
        )
        ax.set_xlabel("revenue")
        ax.set_title(title)
        ax.legend(frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        return _svg(fig, title)


def stores_chart(report: StoresReport) -> str:
    title = f"Store revenue against goal, {report.month}"
    with _drawing():
        if not report.rows:
            return _empty(title)
        labels = [r.store_id for r in report.rows]
        fig, ax = _figure(7, 3.2)
        ax.bar(labels, [float(r.revenue) for r in report.rows], color=_COLOURS[0], label="revenue")
        goals = [(i, float(r.revenue_goal)) for i, r in enumerate(report.rows) if r.revenue_goal]
        if goals:
            ax.scatter(
                [i for i, _ in goals],
                [g for _, g in goals],
                marker="_",
                s=600,
                color=_COLOURS[1],
                label="goal",
                zorder=3,
            )
        ax.set_ylabel("revenue")
        ax.set_title(title)
        ax.legend(frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        return _svg(fig, title)
