"""One contract for both audit logs: SQLite (file and memory) and MongoDB, opened through
`open_audit_log` like the services do."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest

from shared.auth import AuditEntry, AuditLog, open_audit_log
from shared.settings import StoreSettings

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
async def audit(every_store: StoreSettings) -> AsyncIterator[AuditLog]:
    log = await open_audit_log(every_store)
    yield log
    await log.close()


def entry(minutes: int, customer: str | None, action: str = "lookup_by_card") -> AuditEntry:
    return AuditEntry(
        at=T0 + dt.timedelta(minutes=minutes),
        role="agent",
        token_id="0123456789ab",
        customer_id=customer,
        action=action,
        found=customer is not None,
    )


async def test_the_entries_about_one_customer_come_back_oldest_first(audit: AuditLog) -> None:
    for item in (
        entry(2, "c-1", "get_by_id"),
        entry(0, "c-1"),
        entry(1, "c-2"),
        entry(3, None),
    ):
        await audit.record(item)
    assert await audit.of_customer("c-1") == [entry(0, "c-1"), entry(2, "c-1", "get_by_id")]
    assert await audit.of_customer("c-3") == []
    assert await audit.of_customer('{"$ne": null}') == []
    assert [e.customer_id for e in await audit.latest(10)][:1] == [None]
