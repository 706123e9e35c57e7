"""The AsyncAPI document and JSON Schemas of crm-stream's topics, generated from the models.

FastStream's generator documents a broker's subscribers and publishers. The services' handlers
take raw bytes (they decode in batches for speed), so this module declares a documentation
broker whose channels carry the contract models: what each topic's messages look like, who
writes and who reads them. `python -m shared.asyncapi` rewrites `docs/asyncapi.json` and
`docs/schemas/`; a test fails when the committed files differ from what the code generates.

The schemas of what crm-stream publishes are producer schemas: closed (`additionalProperties:
false`), exactly what a producer writes. Readers ignore fields they do not know. That pair is
what keeps a schema registry's FULL compatibility possible: a closed model alone makes every
added field forward-incompatible (the old schema rejects it), an open one makes it backward-
incompatible (old data may have held that name with another type); a closed writer read with
an open reader takes optional additions both ways. `shared.schema_compat` checks each release
against the previous one on exactly that rule (docs/schemas/releases/).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from pydantic import BaseModel, TypeAdapter

from shared import campaigns, events, raw
from shared.topics import (
    CAMPAIGNS,
    CHECKOUTS_RAW,
    CLOCK,
    CONTACTS,
    CUSTOMERS_RAW,
    DATA_KEYS,
    DEADLETTER,
    DELIVERIES,
    EVENTS,
    INTERACTIONS_RAW,
    OFFERS,
    PROFILES_CHANGED,
    SEGMENT_DEFINITIONS,
    SEGMENTS,
)

TITLE = "crm-stream"
VERSION = "1.0.0"

EVENT_NOTE = (
    "Compatibility: producers publish exactly this schema; consumers ignore fields they do not "
    "know and accept any `schema_version` (later versions add optional fields only, never "
    "remove or retype one)."
)
"""Said of every event crm-stream publishes, in its schema and on its channel."""
RAW_NOTE = "Fields crm-stream does not know are ignored."
"""Said of what crm-stream reads from the stores (the contract's raw topics)."""
API_NOTE = (
    "An HTTP request body: fields the API does not know are refused (422); later versions add "
    "optional fields only."
)

# topic -> (model, description, consumed by crm-stream?)
CHANNELS: tuple[tuple[str, Any, str, bool], ...] = (
    (CHECKOUTS_RAW, raw.RawCheckout, "Card swipes with basket lines, from store tills.", True),
    (CUSTOMERS_RAW, raw.RawCustomerEvent, "Sign-ups, updates, consent, erasure, card links.", True),
    (INTERACTIONS_RAW, raw.RawInteraction, "Support tickets, e-mail opens, web visits...", True),
    (CLOCK, events.ClockTicked, "`crm tick`: a calendar day has begun.", True),
    (EVENTS, events.NormalizedEvent, "Internal: normalized events keyed by customer id.", False),
    (PROFILES_CHANGED, events.ProfileChanged, "Internal: profile changes, for offers.", False),
    (
        CONTACTS,
        events.ContactChanged,
        "Internal, compacted: contact details per customer; a null value is an erasure tombstone.",
        False,
    ),
    (
        OFFERS,
        events.OfferEvent,
        "Offer lifecycle for marketing: issued, revoked, redeemed, redemption rejected, expired, "
        "held out. Keyed by customer id.",
        False,
    ),
    (DELIVERIES, events.DeliveryRecorded, "E-mail delivery outcomes per offer.", False),
    (
        DATA_KEYS,
        events.DataKeyWrapped,
        "Internal, compacted, keyed by customer id: each customer's current data key, wrapped "
        "with the key-encryption key, from ingest; a null value is an erasure's tombstone. Read "
        "whole by a restore only.",
        False,
    ),
    (
        CAMPAIGNS,
        campaigns.CampaignChanged,
        "Compacted, keyed by campaign id: each campaign's whole state (every version and its "
        "history) after a change made through the campaigns API.",
        False,
    ),
    (
        SEGMENT_DEFINITIONS,
        campaigns.SegmentDefined,
        "Internal, compacted, keyed by segment name: each segment's rule.",
        False,
    ),
    (
        SEGMENTS,
        campaigns.SegmentMembershipChanged,
        "Customers entering and leaving segments, keyed by customer id.",
        False,
    ),
    (
        DEADLETTER,
        events.DeadLetter,
        "What a service could not process, with the reason; card numbers masked.",
        False,
    ),
)

SCHEMAS: dict[str, Any] = {
    "raw-checkout": raw.RawCheckout,
    "raw-customer-event": raw.RawCustomerEvent,
    "raw-interaction": raw.RawInteraction,
    "normalized-event": events.NormalizedEvent,
    "profile-changed": events.ProfileChanged,
    "contact-changed": events.ContactChanged,
    "offer-event": events.OfferEvent,
    "offer-issued": events.OfferIssued,
    "offer-redeemed": events.OfferRedeemed,
    "redemption-rejected": events.RedemptionRejected,
    "offer-expired": events.OfferExpired,
    "offer-held-out": events.OfferHeldOut,
    "delivery-recorded": events.DeliveryRecorded,
    "data-key-wrapped": events.DataKeyWrapped,
    "dead-letter": events.DeadLetter,
    "clock": events.ClockTicked,
    "offer-revoked": events.OfferRevoked,
    "campaign": campaigns.CampaignSpec,
    "campaign-changed": campaigns.CampaignChanged,
    "segment-definition": campaigns.SegmentDefinition,
    "segment-defined": campaigns.SegmentDefined,
    "segment-membership-changed": campaigns.SegmentMembershipChanged,
}
NOTES: dict[str, str] = {
    "raw-checkout": RAW_NOTE,
    "raw-customer-event": RAW_NOTE,
    "raw-interaction": RAW_NOTE,
    "campaign": API_NOTE,
    "segment-definition": API_NOTE,
}
"""The compatibility note of each schema that is not a published event's (`EVENT_NOTE`)."""


def contract_broker() -> KafkaBroker:
    """A broker that is only documentation: one channel per topic with its payload model."""
    broker = KafkaBroker(
        "kafka:9092",
        description="crm-stream: loyalty-card checkouts to profiles, coupons and e-mail.",
    )
    for topic, model, description, consumed in CHANNELS:
        if consumed:
            _document_subscriber(broker, topic, model, description)
        else:
            broker.publisher(
                topic, title=topic, description=f"{description} {EVENT_NOTE}", schema=model
            )
    return broker


def _document_subscriber(broker: KafkaBroker, topic: str, model: Any, description: str) -> None:
    async def receive(message: Any) -> None:  # pragma: no cover - never called
        return None

    # The payload model is the handler's annotation (set here: annotations are strings).
    receive.__annotations__ = {"message": model, "return": None}
    receive.__name__ = topic.replace(".", "_")
    broker.subscriber(topic, title=topic, description=description)(receive)


def asyncapi_document() -> dict[str, Any]:
    spec = AsyncAPI(
        contract_broker(),
        title=TITLE,
        version=VERSION,
        description="Topics of crm-stream. Generated from shared/events.py and shared/raw.py.",
        schema_version="3.0.0",
    )
    document: dict[str, Any] = json.loads(spec.to_specification().to_json())
    return document


def json_schemas() -> dict[str, dict[str, Any]]:
    """Each schema of `SCHEMAS`, its compatibility note closing its description."""
    result: dict[str, dict[str, Any]] = {}
    for name, model in SCHEMAS.items():
        if isinstance(model, type) and issubclass(model, BaseModel):
            schema = model.model_json_schema()
        else:
            schema = TypeAdapter(model).json_schema()
        note = NOTES.get(name, EVENT_NOTE)
        schema["description"] = (
            f"{schema['description']}\n\n{note}" if "description" in schema else note
        )
        result[name] = schema
    return result


def rendered(root: Path) -> dict[Path, str]:
    """Every generated file, path -> text."""
    files = {root / "docs" / "asyncapi.json": _dump(asyncapi_document())}
    for name, schema in json_schemas().items():
        files[root / "docs" / "schemas" / f"{name}.schema.json"] = _dump(schema)
    return files


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path.cwd()
    for path, text in rendered(root).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(root)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
