"""Settings from the environment (pydantic-settings, `CRM_` prefix), one small class per component.

`Settings` combines them; services take only the parts they use. The README's configuration
table is checked against these classes by a test.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

SECRETS_DIR_VARIABLE = "CRM_SECRETS_DIR"
"""Folder of secret files, one per setting, read in addition to the environment."""
DEV_CARD_KEY = "crm-stream-development-card-key"
DEV_COUPON_KEY = "crm-stream-development-coupon-key"
DEV_UNSUBSCRIBE_KEY = "crm-stream-development-unsubscribe-key"
DEV_KEY_WRAPPING_KEY = "crm-stream-development-key-wrapping-key"


class _Env(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore", secrets_dir=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Secrets may also come from files in `CRM_SECRETS_DIR` (a mounted Kubernetes
        Secret: one file per variable, named like it, e.g. `CRM_SMTP_PASSWORD`); the
        environment wins over a file."""
        folder = os.environ.get(SECRETS_DIR_VARIABLE)
        if folder:
            file_secret_settings = SecretsSettingsSource(settings_cls, secrets_dir=folder)
        return init_settings, env_settings, dotenv_settings, file_secret_settings


class KafkaSettings(_Env):
    """How services reach Kafka."""

    kafka_bootstrap: str | None = Field(
        default=None, description="Kafka bootstrap servers, comma-separated host:port."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="Kafka security protocol."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism when the protocol uses SASL."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password.")
    kafka_ca_file: Path | None = Field(default=None, description="CA bundle for Kafka TLS.")
    create_topics: bool = Field(
        default=True, description="`crm run` creates the missing `crm.` topics it uses at start."
    )
    topic_partitions: int = Field(
        default=6, ge=1, description="Partitions of topics `crm` creates (clock has 1)."
    )
    topic_replication: int = Field(
        default=1, ge=1, description="Replication factor of topics `crm` creates (3 in production)."
    )
    topic_min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        description="`min.insync.replicas` of topics `crm` creates and checks (2 in production, "
        "with 3 replicas); unset leaves the broker's default.",
    )
    batch_max_records: int = Field(
        default=1000, ge=1, description="Most records a service takes from Kafka in one batch."
    )
    batch_timeout_ms: int = Field(
        default=100, ge=1, description="Longest wait in ms to fill a batch."
    )
    kafka_instance_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Static group membership (KIP-345): this instance's `group.instance.id`, "
        "stable across its restarts and unique among the instances of a service (in "
        "Kubernetes the StatefulSet pod's name, `crm-offers-0`). A restart within "
        "CRM_KAFKA_SESSION_TIMEOUT_MS then moves no partition. Unset: dynamic membership.",
    )
    kafka_session_timeout_ms: int = Field(
        default=10_000,
        ge=6_000,
        le=300_000,
        description="Consumer session timeout in ms: how long the group waits for a silent "
        "member before giving its partitions to others. With static membership it must "
        "cover a restart (the manifests set 60000).",
    )
    shutdown_grace_s: float = Field(
        default=90.0,
        gt=0,
        description="Seconds a stopping service gives the batch in hand to finish and commit "
        "(FastStream's graceful timeout); above the longest batch, below Kubernetes' "
        "terminationGracePeriodSeconds minus the preStop pause.",
    )


class StoreSettings(_Env):
    """Where services keep their state."""

    store_url: str | None = Field(
        default=None,
        description="`mongodb://…`/`mongodb+srv://…`, `sqlite:///DIR` or `memory://`. "
        "Production: a MongoDB replica set over three zones with `replicaSet=…&tls=true&"
        "w=majority&readConcernLevel=majority` (backed up by its point-in-time backups); "
        "`sqlite:///DIR` is backed up with `crm backup`.",
    )
    mongo_database: str = Field(
        default="crm", description="MongoDB database when the URL names none."
    )


class SmtpSettings(_Env):
    """How the notifier sends e-mail."""

    smtp_host: str | None = Field(default=None, description="SMTP server; unset writes .eml files.")
    smtp_port: int = Field(default=25, description="SMTP port.")
    smtp_username: str | None = Field(default=None, description="SMTP user name.")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP password.")
    smtp_starttls: Literal["auto", "required", "off"] = Field(
        default="auto",
        description="STARTTLS: `auto` upgrades whenever the server offers it, `required` "
        "refuses a server that does not, `off` never upgrades (no credentials then).",
    )
    smtp_tls: bool = Field(default=False, description="Connect with implicit TLS (port 465).")
    smtp_ca_file: Path | None = Field(
        default=None, description="CA bundle the SMTP server's certificate is checked against."
    )
    smtp_timeout_s: float = Field(default=10.0, gt=0, description="SMTP timeout in seconds.")
    smtp_from: str = Field(
        default="Your Store <offers@crm-stream.local>", description="From address of e-mails."
    )
    outbox_dir: Path = Field(
        default=Path("outbox"), description="Where .eml files go when no SMTP host is set."
    )
    public_url: str = Field(
        default="http://localhost:8080", description="Base URL of unsubscribe links."
    )

    @field_validator("smtp_starttls", mode="before")
    @classmethod
    def _starttls_from_bool(cls, value: object) -> object:
        """The former boolean: true means `required`, false `off`."""
        if isinstance(value, bool):
            return "required" if value else "off"
        if isinstance(value, str):
            text = value.strip().lower()
            if text in {"true", "1", "yes", "on"}:
                return "required"
            if text in {"false", "0", "no"}:
                return "off"
            return text
        return value


