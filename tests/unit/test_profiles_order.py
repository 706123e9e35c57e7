"""A profile is a function of the set of a customer's events, not of their arrival.

The same events delivered in any order, split into any batches (each batch folded by a new
`ProfileBook` loaded from the documents the previous batches saved, as the service does),
with redeliveries, give the same profile content as the events in event-time order. Then
one example per rule that makes it so. Erasure is the documented exception and is left out.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.profiles.domain import BOOKKEEPING, CustomerProfile, FoldOptions, ProfileBook
from shared.events import (
    CardLinked,
    ConsentChanged,
    CustomerSignedUp,
    CustomerUpdated,
    InteractionRecorded,
    NormalizedEvent,
    PurchaseLine,
    PurchaseRecorded,
)

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
C1, C2 = "c-1", "c-2"
CARD1, CARD2 = "card-1", "card-2"
# Small bounds, so that truncation and the history window take part in every example.
OPTIONS = FoldOptions(history_days=10, recent_purchases=3, latest_interactions=2)


def at(days: float = 0, hours: float = 0) -> dt.datetime:
    return T0 + dt.timedelta(days=days, hours=hours)


Stored = dict[str, CustomerProfile]


def deliver(batches: Sequence[Sequence[NormalizedEvent]], options: FoldOptions = OPTIONS) -> Stored:
    """Fold batch after batch the way the service does: a new book per batch, loaded from the
    documents saved so far (through JSON, as a store holds them), its changes saved."""
    stored: Stored = {}
    for batch in batches:
        book = ProfileBook(options)
        ids = book.ids_of(batch)
        while ids:
            book.add(ids, {i: stored[i] for i in ids if i in stored})
            ids = book.needs()
        for event in batch:
            book.apply(event)
        for doc in book.changed():
            stored[doc.customer_id] = CustomerProfile.model_validate_json(doc.model_dump_json())
    return stored


def in_time_order(events: Sequence[NormalizedEvent]) -> list[NormalizedEvent]:
    return sorted(events, key=lambda e: (e.occurred_at, e.event_id))


def contents(stored: Stored) -> dict[str, dict[str, Any]]:
    return {customer_id: doc.content() for customer_id, doc in stored.items()}


def line(sku: str, price: str = "2.00", qty: str = "1", **kw: Any) -> PurchaseLine:
    return PurchaseLine(
        sku=sku,
        quantity=Decimal(qty),
        unit_price=Decimal(price),
        amount=Decimal(price) * Decimal(qty),
        **kw,
    )


def purchase(
    event_id: str,
    when: dt.datetime,
    *lines: PurchaseLine,
    customer: str = C1,
    card: str = CARD1,
    store: str = "S1",
    coupons: tuple[str, ...] = (),
) -> PurchaseRecorded:
    basket = lines or (line("MILK", name="Milk"),)
    return PurchaseRecorded(
        event_id=event_id,
        occurred_at=when,
        customer_id=customer,
        card_id=card,
        store_id=store,
        currency="EUR",
        lines=basket,
        total=sum((li.amount for li in basket), Decimal(0)),
        coupons=coupons,
    )


def signup(event_id: str, when: dt.datetime, customer: str = C1, **kw: Any) -> CustomerSignedUp:
    kw.setdefault("card_id", CARD1 if customer == C1 else CARD2)
    kw.setdefault("email", "ana@example.com")
    kw.setdefault("first_name", "Ana")
    kw.setdefault("birth_date", dt.date(1990, 5, 17))
    kw.setdefault("marketing_consent", True)
    return CustomerSignedUp(event_id=event_id, occurred_at=when, customer_id=customer, **kw)


def update(event_id: str, when: dt.datetime, customer: str = C1, **kw: Any) -> CustomerUpdated:
    return CustomerUpdated(event_id=event_id, occurred_at=when, customer_id=customer, **kw)


def consent(event_id: str, when: dt.datetime, given: bool, customer: str = C1) -> ConsentChanged:
    return ConsentChanged(
        event_id=event_id, occurred_at=when, customer_id=customer, marketing_consent=given
    )


def link(event_id: str, when: dt.datetime) -> CardLinked:
    """Card 2 joins customer 1; ingest names card 2's own customer, whose profile merges in."""
    return CardLinked(
        event_id=event_id,
        occurred_at=when,
        customer_id=C1,
        card_id=CARD2,
        merged_customer_id=C2,
    )


def live(stored: Stored, customer_id: str = C1) -> CustomerProfile:
    doc = stored[customer_id]
    assert doc.merged_into is None
    assert not doc.erased
    return doc


# ---------------------------------------------------------------- the property

