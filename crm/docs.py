"""Documentation generated from the code: the README's configuration table."""

from __future__ import annotations

from typing import Any

from pydantic_settings import BaseSettings

from services.ingest.settings import IngestSettings
from services.notifier.settings import NotifierSettings
from services.offers.settings import OffersSettings
from services.profiles.settings import ProfilesSettings
from services.reports.settings import ReportsSettings
from shared.settings import SETTINGS_CLASSES

SERVICE_SETTINGS: tuple[type[BaseSettings], ...] = (
    IngestSettings,
    ProfilesSettings,
    OffersSettings,
    NotifierSettings,
    ReportsSettings,
)


def _default(value: Any) -> str:
    secret = getattr(value, "get_secret_value", None)
    if secret is not None:
        return "(development value)"
    if value is None:
        return "unset"
    if isinstance(value, dict | list) and not value:
        return "empty"
    return f"`{value}`"


def settings_table() -> str:
    """Markdown table of every `CRM_` variable with its description and default."""
    rows = ["| variable | meaning | default |", "| --- | --- | --- |"]
    seen: set[str] = set()
    for cls in (*SETTINGS_CLASSES, *SERVICE_SETTINGS):
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        for name, info in cls.model_fields.items():
            if (
                info.annotation is not None
                and isinstance(info.annotation, type)
                and issubclass(info.annotation, BaseSettings)
            ):
                continue
            variable = f"{prefix}{name.upper()}"
            if variable in seen:
                continue
            seen.add(variable)
            default = info.get_default(call_default_factory=True)
            description = (info.description or "").replace("|", "\\|")
            rows.append(f"| `{variable}` | {description} | {_default(default)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
