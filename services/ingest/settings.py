"""Settings of the ingest service only (common ones are in shared.settings)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class IngestSettings(BaseSettings):
    """How long ingest remembers event ids to drop duplicates."""

    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    dedup_days: int = Field(
        default=30, ge=1, description="Days an event id is remembered for duplicate detection."
    )
