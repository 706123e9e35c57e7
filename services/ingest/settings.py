"""Settings of the ingest service only (common ones are in shared.settings)."""

from __future__ import annotations

from typing import Final

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DEDUP_DAYS: Final = 30


class IngestSettings(BaseSettings):
    """How long ingest remembers event ids to drop duplicates."""

    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    dedup_days: int = Field(
        default=DEFAULT_DEDUP_DAYS,
        ge=1,
        description="Days an event id is remembered for duplicate detection.",
    )
