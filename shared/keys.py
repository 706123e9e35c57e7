"""Secret keys: which ones a service needs, the refusal of weak ones, fresh ones for a local run.

A service declares the environment variables of the keys it uses (`ServiceSpec.secrets`);
`crm run` refuses to start when one of them still holds its development default (public, in
this repository) or is shorter than `MIN_SECRET_BYTES`, naming the variable. `crm demo` and
`crm bench` make their own keys and hand them to the services they start.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator

from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings

from shared.settings import SETTINGS_CLASSES, Settings

MIN_SECRET_BYTES = 32
"""A key shorter than this (in UTF-8 bytes) is refused: HMAC-SHA-256 keys of 256 bits."""

CARD_KEY = "CRM_CARD_KEY"
COUPON_KEY = "CRM_COUPON_KEY"
UNSUBSCRIBE_KEY = "CRM_UNSUBSCRIBE_KEY"
KEY_WRAPPING_KEY = "CRM_KEY_WRAPPING_KEY"
"""Wraps the customers' data keys on `crm.data-keys` (`shared.vault_recovery`)."""

_PREFIX = "CRM_"


class WeakSecret(ValueError):
    """A key a service needs is its development default or too short."""


def _field_name(variable: str) -> str:
    if not variable.startswith(_PREFIX):
        raise ValueError(f"{variable!r} is not a CRM_ variable")
    return variable[len(_PREFIX) :].lower()


def _components(settings: Settings) -> Iterator[BaseModel]:
    """The settings objects a value may live in: the combined settings' parts first, then any
    settings class that is not one of them (read from the environment)."""
    parts = [getattr(settings, name) for name in type(settings).model_fields]
    yield from parts
    seen = {type(part) for part in parts}
    for cls in SETTINGS_CLASSES:
        if cls not in seen:
            yield cls()


def _secret(variable: str, settings: Settings) -> tuple[SecretStr | None, object]:
    """The variable's value and its field's default, from whichever settings class holds it."""
    name = _field_name(variable)
    for part in _components(settings):
        fields = type(part).model_fields
        if name in fields:
            value = getattr(part, name)
            return (value if isinstance(value, SecretStr) else None), fields[name].default
    raise ValueError(f"no setting reads {variable}")


def weak_secrets(variables: Iterable[str], settings: Settings) -> list[str]:
    """One line per weak key among `variables` (empty when all are good), naming the variable."""
    problems: list[str] = []
    for variable in dict.fromkeys(variables):
        value, default = _secret(variable, settings)
        plain = value.get_secret_value() if value is not None else ""
        if not plain:
            problems.append(
                f"{variable} is not set: set a secret of at least {MIN_SECRET_BYTES} bytes"
            )
        elif isinstance(default, SecretStr) and plain == default.get_secret_value():
            problems.append(
                f"{variable} is the development key: set a secret of at least "
                f"{MIN_SECRET_BYTES} bytes"
            )
        elif len(plain.encode()) < MIN_SECRET_BYTES:
            problems.append(
                f"{variable} is shorter than {MIN_SECRET_BYTES} bytes: set a secret of at "
                f"least {MIN_SECRET_BYTES} bytes"
            )
    return problems


def require_strong_secrets(variables: Iterable[str], settings: Settings) -> None:
    """Raise `WeakSecret` (every problem, on one line) when a key in `variables` is weak."""
    problems = weak_secrets(variables, settings)
    if problems:
        raise WeakSecret("; ".join(problems))


def development_keys(classes: Iterable[type[BaseSettings]] = SETTINGS_CLASSES) -> tuple[str, ...]:
    """Every variable whose setting has a development default (a `SecretStr` default)."""
    return tuple(
        f"{_PREFIX}{name.upper()}"
        for cls in classes
        for name, field in cls.model_fields.items()
        if isinstance(field.default, SecretStr)
    )


def fresh_keys() -> dict[str, str]:
    """A new random key for every variable with a development default (the demo, the bench)."""
    return {variable: secrets.token_urlsafe(32) for variable in development_keys()}
