"""The pure rules of `crm backup` / `crm restore`: the manifest, where groups resume, which
erasures destroy which keys, and the delivery records a restore writes."""

from __future__ import annotations

import datetime as dt
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from crm.backup import (
    ASSUMED_SENT,
    ErasureLog,
    Manifest,
    OfferLog,
    Position,
    StoreFile,
    file_sha256,
    reset_targets,
    schema_fingerprint,
    settle_deliveries,
    verify_files,
)
from services.notifier.domain import Delivery, message_id_for
from shared.erasure import is_unlinked
from shared.events import DeliveryRecorded, OfferIssued, OfferRevoked
from shared.privacy import customer_id_for_card

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
TP = TopicPartition("crm.events", 0)
TP1 = TopicPartition("crm.events", 1)


def offer(offer_id: str, customer: str = "c-1") -> OfferIssued:
    return OfferIssued(
        offer_id=offer_id,
        customer_id=customer,
        kind="frequent_item",
        sku="MILK-1L",
        scope="sku",
        discount_percent=Decimal("10"),
        coupon_code=f"CODE-{offer_id}",
        valid_from=T0.date(),
        valid_until=T0.date() + dt.timedelta(days=14),
        issued_at=T0,
        template="frequent_item",
    )


def outcome(
    offer_id: str, state: str = "sent", customer: str = "c-1", at: dt.datetime = T0
) -> DeliveryRecorded:
    return DeliveryRecorded(
        offer_id=offer_id,
        customer_id=customer,
        state=state,
        attempts=1,
        message_id=message_id_for(offer_id),
        recorded_at=at,
    )


def delivery(offer_id: str, state: str, at: dt.datetime = T0) -> Delivery:
    return Delivery(
        offer_id=offer_id,
        customer_id="c-1",
        state=state,  # type: ignore[arg-type]
        message_id=message_id_for(offer_id),
        offer=offer(offer_id),
        updated_at=at,
    )


# ---------------------------------------------------------------- where groups resume


def test_a_group_resumes_at_its_recorded_offset() -> None:
    plan = reset_targets({TP: 40, TP1: 7}, {TP: 0, TP1: 0}, {TP: 90, TP1: 12})
    assert plan.targets == {TP: 40, TP1: 7}
    assert plan.gaps == []


def test_a_partition_the_group_never_read_resumes_at_its_first_retained_record() -> None:
    plan = reset_targets({TP: None}, {TP: 5, TP1: 3}, {TP: 90, TP1: 12})
    assert plan.targets == {TP: 5, TP1: 3}
    assert plan.gaps == []


def test_records_dropped_by_retention_since_the_backup_are_a_gap() -> None:
    plan = reset_targets({TP: 40}, {TP: 55}, {TP: 90})
    assert plan.targets == {TP: 55}
    assert plan.gaps == [TP]


def test_an_offset_past_the_end_of_a_recreated_topic_resumes_at_the_end() -> None:
    assert reset_targets({TP: 400}, {TP: 0}, {TP: 12}).targets == {TP: 12}


# ---------------------------------------------------------------- the manifest


def test_a_backup_folder_whose_file_changed_or_is_missing_is_reported(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "profiles.sqlite3")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    fingerprint = schema_fingerprint(db)
    db.close()
    path = tmp_path / "profiles.sqlite3"
    manifest = Manifest(
        format=1,
        app_version="0.1.0",
        created_at=T0,
        stores=[
            StoreFile(
                name="profiles",
                sha256=file_sha256(path),
                size=path.stat().st_size,
                schema_fingerprint=fingerprint,
            ),
            StoreFile(name="offers", sha256="0" * 64, size=0, schema_fingerprint=""),
        ],
        groups={"crm-profiles": [Position(topic="crm.events", partition=0, offset=3)]},
        topic_ends=[Position(topic="crm.events", partition=0, offset=9)],
    )
    assert verify_files(manifest, tmp_path) == ["offers.sqlite3 is missing"]
    with path.open("ab") as handle:
        handle.write(b"x")
    assert "profiles.sqlite3 does not match its checksum" in verify_files(manifest, tmp_path)


def test_the_manifest_reads_back_what_it_wrote() -> None:
    manifest = Manifest(
        format=1,
        app_version="0.1.0",
        created_at=T0,
        stores=[],
        groups={"crm-notifier": [Position(topic="crm.offers", partition=2, offset=None)]},
        topic_ends=[Position(topic="crm.events", partition=1, offset=9)],
    )
    again = Manifest.model_validate_json(manifest.model_dump_json())
    assert again == manifest
    assert again.group_offsets("crm-notifier") == {TopicPartition("crm.offers", 2): None}
    assert again.ends_of("crm.events") == {TP1: 9}


# ---------------------------------------------------------------- erasures


