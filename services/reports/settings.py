"""Settings of the reports service only; the common ones live in `shared.settings`."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StoreGoal(BaseModel):
    """A store's monthly goals."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    revenue: Decimal | None = Field(default=None, ge=0, description="Monthly revenue goal.")
    visits: int | None = Field(default=None, ge=0, description="Monthly checkouts goal.")


class ReportsSettings(BaseSettings):
    """Goals and report windows."""

    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    store_goals: dict[str, StoreGoal] = Field(
        default_factory=dict,
        description='Monthly goals per store as JSON, e.g. `{"S001": {"revenue": "50000", "visits": 2000}}`.',
    )
    report_period_days: int = Field(
        default=7,
        ge=1,
        description="Days of the products report's period (compared with the one before).",
    )
    report_top: int = Field(default=10, ge=1, description="Rows of the top-products report.")
    store_teams: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Teams (groups of stores) as JSON, reported against the sum of their stores' "
        'goals, e.g. `{"North": ["S001", "S002"]}`; a store may be in several.',
    )
    affinity_weeks: int = Field(
        default=4,
        ge=1,
        le=520,
        description="Weeks of checkouts the products report's bought-together pairs are read from.",
    )
    affinity_min_support: Decimal = Field(
        default=Decimal("0.01"),
        ge=0,
        le=1,
        description="Least share of those checkouts a pair must be in to be listed (0.01: 1 %).",
    )
