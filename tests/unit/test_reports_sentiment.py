"""The sentiment report, pure: ISO weeks (across a new year), its default period of whole ISO
weeks, the net score, and periods at the ends of the calendar."""

from __future__ import annotations

import datetime as dt

from services.reports.sentiment import Opinion, sentiment_report


def opinion(n: int, day: dt.date, sentiment: str, brand: str | None = "acme") -> Opinion:
    at = dt.datetime.combine(day, dt.time(23, 30), tzinfo=dt.UTC)
    return Opinion(f"i-{n}", f"c-{n}", at, sentiment, brand=brand)  # type: ignore[arg-type]


def test_weeks_are_iso_weeks_across_the_new_year() -> None:
    opinions = [
        opinion(1, dt.date(2026, 12, 31), "positive"),  # Thursday of 2026-W53
        opinion(2, dt.date(2027, 1, 3), "negative"),  # Sunday, still 2026-W53
        opinion(3, dt.date(2027, 1, 4), "neutral"),  # Monday of 2027-W01
    ]
    report = sentiment_report(opinions)
    weeks = {r.week: (r.positive, r.neutral, r.negative) for r in report.rows}
    assert weeks == {"2026-W53": (1, 0, 1), "2027-W01": (0, 1, 0), "all": (1, 1, 1)}
    assert report.as_of == dt.date(2027, 1, 4)
    assert report.since == dt.date(2026, 10, 19)  # the Monday 11 weeks before 2027-W01's


def test_the_default_period_is_whole_iso_weeks_and_earlier_opinions_are_left_out() -> None:
    as_of = dt.date(2026, 3, 11)  # a Wednesday
    opinions = [
        opinion(1, dt.date(2026, 3, 9), "positive"),  # Monday of the last week
        opinion(2, dt.date(2026, 3, 8), "negative"),  # Sunday before: an earlier week
    ]
    report = sentiment_report(opinions, as_of, weeks=1)
    assert report.since == dt.date(2026, 3, 9)
    assert [(r.week, r.total) for r in report.rows] == [("2026-W11", 1), ("all", 1)]


def test_net_score_is_positive_minus_negative_over_all_in_percent() -> None:
    day = dt.date(2026, 3, 2)
    opinions = [
        opinion(n, day, s) for n, s in enumerate(["positive"] * 5 + ["neutral", "negative"])
    ]
    [week, _] = sentiment_report(opinions).rows
    assert (week.total, str(week.net_score)) == (7, "57.1")


def test_an_opinion_without_brand_or_category_is_in_no_row() -> None:
    report = sentiment_report([opinion(1, dt.date(2026, 3, 2), "positive", brand=None)])
    assert report.rows == []


def test_a_period_at_the_ends_of_the_calendar_is_no_error() -> None:
    assert sentiment_report([], dt.date.min).since == dt.date.min
    assert sentiment_report([], dt.date.max, weeks=520).rows == []
