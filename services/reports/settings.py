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