Make = Callable[[str, dt.datetime], NormalizedEvent]

# Few distinct days over more than the history window: ties of time are common.
times = st.integers(0, 24).map(lambda day: at(day))
lines = st.builds(
    line,
    st.sampled_from(["MILK", "EGGS", "BREAD", "TEA"]),
    price=st.sampled_from(["1.19", "2.50", "0.99"]),
    qty=st.sampled_from(["1", "2", "0.5"]),
    name=st.sampled_from([None, "Name A", "Name B"]),
    category=st.sampled_from([None, "dairy", "bakery"]),
)


def _purchase(
    basket: list[PurchaseLine], store: str, codes: list[str], addressed: tuple[str, str]
) -> Make:
    customer, card = addressed

    def make(event_id: str, when: dt.datetime) -> NormalizedEvent:
        return purchase(
            event_id,
            when,
            *basket,
            customer=customer,
            card=card,
            store=store,
            coupons=tuple(codes),
        )

    return make


purchases = st.builds(
    _purchase,
    st.lists(lines, min_size=1, max_size=4),
    st.sampled_from(["S1", "S2", "S3"]),
    st.lists(st.sampled_from(["SAVE10", "WELCOME", "BDAY"]), max_size=2, unique=True),
    # Card 2's checkouts reach its own customer until ingest knows of the link, then customer 1.
    st.sampled_from([(C1, CARD1), (C2, CARD2), (C1, CARD2)]),
)


# A customer event on the second card (before ingest knows of the link) reaches the card's
# own customer, whose statements then merge in.
addressees = st.sampled_from([C1, C1, C2])


def _update(customer: str, fields: dict[str, Any]) -> Make:
    return lambda event_id, when: update(event_id, when, customer, **fields)


updates = st.builds(
    _update,
    addressees,
    st.fixed_dictionaries(
        {},
        optional={
            "email": st.sampled_from(["ana@example.com", "ana@work.example", "a.b@example.com"]),
            "first_name": st.sampled_from(["Ana", "Anna"]),
            "birth_date": st.sampled_from([dt.date(1990, 5, 17), dt.date(1990, 7, 5)]),
            "marketing_consent": st.booleans(),
            "store_id": st.sampled_from(["S1", "S2"]),
        },
    ),
)


def _consent(customer: str, given: bool) -> Make:
    return lambda event_id, when: consent(event_id, when, given, customer)


consents = st.builds(_consent, addressees, st.booleans())


def _interaction(customer: str, kind: str, channel: str | None) -> Make:
    def make(event_id: str, when: dt.datetime) -> NormalizedEvent:
        return InteractionRecorded(
            event_id=event_id,
            occurred_at=when,
            customer_id=customer,
            interaction_type=kind,
            channel=channel,
            details={"ref": event_id},
        )

    return make


interactions = st.builds(
    _interaction,
    addressees,
    st.sampled_from(["email_open", "support_ticket", "web_visit"]),
    st.sampled_from([None, "email", "phone"]),
)


def _signup(store: str | None) -> Make:
    return lambda event_id, when: signup(event_id, when, store_id=store)


def _second_signup(customer: str, fields: dict[str, Any]) -> Make:
    return lambda event_id, when: signup(event_id, when, customer, card_id=CARD2, **fields)


# The second card may have been registered on its own too, with other details.
second_signups = st.builds(
    _second_signup,
    st.sampled_from([C2, C1]),
    st.fixed_dictionaries(
        {
            "email": st.sampled_from([None, "second@example.com"]),
            "first_name": st.sampled_from([None, "Ann"]),
            "birth_date": st.none(),
            "marketing_consent": st.booleans(),
            "store_id": st.sampled_from([None, "S3"]),
        }
    ),
)


@st.composite
def customers(draw: st.DrawFn) -> list[NormalizedEvent]:
    """One customer's events: a sign-up, updates, consent changes, purchases on two cards,
    interactions and the link of the second card, in no particular order of time or id; the
    second card's events are addressed to its own customer or to the first one."""
    makes: list[Make] = draw(
        st.lists(
            st.one_of(updates, consents, purchases, interactions),
            max_size=18,
        )
    )
    makes.insert(draw(st.integers(0, len(makes))), draw(st.sampled_from(["S2", None]).map(_signup)))
    makes.insert(draw(st.integers(0, len(makes))), link)
    if draw(st.booleans()):
        makes.insert(draw(st.integers(0, len(makes))), draw(second_signups))
    return [make(f"ev-{i:02}", draw(times)) for i, make in enumerate(makes)]


