"""Right of access and card-key rotation: tools over every service's store, used by the CLI.

`export_customer` gathers what each service keeps of one customer (ingest's card links,
the profile, the offers and the notifier's contact and deliveries) as plain JSON.
`rotate_card_keys` lets `CRM_CARD_KEY` change without losing profiles: a keyed hash cannot
be recomputed without the card number, so the card numbers (from the card registry) are read
once, each card's new id is linked to the customer its old id fed, and ingest resolves the
new ids through these links from then on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from typing import Any

import orjson
from pydantic import BaseModel

from services.ingest.store import open_repository as open_ingest
from services.notifier.store import open_repository as open_notifier
from services.offers.store import open_repository as open_offers
from services.profiles.store import open_repository as open_profiles
from shared.logging import get_logger
from shared.privacy import InvalidCardNumber, card_id, customer_id_for_card
from shared.settings import StoreSettings

log = get_logger(__name__)


def _plain(value: Any) -> Any:
    """JSON types only: pydantic models, dataclasses, dates and Decimals flattened."""

    def default(item: Any) -> Any:
        if isinstance(item, BaseModel):
            return item.model_dump(mode="json")
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
        return str(item)

    return orjson.loads(orjson.dumps(value, default=default))


async def resolve_customer(store: StoreSettings, *, card_number: str, card_key: bytes) -> str:
    """The customer a card feeds (its link, else the id derived from the card)."""
    card = card_id(card_number, card_key)
    async with open_ingest(store) as ingest:
        links = await ingest.customers_of_cards([card])
    return links.get(card) or customer_id_for_card(card)


async def export_customer(store: StoreSettings, customer_id: str) -> dict[str, Any]:
    """Everything the services store of one customer, per service, as JSON types."""
    async with open_ingest(store) as ingest:
        cards = await ingest.cards_of_customer(customer_id)
    async with open_profiles(store) as profiles:
        profile = await profiles.export(customer_id)
    async with open_offers(store) as offers_repo:
        offers = await offers_repo.offers_of(customer_id)
        ledger = (await offers_repo.ledgers([customer_id])).get(customer_id)
    async with open_notifier(store) as notifier:
        contacts = await notifier.get_contacts([customer_id])
        deliveries = await notifier.get_deliveries([o.offer_id for o in offers])
    return {
        "customer_id": customer_id,
        "ingest": {"linked_card_ids": sorted(cards)},
        "profiles": _plain(profile),
        "offers": {
            "offers": _plain(offers),
            "decisions": _plain(sorted(ledger.decisions.values(), key=lambda d: (d.at, d.key)))
            if ledger
            else [],
            "redemptions": _plain(sorted(ledger.redemptions.values(), key=lambda r: (r.at, r.key)))
            if ledger
            else [],
        },
        "notifier": {
            "contact": _plain(contacts.get(customer_id)),
            "deliveries": _plain(sorted(deliveries.values(), key=lambda d: d.offer_id)),
        },
    }


@dataclasses.dataclass(slots=True)
class RotationReport:
    """What a rotation did (counts only: no card number, no id)."""

    cards: int = 0
    linked: int = 0
    invalid: int = 0


async def rotate_card_keys(
    store: StoreSettings, card_numbers: Iterable[str], *, old_key: bytes, new_key: bytes
) -> RotationReport:
    """Link each card's id under `new_key` to the customer its id under `old_key` feeds.

    Idempotent and additive (nothing is deleted), so it can run while ingest runs with the
    old key, and again after a partial run. Run it before ingest restarts with the new key.
    """
    report = RotationReport()
    pairs: dict[str, str] = {}
    for number in card_numbers:
        if not number.strip():
            continue
        report.cards += 1
        try:
            pairs[card_id(number, old_key)] = card_id(number, new_key)
        except InvalidCardNumber:
            report.invalid += 1
    async with open_ingest(store) as ingest:
        known = await ingest.customers_of_cards(list(pairs))
        links = {new: known.get(old) or customer_id_for_card(old) for old, new in pairs.items()}
        if links:
            await ingest.record(set(), links, dt.datetime.now(dt.UTC))
        report.linked = len(links)
    log.info("card_key_rotated", cards=report.cards, linked=report.linked, invalid=report.invalid)
    return report
