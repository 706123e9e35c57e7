"""Campaigns and segments as data: what marketing defines, and the events that carry it.

A **segment** is a named rule over profile figures; profiles evaluates every segment on each
profile change and each clock day and publishes entries and exits on `crm.segments` (keyed by
customer). Definitions travel on the compacted `crm.segment-definitions` (keyed by name).

A **campaign** is a trigger, an audience (a segment), an offer (or A/B variants of it), a
template, a schedule, a hold-out share and optional budgets. Every change (create, edit, pause,
resume) publishes the campaign's whole new state on the compacted `crm.campaigns` (keyed by
campaign id), its `history` included, so the latest record alone says which version was in
force at any moment: a replay with the same campaign history gives the same offers.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from shared.events import SCHEMA_VERSION, SchemaVersion
from shared.marketing import Segment as RfmSegment

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
"""Segment names and campaign ids: lower case, digits, `-` and `_`, at most 64 characters."""
ALL = "all"
"""The built-in segment every customer is in."""
RFM_PREFIX = "rfm-"
"""Built-in RFM segments are named `rfm-<segment>` (`rfm-champions`, `rfm-at_risk`, ...)."""
DEFAULT_CAMPAIGNS = ("frequent-item", "birthday", "anniversary", "win-back")
"""Ids of the campaigns the four built-in rules become (created at first start)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- segments


class Bought(_Model):
    """A SKU or a category bought in at least `min_checkouts` distinct checkouts within the
    last `within_days` days."""

    sku: str | None = Field(default=None, max_length=64, description="A SKU (upper case).")
    category: str | None = Field(
        default=None, max_length=100, description="A category (lower case)."
    )
    within_days: int = Field(
        default=30,
        ge=1,
        le=400,
        description="Calendar days counted back, today included: 1 is today only, 30 is "
        "today and the 29 days before (a campaign trigger's `window_days` counts the days "
        "before today: 0 is today only).",
    )
    min_checkouts: int = Field(default=1, ge=1, le=1000, description="Distinct checkouts.")

    @model_validator(mode="after")
    def _one_of(self) -> Bought:
        if (self.sku is None) == (self.category is None):
            raise ValueError("give exactly one of `sku` and `category`")
        return self


class SegmentRule(_Model):
    """Predicates over a customer's profile figures; a customer is in the segment when every
    predicate given holds (those left out do not constrain). Days count in the calendar's
    time zone, up to the day being evaluated."""

    min_spend: Decimal | None = Field(
        default=None, ge=0, max_digits=14, decimal_places=2, description="Total spend at least."
    )
    max_spend: Decimal | None = Field(
        default=None, ge=0, max_digits=14, decimal_places=2, description="Total spend at most."
    )
    min_visits: int | None = Field(default=None, ge=0, description="Distinct checkouts at least.")
    max_visits: int | None = Field(default=None, ge=0, description="Distinct checkouts at most.")
    min_average_basket: Decimal | None = Field(
        default=None,
        ge=0,
        max_digits=14,
        decimal_places=2,
        description="Spend per checkout at least.",
    )
    max_average_basket: Decimal | None = Field(
        default=None,
        ge=0,
        max_digits=14,
        decimal_places=2,
        description="Spend per checkout at most.",
    )
    min_days_since_last_visit: int | None = Field(
        default=None, ge=0, description="Days since the latest checkout at least."
    )
    max_days_since_last_visit: int | None = Field(
        default=None, ge=0, description="Days since the latest checkout at most."
    )
    bought: tuple[Bought, ...] = Field(
        default=(), max_length=10, description="Each of these SKUs or categories bought."
    )
    rfm_segment: tuple[RfmSegment, ...] = Field(
        default=(), description="In one of these RFM segments."
    )
    home_store: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] = Field(
        default=(), max_length=100, description="Home store (most visits) one of these."
    )
    consent: bool | None = Field(default=None, description="Marketing consent as given.")
    birthday_month: int | None = Field(default=None, ge=1, le=12, description="Month of birth.")


class SegmentDefinition(_Model):
    """What `POST /api/segments` takes."""

    name: str = Field(pattern=NAME_PATTERN, description="Unique name.")
    description: str | None = Field(default=None, max_length=500, description="What it is for.")
    rule: SegmentRule = Field(description="Who is in it.")


class SegmentDefined(_Model):
    """A segment's definition, on the compacted `crm.segment-definitions` (keyed by name)."""

    type: Literal["segment_defined"] = "segment_defined"
    schema_version: SchemaVersion = SCHEMA_VERSION
    name: str = Field(pattern=NAME_PATTERN, description="Segment name (the message key).")
    description: str | None = Field(default=None, description="What it is for.")
    rule: SegmentRule = Field(description="Who is in it.")
    version: int = Field(ge=1, description="1 when created, one more per change.")
    defined_at: AwareDatetime = Field(description="When this version was saved.")
    defined_by: str = Field(description="Token id of whoever saved it (audit).")


