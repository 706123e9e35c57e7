"""Secrets: read from the environment or mounted files, never printed; a wrong password stops
start-up with a clear message instead of a retry loop.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from typer.testing import CliRunner

from crm.cli import cli
from crm.embedded import free_port
from shared.settings import (
    DEV_COUPON_KEY,
    KafkaSettings,
    PrivacySettings,
    Settings,
    SmtpSettings,
)
from tests.e2e.conftest import Mailbox
from tests.keys import SERVICE_KEYS

SECRET = "pa55-w0rd-never-shown"


def test_secrets_come_from_mounted_files_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "CRM_SMTP_PASSWORD").write_text(SECRET)
    (tmp_path / "CRM_CARD_KEY").write_text("card-key-from-file")
    (tmp_path / "CRM_KAFKA_SASL_PASSWORD").write_text("kafka-from-file")
    monkeypatch.setenv("CRM_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("CRM_KAFKA_SASL_PASSWORD", "kafka-from-env")

    smtp = SmtpSettings()
    assert smtp.smtp_password is not None
    assert smtp.smtp_password.get_secret_value() == SECRET
    assert PrivacySettings().card_key.get_secret_value() == "card-key-from-file"
    kafka = KafkaSettings()
    assert kafka.kafka_sasl_password is not None
    assert kafka.kafka_sasl_password.get_secret_value() == "kafka-from-env"
    # Printing or logging settings shows no secret.
    shown = repr(Settings()) + str(Settings().model_dump())
    assert SECRET not in shown
    assert "card-key-from-file" not in shown


def test_help_never_shows_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"CRM_SMTP_PASSWORD": SECRET, "CRM_CARD_KEY": SECRET, "CRM_API_TOKENS": SECRET}
    for args in ([], ["--help"], ["run", "--help"], ["export-customer", "--help"]):
        result = CliRunner().invoke(cli, args, env=env)
        assert SECRET not in result.output


class _Users:
    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = isinstance(data, LoginPassword) and data.password == b"right-password"
        return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp_with_auth() -> Iterator[int]:
    port = free_port()
    controller = Controller(
        Mailbox(),
        hostname="127.0.0.1",
        port=port,
        authenticator=_Users(),
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


@pytest.mark.integration
def test_a_wrong_smtp_password_stops_the_notifier_at_start_with_a_clear_message(
    kafka_bootstrap: str, smtp_with_auth: int, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(
        {
            "CRM_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CRM_STORE_URL": f"sqlite:///{tmp_path / 'store'}",
            "CRM_SMTP_HOST": "127.0.0.1",
            "CRM_SMTP_PORT": str(smtp_with_auth),
            "CRM_SMTP_USERNAME": "notifier",
            "CRM_SMTP_PASSWORD": SECRET,
            "CRM_HTTP_PORT": str(free_port()),
            "CRM_LOG_FORMAT": "json",
            **SERVICE_KEYS,
        }
    )
    process = subprocess.run(
        [sys.executable, "-m", "crm.cli", "run", "notifier"],
        env=env,
        capture_output=True,
        timeout=90,  # a retry loop would hang here
        check=False,
    )
    output = (process.stdout + process.stderr).decode(errors="replace")
    assert process.returncode != 0
    assert "refused the login" in output
    assert "CRM_SMTP_PASSWORD" in output
    assert SECRET not in output


def crm_run(service: str, **keys: str) -> tuple[int, str]:
    """`crm run <service>` with the given keys only, against a Kafka port nobody listens on:
    what it prints and its exit code (it never gets to run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(
        {
            "CRM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "CRM_STORE_URL": "memory://",
            "CRM_HTTP_PORT": str(free_port()),
            "CRM_LOG_FORMAT": "json",
            "COLUMNS": "200",
            **keys,
        }
    )
    process = subprocess.run(
        [sys.executable, "-m", "crm.cli", "run", service],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    return process.returncode, (process.stdout + process.stderr).decode(errors="replace")


def test_run_refuses_development_keys_naming_each_variable() -> None:
    # The coupon key set to the published development value, the others left unset.
    code, output = crm_run("all", CRM_COUPON_KEY=DEV_COUPON_KEY)
    assert code == 2
    for variable in ("CRM_CARD_KEY", "CRM_COUPON_KEY", "CRM_UNSUBSCRIBE_KEY"):
        assert f"{variable} is the development key: set a secret of at least 32 bytes" in output
    assert DEV_COUPON_KEY not in output
    assert len(output.strip().splitlines()) == 1


def test_run_refuses_a_key_shorter_than_32_bytes_and_asks_only_for_the_services_keys() -> None:
    short = "s" * 31
    code, output = crm_run("notifier", CRM_UNSUBSCRIBE_KEY=short)
    assert code == 2
    assert "CRM_UNSUBSCRIBE_KEY is shorter than 32 bytes: set a secret of at least 32 bytes" in (
        output
    )
    assert short not in output
    # The notifier needs neither the card key nor the coupon key: they are not asked for.
    assert "CRM_CARD_KEY" not in output
    assert "CRM_COUPON_KEY" not in output


def test_run_with_strong_keys_gets_past_the_key_check() -> None:
    keys = {"CRM_CARD_KEY": "c" * 32, "CRM_COUPON_KEY": "ç" * 16}  # 32 bytes in UTF-8
    code, output = crm_run("offers", **keys)
    # It went on to Kafka (nobody listens there) instead of refusing its keys.
    assert "Unable to bootstrap" in output
    assert "CRM_CARD_KEY" not in output
    assert "CRM_COUPON_KEY" not in output
    assert code != 0
