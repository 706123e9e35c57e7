"""Delivery status notifications (RFC 3464) read with the standard library: pure, no I/O.

A bounce reported after the SMTP conversation comes back as a `multipart/report;
report-type=delivery-status` message: a human-readable part, a `message/delivery-status` part
(per-message fields, then one block per recipient: `Final-Recipient`, `Action`, `Status`), and
the original message or its headers, whose `Message-ID` names our offer.
"""

from __future__ import annotations

import email
import email.parser
import email.policy
import re
from dataclasses import dataclass
from email.message import Message

_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


class NotADeliveryReport(ValueError):
    """The message is not an RFC 3464 delivery status notification."""


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One recipient's block: the address, what the reporting MTA did, and the status code."""

    address: str
    action: str
    status: str

    @property
    def permanent_failure(self) -> bool:
        """`Action: failed` with a 5.x.x status: the address does not take mail."""
        return self.action == "failed" and self.status.startswith("5.")


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What a DSN says: the original Message-ID (None when it carries none) and the
    recipients' statuses."""

    message_id: str | None
    recipients: tuple[RecipientStatus, ...]

    @property
    def failed(self) -> tuple[RecipientStatus, ...]:
        return tuple(r for r in self.recipients if r.permanent_failure)


def _address(field: str) -> str:
    """`rfc822; Ana@Example.com` -> `ana@example.com` (the address type is dropped)."""
    _, _, address = field.partition(";")
    return (address or field).strip().strip("<>").strip().lower()


def _status(field: str) -> str:
    match = _STATUS.match(field.strip())
    return ".".join(match.groups()) if match else ""


def _blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [b for b in payload if isinstance(b, Message)]
    # A parser that kept the fields as text: blocks are separated by empty lines.
    text = payload if isinstance(payload, str) else ""
    parser = email.parser.HeaderParser(policy=email.policy.compat32)
    return [parser.parsestr(chunk.strip() + "\n") for chunk in re.split(r"\r?\n\r?\n", text)]


def _original_message_id(report: Message) -> str | None:
    for part in report.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            inner = part.get_payload()
            original = inner[0] if isinstance(inner, list) and inner else None
            if isinstance(original, Message) and original.get("Message-ID"):
                return str(original["Message-ID"]).strip()
        elif kind == "text/rfc822-headers":
            content = part.get_payload(decode=True)
            text = content.decode("utf-8", "replace") if isinstance(content, bytes) else ""
            headers = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(text)
            if headers.get("Message-ID"):
                return str(headers["Message-ID"]).strip()
    return None


def parse_dsn(raw: bytes) -> DeliveryReport:
    """The delivery report of a raw DSN; raises NotADeliveryReport for anything else."""
    report = email.message_from_bytes(raw, policy=email.policy.compat32)
    if (
        report.get_content_type() != "multipart/report"
        or str(report.get_param("report-type", "")).lower() != "delivery-status"
    ):
        raise NotADeliveryReport("not a multipart/report; report-type=delivery-status")
    status_part = next(
        (p for p in report.walk() if p.get_content_type() == "message/delivery-status"), None
    )
    if status_part is None:
        raise NotADeliveryReport("no message/delivery-status part")
    recipients = []
    for block in _blocks(status_part):
        final = block.get("Final-Recipient")
        if not final:
            continue  # the per-message block
        recipients.append(
            RecipientStatus(
                address=_address(str(final)),
                action=str(block.get("Action", "")).strip().lower(),
                status=_status(str(block.get("Status", ""))),
            )
        )
    if not recipients:
        raise NotADeliveryReport("no recipient in the delivery status")
    return DeliveryReport(message_id=_original_message_id(report), recipients=tuple(recipients))
