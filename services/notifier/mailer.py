"""Where e-mails go: an SMTP server (aiosmtplib) or, without one, `.eml` files in the outbox.

Transports raise `TemporaryFailure` (4xx, connection refused or dropped, timeouts: retry) or
`PermanentFailure` (5xx for the recipient or the message: the address bounced).
"""

from __future__ import annotations

import email.policy
import email.utils
import os
import ssl
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import aiosmtplib

from shared.logging import get_logger
from shared.settings import SmtpSettings

log = get_logger(__name__)


class DeliveryFailure(Exception):
    """A send did not go through; `reason` is short, stable and free of personal data."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TemporaryFailure(DeliveryFailure):
    """Try again later."""


class PermanentFailure(DeliveryFailure):
    """The server refused the recipient or the message for good."""


class Transport(Protocol):
    """Sends one message at a time; a transport may keep a connection between `send`s."""

    @property
    def idempotent(self) -> bool:
        """Whether sending the same message twice has the effect of sending it once."""
        ...

    @property
    def rate_limited(self) -> bool:
        """Whether the sending-rate limit applies."""
        ...

    async def send(self, message: EmailMessage, *, name: str) -> None:
        """Send `message`; `name` is a file-name-safe id of it. Raises DeliveryFailure."""
        ...

    async def close(self) -> None:
        """End the session (a batch); the next `send` opens a new one."""
        ...


class OutboxTransport:
    """Writes `<outbox>/<name>.eml` atomically: a temp file then `os.replace`.

    The same offer always writes the same file name, so a re-send replaces it: idempotent.
    No fsync per file: a killed process never leaves a partial file, and the delivery is
    recorded `written` only after the rename.
    """

    idempotent = True
    rate_limited = False

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def send(self, message: EmailMessage, *, name: str) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            target = self.directory / f"{name}.eml"
            temporary = self.directory / f".{name}.{uuid.uuid4().hex}.tmp"
            temporary.write_bytes(message.as_bytes())
            os.replace(temporary, target)
        except OSError as exc:
            raise TemporaryFailure(f"outbox_write_error:{exc.errno}") from exc

    async def close(self) -> None:
        return None


def wire_bytes(message: EmailMessage) -> bytes:
    """The message as it goes over SMTP (CRLF line ends), serialized with its own policy.

    aiosmtplib's `send_message` re-serializes with `email.policy.SMTP` (78-character lines),
    which turns a `List-Unsubscribe` URL longer than a line into RFC 2047 encoded-words that
    no mail client recognizes (RFC 2369, RFC 8058); the renderer's policy keeps RFC 5322's
    998-character limit, so each `<url>` stays literal and folds only between URLs.
    """
    policy = message.policy.clone(linesep="\r\n")
    return message.as_bytes(policy=policy)


def envelope_of(message: EmailMessage) -> tuple[str, list[str]]:
    """(MAIL FROM, RCPT TO) from the From and To/Cc headers, as `send_message` takes them."""
    sender = email.utils.parseaddr(str(message.get("Sender") or message.get("From", "")))[1]
    headers = [str(h) for name in ("To", "Cc") for h in message.get_all(name, [])]
    recipients = [address for _, address in email.utils.getaddresses(headers) if address]
    return sender, recipients


class InsecureSmtp(RuntimeError):
    """Credentials are configured but the connection is not encrypted: they are never sent."""


def credentials_need_tls_message(settings: SmtpSettings) -> str:
    return (
        f"the SMTP server {settings.smtp_host}:{settings.smtp_port} offers no TLS "
        "(neither CRM_SMTP_TLS nor a STARTTLS upgrade), so CRM_SMTP_USERNAME and "
        "CRM_SMTP_PASSWORD are not sent: enable TLS on the server, set CRM_SMTP_TLS=true, "
        "or remove the credentials"
    )


def check_smtp_settings(settings: SmtpSettings) -> None:
    """Refuse, before connecting, a configuration that would send credentials in clear."""
    clear = settings.smtp_starttls == "off" and not settings.smtp_tls
    if settings.smtp_host and settings.smtp_username and clear:
        raise InsecureSmtp(
            "CRM_SMTP_USERNAME is set but CRM_SMTP_STARTTLS=off and CRM_SMTP_TLS is "
            "false: the credentials would go in clear; use STARTTLS or implicit TLS"
        )


def _start_tls_flag(settings: SmtpSettings) -> bool | None:
    """aiosmtplib's `start_tls`: None upgrades whenever the server offers STARTTLS."""
    if settings.smtp_tls:
        return False
    return {"auto": None, "required": True, "off": False}[settings.smtp_starttls]


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    if settings.smtp_ca_file is None:
        return None
    return ssl.create_default_context(cafile=str(settings.smtp_ca_file))