class SegmentMembershipChanged(_Model):
    """A customer entered or left a segment, on `crm.segments` (keyed by customer id)."""

    type: Literal["segment_entered", "segment_exited"] = Field(description="Entry or exit.")
    schema_version: SchemaVersion = SCHEMA_VERSION
    customer_id: str = Field(description="Pseudonymous customer id (the message key).")
    segment: str = Field(description="Segment name.")
    at: AwareDatetime = Field(
        description="Event time of the change that caused it (a checkout, a consent change, "
        "or the start of a clock day)."
    )
    cause_event_id: str = Field(description="The event (or `clock:YYYY-MM-DD`) that caused it.")
    segment_version: int = Field(ge=1, description="Version of the segment's definition.")


# ---------------------------------------------------------------- campaigns

TriggerType = Literal["purchase", "birthday", "anniversary", "inactive", "segment_entered"]
CampaignStatus = Literal["scheduled", "active", "paused", "ended", "budget_spent"]


class CampaignTrigger(_Model):
    """What makes a customer eligible, at the trigger's event time."""

    type: TriggerType = Field(description="The kind of trigger.")
    sku: str | None = Field(
        default=None, max_length=64, description="`purchase`: this SKU (upper case)."
    )
    category: str | None = Field(
        default=None, max_length=100, description="`purchase`: any SKU of this category."
    )
    any_sku: bool = Field(
        default=False,
        description="`purchase`: every SKU on its own (the built-in frequent-item rule).",
    )
    min_checkouts: int = Field(
        default=1, ge=1, le=1000, description="`purchase`: distinct checkouts within the window."
    )
    window_days: int = Field(
        default=30, ge=0, le=400, description="`purchase`: days counted back, both ends included."
    )
    days: int | None = Field(
        default=None, ge=1, le=1000, description="`inactive`: days without a visit."
    )
    min_visits: int = Field(
        default=1, ge=1, le=10_000, description="`inactive`: visits made before, at least."
    )
    segment: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="`segment_entered`: the segment."
    )
    cooldown_days: int | None = Field(
        default=None,
        ge=0,
        le=3650,
        description="No second offer of this campaign to a customer (for the same SKU) within "
        "this many days; default: the window (purchase), 90 (inactive), none otherwise.",
    )

    @model_validator(mode="after")
    def _fits(self) -> CampaignTrigger:
        if self.type == "purchase":
            given = [self.sku is not None, self.category is not None, self.any_sku]
            if sum(given) != 1:
                raise ValueError("a purchase trigger names exactly one of `sku`, `category`")
        elif self.sku is not None or self.category is not None or self.any_sku:
            raise ValueError(f"a {self.type} trigger takes no `sku` or `category`")
        if self.type == "inactive" and self.days is None:
            raise ValueError("an inactive trigger needs `days`")
        if self.type == "segment_entered" and self.segment is None:
            raise ValueError("a segment_entered trigger needs `segment`")
        return self


class Audience(_Model):
    """Who may get the campaign: the members of a segment at the trigger's time."""

    segment: str = Field(default=ALL, pattern=NAME_PATTERN, description="`all` or a segment.")


class CampaignOffer(_Model):
    """What the coupon gives."""

    discount_percent: Decimal = Field(gt=0, le=100, description="Percentage off.")
    scope: Literal["sku", "category", "basket"] = Field(
        default="basket", description="What the percentage is taken off."
    )
    sku: str | None = Field(
        default=None,
        max_length=64,
        description="`sku` scope: the product; left out on a purchase trigger, the SKU bought.",
    )
    category: str | None = Field(
        default=None, max_length=100, description="`category` scope: the category."
    )
    validity_days: int = Field(
        default=14, ge=0, le=365, description="Valid through the issue day plus this many."
    )


class Variant(_Model):
    """One arm of an A/B test: customers are assigned deterministically by weight."""

    name: str = Field(pattern=NAME_PATTERN, description="Variant name, e.g. `a`.")
    weight: int = Field(default=1, ge=1, le=1000, description="Relative share.")
    offer: CampaignOffer = Field(description="What this arm's coupon gives.")
    template: str | None = Field(
        default=None, description="E-mail template; default the campaign's."
    )


class Budget(_Model):
    """Limits that are never overspent, however many lanes redeem at once; reaching the
    campaign-wide ones stops issuing."""

    max_redemptions: int | None = Field(default=None, ge=1, description="Redemptions in all.")
    max_discount: Decimal | None = Field(default=None, gt=0, description="Discount money in all.")
    max_per_customer: int | None = Field(
        default=None, ge=1, description="Redemptions per customer."
    )
    max_per_store_day: int | None = Field(
        default=None, ge=1, description="Redemptions per store and calendar day."
    )


