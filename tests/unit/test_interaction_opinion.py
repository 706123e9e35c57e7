"""Ingest takes an interaction's sentiment, brand and category out of its details, from an
allow-list and normalised, into open fields of `InteractionRecorded`; the details stay whole."""

from __future__ import annotations

import json
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.ingest.domain import decode, normalize_interaction
from shared.events import InteractionRecorded
from shared.raw import RawInteraction
from shared.topics import INTERACTIONS_RAW

KEY = b"test-key"
UTC = ZoneInfo("UTC")


def recorded(kind: str, details: dict[str, Any]) -> InteractionRecorded:
    doc = {
        "event_id": "i-1",
        "type": kind,
        "occurred_at": "2026-03-01T10:00:00Z",
        "card_number": "6035123456789012",
        "channel": "social",
        "details": details,
    }
    raw = decode(INTERACTIONS_RAW, json.dumps(doc).encode())
    assert isinstance(raw, RawInteraction)
    event = normalize_interaction(raw, key=KEY, zone=UTC, resolve=lambda card: f"c-{card}")
    assert event is not None
    return event


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("positive", "positive"),
        (" Positive ", "positive"),
        ("POS", "positive"),
        ("+", "positive"),
        ("+1", "positive"),
        ("Thumbs up", "positive"),
        ("thumbs-up", "positive"),
        ("\N{THUMBS UP SIGN}", "positive"),
        ("liked", "positive"),
        ("negative", "negative"),
        ("Neg", "negative"),
        ("-", "negative"),
        ("-1", "negative"),
        ("thumbs_down", "negative"),
        ("dislike", "negative"),
        ("complaint", "negative"),
        ("neutral", "neutral"),
        ("Mixed", "neutral"),
        ("0", "neutral"),
        (0.75, "positive"),
        (-2, "negative"),
        (0, "neutral"),
        ("0.3", "positive"),
        ("meh", None),
        ("furious about the delivery", None),
        ("nan", None),
        (True, None),
        (None, None),
    ],
)
def test_a_sentiment_in_a_common_spelling_is_normalised_and_an_unknown_one_is_none(
    spelling: Any, expected: str | None
) -> None:
    assert recorded("support_ticket", {"sentiment": spelling}).sentiment == expected


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("social_like", "positive"),
        ("Social-Like", "positive"),
        ("like", "positive"),
        ("social_dislike", "negative"),
        ("DISLIKE", "negative"),
        ("web_visit", None),
        ("support_ticket", None),
    ],
)
def test_a_like_or_dislike_type_says_the_sentiment_when_the_details_do_not(
    kind: str, expected: str | None
) -> None:
    assert recorded(kind, {"brand": "Acme"}).sentiment == expected


def test_a_stated_sentiment_wins_over_the_type() -> None:
    assert recorded("social_like", {"sentiment": "negative"}).sentiment == "negative"
    assert recorded("social_like", {"sentiment": "whatever"}).sentiment == "positive"


def test_brand_and_category_are_trimmed_collapsed_and_lower_cased_labels() -> None:
    event = recorded(
        "social_like", {"Brand": "  Acme \t Coffee  ", "CATEGORY": "Hot Drinks", "topic": "x"}
    )
    assert (event.brand, event.category) == ("acme coffee", "hot drinks")
    # The details travel on (sealed): the labels are copied out of them, not taken away.
    assert set(event.details) == {"Brand", "CATEGORY", "topic"}


@pytest.mark.parametrize(
    "value",
    [
        "x" * 41,
        "ana@example.com",
        "https://example.com/acme",
        "<b>acme</b>",
        "=HYPERLINK(1)",
        "call me on 0612345678",
        "",
        "   ",
        42,
        True,
    ],
)
def test_what_is_not_a_short_label_is_no_brand_or_category(value: Any) -> None:
    event = recorded("social_like", {"brand": value, "category": value})
    assert (event.brand, event.category) == (None, None)


def test_an_interaction_without_opinion_has_none() -> None:
    event = recorded("email_open", {"topic": "newsletter"})
    assert (event.sentiment, event.brand, event.category) == (None, None, None)


def test_the_opinion_travels_open_on_the_wire_and_within_its_bounds() -> None:
    event = recorded("social_dislike", {"brand": "Acme", "category": "Coffee", "note": "meh"})
    wire = json.loads(event.model_dump_json())
    assert (wire["sentiment"], wire["brand"], wire["category"]) == ("negative", "acme", "coffee")
    with pytest.raises(ValueError, match="sentiment"):
        InteractionRecorded.model_validate(wire | {"sentiment": "angry"})
