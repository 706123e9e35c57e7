"""Normalization of raw events: every tolerance of the contract and every dead-letter reason."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.ingest.domain import (
    LinkRequest,
    decode,
    normalize_checkout,
    normalize_customer_event,
    normalize_interaction,
)
from shared.errors import Rejected
from shared.events import ConsentChanged, CustomerErased, CustomerSignedUp, CustomerUpdated
from shared.privacy import card_id, customer_id_for_card
from shared.raw import RawCheckout, RawCustomerEvent, RawInteraction
from shared.topics import CHECKOUTS_RAW, CUSTOMERS_RAW, INTERACTIONS_RAW

KEY = b"test-key"
UTC = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")


def resolve(card: str) -> str:
    return customer_id_for_card(card)


def checkout(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": "e-1",
        "store_id": "s001",
        "occurred_at": "2026-03-01T10:15:00+01:00",
        "card_number": "6035 1234 5678 9012",
        "currency": "eur",
        "lines": [
            {
                "sku": " milk-1l ",
                "name": "Milk 1 l",
                "category": "Dairy",
                "quantity": 2,
                "unit_price": "1.19",
            }
        ],
    }
    doc.update(overrides)
    return doc


def raw_bytes(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def normalized(doc: dict[str, Any], zone: ZoneInfo = UTC):  # type: ignore[no-untyped-def]
    raw = decode(CHECKOUTS_RAW, raw_bytes(doc))
    assert isinstance(raw, RawCheckout)
    return normalize_checkout(raw, key=KEY, zone=zone, resolve=resolve)


def rejection(topic: str, payload: bytes) -> str:
    with pytest.raises(Rejected) as caught:
        decode(topic, payload)
    return caught.value.reason


def test_same_card_in_any_spelling_is_the_same_customer() -> None:
    spellings = [
        "6035 1234 5678 9012",
        "6035-1234-5678-9012",
        "6035123456789012",
        " 6035 1234-5678 9012 ",
    ]
    customers = {normalized(checkout(card_number=s)).customer_id for s in spellings}
    assert len(customers) == 1
    assert None not in customers


def test_card_number_sent_as_a_json_number_is_accepted() -> None:
    assert normalized(checkout(card_number=6035123456789012)).card_id == card_id(
        "6035123456789012", KEY
    )


def test_no_raw_card_number_in_the_normalized_event() -> None:
    event = normalized(checkout())
    text = event.model_dump_json()
    assert "6035123456789012" not in text
    assert "6035 1234 5678 9012" not in text


def test_absent_or_null_card_is_an_anonymous_checkout() -> None:
    doc = checkout()
    del doc["card_number"]
    assert normalized(doc).customer_id is None
    assert normalized(checkout(card_number=None)).customer_id is None


@pytest.mark.parametrize(
    ("price", "expected"),
    [("1.19", "1.19"), ("1,19", "1.19"), (1.19, "1.19"), (2, "2"), ("1 299,50", "1299.50")],
)
def test_prices_as_numbers_strings_and_decimal_commas_are_exact(price: Any, expected: str) -> None:
    line = {"sku": "A", "quantity": 1, "unit_price": price}
    event = normalized(checkout(lines=[line]))
    assert event.lines[0].unit_price == Decimal(expected)
    assert isinstance(event.lines[0].unit_price, Decimal)


def test_weighed_goods_have_decimal_quantities_and_exact_amounts() -> None:
    line = {"sku": "APPLES", "quantity": "0,755", "unit_price": "2.99"}
    event = normalized(checkout(lines=[line]))
    assert event.lines[0].quantity == Decimal("0.755")
    assert event.lines[0].amount == Decimal("2.26")  # 2.25745 rounded half-even to cents


def test_line_discount_is_taken_off_the_line_and_the_total() -> None:
    lines = [
        {"sku": "A", "quantity": 2, "unit_price": "1.50", "discount": "0.50"},
        {"sku": "B", "quantity": 1, "unit_price": "3.00"},
    ]
    event = normalized(checkout(lines=lines))
    assert [line.amount for line in event.lines] == [Decimal("2.50"), Decimal("3.00")]
    assert event.total == Decimal("5.50")


def test_sku_is_trimmed_and_upper_cased_category_lower_cased() -> None:
    event = normalized(checkout())
    assert event.lines[0].sku == "MILK-1L"
    assert event.lines[0].category == "dairy"
    assert event.store_id == "S001"
    assert event.currency == "EUR"


def test_time_with_offset_is_converted_to_utc() -> None:
    event = normalized(checkout(occurred_at="2026-03-01T10:15:00+01:00"))
    assert event.occurred_at == dt.datetime(2026, 3, 1, 9, 15, tzinfo=dt.UTC)


def test_naive_time_is_read_in_the_store_time_zone() -> None:
    summer = normalized(checkout(occurred_at="2026-07-01T10:00:00"), zone=PARIS)
    assert summer.occurred_at == dt.datetime(2026, 7, 1, 8, 0, tzinfo=dt.UTC)
    unknown = normalized(checkout(occurred_at="2026-07-01T10:00:00"), zone=UTC)
    assert unknown.occurred_at == dt.datetime(2026, 7, 1, 10, 0, tzinfo=dt.UTC)


def test_unknown_extra_fields_are_ignored() -> None:
    event = normalized(
        checkout(
            till_firmware="v1.2",
            lines=[{"sku": "A", "quantity": 1, "unit_price": 1, "colour": "red"}],
        )
    )
    assert event.lines[0].sku == "A"


def test_coupon_codes_are_upper_cased_and_deduplicated() -> None:
    assert normalized(checkout(coupons=["abcd-efgh", "ABCD-EFGH", " "])).coupons == ("ABCD-EFGH",)


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (checkout(lines=[]), "no_lines"),
        (checkout(lines=[{"sku": "A", "quantity": -1, "unit_price": 1}]), "negative_quantity"),
        (checkout(lines=[{"sku": "A", "quantity": 1, "unit_price": "-1,00"}]), "negative_price"),
        (checkout(lines=[{"sku": "A", "quantity": 1, "unit_price": 1}] * 1001), "too_many_lines"),
        (checkout(lines=[{"sku": "A", "quantity": 1, "unit_price": "abc"}]), "invalid_field"),
        (checkout(lines=[{"sku": "A", "quantity": 1, "unit_price": True}]), "invalid_field"),
        (checkout(event_id=None), "invalid_field"),
        (checkout(lines="milk"), "invalid_field"),
    ],
)
def test_broken_checkouts_are_rejected_with_the_contract_reason(
    doc: dict[str, Any], reason: str
) -> None:
    assert rejection(CHECKOUTS_RAW, raw_bytes(doc)) == reason


def test_thousand_lines_is_still_accepted() -> None:
    doc = checkout(lines=[{"sku": "A", "quantity": 1, "unit_price": 1}] * 1000)
    assert len(normalized(doc).lines) == 1000


def test_unparseable_time_is_rejected() -> None:
    raw = decode(CHECKOUTS_RAW, raw_bytes(checkout(occurred_at="yesterday at noon")))
    assert isinstance(raw, RawCheckout)
    with pytest.raises(Rejected) as caught:
        normalize_checkout(raw, key=KEY, zone=UTC, resolve=resolve)
    assert caught.value.reason == "invalid_time"


def test_malformed_card_number_is_rejected() -> None:
    raw = decode(CHECKOUTS_RAW, raw_bytes(checkout(card_number="6035-12AB")))
    assert isinstance(raw, RawCheckout)
    with pytest.raises(Rejected) as caught:
        normalize_checkout(raw, key=KEY, zone=UTC, resolve=resolve)
    assert caught.value.reason == "invalid_card"
    assert "6035" not in caught.value.detail


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty_message"),
        (b"{not json", "invalid_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (b'"a string"', "not_an_object"),
        (b"\xff\xfe{}", "invalid_utf8"),
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (b'{"pad": "' + b"x" * (1024 * 1024) + b'"}', "oversized"),
    ],
)
def test_non_objects_broken_bytes_and_oversized_messages_are_rejected(
    payload: bytes, reason: str
) -> None:
    assert rejection(CHECKOUTS_RAW, payload) == reason


def customer(**fields: Any) -> RawCustomerEvent:
    doc = {
        "event_id": "c-1",
        "type": "signup",
        "occurred_at": "2026-03-01T10:00:00Z",
        "card_number": "6035123456789012",
    }
    doc.update(fields)
    raw = decode(CUSTOMERS_RAW, raw_bytes(doc))
    assert isinstance(raw, RawCustomerEvent)
    return raw


def normalize_customer(raw: RawCustomerEvent):  # type: ignore[no-untyped-def]
    return normalize_customer_event(raw, key=KEY, zone=UTC, resolve=resolve)


def test_signup_normalizes_email_name_birthday_and_consent() -> None:
    event = normalize_customer(
        customer(
            email=" Ana@Example.COM ",
            first_name=" Ana ",
            birth_date="1990-05-17",
            marketing_consent=True,
        )
    )
    assert isinstance(event, CustomerSignedUp)
    assert event.email == "ana@example.com"
    assert event.first_name == "Ana"
    assert event.birth_date == dt.date(1990, 5, 17)
    assert event.marketing_consent is True
    assert event.customer_id == customer_id_for_card(card_id("6035123456789012", KEY))


def test_update_carries_only_changed_fields() -> None:
    event = normalize_customer(customer(type="update", first_name="Anna"))
    assert isinstance(event, CustomerUpdated)
    assert event.first_name == "Anna"
    assert event.email is None
    assert event.marketing_consent is None


def test_consent_and_erase_events() -> None:
    consent = normalize_customer(customer(type="consent", marketing_consent=False))
    assert isinstance(consent, ConsentChanged)
    assert consent.marketing_consent is False
    assert isinstance(normalize_customer(customer(type="erase")), CustomerErased)


def test_link_card_names_both_cards_by_their_keyed_hash() -> None:
    request = normalize_customer(
        customer(type="link_card", other_card_number="6035 0000 1111 2222")
    )
    assert isinstance(request, LinkRequest)
    assert request.other_card == card_id("6035000011112222", KEY)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"type": "signup", "email": "not-an-address"}, "invalid_email"),
        ({"type": "signup", "birth_date": "17/05/1990"}, "invalid_birth_date"),
        ({"type": "signup", "birth_date": "2999-01-01"}, "invalid_birth_date"),
        ({"type": "consent"}, "missing_field"),
        ({"type": "link_card"}, "missing_card"),
        ({"type": "signup", "card_number": None}, "missing_card"),
        ({"type": "link_card", "other_card_number": "6035123456789012"}, "invalid_field"),
    ],
)
def test_broken_customer_events_are_rejected(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(Rejected) as caught:
        normalize_customer(customer(**fields))
    assert caught.value.reason == reason


def test_unknown_customer_event_type_is_rejected() -> None:
    doc = {
        "event_id": "c",
        "type": "merge",
        "occurred_at": "2026-03-01T10:00:00Z",
        "card_number": "6035123456789012",
    }
    assert rejection(CUSTOMERS_RAW, raw_bytes(doc)) == "invalid_field"


def test_interaction_keeps_type_channel_and_masks_card_numbers_in_details() -> None:
    doc = {
        "event_id": "i-1",
        "type": "Support_Ticket",
        "occurred_at": "2026-03-01T10:00:00",
        "card_number": "6035123456789012",
        "channel": "phone",
        "details": {"topic": "billing", "note": "customer read card 6035 1234 5678 9012 aloud"},
    }
    raw = decode(INTERACTIONS_RAW, raw_bytes(doc))
    assert isinstance(raw, RawInteraction)
    event = normalize_interaction(raw, key=KEY, zone=UTC, resolve=resolve)
    assert event is not None
    assert event.interaction_type == "support_ticket"
    assert event.channel == "phone"
    assert "5678" not in str(event.details["note"]).replace("9012", "")
    assert str(event.details["note"]).endswith("9012 aloud")


def test_interaction_without_card_is_anonymous() -> None:
    doc = {"event_id": "i-2", "type": "web_visit", "occurred_at": "2026-03-01T10:00:00Z"}
    raw = decode(INTERACTIONS_RAW, raw_bytes(doc))
    assert isinstance(raw, RawInteraction)
    assert normalize_interaction(raw, key=KEY, zone=UTC, resolve=resolve) is None
