"""Kafka topic names and consumer groups: the fixed contract topics and the internal ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Fixed by the outside contract (../CONTRACT.md): never rename these.
CHECKOUTS_RAW: Final = "crm.checkouts.raw"
CUSTOMERS_RAW: Final = "crm.customers.raw"
INTERACTIONS_RAW: Final = "crm.interactions.raw"
CLOCK: Final = "crm.clock"
OFFERS: Final = "crm.offers"
DEADLETTER: Final = "crm.deadletter"

# Internal topics: the developers' design, all keyed by customer id.
EVENTS: Final = "crm.events"
"""Normalized events from ingest, keyed by customer id (store id for anonymous checkouts)."""
PROFILES_CHANGED: Final = "crm.profiles.changed"
"""One ProfileChanged per applied event, from profiles to offers."""
CONTACTS: Final = "crm.contacts"
"""Compacted: the latest contact details per customer, from profiles to notifier; tombstone on erase."""
DELIVERIES: Final = "crm.deliveries"
"""E-mail delivery outcomes from the notifier, for reports."""

RAW_TOPICS: Final = (CHECKOUTS_RAW, CUSTOMERS_RAW, INTERACTIONS_RAW)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How `crm run` and `crm create-topics` create a topic when it is missing."""

    name: str
    partitions: int
    retention_days: int | None
    compacted: bool = False


DEFAULT_PARTITIONS: Final = 6

TOPIC_SPECS: Final = (
    TopicSpec(CHECKOUTS_RAW, DEFAULT_PARTITIONS, 7),
    TopicSpec(CUSTOMERS_RAW, DEFAULT_PARTITIONS, 7),
    TopicSpec(INTERACTIONS_RAW, DEFAULT_PARTITIONS, 7),
    TopicSpec(EVENTS, DEFAULT_PARTITIONS, 7),
    TopicSpec(PROFILES_CHANGED, DEFAULT_PARTITIONS, 3),
    TopicSpec(CONTACTS, DEFAULT_PARTITIONS, None, compacted=True),
    TopicSpec(CLOCK, 1, 30),
    TopicSpec(OFFERS, DEFAULT_PARTITIONS, 30),
    TopicSpec(DELIVERIES, DEFAULT_PARTITIONS, 30),
    TopicSpec(DEADLETTER, DEFAULT_PARTITIONS, 30),
)

# Consumer groups, one per service.
GROUP_INGEST: Final = "crm-ingest"
GROUP_PROFILES: Final = "crm-profiles"
GROUP_OFFERS: Final = "crm-offers"
GROUP_NOTIFIER: Final = "crm-notifier"
GROUP_REPORTS: Final = "crm-reports"
