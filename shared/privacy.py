"""Pseudonymization of card numbers and masking of payloads that leave a service.

No raw card number travels past ingest: cards become a keyed hash (HMAC-SHA-256 with
`CRM_CARD_KEY`), a lead (a sign-up without a card) gets the keyed hash of its e-mail address,
and dead-lettered payloads have every card-like digit run masked.
"""

from __future__ import annotations

import hashlib
import hmac
import re

_SEPARATORS = re.compile(r"[\s\-]")
_DIGITS = re.compile(r"^\d{12,19}$")
_CARD_LIKE = re.compile(r"(?<!\d)\d(?:[ \-]?\d){11,18}(?!\d)")


class InvalidCardNumber(ValueError):
    """A card number that is not 12 to 19 digits once spaces and dashes are removed."""


def canonical_card(card_number: str) -> str:
    """The same card in any spelling: digits only. Raises InvalidCardNumber."""
    digits = _SEPARATORS.sub("", card_number)
    if not _DIGITS.match(digits):
        raise InvalidCardNumber("card number must be 12 to 19 digits, spaces or dashes allowed")
    return digits


def card_id(card_number: str, key: bytes) -> str:
    """Keyed hash of a card: stable for one key, useless without it."""
    mac = hmac.new(key, canonical_card(card_number).encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


def customer_id_for_card(card: str) -> str:
    """A customer's id is derived from the first card seen for them (the card's keyed hash)."""
    return f"c-{card[:24]}"


LEAD_PREFIX = "l-"
"""Prefix of a lead's customer id (a card's keyed hash is hex: the two never collide)."""
_LEAD_KEY_LABEL = b"crm-stream lead e-mail address"


def lead_id(email: str, key: bytes) -> str:
    """A lead's customer id: the keyed hash of its normalised e-mail address (trimmed, lower
    case), with a key derived from `key` (the card key) so that it never equals a card's hash.
    Stable for one key, useless without it; the address itself is never kept."""
    lead_key = hmac.new(key, _LEAD_KEY_LABEL, hashlib.sha256).digest()
    mac = hmac.new(lead_key, email.strip().lower().encode(), hashlib.sha256)
    return f"{LEAD_PREFIX}{mac.hexdigest()[:24]}"


def is_lead(customer_id: str) -> bool:
    """Whether a customer id (or a key of ingest's card table) is a lead's."""
    return customer_id.startswith(LEAD_PREFIX)


def mask_card_numbers(text: str) -> str:
    """Replace every card-like run of 12 to 19 digits (spaces/dashes allowed) by its last 4 digits."""

    def _mask(match: re.Match[str]) -> str:
        digits = _SEPARATORS.sub("", match.group(0))
        return "*" * (len(digits) - 4) + digits[-4:]

    return _CARD_LIKE.sub(_mask, text)
