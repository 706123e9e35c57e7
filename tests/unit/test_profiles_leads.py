"""A lead (`l-…`, a sign-up without a card) merges into the card customer whose sign-up
names it (`merged_customer_id`, decided by ingest), whichever of the two reaches profiles
first: the lead's and the customer's events travel on different partitions."""

from __future__ import annotations

import datetime as dt
import itertools

from services.profiles.domain import ProfileBook
from shared.events import ConsentChanged, CustomerSignedUp, NormalizedEvent
from tests.unit.test_profiles_order import contents, deliver

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
LEAD, CUSTOMER, CARD = "l-1", "c-1", "card-1"


def events() -> list[NormalizedEvent]:
    return [
        CustomerSignedUp(
            event_id="customer:lead",
            occurred_at=T0,
            customer_id=LEAD,
            email="ana@example.com",
            first_name="Ana",
            marketing_consent=True,
        ),
        ConsentChanged(
            event_id="customer:lead-consent",
            occurred_at=T0 + dt.timedelta(hours=1),
            customer_id=LEAD,
            marketing_consent=False,
        ),
        CustomerSignedUp(
            event_id="customer:card",
            occurred_at=T0 + dt.timedelta(days=1),
            customer_id=CUSTOMER,
            card_id=CARD,
            email="ana@example.com",
            merged_customer_id=LEAD,
        ),
    ]


def test_a_lead_alone_is_a_registered_profile_without_cards() -> None:
    [lead] = deliver([[events()[0]]]).values()
    assert lead.registered
    assert lead.card_ids == []
    assert lead.visits == 0
    assert lead.email == "ana@example.com"


def test_the_lead_merges_into_the_card_customer_in_every_arrival_order() -> None:
    expected = contents(deliver([[e] for e in events()]))
    for order in itertools.permutations(events()):
        assert contents(deliver([[e] for e in order])) == expected
        assert contents(deliver([list(order)])) == expected
    customer = expected[CUSTOMER]
    assert customer["card_ids"] == [CARD]
    assert customer["merged_from"] == [LEAD]
    assert customer["first_name"] == "Ana"
    assert customer["marketing_consent"] is False  # the newest statement: the card's sign-up
    assert expected[LEAD]["merged_into"] == CUSTOMER


def test_the_card_sign_up_loads_the_lead_it_merges() -> None:
    assert ProfileBook.ids_of(events()[2:]) == {CUSTOMER, LEAD}
