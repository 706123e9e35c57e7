"""Every service's decoder of every internal topic reads an event that carries fields it does
not know (a newer producer's) and drops them; what a producer builds still refuses them."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from services.notifier.app import SPEC as NOTIFIER
from services.offers.app import SPEC as OFFERS_SERVICE
from services.profiles.app import SPEC as PROFILES
from services.reports.app import SPEC as REPORTS
from shared.campaigns import (
    Bought,
    CampaignChange,
    CampaignChanged,
    CampaignOffer,
    CampaignSpec,
    CampaignTrigger,
    SegmentDefined,
    SegmentMembershipChanged,
    SegmentRule,
)
from shared.edge import Foreign, Source
from shared.events import (
    CONSUMER_EXTRA,
    SCHEMA_VERSION,
    ClockTicked,
    ContactChanged,
    DeliveryRecorded,
    OfferIssued,
    ProfileChanged,
    PurchaseLine,
    PurchaseRecorded,
    PurchaseSummary,
)
from shared.topics import (
    CAMPAIGNS,
    CLOCK,
    CONTACTS,
    DELIVERIES,
    EVENTS,
    OFFERS,
    PROFILES_CHANGED,
    RAW_TOPICS,
    SEGMENTS,
)
from shared.vault import Pending

AT = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
LINE = PurchaseLine(sku="MILK-1L", quantity=Decimal(2), unit_price=Decimal("1.19"), amount=Decimal("2.38"))  # fmt: skip

SAMPLES: dict[str, BaseModel] = {
    EVENTS: PurchaseRecorded(
        event_id="e1",
        occurred_at=AT,
        customer_id="c1",
        card_id="k1",
        store_id="S001",
        currency="EUR",
        lines=(LINE,),
        total=Decimal("2.38"),
    ),
    PROFILES_CHANGED: ProfileChanged(
        customer_id="c1",
        cause_event_id="e1",
        cause_type="purchase_recorded",
        occurred_at=AT,
        marketing_consent=True,
        has_email=True,
        purchase=PurchaseSummary(
            event_id="e1", store_id="S001", total=Decimal("2.38"), products={"MILK-1L": None}
        ),
    ),
    CONTACTS: ContactChanged(customer_id="c1", marketing_consent=True, changed_at=AT),
    OFFERS: OfferIssued(
        offer_id="o1",
        customer_id="c1",
        kind="frequent_item",
        coupon_code="ABC",
        discount_percent=Decimal(10),
        sku="MILK-1L",
        valid_from=AT.date(),
        valid_until=AT.date(),
        issued_at=AT,
        template="frequent_item",
    ),
    DELIVERIES: DeliveryRecorded(
        offer_id="o1",
        customer_id="c1",
        state="sent",
        attempts=1,
        message_id="<o1@crm>",
        recorded_at=AT,
    ),
    SEGMENTS: SegmentMembershipChanged(
        type="segment_entered",
        customer_id="c1",
        segment="buyers",
        at=AT,
        cause_event_id="e1",
        segment_version=1,
    ),
    CAMPAIGNS: CampaignChanged(
        campaign_id="coffee",
        versions=(
            CampaignSpec(
                name="Coffee",
                trigger=CampaignTrigger(type="purchase", sku="COFFEE-1KG", min_checkouts=2),
                offer=CampaignOffer(discount_percent=Decimal(15), scope="sku"),
            ),
        ),
        history=(CampaignChange(at=AT, version=1, status="active", by="t", action="created"),),
    ),
    CLOCK: ClockTicked(date=AT.date()),
}
"""One event a current producer publishes on each internal topic."""


MAPS = frozenset({"products", "details", "fields"})
"""Free-form maps, whose keys are data rather than fields."""


def newer(event: BaseModel) -> bytes:
    """The event as a later version would write it: one more field at the top, and one more
    in every nested object (lines, a purchase, a campaign's versions...)."""

    def grow(value: Any) -> Any:
        if isinstance(value, dict):
            grown = {k: v if k in MAPS else grow(v) for k, v in value.items()}
            return {**grown, "added_later": {"any": [1, "x"]}}
        if isinstance(value, list):
            return [grow(v) for v in value]
        return value

    document = grow(json.loads(event.model_dump_json()))
    document["schema_version"] = 99
    return json.dumps(document).encode()


DECODERS = [
    pytest.param(spec, topic, id=f"{spec.name}-{topic}")
    for spec in (PROFILES, OFFERS_SERVICE, NOTIFIER, REPORTS)
    for topic in spec.decoders
    if topic not in RAW_TOPICS
]


@pytest.mark.parametrize(("spec", "topic"), DECODERS)
def test_a_newer_producers_event_decodes_with_its_unknown_fields_dropped(
    spec: Any, topic: str
) -> None:
    entry = spec.decoders[topic]
    decode = entry.decoder if isinstance(entry, Foreign) else entry
    sample = SAMPLES[topic]

    decoded = decode(Source(topic=topic, partition=0, offset=0, key=b"c1", value=newer(sample)))

    assert decoded is not None
    event = decoded[1] if isinstance(decoded, tuple) else decoded  # a contact: (customer, it)
    event = event.event if isinstance(event, Pending) else event  # sealed fields to open
    assert isinstance(event, type(sample))
    assert "added_later" not in event.model_dump_json()


def test_every_internal_topic_a_service_reads_has_a_sample() -> None:
    assert {topic for _, topic in (p.values for p in DECODERS)} <= SAMPLES.keys()


def test_a_producer_still_cannot_build_an_event_with_a_field_the_schema_lacks() -> None:
    with pytest.raises(ValidationError, match="extra_forbidden"):
        OfferIssued.model_validate({**SAMPLES[OFFERS].model_dump(), "added_later": 1})


def test_an_event_written_before_schema_version_existed_is_told_apart() -> None:
    written_now = SAMPLES[EVENTS].model_dump_json()
    document = json.loads(written_now)
    del document["schema_version"]

    older = PurchaseRecorded.model_validate(document, extra=CONSUMER_EXTRA)
    newer_one = PurchaseRecorded.model_validate_json(written_now, extra=CONSUMER_EXTRA)

    assert "schema_version" not in older.model_fields_set  # version 1, as documented
    assert newer_one.schema_version == SCHEMA_VERSION
    assert "schema_version" in newer_one.model_fields_set


def test_the_tables_every_instance_reads_whole_keep_a_newer_producers_records() -> None:
    """Campaigns and segment definitions: a record that did not decode there was skipped
    silently, so an old instance would have run without the campaign."""
    from services.offers.app import _decode_campaign
    from services.profiles.app import _decode_definition

    definition = SegmentDefined(
        name="buyers",
        rule=SegmentRule(bought=(Bought(sku="MILK-1L"),)),
        version=1,
        defined_at=AT,
        defined_by="t",
    )

    campaign = _decode_campaign(b"coffee", newer(SAMPLES[CAMPAIGNS]))
    defined = _decode_definition(b"buyers", newer(definition))

    assert campaign == SAMPLES[CAMPAIGNS].model_copy(update={"schema_version": 99})
    assert defined == definition.model_copy(update={"schema_version": 99})