class CampaignSpec(_Model):
    """What `POST /api/campaigns` takes (and `PUT /api/campaigns/{id}` replaces)."""

    name: str = Field(min_length=1, max_length=200, description="Shown to marketing.")
    trigger: CampaignTrigger = Field(description="What makes a customer eligible.")
    audience: Audience = Field(default_factory=Audience, description="Who may get it.")
    offer: CampaignOffer = Field(description="What the coupon gives.")
    variants: tuple[Variant, ...] = Field(
        default=(), max_length=10, description="A/B arms; when given they replace `offer`."
    )
    template: str = Field(
        default="campaign", pattern=r"^[a-z0-9_]{1,64}$", description="E-mail template name."
    )
    starts_on: dt.date | None = Field(
        default=None, description="First day (local); default: at once."
    )
    ends_on: dt.date | None = Field(default=None, description="Last day (local); none: open.")
    holdout_percent: Decimal = Field(
        default=Decimal(5), ge=0, le=100, description="Share of eligible customers held out."
    )
    budget: Budget = Field(default_factory=Budget, description="Limits on redemptions.")

    @model_validator(mode="after")
    def _consistent(self) -> CampaignSpec:
        if self.starts_on and self.ends_on and self.ends_on < self.starts_on:
            raise ValueError("`ends_on` is before `starts_on`")
        for offer in (self.offer, *(v.offer for v in self.variants)):
            if (
                offer.scope == "category"
                and offer.category is None
                and (self.trigger.category is None)
            ):
                raise ValueError("a category coupon needs `offer.category`")
            by_product = self.trigger.sku is not None or self.trigger.any_sku
            if offer.scope == "sku" and offer.sku is None and not by_product:
                raise ValueError("a product coupon needs `offer.sku` unless a SKU triggers it")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        return self


class CampaignChange(_Model):
    """One entry of a campaign's history: from `at` on, this version and status are in force."""

    at: AwareDatetime = Field(description="When the change took effect.")
    version: int = Field(ge=1, description="Version of the spec in force from then on.")
    status: Literal["active", "paused"] = Field(description="Active or paused from then on.")
    by: str = Field(description="Token id of whoever made the change (audit), or `system`.")
    action: Literal["created", "updated", "paused", "resumed", "seeded"] = Field(
        description="What was done."
    )


class CampaignChanged(_Model):
    """A campaign's whole state after a change, on the compacted `crm.campaigns` (keyed by id)."""

    type: Literal["campaign_changed"] = "campaign_changed"
    schema_version: SchemaVersion = SCHEMA_VERSION
    campaign_id: str = Field(pattern=NAME_PATTERN, description="Stable id (the message key).")
    versions: tuple[CampaignSpec, ...] = Field(
        min_length=1, description="Every version of the spec, the first is version 1."
    )
    history: tuple[CampaignChange, ...] = Field(
        min_length=1, description="Every change, oldest first."
    )

    @property
    def spec(self) -> CampaignSpec:
        """The latest version."""
        return self.versions[-1]

    def in_force(self, at: dt.datetime) -> tuple[CampaignSpec, bool] | None:
        """The version in force at `at` and whether the campaign was active then; None before
        it was created. (Its schedule, `starts_on`/`ends_on`, is checked by the caller.)"""
        current: CampaignChange | None = None
        for change in self.history:
            if change.at <= at:
                current = change
            else:
                break
        if current is None:
            return None
        return self.versions[current.version - 1], current.status == "active"


# ---------------------------------------------------------------- API answers


class CampaignCounts(_Model):
    """What a campaign has done so far, from the offers store."""

    issued: int = Field(default=0, description="Offers issued (live, redeemed or expired).")
    held_out: int = Field(default=0, description="Eligible customers held out.")
    redeemed: int = Field(default=0, description="Coupons redeemed.")
    expired: int = Field(default=0, description="Coupons that ran out unused.")
    revoked: int = Field(default=0, description="Offers withdrawn by a correction.")
    discount_given: Decimal = Field(default=Decimal(0), description="Money taken off baskets.")


class CampaignVariantCounts(CampaignCounts):
    """The counts of one A/B arm."""

    variant: str = Field(description="Variant name.")


class CampaignView(_Model):
    """A campaign as `GET /api/campaigns/{id}` shows it."""

    campaign_id: str = Field(description="Stable id.")
    name: str = Field(description="Shown to marketing.")
    status: CampaignStatus = Field(description="As of today.")
    version: int = Field(description="Latest version of the spec.")
    spec: CampaignSpec = Field(description="The latest version.")
    history: tuple[CampaignChange, ...] = Field(description="Every change, oldest first.")
    counts: CampaignCounts = Field(description="What it has done so far.")
    variants: tuple[CampaignVariantCounts, ...] = Field(
        default=(), description="The counts per A/B arm."
    )
    builtin: bool = Field(default=False, description="One of the four built-in rules.")


class CampaignCreated(_Model):
    """The answer (201) of `POST /api/campaigns`."""

    campaign_id: str = Field(description="Stable id (a slug of the name).")
    status: CampaignStatus = Field(description="`active`, or `scheduled` until `starts_on`.")
    version: int = Field(description="1.")


class SegmentView(_Model):
    """A segment as `GET /api/segments/{name}` shows it."""

    name: str = Field(description="Segment name.")
    description: str | None = Field(default=None, description="What it is for.")
    rule: SegmentRule = Field(description="Who is in it.")
    version: int = Field(description="Version of the definition.")
    count: int = Field(description="Customers in it now.")
    builtin: bool = Field(default=False, description="`all` or an RFM segment.")


class SegmentCount(_Model):
    """The answer of `POST /api/segments/preview`: how many customers a rule selects today."""

    count: int = Field(description="Customers the rule selects now.")
