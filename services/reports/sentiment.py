"""Sentiment per brand and per category, per ISO week: pure, from the read model's opinions.

An opinion is one interaction that carried a sentiment (positive, neutral, negative) about a
brand or a category (social likes and dislikes, support tickets), as ingest extracted it. It is
stored once per interaction event id, so the figures are counts over the set of those events,
whatever order or how many times they arrive. An erased customer's opinions stay counted,
unlinked from them like every other fact.

Net score: (positive - negative) / all opinions, in percent, from -100 (all negative) to +100.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from shared.events import Sentiment
from shared.marketing import campaign_period

Dimension = Literal["brand", "category"]
ALL_WEEKS = "all"
_ZERO = Decimal(0)
DEFAULT_WEEKS = 12
"""Weeks a sentiment report covers when no first date is given."""


@dataclass(frozen=True, slots=True)
class Opinion:
    """One interaction's sentiment about a brand and/or a category; `day` is its UTC day."""

    event_id: str
    customer_id: str | None
    at: dt.datetime
    sentiment: Sentiment
    brand: str | None = None
    category: str | None = None

    @property
    def day(self) -> dt.date:
        return self.at.astimezone(dt.UTC).date()


class SentimentRow(BaseModel):
    dimension: Dimension = Field(description="What the label names: a brand or a category.")
    label: str = Field(description="The brand or category (lower case).")
    week: str = Field(description="ISO week, `YYYY-Www`, or `all` for the whole period.")
    positive: int = Field(description="Positive opinions (likes, happy tickets...).")
    neutral: int = Field(description="Neutral opinions.")
    negative: int = Field(description="Negative opinions (dislikes, complaints...).")
    total: int = Field(description="All opinions: positive + neutral + negative.")
    net_score: Decimal = Field(
        description="(positive - negative) / total, in percent: -100 to +100."
    )


class SentimentReport(BaseModel):
    name: Literal["sentiment"] = "sentiment"
    as_of: dt.date = Field(description="Last day counted.")
    since: dt.date = Field(description="First day counted.")
    rows: list[SentimentRow] = Field(
        description="Per brand, then per category (by label): one row per ISO week with "
        "opinions, then the whole period (`all`)."
    )


def _row(dimension: Dimension, label: str, week: str, counts: Counter[str]) -> SentimentRow:
    total = counts["positive"] + counts["neutral"] + counts["negative"]
    net = Decimal((counts["positive"] - counts["negative"]) * 100) / total if total else _ZERO
    return SentimentRow(
        dimension=dimension,
        label=label,
        week=week,
        positive=counts["positive"],
        neutral=counts["neutral"],
        negative=counts["negative"],
        total=total,
        net_score=net.quantize(Decimal("0.1")),
    )


def sentiment_report(
    opinions: Iterable[Opinion],
    as_of: dt.date | None = None,
    since: dt.date | None = None,
    *,
    weeks: int = DEFAULT_WEEKS,
) -> SentimentReport:
    """Opinions from `since` (default: the Monday of the last `weeks` ISO weeks up to `as_of`)
    to `as_of` (default: the latest opinion's day), per brand and per category, per ISO week
    and over the period."""
    seen = list(opinions)
    as_of = as_of or max((o.day for o in seen), default=None) or dt.datetime.now(dt.UTC).date()
    if since is None:  # from the Monday of the first of the `weeks` ISO weeks
        span = dt.timedelta(days=as_of.weekday() + 7 * (weeks - 1))
        since = as_of - span if as_of - dt.date.min >= span else dt.date.min
    counts: dict[tuple[Dimension, str, str], Counter[str]] = defaultdict(Counter)
    for o in seen:
        if not since <= o.day <= as_of:
            continue
        week = campaign_period(o.day)
        labels: tuple[tuple[Dimension, str | None], ...] = (
            ("brand", o.brand),
            ("category", o.category),
        )
        for dimension, label in labels:
            if label is not None:
                counts[(dimension, label, week)][o.sentiment] += 1
                counts[(dimension, label, ALL_WEEKS)][o.sentiment] += 1
    # ISO weeks sort as text, and `all` after them.
    rows = [_row(d, label, week, counts[(d, label, week)]) for d, label, week in sorted(counts)]
    return SentimentReport(as_of=as_of, since=since, rows=rows)
