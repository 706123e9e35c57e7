"""Campaigns as offers sees them: the book of every campaign with its history, the four built-in
rules as default campaigns, statuses, A/B variants and control groups. Pure, no I/O.

Every campaign on `crm.campaigns` carries its whole history (`CampaignChanged.history`), so the
version in force at a trigger's event time is known from the latest record alone: decisions use
the campaign as it stood when the trigger happened, never as it stands when the event arrives,
and a replay with the same campaign history gives the same offers.

The built-in rules (frequent item, birthday, anniversary, win-back) are campaigns seeded at
first start from the rules file (`CRM_RULES_FILE`, or the defaults), in force since the epoch so
that they apply to every trigger as the fixed rules did; their decision keys and offer ids are
those of the fixed rules, so upgrading changes no offer. When the rules file changes, the next
start publishes a new version of the campaign it describes (in force from then on).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from services.offers.settings import OfferRules
from shared.campaigns import (
    CampaignChange,
    CampaignChanged,
    CampaignOffer,
    CampaignSpec,
    CampaignStatus,
    CampaignTrigger,
    Variant,
)
from shared.events import OfferKind

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
"""When the built-in campaigns came into force: before any trigger."""
SYSTEM = "system"
"""Who made a change not made through the API (the rules file at start-up)."""

BUILTIN_KIND: Mapping[str, OfferKind] = {
    "frequent-item": "frequent_item",
    "birthday": "birthday",
    "anniversary": "anniversary",
    "win-back": "win_back",
}
"""The built-in campaigns and the offer kind (and decision keys) of the rules they replace."""
KIND_OF_TRIGGER: Mapping[str, OfferKind] = {
    "purchase": "frequent_item",
    "birthday": "birthday",
    "anniversary": "anniversary",
    "inactive": "win_back",
    "segment_entered": "segment_entered",
}
"""The offer kind a campaign's trigger gives its offers."""


def builtin_specs(rules: OfferRules) -> dict[str, tuple[CampaignSpec, bool]]:
    """The four built-in campaigns as the rules describe them, with whether each is enabled."""
    holdout = rules.holdout.percent
    fi, bd, an, wb = rules.frequent_item, rules.birthday, rules.anniversary, rules.win_back
    return {
        "frequent-item": (
            CampaignSpec(
                name="Frequent item",
                trigger=CampaignTrigger(
                    type="purchase",
                    any_sku=True,
                    min_checkouts=fi.min_checkouts,
                    window_days=fi.window_days,
                    cooldown_days=fi.cooldown_days,
                ),
                offer=CampaignOffer(
                    discount_percent=fi.discount_percent,
                    scope="sku",
                    validity_days=fi.validity_days,
                ),
                template=fi.template,
                holdout_percent=holdout,
            ),
            fi.enabled,
        ),
        "birthday": (
            CampaignSpec(
                name="Birthday",
                trigger=CampaignTrigger(type="birthday"),
                offer=CampaignOffer(
                    discount_percent=bd.discount_percent, validity_days=bd.validity_days
                ),
                template=bd.template,
                holdout_percent=holdout,
            ),
            bd.enabled,
        ),
        "anniversary": (
            CampaignSpec(
                name="First-purchase anniversary",
                trigger=CampaignTrigger(type="anniversary"),
                offer=CampaignOffer(
                    discount_percent=an.discount_percent, validity_days=an.validity_days
                ),
                template=an.template,
                holdout_percent=holdout,
            ),
            an.enabled,
        ),
        "win-back": (
            CampaignSpec(
                name="Win-back",
                trigger=CampaignTrigger(
                    type="inactive",
                    days=wb.inactive_days,
                    min_visits=wb.min_visits,
                    cooldown_days=wb.cooldown_days,
                ),
                offer=CampaignOffer(
                    discount_percent=wb.discount_percent, validity_days=wb.validity_days
                ),
                template=wb.template,
                holdout_percent=holdout,
            ),
            wb.enabled,
        ),
    }


def seeds(
    book: Mapping[str, CampaignChanged], rules: OfferRules, now: dt.datetime
) -> list[CampaignChanged]:
    """What to publish at start-up so the built-in campaigns match the rules file: a missing
    one is created (in force since the epoch); one whose rules changed since they last seeded
    it gets a new version in force from `now` (marketing's edits stand while the file does not
    change)."""
    out: list[CampaignChanged] = []
    for campaign_id, (spec, enabled) in builtin_specs(rules).items():
        status = "active" if enabled else "paused"
        current = book.get(campaign_id)
        if current is None:
            out.append(
                CampaignChanged(
                    campaign_id=campaign_id,
                    versions=(spec,),
                    history=(
                        CampaignChange(
                            at=EPOCH, version=1, status=status, by=SYSTEM, action="seeded"
                        ),
                    ),
                )
            )
            continue
        seeded = [c for c in current.history if c.action == "seeded"]
        last = seeded[-1] if seeded else None
        if (
            last is not None
            and current.versions[last.version - 1] == spec
            and last.status == status
        ):
            continue
        out.append(changed(current, spec=spec, status=status, at=now, by=SYSTEM, action="seeded"))
    return out


