"""Settings of the offers service: the offer rules (defaults built in, or a YAML/TOML rules file).

`CRM_RULES_FILE` names the file; its keys are those of `OfferRules` (see the README). A file
with an unknown key or a bad value is refused at start-up with a message naming the field.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.events import OfferKind


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Whether the rule issues offers at all.")


class FrequentItemRule(_Rule):
    """A SKU bought in several distinct checkouts within a window earns a coupon for that SKU."""

    min_checkouts: int = Field(
        default=3, ge=1, description="Distinct checkouts containing the SKU."
    )
    window_days: int = Field(
        default=30,
        ge=0,
        description="Calendar days the checkouts must fall in, counted back from the purchase's "
        "local date; both ends included (a checkout exactly `window_days` days before counts).",
    )
    discount_percent: Decimal = Field(
        default=Decimal(10), gt=0, le=100, description="Percentage off the SKU."
    )
    validity_days: int = Field(
        default=14, ge=0, description="The coupon is valid through the issue day plus this many."
    )
    cooldown_days: int = Field(
        default=30,
        ge=0,
        description="No second coupon for the same customer and SKU until this many days after "
        "the last one's issue day (event time, not wall clock).",
    )
    template: str = Field(default="frequent_item", description="E-mail template name.")


class BirthdayRule(_Rule):
    """On the customer's birthday (29 February -> 28 February in other years), once a year."""

    discount_percent: Decimal = Field(
        default=Decimal(15), gt=0, le=100, description="Percentage off the basket."
    )
    validity_days: int = Field(
        default=7, ge=0, description="The coupon is valid through the issue day plus this many."
    )
    template: str = Field(default="birthday", description="E-mail template name.")


class AnniversaryRule(_Rule):
    """One year after the customer's first purchase, a thank-you coupon, once per customer."""

    discount_percent: Decimal = Field(
        default=Decimal(10), gt=0, le=100, description="Percentage off the basket."
    )
    validity_days: int = Field(
        default=14, ge=0, description="The coupon is valid through the issue day plus this many."
    )
    template: str = Field(default="anniversary", description="E-mail template name.")


class WinBackRule(_Rule):
    """Regular customers who stopped coming get a coupon."""

    min_visits: int = Field(default=5, ge=1, description="Checkouts the customer made at least.")
    inactive_days: int = Field(
        default=60,
        ge=1,
        description="No visit in this many days before the clock day: the last visit is on or "
        "before day - (inactive_days + 1).",
    )
    discount_percent: Decimal = Field(
        default=Decimal(20), gt=0, le=100, description="Percentage off the basket."
    )
    validity_days: int = Field(
        default=14, ge=0, description="The coupon is valid through the issue day plus this many."
    )
    cooldown_days: int = Field(
        default=90, ge=0, description="No second win-back coupon within this many days."
    )
    template: str = Field(default="win_back", description="E-mail template name.")


class FrequencyCap(BaseModel):
    """At most `max_offers` offers per customer in any `window_days` consecutive days."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Whether the cap applies.")
    max_offers: int = Field(default=3, ge=1, description="Most offers in any window.")
    window_days: int = Field(default=7, ge=1, description="Length of the window in days.")
    exempt_kinds: tuple[OfferKind, ...] = Field(
        default=("birthday",), description="Kinds neither capped nor counted towards the cap."
    )


class HoldOut(BaseModel):
    """A share of eligible customers gets no offer of a kind in a campaign period (the control)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    percent: Decimal = Field(
        default=Decimal(5),
        ge=0,
        le=100,
        description="Share of eligible customers held out, per offer kind and ISO week, chosen "
        "deterministically from the customer id, the kind and the week.",
    )


class OfferRules(BaseModel):
    """Every offer rule's parameters; the defaults are the contract's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frequent_item: FrequentItemRule = Field(
        default_factory=FrequentItemRule, description="The frequent-item rule."
    )
    birthday: BirthdayRule = Field(default_factory=BirthdayRule, description="The birthday rule.")
    anniversary: AnniversaryRule = Field(
        default_factory=AnniversaryRule, description="The first-purchase anniversary rule."
    )
    win_back: WinBackRule = Field(default_factory=WinBackRule, description="The win-back rule.")
    frequency_cap: FrequencyCap = Field(
        default_factory=FrequencyCap, description="The frequency cap over all kinds."
    )
    holdout: HoldOut = Field(
        default_factory=HoldOut, description="The hold-out group that measures each kind's lift."
    )


class RulesFileError(ValueError):
    """The rules file cannot be read or does not describe valid rules."""


def load_rules(path: Path | None) -> OfferRules:
    """The rules of a YAML (`.yaml`/`.yml`) or TOML (`.toml`) file; the defaults without one."""
    if path is None:
        return OfferRules()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesFileError(f"rules file {path}: cannot be read ({exc.strerror})") from exc
    data: Any
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() in {".yaml", ".yml"}:
            data = yaml.safe_load(text)
        else:
            raise RulesFileError(f"rules file {path}: use a .yaml, .yml or .toml file")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise RulesFileError(f"rules file {path}: not valid {path.suffix[1:]}: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RulesFileError(f"rules file {path}: the top level must be a mapping of rules")
    try:
        return OfferRules.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise RulesFileError(f"rules file {path}: {problems}") from exc


class OffersSettings(BaseSettings):
    """Settings only the offers service reads."""

    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    rules_file: Path | None = Field(
        default=None, description="YAML or TOML file of offer rules; unset uses the defaults."
    )
    offers_page_size: int = Field(
        default=1000,
        ge=1,
        description="Customers read per page when a clock day is processed.",
    )
    allowed_lateness: dt.timedelta = Field(
        default=dt.timedelta(hours=1),
        description="How late (in arrival time) an event may come and still change decisions "
        "as if it had come in order: seconds, or ISO-8601 like `PT1H`.",
    )
    global_control_percent: Decimal = Field(
        default=Decimal(0),
        ge=0,
        le=50,
        description="Share of customers in the programme's global control group, who get no "
        "campaign at all (fixed per customer): measures the lift of the whole programme.",
    )
    till_hold_s: float = Field(
        default=120.0,
        gt=0,
        description="Seconds a till's validation with `reserve` holds a coupon for its lane.",
    )

    def rules(self) -> OfferRules:
        return load_rules(self.rules_file)