def test_an_erasure_destroys_the_keys_of_the_customers_merged_into_the_erased_one() -> None:
    log = ErasureLog()
    log.add(
        {
            "type": "card_linked",
            "customer_id": "c-1",
            "card_id": "b" * 64,
            "merged_customer_id": "c-9",
        }
    )
    log.add({"type": "customer_erased", "customer_id": "c-1", "occurred_at": T0.isoformat()})
    log.add({"type": "purchase_recorded", "customer_id": "c-2"})
    destroy = log.keys_to_destroy({"c-1": ["a" * 64, "l-lead"]})
    assert destroy == {
        "c-1": T0,
        "c-9": T0,
        customer_id_for_card("b" * 64): T0,
        customer_id_for_card("a" * 64): T0,
        "l-lead": T0,
    }


def test_only_erasures_count_and_the_latest_time_wins() -> None:
    log = ErasureLog()
    later = T0 + dt.timedelta(hours=2)
    log.add({"type": "customer_erased", "customer_id": "c-1", "occurred_at": later.isoformat()})
    log.add({"type": "customer_erased", "customer_id": "c-1", "occurred_at": T0.isoformat()})
    log.add({"type": "customer_signed_up", "customer_id": "c-2"})
    assert log.erased == {"c-1": later}
    assert log.keys_to_destroy({}) == {"c-1": later}


# ---------------------------------------------------------------- deliveries


def test_an_outcome_published_since_the_backup_becomes_the_delivery_record() -> None:
    settled = settle_deliveries(
        issued={"o1": offer("o1")},
        outcomes={"o1": outcome("o1", at=T0 + dt.timedelta(minutes=5))},
        stored={},
        erased=[],
        now=T0 + dt.timedelta(hours=1),
    )
    assert [(d.offer_id, d.state, d.offer) for d in settled] == [("o1", "sent", offer("o1"))]


def test_an_offer_issued_since_the_backup_without_an_outcome_is_assumed_sent() -> None:
    now = T0 + dt.timedelta(hours=1)
    [settled] = settle_deliveries(
        issued={"o2": offer("o2")}, outcomes={}, stored={}, erased=[], now=now
    )
    assert (settled.state, settled.last_error, settled.updated_at) == (
        "suppressed",
        ASSUMED_SENT,
        now,
    )
    assert settled.is_final
    assert settled.message_id == message_id_for("o2")


def test_an_offer_revoked_since_without_an_outcome_is_recorded_revoked_unsent() -> None:
    [settled] = settle_deliveries(
        issued={"o2": offer("o2")}, outcomes={}, stored={}, erased=[], now=T0, revoked={"o2"}
    )
    assert settled.is_revoked
    assert settled.state == "suppressed"


def test_a_delivery_the_backup_holds_is_kept_unless_a_newer_outcome_came() -> None:
    pending = delivery("o3", "pending")
    sent = delivery("o4", "sent", at=T0 + dt.timedelta(hours=1))
    settled = settle_deliveries(
        issued={"o3": offer("o3"), "o4": offer("o4"), "o5": offer("o5")},
        outcomes={"o4": outcome("o4", "sent", at=T0)},
        stored={"o3": pending, "o4": sent, "o5": delivery("o5", "failed")},
        erased=[],
        now=T0,
    )
    assert settled == []


def test_an_outcome_newer_than_the_backups_record_replaces_it() -> None:
    sent = delivery("o6", "sent")
    [settled] = settle_deliveries(
        issued={},
        outcomes={"o6": outcome("o6", "bounced", at=T0 + dt.timedelta(days=1))},
        stored={"o6": sent},
        erased=[],
        now=T0,
    )
    assert settled.state == "bounced"
    assert settled.offer == sent.offer


def test_an_erased_customers_restored_deliveries_name_nobody() -> None:
    settled = settle_deliveries(
        issued={"o7": offer("o7"), "o8": offer("o8")},
        outcomes={"o7": outcome("o7")},
        stored={},
        erased=["c-1"],
        now=T0,
    )
    assert len(settled) == 2
    assert all(is_unlinked(d.customer_id) and d.offer is None for d in settled)
    assert {d.offer_id: d.state for d in settled} == {"o7": "sent", "o8": "suppressed"}


def test_the_offer_log_keeps_the_latest_issue_and_the_revocations() -> None:
    log = OfferLog()
    log.add(offer("o1"))
    log.add(
        OfferRevoked(
            offer_id="o1",
            customer_id="c-1",
            kind="frequent_item",
            coupon_code="CODE-o1",
            reason="cooldown",
            revoked_at=T0,
        )
    )
    log.add("not an offer event")
    assert set(log.issued) == {"o1"}
    assert log.revoked == {"o1"}


@pytest.mark.parametrize("state", ["sent", "written", "bounced", "suppressed", "failed"])
def test_every_final_outcome_is_restored_final(state: str) -> None:
    [settled] = settle_deliveries(
        issued={}, outcomes={"o9": outcome("o9", state)}, stored={}, erased=[], now=T0
    )
    assert settled.is_final
