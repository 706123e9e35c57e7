"""Settings of the profiles service only; the common ones live in `shared.settings`."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.profiles.domain import FoldOptions


class ProfilesSettings(BaseSettings):
    """How much history a profile keeps."""

    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    profile_history_days: int = Field(
        default=30,
        ge=1,
        description="Days of checkouts kept per profile for the frequent-item rule.",
    )
    profile_recent_event_ids: int = Field(
        default=1000,
        ge=10,
        description="Applied event ids kept per profile to recognize a redelivered event.",
    )
    profile_recent_purchases: int = Field(
        default=20, ge=1, description="Latest checkouts kept per profile for the call centre."
    )
    profile_latest_interactions: int = Field(
        default=20, ge=1, description="Latest interactions kept per profile for the call centre."
    )

    def fold_options(self) -> FoldOptions:
        return FoldOptions(
            history_days=self.profile_history_days,
            recent_event_ids=self.profile_recent_event_ids,
            recent_purchases=self.profile_recent_purchases,
            latest_interactions=self.profile_latest_interactions,
        )
