"""SMTP transport security: opportunistic STARTTLS by default, and credentials never sent over a
connection that is not encrypted (aiosmtpd on a loopback port, a test CA made by trustme)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from services.notifier.app import build_service
from services.notifier.mailer import InsecureSmtp, check_smtp_settings, verify_smtp_login
from services.notifier.settings import NotifierSettings
from services.notifier.store_sqlite import SqliteNotifierRepository
from shared.settings import CalendarSettings, KafkaSettings, Settings, SmtpSettings, StoreSettings
from shared.storage import StoreLocation
from tests.integration.test_notifier_smtp import DAY, Clock, contact, free_port, handle, offer
from tests.integration.test_notifier_smtp import outcomes as outcomes_of


@dataclass
class Server:
    """What the SMTP server saw: the commands, whether each mail came over TLS, the DATA."""

    port: int
    commands: list[str] = field(default_factory=list)
    mails_over_tls: list[bool] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)
    """(mechanism, over TLS) of each AUTH the server handled."""


class Handler:
    def __init__(self, server: Server) -> None:
        self.server = server

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        self.server.mails_over_tls.append(session.ssl is not None)
        return "250 Message accepted"


def recording_smtp(server: Server) -> type[SMTP]:
    class RecordingSMTP(SMTP):
        async def smtp_AUTH(self, arg: str) -> None:
            self.server_record.commands.append("AUTH")
            await super().smtp_AUTH(arg)

        async def smtp_STARTTLS(self, arg: str) -> None:
            self.server_record.commands.append("STARTTLS")
            await super().smtp_STARTTLS(arg)

        server_record = server

    return RecordingSMTP


def start_server(server: Server, tls: ssl.SSLContext | None) -> Controller:
    def authenticate(
        smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        server.logins.append((mechanism, session.ssl is not None))
        return AuthResult(success=True)

    smtp_class = recording_smtp(server)

    class TestController(Controller):
        def factory(self) -> SMTP:
            return smtp_class(
                self.handler,
                tls_context=tls,
                require_starttls=False,
                authenticator=authenticate,
                # A server that would take a password in clear: the client must not offer it.
                auth_require_tls=False,
            )

    controller = TestController(Handler(server), hostname="127.0.0.1", port=server.port)
    controller.start()
    return controller


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def plain_server() -> Iterator[Server]:
    server = Server(port=free_port())
    controller = start_server(server, tls=None)
    try:
        yield server
    finally:
        controller.stop()


@pytest.fixture
def starttls_server(ca: trustme.CA) -> Iterator[Server]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = Server(port=free_port())
    controller = start_server(server, tls=context)
    try:
        yield server
    finally:
        controller.stop()


def smtp_settings(server: Server, **overrides: Any) -> SmtpSettings:
    return SmtpSettings(smtp_host="127.0.0.1", smtp_port=server.port, smtp_timeout_s=5, **overrides)


async def send_one_offer(smtp: SmtpSettings) -> list[Any]:
    """An offer e-mailed through a notifier with these SMTP settings: its outcomes."""
    settings = Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url="memory://"),
        smtp=smtp,
        calendar=CalendarSettings(timezone="UTC", quiet_hours="off"),
    )
    repo = await SqliteNotifierRepository.open(StoreLocation.parse("memory://"))
    try:
        service = build_service(
            settings,
            repo,
            notifier_settings=NotifierSettings(
                send_grace_s=0, send_max_attempts=1, send_rate_per_s=0
            ),
            clock=Clock(DAY),
        )
        return outcomes_of(await handle(service, contact(), offer()))
    finally:
        await repo.close()


def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


async def test_session_is_upgraded_with_starttls_by_default(
    starttls_server: Server, ca: trustme.CA, tmp_path: Path
) -> None:
    smtp = smtp_settings(starttls_server, smtp_ca_file=ca_file(ca, tmp_path))
    assert smtp.smtp_starttls == "auto"

    [recorded] = await send_one_offer(smtp)

    assert recorded.state == "sent"
    assert starttls_server.commands == ["STARTTLS"]
    assert starttls_server.mails_over_tls == [True]


async def test_credentials_are_sent_only_after_the_starttls_upgrade(
    starttls_server: Server, ca: trustme.CA, tmp_path: Path
) -> None:
    smtp = smtp_settings(
        starttls_server,
        smtp_ca_file=ca_file(ca, tmp_path),
        smtp_username="crm",
        smtp_password="a-password",
    )
    await verify_smtp_login(smtp)  # the start-up check passes

    [recorded] = await send_one_offer(smtp)

    assert recorded.state == "sent"
    assert [over_tls for _, over_tls in starttls_server.logins] == [True, True]
    assert starttls_server.mails_over_tls == [True]


async def test_credentials_are_withheld_from_a_server_without_tls(plain_server: Server) -> None:
    smtp = smtp_settings(plain_server, smtp_username="crm", smtp_password="a-password")

    with pytest.raises(InsecureSmtp, match="CRM_SMTP_USERNAME"):
        await verify_smtp_login(smtp)  # `crm run notifier` stops at start-up
    [recorded] = await send_one_offer(smtp)  # and every later connection refuses too

    assert (recorded.state, recorded.reason) == ("failed", "smtp_no_tls_for_login")
    assert "AUTH" not in plain_server.commands
    assert plain_server.logins == []
    assert plain_server.mails_over_tls == []


def test_credentials_with_starttls_off_and_no_tls_are_refused_before_connecting() -> None:
    with pytest.raises(InsecureSmtp, match="CRM_SMTP_STARTTLS=off"):
        check_smtp_settings(
            SmtpSettings(smtp_host="mail.example", smtp_username="crm", smtp_starttls="off")
        )
    check_smtp_settings(SmtpSettings(smtp_host="mail.example", smtp_username="crm", smtp_tls=True))
    assert SmtpSettings(smtp_starttls=False).smtp_starttls == "off"  # type: ignore[arg-type]
