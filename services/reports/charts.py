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
from typing import Literal

import matplotlib

matplotlib.use("Agg")  # no display: render to files only

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from services.reports.domain import (
    ALL_WEEKS,
    CampaignsReport,
    ProductsReport,
    StoreRow,
    StoresReport,
    TeamRow,
)

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


MAX_WEEK_LABELS = 8
"""More weeks than this on an axis: every other (or every n-th) week is labelled."""


def _week_ticks(ax: Axes, weeks: list[str]) -> None:
    """Label the week axis readably: at most `MAX_WEEK_LABELS` labels (the latest week always
    one of them), `W48 2026` style, slanted."""
    step = -(-len(weeks) // MAX_WEEK_LABELS)  # ceiling
    shown = list(range(len(weeks) - 1, -1, -step))[::-1]
    labels = [f"{weeks[i][5:]} {weeks[i][:4]}" for i in shown]
    ax.set_xticks(shown, labels, rotation=45, ha="right")
    ax.set_xlim(-0.6, len(weeks) - 0.4)


def _period_weeks(report: CampaignsReport, seen: set[str]) -> list[str]:
    """The weeks to draw: the report's period (weeks without offers too), or those seen."""
    return list(report.weeks) if report.weeks else sorted(seen)


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
        labels = _period_weeks(report, set(weeks))
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
        _week_ticks(ax, labels)
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
        weeks = _period_weeks(report, {w for points in series.values() for w, *_ in points})
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
        _week_ticks(ax, weeks)
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


def _goals_chart(title: str, labels: list[str], rows: list[StoreRow] | list[TeamRow]) -> str:
    """Revenue per store (or team) in the month so far, against the goal pro-rated to the days
    elapsed (where it should be by now) and the whole month's goal."""
    with _drawing():
        if not rows:
            return _empty(title)
        fig, ax = _figure(7, 3.2)
        x = list(range(len(rows)))
        ax.bar(x, [float(r.revenue) for r in rows], 0.5, color=_COLOURS[0], label="revenue so far")
        goal_lines: tuple[tuple[str, str, str, Literal["-", "--"], float], ...] = (
            ("revenue_goal", "month's goal", _COLOURS[4], "--", 1.5),
            ("revenue_goal_to_date", "goal to date", _COLOURS[1], "-", 3.0),
        )
        for value, name, colour, style, width in goal_lines:
            points = [(i, getattr(r, value)) for i, r in enumerate(rows) if getattr(r, value)]
            if points:
                ax.hlines(
                    [float(goal) for _, goal in points],
                    [i - 0.35 for i, _ in points],
                    [i + 0.35 for i, _ in points],
                    colors=colour,
                    linestyles=style,
                    linewidths=width,
                    label=name,
                    zorder=3,
                )
        slanted = len(rows) > 6
        ax.set_xticks(x, labels, rotation=30 if slanted else 0, ha="right" if slanted else "center")
        ax.set_xlim(-0.8, len(rows) - 0.2)
        ax.set_ylabel("revenue")
        ax.set_title(title)
        ax.legend(frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.spines[["top", "right"]].set_visible(False)
        return _svg(fig, title)


def stores_chart(report: StoresReport) -> str:
    title = (
        f"Store revenue against goal, {report.month} "
        f"(day {report.days_elapsed} of {report.days_in_month})"
    )
    return _goals_chart(title, [r.store_id for r in report.rows], report.rows)


def teams_chart(report: StoresReport) -> str:
    title = (
        f"Team revenue against goal, {report.month} "
        f"(day {report.days_elapsed} of {report.days_in_month})"
    )
    return _goals_chart(title, [r.team for r in report.teams], report.teams)
