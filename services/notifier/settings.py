"""Settings of the notifier only: the send grace, retries, sending rate, the due poller and who
may report bounces.

SMTP, outbox, public URL, keys and quiet hours are common settings in `shared.settings`.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
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
        default=20.0,
        ge=0,
        description="Most e-mails per second sent over SMTP by all notifier instances together "
        "(the SMTP provider's allowance): a budget per window shared through the store, and "
        "each instance paces itself to it too. 0 = unlimited.",
    )
    send_budget_window_s: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="Window of the shared sending budget in seconds: all instances together "
        "start at most CRM_SEND_RATE_PER_S x this many e-mails in one window (at least 1).",
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

    @model_validator(mode="after")
    def _budget_of_one_at_least(self) -> Self:
        rate = self.send_rate_per_s
        if 0 < rate * self.send_budget_window_s < 1:
            raise ValueError(
                "CRM_SEND_RATE_PER_S x CRM_SEND_BUDGET_WINDOW_S must be at least 1 e-mail: "
                "lengthen the window for a rate below one per second"
            )
        return self


def backoff_total_s(settings: NotifierSettings) -> float:
    """Longest the retries of one send wait in all (every backoff at its upper bound)."""
    return sum(
        min(settings.send_backoff_max_s, settings.send_backoff_base_s * 2.0**retry)
        for retry in range(settings.send_max_attempts - 1)
    )


def worst_case_batch_s(settings: NotifierSettings, *, batch_max_records: int) -> float:
    """Longest a batch of offers (or a poll of due deliveries) spends sending while the SMTP
    server answers: every e-mail of a full batch at the sending rate, then every retry
    round's backoff. CRM_SHUTDOWN_GRACE_S must be above it, so that a rollout never cuts a
    batch short. With no rate limit the sending time is the server's, which this cannot know:
    only the backoff counts.

    Not covered: a server that hangs until each message times out, or a batch that shares the
    budget with other instances sending at the same time (it gets less than the whole rate).
    Such a batch is abandoned at the grace, uncommitted; its deliveries not yet sent (saved
    `sending`) go when the batch is read again, or by a due poller after CRM_SENDING_LEASE_S,
    with the same Message-ID.
    """
    if settings.send_rate_per_s <= 0:
        return backoff_total_s(settings)
    sends = max(batch_max_records, settings.due_batch_size)
    return sends / settings.send_rate_per_s + backoff_total_s(settings)