def changed(
    current: CampaignChanged,
    *,
    spec: CampaignSpec | None = None,
    status: str,
    at: dt.datetime,
    by: str,
    action: str,
) -> CampaignChanged:
    """The campaign after a change: a new version when `spec` differs from the latest, and a
    history entry in force from `at` (never before the last one)."""
    versions = current.versions
    if spec is not None and spec != current.spec:
        versions = (*versions, spec)
    at = max(at, current.history[-1].at)
    entry = CampaignChange.model_validate(
        {"at": at, "version": len(versions), "status": status, "by": by, "action": action}
    )
    return current.model_copy(update={"versions": versions, "history": (*current.history, entry)})


def created(campaign_id: str, spec: CampaignSpec, *, at: dt.datetime, by: str) -> CampaignChanged:
    return CampaignChanged(
        campaign_id=campaign_id,
        versions=(spec,),
        history=(CampaignChange(at=at, version=1, status="active", by=by, action="created"),),
    )


def newer(a: CampaignChanged, b: CampaignChanged) -> CampaignChanged:
    """Of two records of one campaign, the one that knows more history (ties: `b`)."""
    return a if len(a.history) > len(b.history) else b


_SLUG = re.compile(r"[^a-z0-9]+")


def slug(name: str, taken: Iterable[str]) -> str:
    """A campaign id from its name (`Coffee lovers` -> `coffee-lovers`), `-2`, `-3`... when
    taken."""
    base = _SLUG.sub("-", name.lower()).strip("-")[:56] or "campaign"
    used = set(taken)
    candidate, n = base, 1
    while candidate in used:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def status_of(
    campaign: CampaignChanged, *, today: dt.date, now: dt.datetime, spent: bool
) -> CampaignStatus:
    """Where a campaign stands today: paused, budget spent, ended, scheduled or active."""
    latest = [c for c in campaign.history if c.at <= now] or [campaign.history[0]]
    if latest[-1].status == "paused":
        return "paused"
    spec = campaign.spec
    if spent:
        return "budget_spent"
    if spec.ends_on is not None and today > spec.ends_on:
        return "ended"
    if spec.starts_on is not None and today < spec.starts_on:
        return "scheduled"
    return "active"


def _draw(*parts: str) -> int:
    """A uniform draw in [0, 1,000,000) from the parts: the same on every run and replica."""
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") % 1_000_000


def variant_for(
    campaign_id: str, customer_id: str, variants: tuple[Variant, ...]
) -> Variant | None:
    """The A/B arm of a customer in a campaign: by weight, from a hash of both ids, so the
    same customer always gets the same arm."""
    if not variants:
        return None
    total = sum(v.weight for v in variants)
    point = _draw("variant", campaign_id, customer_id) * total // 1_000_000
    for variant in variants:
        if point < variant.weight:
            return variant
        point -= variant.weight
    return variants[-1]


def in_global_control(customer_id: str, percent: Decimal) -> bool:
    """Whether a customer is in the programme's global control group (no campaign at all):
    fixed per customer, so the group measures the whole programme over time."""
    return percent > 0 and Decimal(_draw("global-control", customer_id)) < percent * 10_000


@dataclass(slots=True)
class CampaignBook:
    """Every campaign offers knows, by id; `spent`: the campaigns whose budget is used up."""

    campaigns: dict[str, CampaignChanged] = field(default_factory=dict)
    spent: set[str] = field(default_factory=set)

    def apply(self, record: CampaignChanged) -> dt.datetime | None:
        """Take a record in; returns the earliest time from which it changed what is in force
        (None when it told nothing new)."""
        current = self.campaigns.get(record.campaign_id)
        if current is not None and newer(current, record) is current:
            return None
        self.campaigns[record.campaign_id] = record
        known = len(current.history) if current is not None else 0
        fresh = record.history[known:]
        return min((c.at for c in fresh), default=None)

    def ordered(self) -> list[CampaignChanged]:
        return [self.campaigns[k] for k in sorted(self.campaigns)]
