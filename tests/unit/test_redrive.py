"""`crm redrive`'s decisions without a broker: selection, grouping, what is lost or refused,
the copy's headers, and the command's refusals of incomplete selections."""

from __future__ import annotations

import datetime as dt

import pytest
from typer.testing import CliRunner

from crm.cli import cli
from crm.redrive import (
    REDRIVE_HEADER,
    Item,
    Position,
    RedriveReport,
    Selection,
    group_by_source,
    is_again,
    lost_because,
    redrive_headers,
    refusal,
    same_record,
)
from shared.edge import Source, dead_letter
from shared.events import DeadLetter
from shared.topics import CAMPAIGNS, CHECKOUTS_RAW, CONTACTS, DEADLETTER, EVENTS, OFFERS

AT = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


def letter(
    *,
    offset: int = 7,
    topic: str = CHECKOUTS_RAW,
    service: str = "ingest",
    reason: str = "processing_failed",
    value: bytes = b'{"event_id": "e-1"}',
    at: dt.datetime = AT,
) -> DeadLetter:
    source = Source(topic=topic, partition=2, offset=offset, value=value)
    return dead_letter(service=service, source=source, reason=reason, detail="x", now=at)


def test_every_criterion_of_a_selection_must_match() -> None:
    selection = Selection(
        reason="processing_failed",
        service="ingest",
        source_topic=CHECKOUTS_RAW,
        since=AT,
        until=AT + dt.timedelta(hours=1),
    )
    assert selection.matches(letter())
    assert not selection.matches(letter(reason="no_lines"))
    assert not selection.matches(letter(service="profiles"))
    assert not selection.matches(letter(topic=EVENTS))
    assert not selection.matches(letter(at=AT - dt.timedelta(seconds=1)))
    assert not selection.matches(letter(at=AT + dt.timedelta(hours=1)))
    one = Selection(position=Position(CHECKOUTS_RAW, 2, 7))
    assert one.matches(letter())
    assert not one.matches(letter(offset=8))


def test_a_record_dead_lettered_twice_is_redriven_once() -> None:
    items = group_by_source(
        [
            letter(offset=9, at=AT + dt.timedelta(minutes=5)),
            letter(service="reports", at=AT + dt.timedelta(minutes=1)),
            letter(at=AT),
        ]
    )
    assert [item.position.offset for item in items] == [7, 9]
    assert items[0].services == ["ingest", "reports"]
    assert items[0].event_id == "e-1"
    assert items[0].dead_lettered_at == AT


def test_an_offset_below_the_first_retained_one_is_lost() -> None:
    assert lost_because(99, 100, 500) is not None
    assert "retention" in str(lost_because(99, 100, 500))
    assert lost_because(100, 100, 500) is None
    assert lost_because(499, 100, 500) is None
    assert "end" in str(lost_because(500, 100, 500))


def test_compacted_topics_and_dead_letters_are_refused() -> None:
    assert refusal(CHECKOUTS_RAW) is None
    assert refusal(EVENTS) is None
    assert refusal(OFFERS) is None
    assert "compacted" in str(refusal(CONTACTS))
    assert "compacted" in str(refusal(CAMPAIGNS))
    assert refusal(DEADLETTER) is not None
    assert refusal("other.topic") is not None


def test_the_record_found_must_have_the_dead_letters_hash() -> None:
    assert same_record(letter(value=b"abc"), b"abc")
    assert not same_record(letter(value=b"abc"), b"abd")


def test_a_copy_keeps_the_headers_and_names_its_origin_once() -> None:
    headers = [("traceparent", b"00-a-b-01"), (REDRIVE_HEADER, b"crm.checkouts.raw/2/1")]
    assert redrive_headers(headers, Position(CHECKOUTS_RAW, 2, 9)) == [
        ("traceparent", b"00-a-b-01"),
        (REDRIVE_HEADER, b"crm.checkouts.raw/2/9"),
    ]


def test_a_dead_letter_of_the_copy_or_of_its_event_downstream_is_a_failure_again() -> None:
    copy = Position(CHECKOUTS_RAW, 2, 40)
    assert is_again(letter(offset=40), [copy], [])
    assert is_again(letter(topic=EVENTS, offset=3, service="profiles"), [copy], ["e-1"])
    assert not is_again(letter(offset=41, value=b'{"event_id": "e-2"}'), [copy], ["e-1"])


def test_a_report_counts_what_happened() -> None:
    report = RedriveReport(dry_run=False)
    statuses = ["redriven", "failed_again", "lost", "refused"]
    for n, status in enumerate(statuses):
        report.items.append(Item(Position(CHECKOUTS_RAW, 0, n), [letter()], status))  # type: ignore[arg-type]
    report.failed_again = 1
    assert report.counts() == {
        "selected": 4,
        "redriven": 2,
        "lost": 1,
        "refused": 1,
        "unread": 0,
        "failed_again": 1,
    }
    assert RedriveReport(dry_run=True).counts()["would_redrive"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "select dead letters"),
        (["--topic", CHECKOUTS_RAW, "--partition", "1"], "together"),
        (["--reason", "x", "--since", "yesterday"], "ISO date"),
    ],
)
def test_the_command_refuses_an_incomplete_selection(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["redrive", *args], env={"CRM_KAFKA_BOOTSTRAP": "x:1"})
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
