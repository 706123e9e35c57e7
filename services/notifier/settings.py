"""Settings of the notifier only: the send grace, retries, sending rate, the due poller and who
may report bounces.

SMTP, outbox, public URL, keys and quiet hours are common settings in `shared.settings`.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class NotifierSettings(BaseSettings):
    """When, how hard and how fast the notifier sends."""

    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    send_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="Seconds a new e-mail waits before it is sent, so that an offer revoked "
        "soon after is never e-mailed; 0 = at once.",
    )
    send_max_attempts: int = Field(
        default=5, ge=1, description="Send attempts per e-mail before it is recorded as failed."
    )
    send_backoff_base_s: float = Field(
        default=1.0, ge=0, description="First retry delay in seconds; doubles on each retry."
    )
    send_backoff_max_s: float = Field(
        default=60.0, ge=0, description="Longest retry delay in seconds."
    )
    send_rate_per_s: float = Field(
        default=20.0, ge=0, description="Most e-mails per second sent over SMTP; 0 = unlimited."
    )
    due_poll_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often deliveries held back (grace, quiet hours) are checked.",
    )
    due_batch_size: int = Field(
        default=500, ge=1, description="Most held-back deliveries sent per poll."
    )
    sending_lease_s: float = Field(
        default=300.0,
        gt=0,
        description="Seconds a delivery a poller took for sending stays its own: another "
        "instance's poller takes it only after that (a crash left it). Longer than the longest "
        "batch of sends at CRM_SEND_RATE_PER_S.",
    )
    bounce_token_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="SHA-256 hex of the bearer token the bounce forwarder (the mail server's "
        "DSN pipe or the provider's webhook) sends to `POST /api/bounces`; `admin` tokens "
        "are accepted too.",
    )