@st.composite
def arrivals(draw: st.DrawFn, events: list[NormalizedEvent]) -> list[list[NormalizedEvent]]:
    """The events in an arbitrary order, some of them redelivered, cut into batches."""
    order = list(draw(st.permutations(events)))
    for again in draw(st.lists(st.sampled_from(events), max_size=3)):
        order.insert(draw(st.integers(0, len(order))), again)
    cuts = sorted(draw(st.sets(st.integers(1, len(order) - 1), max_size=6)))
    bounds = [0, *cuts, len(order)]
    return [order[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_arrival_order_and_batching_gives_the_profile_of_the_event_time_order(
    data: st.DataObject,
) -> None:
    events = data.draw(customers())
    batches = data.draw(arrivals(events))
    expected = deliver([in_time_order(events)])
    got = deliver(batches)
    assert contents(got) == contents(expected)
    # The second card's customer is merged in, whenever its events and the link came.
    assert got[C2].merged_into == C1
    merged = live(got)
    assert merged.visits == sum(isinstance(e, PurchaseRecorded) for e in events)
    assert merged.merged_from == [C2]
    assert CARD2 in merged.card_ids


# ---------------------------------------------------------------- one example per rule


def both_orders(*events: NormalizedEvent) -> tuple[CustomerProfile, CustomerProfile]:
    """The profile of customer 1 from the events in time order, and from them in reverse
    order, one batch per event."""
    forward = live(deliver([in_time_order(events)]))
    backward = live(deliver([[e] for e in reversed(in_time_order(events))]))
    assert forward.content() == backward.content()
    return forward, backward


def test_content_is_the_document_without_its_bookkeeping() -> None:
    doc = live(deliver([[signup("s1", at(0)), purchase("e1", at(1))]]))
    content = doc.content()
    assert {"recent_event_ids", "version"} == BOOKKEEPING
    assert not BOOKKEEPING & set(content)
    assert content == {k: v for k, v in doc.model_dump(mode="json").items() if k not in BOOKKEEPING}


def test_an_older_consent_arriving_late_does_not_win() -> None:
    stored = deliver([[signup("s1", at(0))], [consent("k2", at(2), False)]])
    book = ProfileBook(OPTIONS)
    book.add([C1], stored)
    outcome = book.apply(consent("k1", at(1), True))  # older, arrives last
    assert outcome.status == "applied"
    doc = book.get(C1)
    assert doc is not None
    assert not doc.marketing_consent
    assert doc.stamps["marketing_consent"].event_id == "k2"
    changed = outcome.profile_changed
    assert changed is not None
    assert changed.consent_given is True  # what the event states...
    assert changed.marketing_consent is False  # ...and what is in force
    assert outcome.contacts == []  # nothing the notifier knows changed


def test_consent_statements_of_the_same_time_are_ordered_by_event_id() -> None:
    one, _ = both_orders(signup("s1", at(0)), consent("k-a", at(1), False))
    assert not one.marketing_consent
    two, _ = both_orders(
        signup("s1", at(0)), consent("k-a", at(1), False), consent("k-b", at(1), True)
    )
    assert two.marketing_consent
    # A sign-up states consent too, and an update naming it: the latest statement wins.
    three, _ = both_orders(
        signup("s1", at(0), marketing_consent=False),
        update("u1", at(2), marketing_consent=True),
        consent("k1", at(1), False),
        update("u2", at(3), email="new@example.com"),  # states no consent
    )
    assert three.marketing_consent


def test_an_older_email_arriving_late_does_not_win() -> None:
    newer = update("u1", at(2), email="new@example.com")
    doc, _ = both_orders(signup("s1", at(0), email="old@example.com"), newer)
    assert doc.email == "new@example.com"
    assert doc.first_name == "Ana"  # the sign-up's, which nothing newer states
    assert doc.registered_at == at(0)
    # Across batches too: the sign-up comes last and sets only what nothing newer stated.
    stored = deliver([[newer], [signup("s1", at(0), email="old@example.com")]])
    assert live(stored).email == "new@example.com"
    assert live(stored).first_name == "Ana"


def test_each_personal_field_is_the_latest_given_one() -> None:
    doc, _ = both_orders(
        signup("s1", at(0), store_id="S5"),
        update("u1", at(1), first_name="Anna", birth_date=dt.date(1990, 7, 5), store_id="S2"),
        update("u2", at(3), first_name="Ana-Maria"),
        update("u3", at(2), store_id="S3", email=None),
        signup("s0", at(-1), store_id="S4", first_name="Old"),
    )
    assert doc.email == "ana@example.com"  # s1, newer than s0; no update gives one
    assert doc.first_name == "Ana-Maria"
    assert doc.birth_date == dt.date(1990, 7, 5)
    assert doc.preferred_store_id == doc.home_store_id == "S3"
    assert doc.signup_store_id == "S5"
    assert doc.registered_at == at(-1)  # the earliest sign-up


def test_a_tie_of_home_stores_goes_to_the_smallest_store_id() -> None:
    s2_first = deliver([[purchase("e1", at(0), store="S2")], [purchase("e2", at(1), store="S1")]])
    s1_first = deliver([[purchase("e2", at(1), store="S1")], [purchase("e1", at(0), store="S2")]])
    assert live(s2_first).home_store_id == live(s1_first).home_store_id == "S1"
    third = deliver([[purchase("e1", at(0), store="S2")], [purchase("e3", at(2), store="S2")]])
    assert live(third).home_store_id == "S2"


def _two_signed_up(c1_at: dt.datetime, c2_at: dt.datetime) -> list[NormalizedEvent]:
    return [
        signup("s1", c1_at, email="one@example.com", marketing_consent=True, store_id="S1"),
        signup(
            "s2",
            c2_at,
            customer=C2,
            email="two@example.com",
            first_name=None,
            birth_date=dt.date(1985, 1, 2),
            marketing_consent=False,
            store_id="S2",
        ),
    ]


def test_a_merge_keeps_the_newer_personal_data_of_either_profile() -> None:
    # The merged customer signed up later: its statements are newer and win.
    stored = deliver([_two_signed_up(at(0), at(1)), [link("l1", at(2))]])
    doc = live(stored)
    assert doc.email == "two@example.com"
    assert not doc.marketing_consent
    assert doc.birth_date == dt.date(1985, 1, 2)
    assert doc.first_name == "Ana"  # only the target states one
    assert doc.signup_store_id == "S2"
    assert doc.registered_at == at(0)
    # The target signed up later: its statements stand.
    stored = deliver([_two_signed_up(at(1), at(0)), [link("l1", at(2))]])
    doc = live(stored)
    assert doc.email == "one@example.com"
    assert doc.marketing_consent
    assert doc.birth_date == dt.date(1990, 5, 17)
    assert doc.signup_store_id == "S1"


def test_a_merge_is_the_same_whether_the_link_comes_before_or_after_the_events() -> None:
    events = [
        *_two_signed_up(at(0), at(1)),
        purchase("b1", at(2), customer=C2, card=CARD2, store="S2"),
        purchase("a1", at(3), store="S1"),
    ]
    early = deliver([[link("l1", at(4))], events])
    late = deliver([events, [link("l1", at(4))]])
    assert contents(early) == contents(late)
    assert live(late).card_ids == [CARD1, CARD2]
    assert live(late).visits == 2


def test_sets_are_kept_sorted() -> None:
    doc, _ = both_orders(
        purchase("e1", at(0), card=CARD2, coupons=("ZED", "ALPHA")),
        purchase("e2", at(1), card=CARD1, coupons=("MID",)),
        link("l1", at(2)),
    )
    assert doc.card_ids == [CARD1, CARD2]
    assert doc.coupons_redeemed == ["ALPHA", "MID", "ZED"]
    assert doc.merged_from == [C2]


def test_checkouts_of_the_same_time_are_ordered_by_event_id() -> None:
    events = [
        purchase("e-b", at(0), line("MILK", name="Milk B", category="b")),
        purchase("e-a", at(0), line("MILK", name="Milk A", category="a")),
        purchase("e-c", at(-1), line("MILK", name="Milk C", category="c")),
    ]
    doc, _ = both_orders(*events)
    milk = doc.skus["MILK"]
    assert (milk.name, milk.category, milk.last_event_id) == ("Milk B", "b", "e-b")
    assert [p.event_id for p in doc.recent_purchases] == ["e-c", "e-a", "e-b"]
    assert [h.event_id for h in doc.sku_history] == ["e-c", "e-a", "e-b"]
    one = deliver([[purchase(f"e{i}", at(0)) for i in (3, 1, 4, 2, 0)]])
    assert [p.event_id for p in live(one).recent_purchases] == ["e2", "e3", "e4"]


def test_the_latest_interactions_are_the_latest_by_time_then_id() -> None:
    def seen(event_id: str, when: dt.datetime) -> InteractionRecorded:
        return InteractionRecorded(
            event_id=event_id, occurred_at=when, customer_id=C1, interaction_type="email_open"
        )

    doc, _ = both_orders(seen("i-b", at(1)), seen("i-a", at(1)), seen("i-z", at(0)))
    assert [i.event_id for i in doc.latest_interactions] == ["i-a", "i-b"]
    assert doc.interactions == {"email_open": 3}
