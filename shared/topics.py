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
DATA_KEYS: Final = "crm.data-keys"
"""Compacted, keyed by customer id: each customer's current data key, wrapped, from ingest;
tombstone when an erasure destroys it. A restore recovers the vault from it (`shared.vault_recovery`)."""

RAW_TOPICS: Final = (CHECKOUTS_RAW, CUSTOMERS_RAW, INTERACTIONS_RAW)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How `crm run` and `crm create-topics` create a topic when it is missing.

    `retention_days` None keeps records for ever (`retention.ms=-1`); a compacted topic keeps
    the latest record per key instead. `configs` are further topic configs, as Kafka names them.
    """

    name: str
    partitions: int
    retention_days: int | None
    compacted: bool = False
    configs: tuple[tuple[str, str], ...] = ()

    def topic_configs(self, *, min_insync_replicas: int | None = None) -> dict[str, str]:
        """Every config the topic is created with; `min_insync_replicas` adds that config
        (production: 2 of 3 replicas must have a record before `acks=all` confirms it)."""
        configs: dict[str, str] = {}
        if self.compacted:
            configs["cleanup.policy"] = "compact"
        elif self.retention_days is None:
            configs["retention.ms"] = "-1"  # kept: the topic is what a replay starts from
        else:
            configs["retention.ms"] = str(self.retention_days * DAY_MS)
        configs.update(self.configs)
        if min_insync_replicas is not None:
            configs[MIN_INSYNC_REPLICAS] = str(min_insync_replicas)
        return configs


MIN_INSYNC_REPLICAS: Final = "min.insync.replicas"
DEFAULT_PARTITIONS: Final = 6
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS

CONTACTS_CONFIGS: Final = (
    # A contact change stays at least a minute before compaction may drop it, so a notifier a
    # little behind still reads every change in order.
    ("min.compaction.lag.ms", str(60_000)),
    # The erasure bound: a record superseded by a newer one or a tombstone is compacted away
    # at most a day after it was written; the open segment rolls every hour, so a tombstone
    # is itself compactable within the hour. Old contact details are gone within about 25 h.
    ("max.compaction.lag.ms", str(DAY_MS)),
    ("segment.ms", str(HOUR_MS)),
    # How long the tombstone itself stays once compacted: a notifier stopped for up to a day
    # still sees it and deletes the contact.
    ("delete.retention.ms", str(DAY_MS)),
)
"""`crm.contacts` holds e-mail addresses: an erasure's tombstone must win within a stated bound."""

DATA_KEYS_CONFIGS: Final = CONTACTS_CONFIGS
"""`crm.data-keys` holds (wrapped) data keys: the same erasure bound as `crm.contacts`. A key an
erasure destroyed is compacted away within about 25 h (a day's `max.compaction.lag.ms` and an
hour's segment), its tombstone a day later; from then on no copy on Kafka opens the customer's
sealed fields, whoever holds the wrapping key."""

LOOKBACK_DAYS: Final = 400
"""What the offer rules look back on: the anniversary's year, and a month to spare."""

DEADLETTER_RETENTION_DAYS: Final = 30
"""How long dead letters stay, and so how long after a failure `crm redrive` may send one again."""

TOPIC_SPECS: Final = (
    # What tills and channels send. Ingest reads it within seconds, but a dead letter points
    # back at its source record (topic, partition, offset) and `crm redrive` re-reads the
    # original from there: every topic that can be dead-lettered keeps its records at least
    # as long as the dead letters, or a redrive within their retention finds nothing.
    TopicSpec(CHECKOUTS_RAW, DEFAULT_PARTITIONS, DEADLETTER_RETENTION_DAYS),
    TopicSpec(CUSTOMERS_RAW, DEFAULT_PARTITIONS, DEADLETTER_RETENTION_DAYS),
    TopicSpec(INTERACTIONS_RAW, DEFAULT_PARTITIONS, DEADLETTER_RETENTION_DAYS),
    # The record of what happened: `crm replay profiles|reports` rebuilds from it, so it is kept.
    TopicSpec(EVENTS, DEFAULT_PARTITIONS, None),
    # `crm replay offers` rebuilds from it: as long as the rules look back.
    TopicSpec(PROFILES_CHANGED, DEFAULT_PARTITIONS, LOOKBACK_DAYS),
    TopicSpec(CONTACTS, DEFAULT_PARTITIONS, None, compacted=True, configs=CONTACTS_CONFIGS),
    TopicSpec(CLOCK, 1, None),
    # What marketing consumes and reports (and the look-up's coupons) rebuild from: kept.
    TopicSpec(OFFERS, DEFAULT_PARTITIONS, None),
    TopicSpec(DELIVERIES, DEFAULT_PARTITIONS, None),
    TopicSpec(DEADLETTER, DEFAULT_PARTITIONS, DEADLETTER_RETENTION_DAYS),
    # Marketing's definitions: every instance reads the whole topic (a global table).
    TopicSpec(CAMPAIGNS, 1, None, compacted=True),
    TopicSpec(SEGMENT_DEFINITIONS, 1, None, compacted=True),
    # `crm replay offers` rebuilds segment-entered triggers from it, as far back as the rules look.
    TopicSpec(SEGMENTS, DEFAULT_PARTITIONS, LOOKBACK_DAYS),
    # The data keys' durable copy: read whole by a restore, never by a consumer group.
    TopicSpec(DATA_KEYS, DEFAULT_PARTITIONS, None, compacted=True, configs=DATA_KEYS_CONFIGS),
)

# Consumer groups, one per service.
GROUP_INGEST: Final = "crm-ingest"
GROUP_PROFILES: Final = "crm-profiles"
GROUP_OFFERS: Final = "crm-offers"
GROUP_NOTIFIER: Final = "crm-notifier"
GROUP_REPORTS: Final = "crm-reports"
