"""The notifier's pure core: rendering, tokens, quiet hours, decisions, batch plans, retries."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from dataclasses import replace
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.domain import (
    BOUNCED,
    CONSENT_WITHDRAWN,
    CUSTOMER_ERASED,
    NO_CONSENT,
    NO_EMAIL,
    OFFER_EXPIRED,
    OFFER_REVOKED,
    Contact,
    Defer,
    Delivery,
    Plan,
    QuietPolicy,
    Renderer,
    SendNow,
    Suppress,
    TokenBucket,
    WaitForContact,
    apply_decision,
    backoff_delay,
    backoff_schedule,
    contact_from_event,
    decide,
    message_id_for,
    new_delivery,
    outcome_event,
    plan_batch,
    quiet_until,
    redecide_due,
    safe_offer_token,
    unsubscribe_token,
    verify_unsubscribe_token,
)
from shared.events import ContactChanged, OfferIssued, OfferRevoked
from shared.settings import CalendarSettings, QuietHours

KEY = "test-coupon-key"
UTC = dt.UTC
NOON = dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
NIGHT = dt.datetime(2026, 3, 2, 22, 30, tzinfo=UTC)
QUIET = QuietHours(start=dt.time(21, 0), end=dt.time(8, 0))
CALENDAR = CalendarSettings(timezone="UTC", store_timezones={"S-TOKYO": "Asia/Tokyo"})
POLICY = QuietPolicy(window=QUIET, zone_of=CALENDAR.zone_of)
NO_QUIET = QuietPolicy(window=None, zone_of=CALENDAR.zone_of)


def offer(
    offer_id: str = "of-1",
    *,
    customer_id: str = "c-1",
    kind: str = "frequent_item",
    template: str | None = None,
    valid_until: dt.date = dt.date(2026, 3, 16),
) -> OfferIssued:
    item = kind == "frequent_item"
    return OfferIssued.model_validate(
        {
            "offer_id": offer_id,
            "customer_id": customer_id,
            "kind": kind,
            "coupon_code": "CPN-7Q4X-ZZ",
            "discount_percent": "10.00",
            "sku": "MILK-1L" if item else None,
            "product_name": "Milk 1 l" if item else None,
            "valid_from": "2026-03-02",
            "valid_until": valid_until.isoformat(),
            "issued_at": "2026-03-02T10:00:00+00:00",
            "template": template or kind,
        }
    )


def contact(
    customer_id: str = "c-1",
    *,
    consent: bool = True,
    email_address: str | None = "ana@example.com",
    first_name: str | None = "Ana",
    store: str | None = None,
    bounced: bool = False,
) -> Contact:
    return Contact(
        customer_id=customer_id,
        email=email_address,
        first_name=first_name,
        marketing_consent=consent,
        home_store_id=store,
        bounced=bounced,
        changed_at=dt.datetime(2026, 3, 1, tzinfo=UTC),
    )


def changed(customer_id: str = "c-1", *, consent: bool = True, at: int = 2) -> ContactChanged:
    return ContactChanged(
        customer_id=customer_id,
        email="ana@example.com",
        first_name="Ana",
        marketing_consent=consent,
        changed_at=dt.datetime(2026, 3, at, tzinfo=UTC),
    )


@pytest.fixture
def renderer() -> Renderer:
    return Renderer(
        sender="Corner Shop <offers@shop.example>",
        public_url="https://crm.shop.example/",
        unsubscribe_key=KEY,
    )


def parts(message: EmailMessage) -> tuple[str, str]:
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed.get_content_type() == "multipart/alternative"
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert text is not None
    assert html is not None
    return text.get_content(), html.get_content()


# ---------------------------------------------------------------- rendering


def test_both_parts_carry_the_coupon_code_discount_expiry_and_product(renderer: Renderer) -> None:
    message = renderer.render(offer(), contact(), now=NOON)
    text, html = parts(message)
    for part in (text, html):
        assert "CPN-7Q4X-ZZ" in part
        assert "10%" in part
        assert "Milk 1 l" in part
        assert "2026-03-16" in part
        assert "Ana" in part


def test_html_part_escapes_a_hostile_first_name_and_text_part_keeps_it(
    renderer: Renderer,
) -> None:
    hostile = contact(first_name="<script>alert('x')</script>")
    text, html = parts(renderer.render(offer(), hostile, now=NOON))
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "<script>alert('x')</script>" in text


def test_headers_identify_the_offer_and_offer_one_click_unsubscribe(renderer: Renderer) -> None:
    message = renderer.render(offer("of-42"), contact(), now=NOON)
    assert message["Message-ID"] == "<offer-of-42@crm-stream>"
    assert message["From"] == "Corner Shop <offers@shop.example>"
    assert message["To"] == "ana@example.com"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    raw = message.as_bytes().decode()
    header = next(line for line in raw.splitlines() if line.startswith("List-Unsubscribe:"))
    prefix = "List-Unsubscribe: <https://crm.shop.example/unsubscribe?token="
    assert header.startswith(prefix)
    assert header.endswith(">")
    token = header.removeprefix(prefix).removesuffix(">")
    assert verify_unsubscribe_token(token, KEY) == "c-1"


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("frequent_item", "Milk 1 l"),
        ("birthday", "birthday"),
        ("anniversary", "year"),
        ("win_back", "miss you"),
    ],
)
def test_subject_and_template_follow_the_offer_kind(
    renderer: Renderer, kind: str, words: str
) -> None:
    message = renderer.render(offer(kind=kind), contact(), now=NOON)
    assert words in str(message["Subject"])
    text, _ = parts(message)
    assert "CPN-7Q4X-ZZ" in text


def test_unknown_or_unsafe_template_falls_back_to_the_kind_then_default(
    renderer: Renderer,
) -> None:
    traversal = offer(kind="birthday", template="../../etc/passwd")
    text, _ = parts(renderer.render(traversal, contact(), now=NOON))
    assert "Happy birthday" in text
    assert renderer._names(offer(template="spring_sale"), "txt") == [
        "spring_sale.txt.j2",
        "frequent_item.txt.j2",
        "default.txt.j2",
    ]


def test_a_newline_in_the_first_name_cannot_inject_a_header(renderer: Renderer) -> None:
    sneaky = contact(first_name="Ana\r\nBcc: victim@example.com")
    message = renderer.render(offer(), sneaky, now=NOON)
    assert message["Bcc"] is None
    assert "\n" not in str(message["Subject"])


def test_message_id_and_file_name_are_safe_for_any_offer_id() -> None:
    assert message_id_for("of-1") == "<offer-of-1@crm-stream>"
    unsafe = safe_offer_token("../x y>@z")
    assert unsafe.startswith("h-")
    assert "/" not in unsafe
    assert safe_offer_token("../x y>@z") == unsafe


# ---------------------------------------------------------------- unsubscribe tokens


def test_unsubscribe_token_round_trips_and_rejects_tampering() -> None:
    token = unsubscribe_token("c-abc", KEY)
    assert verify_unsubscribe_token(token, KEY) == "c-abc"
    assert verify_unsubscribe_token(token, "another-key") is None
    other = unsubscribe_token("c-other", KEY)
    forged = other.split(".")[0] + "." + token.split(".")[1]
    assert verify_unsubscribe_token(forged, KEY) is None
    for garbage in ("", ".", "abc", "a.b", "!!!.???", token + "x"):
        assert verify_unsubscribe_token(garbage, KEY) is None


@given(st.text(min_size=1, max_size=60))
def test_any_customer_id_survives_the_token(customer_id: str) -> None:
    token = unsubscribe_token(customer_id, KEY.encode())
    assert verify_unsubscribe_token(token, KEY.encode()) == customer_id


# ---------------------------------------------------------------- quiet hours


def test_quiet_hours_across_midnight_end_next_morning() -> None:
    assert quiet_until(NOON, QUIET, ZoneInfo("UTC")) is None
    assert quiet_until(NIGHT, QUIET, ZoneInfo("UTC")) == dt.datetime(2026, 3, 3, 8, tzinfo=UTC)
    early = dt.datetime(2026, 3, 3, 6, tzinfo=UTC)
    assert quiet_until(early, QUIET, ZoneInfo("UTC")) == dt.datetime(2026, 3, 3, 8, tzinfo=UTC)
    assert quiet_until(dt.datetime(2026, 3, 3, 8, tzinfo=UTC), QUIET, ZoneInfo("UTC")) is None


def test_quiet_hours_are_read_in_the_store_time_zone() -> None:
    # 12:00 UTC is 21:00 in Tokyo: quiet there until 08:00 Tokyo = 23:00 UTC.
    tokyo = ZoneInfo("Asia/Tokyo")
    assert quiet_until(NOON, QUIET, tokyo) == dt.datetime(2026, 3, 2, 23, tzinfo=UTC)
    decision = decide(offer(), contact(store="S-TOKYO"), now=NOON, quiet=POLICY)
    assert decision == Defer(dt.datetime(2026, 3, 2, 23, tzinfo=UTC))


def test_quiet_hours_off_never_defers() -> None:
    assert CalendarSettings(quiet_hours="off").quiet_window() is None
    assert quiet_until(NIGHT, None, ZoneInfo("UTC")) is None
    assert decide(offer(), contact(), now=NIGHT, quiet=NO_QUIET) == SendNow()


# ---------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        (None, WaitForContact()),
        (contact(consent=False), Suppress(NO_CONSENT)),
        (contact(email_address=None), Suppress(NO_EMAIL)),
        (contact(bounced=True), Suppress(BOUNCED)),
        (contact(), SendNow()),
    ],
)
def test_decision_follows_what_is_known_of_the_customer(
    who: Contact | None, expected: object
) -> None:
    assert decide(offer(), who, now=NOON, quiet=POLICY) == expected


def test_expired_offer_is_not_sent() -> None:
    late = dt.datetime(2026, 3, 17, 9, tzinfo=UTC)
    assert decide(offer(), contact(), now=late, quiet=POLICY) == Suppress(OFFER_EXPIRED)


def test_newer_contact_wins_and_a_new_address_clears_the_bounce() -> None:
    old = contact(bounced=True)
    assert contact_from_event(changed(at=1), replace_time(old, 5)) is None
    same = contact_from_event(changed(at=2), old)
    assert same is not None
    assert same.bounced
    moved = changed(at=3).model_copy(update={"email": "Ana@New.example"})
    fresh = contact_from_event(moved, old)
    assert fresh is not None
    assert not fresh.bounced
    assert fresh.email == "ana@new.example"


def test_a_contact_sent_without_its_personal_fields_keeps_the_known_address() -> None:
    # A customer from before the key vault has no data key: profiles withholds the address.
    withheld = changed(at=3, consent=False).model_copy(
        update={"email": None, "first_name": None, "personal_withheld": True}
    )
    kept = contact_from_event(withheld, contact())
    assert kept is not None
    assert (kept.email, kept.first_name, kept.marketing_consent) == (
        "ana@example.com",
        "Ana",
        False,
    )
    cleared = contact_from_event(
        withheld.model_copy(update={"personal_withheld": False}), contact()
    )
    assert cleared is not None
    assert cleared.email is None


def replace_time(c: Contact, day: int) -> Contact:
    return Contact(
        customer_id=c.customer_id,
        email=c.email,
        first_name=c.first_name,
        marketing_consent=c.marketing_consent,
        home_store_id=c.home_store_id,
        bounced=c.bounced,
        changed_at=dt.datetime(2026, 3, day, tzinfo=UTC),
    )


# ---------------------------------------------------------------- batch plans


def test_offer_without_contact_waits_then_is_sent_when_the_contact_arrives() -> None:
    first = plan_batch(
        contact_updates=[],
        offers=[offer()],
        contacts={},
        deliveries={},
        open_deliveries=[],
        now=NOON,
        quiet=POLICY,
    )
    waiting = first.deliveries["of-1"]
    assert waiting.state == "waiting_contact"
    assert first.to_send == []
    second = plan_batch(
        contact_updates=[("c-1", changed())],
        offers=[],
        contacts={},
        deliveries={},
        open_deliveries=[waiting],
        now=NOON,
        quiet=POLICY,
    )
    assert second.to_send == ["of-1"]
    assert second.deliveries["of-1"].state == "sending"


def test_consent_withdrawn_in_the_same_batch_suppresses_the_offer() -> None:
    result = plan_batch(
        contact_updates=[("c-1", changed(consent=False))],
        offers=[offer()],
        contacts={"c-1": contact()},
        deliveries={},
        open_deliveries=[],
        now=NOON,
        quiet=POLICY,
    )
    assert result.to_send == []
    assert result.deliveries["of-1"].state == "suppressed"


def test_consent_withdrawn_cancels_a_held_back_delivery() -> None:
    held = apply_decision(new_delivery(offer(), NIGHT), Defer(NOON), NIGHT)
    result = plan_batch(
        contact_updates=[("c-1", changed(consent=False, at=3))],
        offers=[],
        contacts={"c-1": contact()},
        deliveries={},
        open_deliveries=[held],
        now=NIGHT,
        quiet=POLICY,
    )
    cancelled = result.deliveries["of-1"]
    assert (cancelled.state, cancelled.last_error) == ("suppressed", CONSENT_WITHDRAWN)
    assert result.outcomes == [cancelled]


def test_erasure_suppresses_open_deliveries_and_drops_their_data() -> None:
    held = apply_decision(new_delivery(offer(), NIGHT), Defer(NOON), NIGHT)
    result = plan_batch(
        contact_updates=[("c-1", None)],
        offers=[offer("of-2")],
        contacts={"c-1": contact()},
        deliveries={},
        open_deliveries=[held],
        now=NIGHT,
        quiet=POLICY,
    )
    assert result.erased == {"c-1"}
    assert result.contacts == {}
    for offer_id in ("of-1", "of-2"):
        erased = result.deliveries[offer_id]
        assert erased.state == "suppressed"
        assert erased.last_error == CUSTOMER_ERASED
        assert erased.offer is None


def test_an_offer_seen_again_is_not_planned_again_but_its_outcome_is_replayed() -> None:
    sent = Delivery(
        offer_id="of-1",
        customer_id="c-1",
        state="sent",
        message_id=message_id_for("of-1"),
        offer=offer(),
        updated_at=NOON,
        attempts=1,
    )
    result = plan_batch(
        contact_updates=[],
        offers=[offer(), offer()],
        contacts={"c-1": contact()},
        deliveries={"of-1": sent},
        open_deliveries=[],
        now=NOON,
        quiet=POLICY,
    )
    assert result.deliveries == {}
    assert result.to_send == []
    assert result.replayed == [sent]


def test_the_same_offer_twice_in_one_batch_is_planned_once() -> None:
    result = plan_batch(
        contact_updates=[],
        offers=[offer(), offer()],
        contacts={"c-1": contact()},
        deliveries={},
        open_deliveries=[],
        now=NOON,
        quiet=POLICY,
    )
    assert result.to_send == ["of-1"]
    assert result.replayed == []


def test_a_delivery_left_sending_by_a_crash_is_sent_again_with_the_same_message_id() -> None:
    interrupted = apply_decision(new_delivery(offer(), NOON), SendNow(), NOON)
    result = redecide_due([interrupted], {"c-1": contact()}, now=NOON, quiet=POLICY)
    assert result.to_send == ["of-1"]
    assert result.deliveries["of-1"].message_id == "<offer-of-1@crm-stream>"


def test_held_back_delivery_is_deferred_again_while_still_quiet() -> None:
    held = apply_decision(new_delivery(offer(), NIGHT), Defer(NIGHT), NIGHT)
    result = redecide_due([held], {"c-1": contact()}, now=NIGHT, quiet=POLICY)
    again = result.deliveries["of-1"]
    assert again.state == "pending"
    assert again.not_before == dt.datetime(2026, 3, 3, 8, tzinfo=UTC)


def test_outcome_event_has_no_address_or_name() -> None:
    done = Delivery(
        offer_id="of-1",
        customer_id="c-1",
        state="suppressed",
        message_id=message_id_for("of-1"),
        offer=offer(),
        updated_at=NOON,
        last_error=NO_CONSENT,
    )
    event = outcome_event(done)
    assert event.reason == NO_CONSENT
    assert event.state == "suppressed"
    text = event.model_dump_json()
    assert "ana@example.com" not in text
    assert "Ana" not in text
    with pytest.raises(ValueError, match="not final"):
        outcome_event(new_delivery(offer(), NOON))


# ---------------------------------------------------------------- the send grace

GRACE = dt.timedelta(seconds=30)


def revocation(offer_id: str = "of-1", customer_id: str = "c-1") -> OfferRevoked:
    return OfferRevoked(
        offer_id=offer_id,
        customer_id=customer_id,
        kind="frequent_item",
        coupon_code="CPN-7Q4X-ZZ",
        reason="cooldown",
        revoked_at=NOON,
    )


def plan(
    *changes: OfferIssued | OfferRevoked,
    stored: dict[str, Delivery] | None = None,
    now: dt.datetime = NOON,
    contacts: dict[str, Contact] | None = None,
) -> Plan:
    return plan_batch(
        contact_updates=[],
        offers=changes,
        contacts={"c-1": contact()} if contacts is None else contacts,
        deliveries=stored or {},
        open_deliveries=[],
        now=now,
        quiet=POLICY,
        grace=GRACE,
    )


def test_earliest_time_defers_and_a_grace_ending_in_quiet_hours_waits_for_the_morning() -> None:
    assert decide(offer(), contact(), now=NOON, quiet=POLICY, not_before=NOON + GRACE) == Defer(
        NOON + GRACE, reason="grace"
    )
    assert decide(offer(), contact(), now=NOON, quiet=POLICY, not_before=NOON) == SendNow()
    evening = dt.datetime(2026, 3, 2, 20, 59, 50, tzinfo=UTC)
    morning = dt.datetime(2026, 3, 3, 8, tzinfo=UTC)
    assert decide(offer(), contact(), now=evening, quiet=POLICY, not_before=evening + GRACE) == (
        Defer(morning)
    )


def test_a_new_delivery_is_held_for_the_grace_and_sent_when_it_is_due() -> None:
    result = plan(offer())
    held = result.deliveries["of-1"]
    assert (held.state, held.not_before) == ("pending", NOON + GRACE)
    assert result.to_send == []
    assert result.outcomes == []
    assert result.counts["deferred_grace"] == 1
    early = redecide_due([held], {"c-1": contact()}, now=NOON + GRACE / 2, quiet=POLICY)
    assert early.deliveries["of-1"].state == "pending"
    due = redecide_due([held], {"c-1": contact()}, now=NOON + GRACE, quiet=POLICY)
    assert due.to_send == ["of-1"]


def test_the_grace_outlives_the_wait_for_the_contact() -> None:
    waiting = plan(offer(), contacts={}).deliveries["of-1"]
    assert (waiting.state, waiting.not_before) == ("waiting_contact", NOON + GRACE)
    soon = plan_batch(
        contact_updates=[("c-1", changed())],
        offers=[],
        contacts={},
        deliveries={},
        open_deliveries=[waiting],
        now=NOON + dt.timedelta(seconds=5),
        quiet=POLICY,
        grace=GRACE,
    )
    assert soon.to_send == []
    assert soon.deliveries["of-1"].not_before == NOON + GRACE
    late = plan_batch(
        contact_updates=[("c-1", changed())],
        offers=[],
        contacts={},
        deliveries={},
        open_deliveries=[waiting],
        now=NOON + GRACE,
        quiet=POLICY,
        grace=GRACE,
    )
    assert late.to_send == ["of-1"]


@pytest.mark.parametrize("state", ["waiting_contact", "pending", "sending"])
def test_revoking_an_offer_not_sent_yet_suppresses_it(state: str) -> None:
    open_ = replace(new_delivery(offer(), NOON), state=state)  # type: ignore[arg-type]
    result = plan(revocation(), stored={"of-1": open_})
    revoked = result.deliveries["of-1"]
    assert (revoked.state, revoked.last_error, revoked.not_before) == (
        "suppressed",
        OFFER_REVOKED,
        None,
    )
    assert result.outcomes == [revoked]
    assert result.counts["revoked_before_send"] == 1


def test_an_offer_issued_and_revoked_in_one_batch_is_never_sent_even_without_grace() -> None:
    result = plan_batch(
        contact_updates=[],
        offers=[offer(), revocation()],
        contacts={"c-1": contact()},
        deliveries={},
        open_deliveries=[],
        now=NOON,
        quiet=POLICY,
    )
    assert result.to_send == []
    assert result.deliveries["of-1"].last_error == OFFER_REVOKED


def test_a_revocation_before_the_offer_is_remembered_and_the_offer_stays_unsent() -> None:
    first = plan(revocation())
    remembered = first.deliveries["of-1"]
    assert (remembered.state, remembered.last_error, remembered.offer) == (
        "suppressed",
        OFFER_REVOKED,
        None,
    )
    assert first.outcomes == [remembered]
    assert first.counts["revoked_before_offer"] == 1

    arrived = plan(offer(), stored={"of-1": remembered})
    assert arrived.deliveries == {}
    assert arrived.to_send == []
    kept = arrived.updated["of-1"]
    assert (kept.state, kept.offer) == ("suppressed", offer())
    assert arrived.replayed == [kept]  # the same outcome, reported again

    reissued = plan(offer(), stored={"of-1": kept})
    assert reissued.deliveries["of-1"].state == "pending"
    assert reissued.counts["reissued"] == 1


def test_an_offer_reissued_after_its_revocation_is_planned_again_with_the_grace() -> None:
    revoked = plan(offer(), revocation()).deliveries["of-1"]
    later = NOON + dt.timedelta(minutes=5)
    result = plan(offer(), stored={"of-1": revoked}, now=later)
    again = result.deliveries["of-1"]
    assert (again.state, again.not_before, again.last_error) == ("pending", later + GRACE, None)
    assert again.message_id == message_id_for("of-1")
    assert result.replayed == []
    # Issued, revoked and issued again in one batch: the last word holds.
    assert plan(offer(), revocation(), offer()).deliveries["of-1"].state == "pending"


def test_a_revocation_of_a_sent_offer_changes_nothing_and_is_reported() -> None:
    sent = replace(new_delivery(offer(), NOON), state="sent", attempts=1)
    event = revocation()
    result = plan(event, stored={"of-1": sent})
    assert result.deliveries == {}
    assert result.replayed == []
    assert result.revoked_after_send == [event]
    assert result.counts["revoked_after_send"] == 1
    failed = replace(sent, state="failed")
    assert plan(event, stored={"of-1": failed}).counts["revoked_after_final"] == 1


def test_a_revocation_seen_again_reports_its_outcome_again() -> None:
    revoked = plan(offer(), revocation()).deliveries["of-1"]
    result = plan(revocation(), stored={"of-1": revoked})
    assert result.deliveries == {}
    assert result.replayed == [revoked]


# ---------------------------------------------------------------- retries and rate


def test_backoff_schedule_doubles_up_to_the_cap() -> None:
    assert backoff_schedule(5, base=1.0, cap=5.0) == [1.0, 2.0, 4.0, 5.0]
    assert backoff_schedule(1, base=1.0, cap=5.0) == []


@given(st.integers(min_value=1, max_value=30), st.floats(min_value=0, max_value=0.999))
def test_backoff_delay_has_bounded_jitter(retry: int, jitter: float) -> None:
    bound = min(60.0, 0.5 * 2.0 ** (retry - 1))
    delay = backoff_delay(retry, base=0.5, cap=60.0, jitter=jitter)
    assert bound / 2 <= delay <= bound


def test_token_bucket_allows_a_burst_then_spaces_messages() -> None:
    bucket = TokenBucket(rate=2.0, capacity=2.0, now=0.0)
    assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.0) == pytest.approx(0.5)
    assert bucket.reserve(0.0) == pytest.approx(1.0)
    assert bucket.reserve(10.0) == 0.0


def test_token_bucket_with_zero_rate_is_unlimited() -> None:
    bucket = TokenBucket(rate=0.0)
    assert all(bucket.reserve(0.0) == 0.0 for _ in range(100))
