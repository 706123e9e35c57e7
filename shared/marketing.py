"""What offers, profiles and reports share about customers: RFM segments and campaign periods.

RFM segments use fixed thresholds (no quintiles), so a customer's segment depends on that
customer's figures and the day only, never on other customers: the profiles' look-up, the
reports and the offers compute it alike from the same figures.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

Segment = Literal[
    "prospect", "champions", "loyal", "new", "active", "at_risk", "hibernating", "erased"
]


@dataclass(frozen=True, slots=True)
class RfmThresholds:
    """Fixed RFM thresholds, checked in this order, the first that matches wins:

    - `erased`: the customer was erased; `prospect`: no purchase yet;
    - `champions`: last purchase <= 30 days ago, >= 10 checkouts and >= 500 spent;
    - `loyal`: last purchase <= 60 days ago and >= 5 checkouts;
    - `new`: first purchase <= 30 days ago;
    - `active`: last purchase <= 90 days ago;
    - `at_risk`: >= 5 checkouts and last purchase <= 365 days ago;
    - `hibernating`: everyone else.
    """

    champion_recency_days: int = 30
    champion_frequency: int = 10
    champion_monetary: Decimal = Decimal(500)
    loyal_recency_days: int = 60
    loyal_frequency: int = 5
    new_days: int = 30
    active_recency_days: int = 90
    at_risk_frequency: int = 5
    at_risk_recency_days: int = 365


DEFAULT_RFM = RfmThresholds()


def rfm_segment(
    *,
    today: dt.date,
    first_purchase: dt.date | None,
    last_purchase: dt.date | None,
    visits: int,
    spend: Decimal,
    erased: bool = False,
    thresholds: RfmThresholds = DEFAULT_RFM,
) -> Segment:
    """The RFM segment of a customer's figures on `today` (dates of purchases in UTC)."""
    if erased:
        return "erased"
    if last_purchase is None or first_purchase is None:
        return "prospect"
    recency = (today - last_purchase).days
    t = thresholds
    if (
        recency <= t.champion_recency_days
        and visits >= t.champion_frequency
        and spend >= t.champion_monetary
    ):
        return "champions"
    if recency <= t.loyal_recency_days and visits >= t.loyal_frequency:
        return "loyal"
    if (today - first_purchase).days <= t.new_days:
        return "new"
    if recency <= t.active_recency_days:
        return "active"
    if visits >= t.at_risk_frequency and recency <= t.at_risk_recency_days:
        return "at_risk"
    return "hibernating"


def campaign_period(day: dt.date) -> str:
    """The campaign period of an offer day: its ISO week, `YYYY-Www`."""
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"
