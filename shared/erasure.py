"""What the stores keep of an erased customer: figures, never a link back to the card.

The customer id is a keyed hash of the card, so anything stored under it, or computed from it
(an offer id, a coupon code), can be found again by whoever holds the key and the card. What
a store keeps of an erased customer for its figures (offers, deliveries, reports facts) is
re-keyed to `unlinked_token()`: random, and written nowhere beside the customer id. Where a
store must still recognise the customer (a fact that arrives after the erasure is unlinked
too; a rebuild must not bring an erased offer back), it keeps `erasure_mark`, a one-way digest
that confirms an erasure to whoever already has the id and names nobody to anyone else.
"""

from __future__ import annotations

import hashlib
import secrets

UNLINKED_PREFIX = "erased-"
"""Every unlinked token starts with it, so the figures can tell it from a customer id."""


def unlinked_token() -> str:
    """A fresh random id for what an erased customer leaves behind."""
    return UNLINKED_PREFIX + secrets.token_hex(16)


def is_unlinked(customer_id: str | None) -> bool:
    """Whether an id is an unlinked token (an erased customer's), not a customer id."""
    return customer_id is not None and customer_id.startswith(UNLINKED_PREFIX)


def erasure_mark(customer_id: str) -> str:
    """The digest a store keeps to recognise an erased customer's later events."""
    return hashlib.sha256(f"crm-erasure|{customer_id}".encode()).hexdigest()
