"""A customer's sentiment summary (per brand and per category: positive, neutral, negative) is
a count over the set of their interaction events: the same in any arrival order and batching,
with redeliveries, across a card link; and the agent's view shows it, most opinions first."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.profiles.api import customer_view
from services.profiles.domain import CustomerProfile, SentimentCounts
from shared.events import CustomerErased, InteractionRecorded, NormalizedEvent
from tests.unit.test_profiles_order import (
    C1,
    C2,
    arrivals,
    at,
    contents,
    deliver,
    in_time_order,
    link,
    live,
    signup,
)


def opinion(
    event_id: str,
    when: dt.datetime,
    sentiment: Any,
    *,
    brand: str | None = None,
    category: str | None = None,
    customer: str = C1,
) -> InteractionRecorded:
    return InteractionRecorded(
        event_id=event_id,
        occurred_at=when,
        customer_id=customer,
        interaction_type="social_like" if sentiment == "positive" else "support_ticket",
        details={"ref": event_id},
        sentiment=sentiment,
        brand=brand,
        category=category,
    )


opinions = st.builds(
    lambda customer, sentiment, brand, category: (customer, sentiment, brand, category),
    st.sampled_from([C1, C1, C2]),
    st.sampled_from(["positive", "neutral", "negative", None]),
    st.sampled_from(["acme", "globex", None]),
    st.sampled_from(["coffee", "dairy", None]),
)


def expected_counts(events: list[NormalizedEvent], field: str) -> dict[str, dict[str, int]]:
    """Per label, the sentiments of the distinct interaction events naming it."""
    counts: dict[str, Counter[str]] = {}
    for e in {e.event_id: e for e in events}.values():
        if isinstance(e, InteractionRecorded) and e.sentiment and getattr(e, field):
            counts.setdefault(getattr(e, field), Counter())[e.sentiment] += 1
    return {
        label: {s: c[s] for s in ("positive", "neutral", "negative")} for label, c in counts.items()
    }


def summary(profile: CustomerProfile, field: str) -> dict[str, dict[str, int]]:
    table: dict[str, SentimentCounts] = getattr(profile, f"sentiment_by_{field}")
    return {
        label: {"positive": c.positive, "neutral": c.neutral, "negative": c.negative}
        for label, c in table.items()
    }


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_the_sentiment_summary_is_the_count_over_the_set_of_interactions_in_any_order(
    data: st.DataObject,
) -> None:
    drawn = data.draw(st.lists(opinions, min_size=1, max_size=14))
    events: list[NormalizedEvent] = [
        opinion(f"i-{n:02}", data.draw(st.integers(0, 20).map(at)), s, brand=b, category=g,
                customer=who)
        for n, (who, s, b, g) in enumerate(drawn)
    ]  # fmt: skip
    events += [signup("s-1", at(0)), link("l-1", at(data.draw(st.integers(0, 20))))]
    batches = data.draw(arrivals(events))
    got = deliver(batches)
    assert contents(got) == contents(deliver([in_time_order(events)]))
    merged = live(got)  # the second card's customer's opinions merged in
    assert summary(merged, "brand") == expected_counts(events, "brand")
    assert summary(merged, "category") == expected_counts(events, "category")


def test_the_agents_view_lists_opinions_per_brand_and_category_with_a_net_score() -> None:
    events: list[NormalizedEvent] = [
        signup("s-1", at(0)),
        opinion("i-1", at(1), "positive", brand="acme", category="coffee"),
        opinion("i-2", at(2), "positive", brand="acme"),
        opinion("i-3", at(3), "negative", brand="acme", category="coffee"),
        opinion("i-4", at(4), "neutral", brand="globex"),
        opinion("i-5", at(5), None, brand="globex"),  # no sentiment: not an opinion
    ]
    profile = live(deliver([events, events[1:3]]))  # two redelivered
    view = customer_view(profile, coupons=[], today=at(6).date()).model_dump(mode="json")
    assert view["sentiment_by_brand"] == [
        {"label": "acme", "positive": 2, "neutral": 0, "negative": 1, "net_score": "33.3"},
        {"label": "globex", "positive": 0, "neutral": 1, "negative": 0, "net_score": "0.0"},
    ]
    assert view["sentiment_by_category"] == [
        {"label": "coffee", "positive": 1, "neutral": 0, "negative": 1, "net_score": "0.0"}
    ]


def test_an_erasure_leaves_no_sentiment_summary() -> None:
    events: list[NormalizedEvent] = [
        signup("s-1", at(0)),
        opinion("i-1", at(1), "positive", brand="acme"),
        CustomerErased(event_id="x-1", occurred_at=at(2), customer_id=C1),
    ]
    stone = deliver([events])[C1]
    assert stone.erased
    assert stone.sentiment_by_brand == {}
    assert stone.sentiment_by_category == {}
