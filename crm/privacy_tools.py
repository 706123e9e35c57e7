"""Right of access and card-key rotation: tools over every service's store, used by the CLI.

`export_customer` gathers what each service keeps of one customer (ingest's card links,
the profile and its journey, the offers, the notifier's contact and deliveries, the reports' facts) and the
audit log's entries about them, as plain JSON.
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

from services.ingest.store import customer_export as ingest_export
from services.ingest.store import open_repository as open_ingest
from services.notifier.store import customer_export as notifier_export
from services.notifier.store import open_repository as open_notifier
from services.offers.store import customer_export as offers_export
from services.offers.store import open_repository as open_offers
from services.profiles.store import customer_export as profiles_export
from services.profiles.store import open_repository as open_profiles
from services.reports.store import customer_export as reports_export
from services.reports.store import open_repository as open_reports
from shared.auth import open_audit_log
from shared.export import plain
from shared.logging import get_logger
from shared.privacy import InvalidCardNumber, card_id, customer_id_for_card
from shared.settings import StoreSettings

log = get_logger(__name__)


async def resolve_customer(store: StoreSettings, *, card_number: str, card_key: bytes) -> str:
    """The customer a card feeds (its link, else the id derived from the card)."""
    card = card_id(card_number, card_key)
    async with open_ingest(store) as ingest:
        links = await ingest.customers_of_cards([card])
    return links.get(card) or customer_id_for_card(card)


async def export_customer(store: StoreSettings, customer_id: str) -> dict[str, Any]:
    """Everything the services store of one customer, per service, as JSON types: each part as
    that service's admin API answers it (`shared.export`), and the audit log's entries about
    the customer (who looked them up, when)."""
    async with open_ingest(store) as ingest:
        cards = await ingest_export(ingest, customer_id)
    async with open_profiles(store) as profiles:
        profile = await profiles_export(profiles, customer_id)
    async with open_offers(store) as offers:
        offered = await offers_export(offers, customer_id)
    async with open_notifier(store) as notifier:
        notified = await notifier_export(notifier, customer_id)
    async with open_reports(store) as reports:
        facts = await reports_export(reports, customer_id)
    audit = await open_audit_log(store)
    try:
        entries = await audit.of_customer(customer_id)
    finally:
        await audit.close()
    return {
        "customer_id": customer_id,
        "ingest": plain(cards),
        "profiles": plain(profile),
        "offers": plain(offered),
        "notifier": plain(notified),
        "reports": plain(facts),
        "audit": plain(entries),
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
