"""The events crm-stream publishes: one contract module, pydantic v2, every field described.

Normalized customer events travel on `crm.events`; profile changes on `crm.profiles.changed`;
contact details on `crm.contacts`; offers on `crm.offers`; deliveries on `crm.deliveries`;
failures on `crm.deadletter`. Money is Decimal (serialized as a string), times are aware UTC.
The personal fields (`SEALED_FIELDS`) travel sealed with the customer's data key, which an
erasure destroys (`shared.vault`); the models hold their plain values.

Versions mix during a rolling upgrade or a rollback, so the models are strict one way only:
producers build them (`extra="forbid"`: a misspelt field fails at once, and what is published
is exactly the schema), consumers read them with `extra=CONSUMER_EXTRA` (a field a newer
producer added is dropped, not dead-lettered). Every event says the `schema_version` that
wrote it; a reader accepts any version it can parse.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    WithJsonSchema,
    model_validator,
)

SCHEMA_VERSION: Final = 1
"""Version of the event contract, written into every event as `schema_version`. Bumped when a
release changes what a field means without changing its shape (the rule: docs/operate.md,
"Upgrading"); never for an optional field added, whose presence says it all. A record without
the field was written before it existed: version 1, whatever the default says (a reader that
branches on the version checks `"schema_version" in event.model_fields_set`)."""

CONSUMER_EXTRA: Final = "ignore"
"""The `extra` every consumer validates a record with (`Model.model_validate_json(value,
extra=CONSUMER_EXTRA)`): unknown fields, a newer producer's optional ones, are dropped, so an
old consumer keeps working while producers are upgraded, and after a rollback. The models
themselves forbid extras: what a producer builds is exactly the schema."""

SchemaVersion = Annotated[
    int,
    Field(
        description="Version of the event contract that wrote it; a record without it is "
        "version 1. A reader accepts any version it can parse: later versions only add "
        "optional fields."
    ),
]

# ---------------------------------------------------------------- sealed personal fields

SEALED_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "customer_signed_up": ("email", "first_name", "birth_date"),
    "customer_updated": ("email", "first_name", "birth_date"),
    "interaction_recorded": ("details",),
    "contact_changed": ("email", "first_name"),
    "note_added": ("text",),
}
"""Event type -> its personal fields, which travel sealed with the customer's data key
(`shared.vault`): the models hold the plain values, the wire an envelope."""

ENVELOPE_ALGORITHM: Final = "aes256gcm"
ENVELOPE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "title": "Sealed",
    "description": "A personal field encrypted with the customer's data key: AES-256-GCM, the "
    "customer id and the field name as associated data. The plaintext is the value's JSON. "
    "Unreadable once the customer is erased (the key is destroyed).",
    "properties": {
        "enc": {"const": ENVELOPE_ALGORITHM, "description": "The algorithm."},
        "kid": {"type": "string", "description": "Id of the customer's data key."},
        "ct": {
            "type": "string",
            "contentEncoding": "base64",
            "description": "12-byte nonce, then the ciphertext with its 16-byte tag.",
        },
    },
    "required": ["enc", "kid", "ct"],
    "additionalProperties": False,
}
_SEALED_OR_NULL = WithJsonSchema({"anyOf": [ENVELOPE_SCHEMA, {"type": "null"}]})
SealedText = Annotated[str | None, _SEALED_OR_NULL]
"""Personal text: sealed on the wire (null when absent)."""
SealedDate = Annotated[dt.date | None, _SEALED_OR_NULL]
"""A personal date: sealed on the wire, the plaintext `"YYYY-MM-DD"` (null when absent)."""
Details = dict[str, str | int | float | bool | None]
SealedDetails = Annotated[Details, WithJsonSchema({"anyOf": [ENVELOPE_SCHEMA, {"type": "object"}]})]
"""Free-text details: sealed on the wire (an empty object when there are none)."""


class Event(BaseModel):
    """Base of every published event: immutable, strict to build (an unknown field is a
    producer's mistake), tolerant to read (`CONSUMER_EXTRA`: a newer producer's field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- normalized (crm.events)


class _CustomerEvent(Event):
    event_id: str = Field(description="The producer's idempotency key, kept from the raw event.")
    occurred_at: AwareDatetime = Field(description="When it happened, in UTC.")
    customer_id: str = Field(description="Pseudonymous customer id (from the card's keyed hash).")


class _ConsentRecord(Event):
    """Where a consent statement came from: what a data-protection audit asks to be shown."""

    source: str | None = Field(
        default=None,
        max_length=64,
        description="Where the consent was stated: `till`, `desk`, `web`, `unsubscribe_link`, "
        "`admin`...; null when the producer did not say.",
    )
    channel: str | None = Field(
        default=None,
        max_length=64,
        description="The marketing channel the consent is about (`email`, `sms`...); null "
        "when not given.",
    )
    consent_text_version: str | None = Field(
        default=None,
        max_length=64,
        description="Version of the consent wording the customer was shown; null when not given.",
    )


class PurchaseLine(Event):
    """One normalized basket line."""

    sku: str = Field(description="Trimmed, upper-cased SKU.")
    name: str | None = Field(default=None, description="Product name as the till sent it.")
    category: str | None = Field(default=None, description="Lower-cased category.")
    quantity: Decimal = Field(description="Units, or weight for weighed goods.")
    unit_price: Decimal = Field(description="Price per unit.")
    discount: Decimal = Field(default=Decimal(0), description="Money taken off this line.")
    amount: Decimal = Field(description="quantity * unit_price - discount, never below zero.")


class PurchaseRecorded(Event):
    """A checkout, normalized. `customer_id` is null for an anonymous checkout."""

    type: Literal["purchase_recorded"] = "purchase_recorded"
    schema_version: SchemaVersion = SCHEMA_VERSION
    event_id: str = Field(description="The till's idempotency key.")
    occurred_at: AwareDatetime = Field(description="When the swipe happened, in UTC.")
    customer_id: str | None = Field(description="Pseudonymous customer id; null when anonymous.")
    card_id: str | None = Field(description="Keyed hash of the card used; null when anonymous.")
    store_id: str = Field(description="Store that made the sale.")
    currency: str = Field(description="ISO 4217 currency, upper case.")
    lines: tuple[PurchaseLine, ...] = Field(description="Basket lines.")
    total: Decimal = Field(description="Sum of the lines' amounts.")
    coupons: tuple[str, ...] = Field(default=(), description="Coupon codes listed, upper case.")


class CustomerSignedUp(_CustomerEvent, _ConsentRecord):
    """A card was registered to a person, or a person signed up without a card (a lead)."""

    type: Literal["customer_signed_up"] = "customer_signed_up"
    schema_version: SchemaVersion = SCHEMA_VERSION
    card_id: str | None = Field(
        default=None,
        description="Keyed hash of the card registered; null for a lead (no card), whose id "
        "is the keyed hash of its e-mail address.",
    )
    email: SealedText = Field(
        default=None, description="Lower-cased e-mail address. Sealed on the wire."
    )
    first_name: SealedText = Field(default=None, description="First name. Sealed on the wire.")
    birth_date: SealedDate = Field(default=None, description="Date of birth. Sealed on the wire.")
    marketing_consent: bool = Field(default=False, description="Opt-in to marketing.")
    store_id: str | None = Field(default=None, description="Store where the customer signed up.")
    merged_customer_id: str | None = Field(
        default=None,
        description="The lead whose e-mail address this sign-up matches (exact normalised "
        "address), whose profile merges in; null when there is none.",
    )


class CustomerUpdated(_CustomerEvent, _ConsentRecord):
    """Changed fields only; a null field is unchanged."""

    type: Literal["customer_updated"] = "customer_updated"
    schema_version: SchemaVersion = SCHEMA_VERSION
    email: SealedText = Field(default=None, description="New e-mail address. Sealed on the wire.")
    first_name: SealedText = Field(default=None, description="New first name. Sealed on the wire.")
    birth_date: SealedDate = Field(
        default=None, description="New date of birth. Sealed on the wire."
    )
    marketing_consent: bool | None = Field(default=None, description="New consent.")
    store_id: str | None = Field(default=None, description="New home store.")


class ConsentChanged(_CustomerEvent, _ConsentRecord):
    """The customer gave or withdrew marketing consent."""

    type: Literal["consent_changed"] = "consent_changed"
    schema_version: SchemaVersion = SCHEMA_VERSION
    marketing_consent: bool = Field(description="The consent now in force.")


class CardLinked(_CustomerEvent):
    """Another card now feeds this customer's profile."""

    type: Literal["card_linked"] = "card_linked"
    schema_version: SchemaVersion = SCHEMA_VERSION
    card_id: str = Field(description="Keyed hash of the card linked to the customer.")
    merged_customer_id: str | None = Field(
        default=None, description="The customer the card fed before, whose profile merges in."
    )


class CustomerErased(_CustomerEvent):
    """Right to be forgotten: personal data and profile are deleted."""

    type: Literal["customer_erased"] = "customer_erased"
    schema_version: SchemaVersion = SCHEMA_VERSION


Sentiment = Literal["positive", "neutral", "negative"]
"""An interaction's opinion, normalised by ingest."""
LABEL_MAX: Final = 40
"""Characters of an interaction's brand or category label."""


class InteractionRecorded(_CustomerEvent):
    """A support ticket, e-mail open or click, web visit, social like..."""

    type: Literal["interaction_recorded"] = "interaction_recorded"
    schema_version: SchemaVersion = SCHEMA_VERSION
    interaction_type: str = Field(description="Lower-cased free text: support_ticket, ...")
    channel: str | None = Field(default=None, description="phone, email, web...")
    details: SealedDetails = Field(
        default_factory=dict,
        description="Flat details as sent (card numbers masked): free text, so sealed on the "
        "wire as one value.",
    )
    # Taken out of `details` by ingest from an allow-list, not free text: open on the wire.
    sentiment: Sentiment | None = Field(
        default=None,
        description="The opinion the interaction carries (`details.sentiment` in common "
        "spellings, or a like or dislike type), normalised; null when none or unknown.",
    )
    brand: str | None = Field(
        default=None,
        max_length=LABEL_MAX,
        description="Brand it is about (`details.brand`): a short label, trimmed, lower-case; "
        "null when none.",
    )
    category: str | None = Field(
        default=None,
        max_length=LABEL_MAX,
        description="Product category it is about (`details.category`): a short label, "
        "trimmed, lower-case; null when none.",
    )


class NoteAdded(_CustomerEvent):
    """An agent wrote a note about the customer (the call centre's `POST .../notes`)."""

    type: Literal["note_added"] = "note_added"
    schema_version: SchemaVersion = SCHEMA_VERSION
    text: SealedText = Field(
        default=None,
        description="The note: free text, so sealed on the wire (null once unreadable).",
    )
    author: str = Field(description="Token id of the agent who wrote it (never a name).")


NormalizedEvent = Annotated[
    PurchaseRecorded
    | CustomerSignedUp
    | CustomerUpdated
    | ConsentChanged
    | CardLinked
    | CustomerErased
    | InteractionRecorded
    | NoteAdded,
    Field(discriminator="type"),
]
NORMALIZED_EVENT: TypeAdapter[NormalizedEvent] = TypeAdapter(NormalizedEvent)


# ---------------------------------------------------------------- crm.profiles.changed


class BasketLine(Event):
    """What offers needs of one basket line: which product, and the money it cost."""

    sku: str = Field(description="Trimmed, upper-cased SKU.")
    category: str | None = Field(default=None, description="Lower-cased category.")
    amount: Decimal = Field(description="Money paid for the line, after its own discount.")


class PurchaseSummary(Event):
    """What offers needs to know of the purchase that changed a profile."""

    event_id: str = Field(description="The checkout's event id.")
    store_id: str = Field(description="Store of the checkout.")
    total: Decimal = Field(description="Basket total.")
    coupons: tuple[str, ...] = Field(default=(), description="Coupon codes listed.")
    products: dict[str, str | None] = Field(description="SKU -> product name, of this basket.")
    card_id: str | None = Field(default=None, description="Card used at the checkout.")
    lines: tuple[BasketLine, ...] = Field(
        default=(),
        description="The basket, one entry per SKU and category (amounts summed): what a "
        "coupon's discount is computed on.",
    )


class ProfileChanged(Event):
    """A profile changed; carries just what the offer rules need, no personal data."""

    type: Literal["profile_changed"] = "profile_changed"
    schema_version: SchemaVersion = SCHEMA_VERSION
    customer_id: str = Field(description="Pseudonymous customer id.")
    cause_event_id: str = Field(description="Event whose application changed the profile.")
    cause_type: str = Field(description="Type of that event.")
    occurred_at: AwareDatetime = Field(description="When that event happened.")
    marketing_consent: bool = Field(description="Consent in force.")
    has_email: bool = Field(description="Whether an e-mail address is known.")
    erased: bool = Field(default=False, description="Whether the customer was erased.")
    merged_into: str | None = Field(
        default=None,
        description="Set when a card link merged this customer into another profile: the "
        "customer no longer exists on its own.",
    )
    birthday: str | None = Field(
        default=None,
        pattern=r"^(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$",
        description="Month and day of birth, `MM-DD` (29 February kept as `02-29`): what the "
        "birthday rule needs. The year is not published (data minimisation: this topic is kept "
        "400 days and is not sealed).",
    )
    first_purchase_at: AwareDatetime | None = Field(default=None, description="First purchase.")
    last_purchase_at: AwareDatetime | None = Field(default=None, description="Latest purchase.")
    visits: int = Field(default=0, description="Checkouts so far.")
    home_store_id: str | None = Field(default=None, description="Store of most visits.")
    purchase: PurchaseSummary | None = Field(default=None, description="The purchase, if any.")
    card_ids: tuple[str, ...] = Field(
        default=(), description="Keyed hashes of the cards feeding the profile, sorted."
    )
    consent_given: bool | None = Field(
        default=None,
        description="The marketing consent this event states (a sign-up, an update naming it, "
        "a consent change); null when the event states none. With `occurred_at` it is one "
        "point of the customer's consent over time: offers decides on the consent in force at "
        "a trigger's time, whatever order the changes arrive in.",
    )
    email_given: bool = Field(
        default=False, description="Whether this event gives an e-mail address."
    )
    birth_date_given: bool = Field(
        default=False, description="Whether this event sets the date of birth (`birthday`)."
    )

    @model_validator(mode="before")
    @classmethod
    def _birthday_of_older_records(cls, data: Any) -> Any:
        """Records written before `birthday` carry `birth_date` (`YYYY-MM-DD`): read as its
        month and day, so `crm replay offers` still reads what the topic retains."""
        if isinstance(data, dict) and "birth_date" in data:
            data = dict(data)
            born = data.pop("birth_date")
            text = born.isoformat() if isinstance(born, dt.date) else born
            if isinstance(text, str) and len(text) >= 10 and "birthday" not in data:
                data["birthday"] = text[5:10]
        return data


# ---------------------------------------------------------------- crm.contacts (compacted)


class ContactChanged(Event):
    """Latest contact details of a customer, for the notifier. A null value is a tombstone."""

    type: Literal["contact_changed"] = "contact_changed"
    schema_version: SchemaVersion = SCHEMA_VERSION
    customer_id: str = Field(description="Pseudonymous customer id.")
    email: SealedText = Field(default=None, description="E-mail address. Sealed on the wire.")
    first_name: SealedText = Field(
        default=None, description="First name for the salutation. Sealed on the wire."
    )
    marketing_consent: bool = Field(description="Consent in force.")
    home_store_id: str | None = Field(default=None, description="Store for quiet-hour time zone.")
    changed_at: AwareDatetime = Field(description="Time of the event that caused the change.")
    personal_withheld: bool = Field(
        default=False,
        description="The e-mail address and first name were left out because the customer has "
        "no data key yet (details stated before the key vault existed): keep the ones known.",
    )


# ---------------------------------------------------------------- crm.data-keys (compacted)

WRAP_ALGORITHM: Final = "aes256gcm-hkdf-sha256"


class DataKeyWrapped(Event):
    """A customer's current data key, wrapped with the key-encryption key (`CRM_KEY_WRAPPING_KEY`),
    so that a restore can put back the keys created after its backup. Keyed by customer id; a
    null value is the tombstone of an erasure (the key is destroyed)."""

    type: Literal["data_key_wrapped"] = "data_key_wrapped"
    schema_version: SchemaVersion = SCHEMA_VERSION
    customer_id: str = Field(description="Pseudonymous customer id whose key this is.")
    kid: str = Field(description="Id of the data key (the `kid` of the envelopes it seals).")
    created_at: AwareDatetime = Field(
        description="When the key vault created the key (UTC): a restore never puts back a key "
        "created before the customer's latest erasure."
    )
    alg: Literal["aes256gcm-hkdf-sha256"] = Field(
        default=WRAP_ALGORITHM,
        description="How the key is wrapped: AES-256-GCM under a key derived from the wrapping "
        "key with HKDF-SHA-256, the customer id and the key id as associated data.",
    )
    wrapping_key_id: str = Field(
        description="Fingerprint of the wrapping key (HKDF-derived, reveals nothing of it): "
        "which key unwraps this record, across a rotation."
    )
    wrapped: str = Field(
        description="Base64 of the 12-byte nonce, then the 32-byte key encrypted, with its "
        "16-byte tag. Never the key itself."
    )


# ---------------------------------------------------------------- crm.offers

OfferKind = Literal["frequent_item", "birthday", "anniversary", "win_back", "segment_entered"]
"""The trigger behind an offer: a purchase (`frequent_item`), a birthday, an anniversary,
inactivity (`win_back`) or entering a segment; `campaign_id` says which campaign."""
OfferScope = Literal["sku", "category", "basket"]


class OfferTrigger(Event):
    """What made an offer: the checkouts (a purchase rule) or the calendar day (a day rule)."""

    type: Literal["purchase", "clock", "segment"] = Field(
        description="A purchase rule, a calendar rule or a segment entry."
    )
    event_ids: tuple[str, ...] = Field(
        default=(),
        description="The checkouts that earned it (for a frequent item: the distinct checkouts "
        "with the SKU inside the window, the triggering one last).",
    )
    day: dt.date | None = Field(default=None, description="The clock day of a calendar rule.")
    segment: str | None = Field(default=None, description="The segment entered.")


class OfferIssued(Event):
    """A coupon was issued to a customer."""

    type: Literal["offer_issued"] = "offer_issued"
    schema_version: SchemaVersion = SCHEMA_VERSION
    offer_id: str = Field(description="Deterministic id: the same trigger gives the same id.")
    customer_id: str = Field(description="Pseudonymous customer id (the message key).")
    kind: OfferKind = Field(description="Rule that issued it.")
    coupon_code: str = Field(description="Unique, unguessable coupon code.")
    discount_percent: Decimal = Field(description="Percentage off.")
    sku: str | None = Field(default=None, description="SKU the coupon applies to; null = basket.")
    product_name: str | None = Field(default=None, description="Name of that product.")
    valid_from: dt.date = Field(description="First day the coupon can be used.")
    valid_until: dt.date = Field(description="Last day the coupon can be used.")
    issued_at: AwareDatetime = Field(description="Time of the trigger that issued it.")
    template: str = Field(description="E-mail template name.")
    scope: OfferScope = Field(
        default="basket",
        description="What the discount applies to: the lines of `sku`, the lines of "
        "`category`, or the whole basket.",
    )
    category: str | None = Field(default=None, description="Category of a category coupon.")
    trigger: OfferTrigger | None = Field(
        default=None, description="What triggered it: the checkout event ids or the clock day."
    )
    campaign_id: str | None = Field(
        default=None, description="The campaign it came from, when there is one."
    )
    variant: str | None = Field(default=None, description="The campaign's A/B arm, if any.")


class OfferRedeemed(Event):
    """A checkout redeemed a coupon."""

    type: Literal["offer_redeemed"] = "offer_redeemed"
    schema_version: SchemaVersion = SCHEMA_VERSION
    offer_id: str = Field(description="The offer redeemed.")
    customer_id: str = Field(description="Pseudonymous customer id.")
    kind: OfferKind = Field(description="Rule that issued it.")
    coupon_code: str = Field(description="Coupon code.")
    redeemed_at: AwareDatetime = Field(description="Time of the checkout.")
    checkout_event_id: str = Field(description="The checkout that redeemed it.")
    store_id: str = Field(description="Store of that checkout.")
    basket_total: Decimal = Field(description="Total of the redeeming basket.")
    discount: Decimal = Field(
        default=Decimal(0), description="The money the coupon took off that basket."
    )


RejectionReason = Literal[
    "unknown_code",
    "foreign_code",
    "already_redeemed",
    "expired",
    "revoked",
    "not_in_basket",
    "budget_spent",
]


class RedemptionRejected(Event):
    """A checkout listed a coupon code that could not be redeemed."""

    type: Literal["redemption_rejected"] = "redemption_rejected"
    schema_version: SchemaVersion = SCHEMA_VERSION
    rejection_id: str = Field(description="Deterministic id: checkout event id and code.")
    customer_id: str = Field(description="Pseudonymous id of the customer who listed the code.")
    coupon_code: str = Field(description="The code as listed, normalized (upper case).")
    reason: RejectionReason = Field(description="Why the code was not redeemed.")
    offer_id: str | None = Field(
        default=None,
        description="The customer's offer with that code; null for unknown or foreign.",
    )
    checkout_event_id: str = Field(description="The checkout that listed the code.")
    store_id: str = Field(description="Store of that checkout.")
    rejected_at: AwareDatetime = Field(description="Time of the checkout.")


class OfferExpired(Event):
    """An issued coupon passed its last valid day without being redeemed."""

    type: Literal["offer_expired"] = "offer_expired"
    schema_version: SchemaVersion = SCHEMA_VERSION
    offer_id: str = Field(description="The offer that expired.")
    customer_id: str = Field(description="Pseudonymous customer id.")
    kind: OfferKind = Field(description="Rule that issued it.")
    coupon_code: str = Field(description="Coupon code.")
    valid_until: dt.date = Field(description="Last day the coupon could be used.")
    expired_on: dt.date = Field(description="Clock day on which it was found expired.")


class OfferRevoked(Event):
    """An offer a late event showed should not have been issued: its code no longer redeems,
    and an e-mail not yet sent is cancelled."""

    type: Literal["offer_revoked"] = "offer_revoked"
    schema_version: SchemaVersion = SCHEMA_VERSION
    offer_id: str = Field(description="The offer withdrawn.")
    customer_id: str = Field(description="Pseudonymous customer id (the message key).")
    kind: OfferKind = Field(description="Rule that had issued it.")
    coupon_code: str = Field(description="The code that no longer redeems.")
    reason: str = Field(
        description="Why, as the decision now stands: `consent`, `no_email`, `erased`, "
        "`cooldown`, `cap`, `held_out` or `not_eligible`."
    )
    revoked_at: AwareDatetime = Field(description="Event time of the change that revoked it.")


class OfferHeldOut(Event):
    """An eligible customer was held out of an offer (the control group that measures lift)."""

    type: Literal["held_out"] = "held_out"
    schema_version: SchemaVersion = SCHEMA_VERSION
    offer_id: str = Field(description="Id the offer would have had (deterministic).")
    customer_id: str = Field(description="Pseudonymous customer id (the message key).")
    kind: OfferKind = Field(description="Rule the customer was eligible for.")
    period: str = Field(description="Campaign period of the decision, ISO week `YYYY-Www`.")
    sku: str | None = Field(default=None, description="SKU the coupon would apply to.")
    valid_from: dt.date = Field(description="First day the coupon would have been valid.")
    valid_until: dt.date = Field(description="Last day the coupon would have been valid.")
    decided_at: AwareDatetime = Field(description="Time of the trigger.")
    campaign_id: str | None = Field(default=None, description="The campaign held out of.")
    variant: str | None = Field(default=None, description="The arm it would have had.")
    control: Literal["campaign", "global"] = Field(
        default="campaign",
        description="`campaign`: the campaign's own hold-out; `global`: the programme's "
        "control group, which gets no campaign at all.",
    )


OfferEvent = Annotated[
    OfferIssued | OfferRedeemed | RedemptionRejected | OfferExpired | OfferHeldOut | OfferRevoked,
    Field(discriminator="type"),
]
"""Everything offers publishes on `crm.offers`."""
OFFER_EVENT: TypeAdapter[OfferEvent] = TypeAdapter(OfferEvent)


# ---------------------------------------------------------------- crm.clock, crm.deliveries


class ClockTicked(BaseModel):
    """`{"date": "YYYY-MM-DD"}`: that calendar day has begun (contract format)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    date: dt.date = Field(description="The calendar day that has begun.")
    schema_version: SchemaVersion = SCHEMA_VERSION


DeliveryState = Literal["sent", "written", "bounced", "suppressed", "failed"]


class DeliveryRecorded(Event):
    """Outcome of an e-mail for an offer (no address in it)."""

    type: Literal["delivery_recorded"] = "delivery_recorded"
    schema_version: SchemaVersion = SCHEMA_VERSION
    offer_id: str = Field(description="Offer the e-mail was for.")
    customer_id: str = Field(description="Pseudonymous customer id.")
    state: DeliveryState = Field(description="Final state of the delivery.")
    attempts: int = Field(description="Send attempts made.")
    message_id: str = Field(description="The e-mail's Message-ID.")
    recorded_at: AwareDatetime = Field(description="When the outcome was recorded.")
    reason: str | None = Field(default=None, description="Why it was suppressed or failed.")


# ---------------------------------------------------------------- crm.deadletter


class DeadLetter(Event):
    """What a service could not process, and why: never the payload itself.

    A dead letter keeps an allow-list of the payload's fields (ids, types, times, the store:
    see `fields`), the reason and the path of the failing field; never names, e-mail addresses,
    birth dates, card numbers, free-text details or any other field. Of a payload that is not
    a JSON object it keeps nothing but its size and hash.
    """

    type: Literal["dead_letter"] = "dead_letter"
    schema_version: SchemaVersion = SCHEMA_VERSION
    service: str = Field(description="Service that gave up on the message.")
    reason: str = Field(description="Machine-readable reason code, e.g. `invalid_birth_date`.")
    detail: str = Field(
        description="Human-readable explanation: where and why, never the failing value."
    )
    field: str | None = Field(
        default=None,
        description="Path of the failing field (`birth_date`, `lines.0.quantity`), when one "
        "field is to blame; never its value.",
    )
    source_topic: str = Field(description="Topic the message came from.")
    partition: int = Field(description="Partition it came from.")
    offset: int = Field(
        description="Offset it had (with the topic and partition: where to "
        "read the message itself while the topic retains it)."
    )
    dead_lettered_at: AwareDatetime = Field(description="When it was dead-lettered (UTC).")
    fields: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description="The payload's allow-listed fields, when it is a JSON object and they are "
        "short scalars: `event_id`, `type`, `occurred_at`, `store_id`, `customer_id`, "
        "`offer_id`, `campaign_id`, `cause_event_id`, `checkout_event_id`, `kind`, "
        "`currency`, `channel`, `changed_at`, `issued_at`, `schema_version`. Nothing else of "
        "the payload is kept.",
    )
    payload_bytes: int = Field(description="Size of the original payload in bytes.")
    payload_sha256: str = Field(
        description="SHA-256 of the original payload (hex): tells two dead letters of the "
        "same message apart from two of different ones."
    )
