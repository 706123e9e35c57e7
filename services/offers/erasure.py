"""What offers keeps of an erased customer: the figures, nothing that leads back to the card.

Pure, no I/O. Once a customer stands erased (their open coupons revoked by the engine), their
ledger goes, and their offers and decisions are kept only for the campaign counts, re-keyed to
a random token (`shared.erasure`): a new random offer id and code (the old ones are computed
from the customer id, so they would lead back to the card), no trigger (the checkout event
ids), no Message-ID (computed from the offer id). Kept: kind, campaign, variant, terms, dates,
state, the discount given and the e-mail's outcome. The old code is gone from the store, so a
till or a checkout that lists it hears `unknown_code`.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping

from services.offers.domain import OfferRecord
from services.offers.ledger import Ledger
from shared.events import OfferRevoked, OfferTrigger

UNLINKED_CODE_PREFIX = "ERASED-"
"""An unlinked offer's code: never the shape of a real code, so no till can type it."""


def unlinked_offer(record: OfferRecord, token: str, offer_id: str) -> OfferRecord:
    """An erased customer's offer under `token` and a new `offer_id`: the same figures."""
    code = UNLINKED_CODE_PREFIX + secrets.token_hex(16)
    same = {"offer_id": offer_id, "customer_id": token, "coupon_code": code}
    issued = record.issued.model_copy(update={**same, "trigger": None})
    redemption = (
        record.redemption.model_copy(update={**same, "checkout_event_id": ""})
        if record.redemption is not None
        else None
    )
    revocation = record.revocation.model_copy(update=same) if record.revocation else None
    state = record.state
    if state == "issued":
        # No open coupon stays with an erased customer (the engine revoked the ones it
        # decided; one that came with a merged card is withdrawn here).
        state = "revoked"
        revocation = OfferRevoked(
            **same, kind=record.kind, reason="erased", revoked_at=record.issued.issued_at
        )
    return OfferRecord(
        issued=issued,
        rule_key="erased",
        state=state,
        redemption=redemption,
        expired_on=record.expired_on,
        revocation=revocation,
        delivery=record.delivery,
    )


def unlinked_ledger(ledger: Ledger, token: str, offer_ids: Mapping[str, str]) -> Ledger | None:
    """The decisions of an erased customer under `token` (for the decision and held-out counts),
    without their triggers; None when there are none. `offer_ids`: old -> new offer id."""
    if not ledger.decisions:
        return None
    ordered = sorted(ledger.decisions.values(), key=lambda d: (d.at, d.key))
    decisions = {}
    for n, decision in enumerate(ordered):
        key = f"{decision.kind}|erased|{n}"
        decisions[key] = decision.model_copy(
            update={
                "key": key,
                "offer_id": offer_ids.get(decision.offer_id) or str(uuid.uuid4()),
                "trigger": OfferTrigger(type=decision.trigger.type),
            }
        )
    return Ledger(customer_id=token, version=1, decisions=decisions)


def unlinked(
    ledger: Ledger, offers: Mapping[str, OfferRecord], token: str
) -> tuple[list[OfferRecord], Ledger | None, dict[str, str]]:
    """What stays of an erased customer (`offers`: theirs and their merged cards', as they now
    stand): the unlinked offers, the unlinked decisions, and old -> new offer id."""
    new_ids = {offer_id: str(uuid.uuid4()) for offer_id in sorted(offers)}
    kept = [unlinked_offer(offers[old], token, new) for old, new in new_ids.items()]
    return kept, unlinked_ledger(ledger, token, new_ids), new_ids
