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
CAMPAIGNS: Final = "crm.campaigns"
"""Compacted, keyed by campaign id: each campaign's whole state (versions and history)."""
SEGMENT_DEFINITIONS: Final = "crm.segment-definitions"
"""Compacted, keyed by segment name: each segment's rule, from the segments API to profiles."""
SEGMENTS: Final = "crm.segments"
"""Segment entries and exits, keyed by customer id, from profiles to offers."""

RAW_TOPICS: Final = (CHECKOUTS_RAW, CUSTOMERS_RAW, INTERACTIONS_RAW)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How `crm run` and `crm create-topics` create a topic when it is missing.

    `retention_days` None keeps records for ever (`retention.ms=-1`); a compacted topic keeps
    the latest record per key instead.
    """

    name: str
    partitions: int
    retention_days: int | None
    compacted: bool = False


DEFAULT_PARTITIONS: Final = 6

LOOKBACK_DAYS: Final = 400
"""What the offer rules look back on: the anniversary's year, and a month to spare."""

TOPIC_SPECS: Final = (
    # What tills and channels send: ingest de-duplicates and normalizes it within days.
    TopicSpec(CHECKOUTS_RAW, DEFAULT_PARTITIONS, 7),
    TopicSpec(CUSTOMERS_RAW, DEFAULT_PARTITIONS, 7),
    TopicSpec(INTERACTIONS_RAW, DEFAULT_PARTITIONS, 7),
    # The record of what happened: `crm replay profiles|reports` rebuilds from it, so it is kept.
    TopicSpec(EVENTS, DEFAULT_PARTITIONS, None),
    # `crm replay offers` rebuilds from it: as long as the rules look back.
    TopicSpec(PROFILES_CHANGED, DEFAULT_PARTITIONS, LOOKBACK_DAYS),
    TopicSpec(CONTACTS, DEFAULT_PARTITIONS, None, compacted=True),
    TopicSpec(CLOCK, 1, None),
    # What marketing consumes and reports (and the look-up's coupons) rebuild from: kept.
    TopicSpec(OFFERS, DEFAULT_PARTITIONS, None),
    TopicSpec(DELIVERIES, DEFAULT_PARTITIONS, None),
    TopicSpec(DEADLETTER, DEFAULT_PARTITIONS, 30),
    # Marketing's definitions: every instance reads the whole topic (a global table).
    TopicSpec(CAMPAIGNS, 1, None, compacted=True),
    TopicSpec(SEGMENT_DEFINITIONS, 1, None, compacted=True),
    # `crm replay offers` rebuilds segment-entered triggers from it, as far back as the rules look.
    TopicSpec(SEGMENTS, DEFAULT_PARTITIONS, LOOKBACK_DAYS),
)

# Consumer groups, one per service.
GROUP_INGEST: Final = "crm-ingest"
GROUP_PROFILES: Final = "crm-profiles"
GROUP_OFFERS: Final = "crm-offers"
GROUP_NOTIFIER: Final = "crm-notifier"
GROUP_REPORTS: Final = "crm-reports"