class PrivacySettings(_Env):
    """Keys for pseudonymization and coupon codes."""

    card_key: SecretStr = Field(
        default=SecretStr(DEV_CARD_KEY), description="Secret key of the card numbers' keyed hash."
    )
    coupon_key: SecretStr = Field(
        default=SecretStr(DEV_COUPON_KEY), description="Secret key coupon codes are derived with."
    )
    unsubscribe_key: SecretStr = Field(
        default=SecretStr(DEV_UNSUBSCRIBE_KEY),
        description="Secret key unsubscribe links are signed with.",
    )
    key_wrapping_key: SecretStr = Field(
        default=SecretStr(DEV_KEY_WRAPPING_KEY),
        description="Secret key the customers' data keys are wrapped with on crm.data-keys, "
        "so a restore can recover the keys created after its backup (ingest and the restore "
        "only). Escrow it like the card key: without it, the keys on the topic stay unreadable.",
    )
    previous_key_wrapping_keys: SecretStr = Field(
        default=SecretStr(""),
        description="Earlier CRM_KEY_WRAPPING_KEY values, comma-separated, kept after a "
        "rotation so that a restore still unwraps the data keys published before it (the "
        "restore only; empty once crm.data-keys holds none of their records).",
    )

    @property
    def previous_wrapping_keys(self) -> list[str]:
        """`previous_key_wrapping_keys` as a list."""
        value = self.previous_key_wrapping_keys.get_secret_value()
        return [key.strip() for key in value.split(",") if key.strip()]

    @property
    def card_key_is_default(self) -> bool:
        return self.card_key.get_secret_value() == DEV_CARD_KEY


class QuietHours(BaseModel):
    """A local time window in which no e-mail is sent."""

    start: dt.time
    end: dt.time

    def contains(self, moment: dt.time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end


_QUIET = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


class CalendarSettings(_Env):
    """Time zones, quiet hours and the calendar."""

    timezone: str = Field(default="UTC", description="Time zone of stores with none of their own.")
    store_timezones: dict[str, str] = Field(
        default_factory=dict,
        description='Per-store time zones as JSON, e.g. `{"S001": "Europe/Paris"}`.',
    )
    quiet_hours: str = Field(
        default="21:00-08:00", description="Local hours with no e-mail, `HH:MM-HH:MM` or `off`."
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("store_timezones")
    @classmethod
    def _known_zones(cls, value: dict[str, str]) -> dict[str, str]:
        for zone in value.values():
            cls._known_zone(zone)
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_format(cls, value: str) -> str:
        if value.strip().lower() != "off" and not _QUIET.match(value.strip()):
            raise ValueError("quiet hours must be `HH:MM-HH:MM` or `off`")
        return value.strip()

    def zone_of(self, store_id: str | None) -> ZoneInfo:
        if store_id is not None and store_id in self.store_timezones:
            return ZoneInfo(self.store_timezones[store_id])
        return ZoneInfo(self.timezone)

    def quiet_window(self) -> QuietHours | None:
        match = _QUIET.match(self.quiet_hours)
        if match is None:
            return None
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        return QuietHours(start=dt.time(h1, m1), end=dt.time(h2, m2))


class HttpSettings(_Env):
    """The HTTP endpoints of a service."""

    http_port: int = Field(default=8080, description="Port of health, API and web page.")
    http_host: str = Field(default="0.0.0.0", description="Address the HTTP server binds.")  # noqa: S104
    metrics_port: int | None = Field(
        default=None,
        description="Port of `/metrics` (Prometheus), apart from the public port; the image "
        "and the manifests set 9090. Unset: `/metrics` on the HTTP port, for an admin token only.",
    )
    api_tokens: SecretStr | None = Field(
        default=None, description="Comma-separated `role:sha256hex` bearer token hashes."
    )
    api_rate_limit: float = Field(
        default=100.0,
        ge=0,
        description="API requests per second allowed per token (a token bucket); 0 = no limit.",
    )
    api_rate_burst: int = Field(
        default=200, ge=1, description="Requests a token may make at once before the rate applies."
    )
    api_failed_auth_limit: int = Field(
        default=30,
        ge=0,
        description="Failed authentications per minute allowed per client address; beyond, "
        "the API answers 429 to that address unless it shows a valid token. 0 = no limit.",
    )


class LogSettings(_Env):
    """Logging."""

    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="`json`, `console`, or `auto` (console on a terminal)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level logged."
    )


class ObservabilitySettings(_Env):
    """Metrics and tracing."""

    consumer_lag_interval_s: float = Field(
        default=15.0,
        ge=0,
        description="Seconds between each pod's own reading of its consumer group's lag "
        "(`crm_consumer_lag`), which opens a Kafka consumer each time. 0 = off: in production "
        "a Kafka exporter reads the lag from the broker once for every group.",
    )
    otel_exporter: Literal["none", "otlp", "console"] = Field(
        default="none",
        description="Where OpenTelemetry spans go: `none` (trace context still travels in "
        "Kafka headers and log lines carry `trace_id`, nothing is exported), `otlp` (OTLP over "
        "HTTP to `OTEL_EXPORTER_OTLP_ENDPOINT`), `console` (stdout, for debugging).",
    )


class Settings(BaseModel):
    """All settings, each part read from the environment."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    calendar: CalendarSettings = Field(default_factory=CalendarSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)


SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    KafkaSettings,
    StoreSettings,
    SmtpSettings,
    PrivacySettings,
    CalendarSettings,
    HttpSettings,
    LogSettings,
    ObservabilitySettings,
)