def _encrypted(client: aiosmtplib.SMTP) -> bool:
    return client.get_transport_info("sslcontext") is not None


async def open_session(settings: SmtpSettings) -> aiosmtplib.SMTP:
    """Connect (implicit TLS, or STARTTLS as `CRM_SMTP_STARTTLS` says), then log in only over
    an encrypted connection: credentials are never sent in clear (raises InsecureSmtp)."""
    client = aiosmtplib.SMTP(
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        use_tls=settings.smtp_tls,
        start_tls=_start_tls_flag(settings),
        tls_context=_tls_context(settings),
        timeout=settings.smtp_timeout_s,
    )
    await client.connect()
    if settings.smtp_username:
        if not _encrypted(client):
            client.close()
            raise InsecureSmtp(credentials_need_tls_message(settings))
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
        try:
            await client.login(settings.smtp_username, password)
        except BaseException:
            client.close()
            raise
    return client


def _smtp_failure(code: int, what: str) -> DeliveryFailure:
    reason = f"smtp_{code}_{what}"
    return PermanentFailure(reason) if 500 <= code < 600 else TemporaryFailure(reason)


class SmtpTransport:
    """aiosmtplib over one connection per session, reconnecting after a drop."""

    idempotent = False
    rate_limited = True

    def __init__(self, settings: SmtpSettings) -> None:
        if not settings.smtp_host:
            raise ValueError("SmtpTransport needs CRM_SMTP_HOST")
        self._settings = settings
        self._client: aiosmtplib.SMTP | None = None

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        await self._drop()
        try:
            client = await open_session(self._settings)
        except InsecureSmtp as exc:
            # Checked on every connection, not only at start-up: a server (or a man in the
            # middle) that stops offering STARTTLS never sees the credentials.
            log.error("smtp_credentials_withheld", reason=str(exc))
            raise TemporaryFailure("smtp_no_tls_for_login") from exc
        except aiosmtplib.SMTPResponseException as exc:
            # Greeting, EHLO, STARTTLS or login refused: the server's problem or ours,
            # never the recipient's, so not a bounce.
            raise TemporaryFailure(f"smtp_connect_{exc.code}") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise TemporaryFailure(f"smtp_connect_{type(exc).__name__}") from exc
        self._client = client
        return client

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def send(self, message: EmailMessage, *, name: str) -> None:
        client = await self._connected()
        sender, recipients = envelope_of(message)
        try:
            await client.sendmail(sender, recipients, wire_bytes(message))
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients] or [550]
            raise _smtp_failure(max(codes), "recipient") from exc
        except aiosmtplib.SMTPSenderRefused as exc:
            # Our own From refused: a configuration or reputation problem, not a bounce.
            raise TemporaryFailure(f"smtp_{exc.code}_sender") from exc
        except aiosmtplib.SMTPDataError as exc:
            raise _smtp_failure(exc.code, "data") from exc
        except aiosmtplib.SMTPResponseException as exc:
            await self._drop()
            raise TemporaryFailure(f"smtp_{exc.code}_protocol") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self._drop()
            raise TemporaryFailure(f"smtp_{type(exc).__name__}") from exc

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if client.is_connected:
                await client.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()


class SmtpLoginRefused(RuntimeError):
    """The SMTP server refused the configured credentials: stop, do not retry for ever."""


async def verify_smtp_login(settings: SmtpSettings) -> None:
    """At start-up, when credentials are set: log in once and fail clearly if refused.

    A server that is merely unreachable is not an error here (the sends retry with backoff);
    a refused login is, because retrying a wrong password never succeeds.
    """
    if not settings.smtp_host or not settings.smtp_username:
        return
    check_smtp_settings(settings)
    try:
        client = await open_session(settings)
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise SmtpLoginRefused(
            f"the SMTP server {settings.smtp_host}:{settings.smtp_port} refused the login of "
            f"CRM_SMTP_USERNAME ({exc.code}): check CRM_SMTP_USERNAME and CRM_SMTP_PASSWORD"
        ) from None
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        return
    client.close()


def transport_for(settings: SmtpSettings) -> Transport:
    """SMTP when `CRM_SMTP_HOST` is set, else the outbox folder."""
    if settings.smtp_host:
        return SmtpTransport(settings)
    return OutboxTransport(settings.outbox_dir)
