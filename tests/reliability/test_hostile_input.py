"""Hostile and broken input: ingest stays up, dead-letters each bad message with a reason,
processes the good ones around it, keeps memory bounded and never lets a card number out.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import time
import tracemalloc
import uuid
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm.traffic import read_topic
from services.ingest.app import SPEC, create_app
from services.ingest.service import IngestService
from services.ingest.store_sqlite import SqliteIngestRepository
from shared.events import DeadLetter
from shared.kafka import ensure_topics
from shared.settings import KafkaSettings, PrivacySettings, Settings, StoreSettings
from shared.skeleton import ServiceApp
from shared.storage import StoreLocation
from shared.topics import CHECKOUTS_RAW, CUSTOMERS_RAW, DEADLETTER, EVENTS, INTERACTIONS_RAW
from tests.reliability.harness import record

CARD = "6035 9999 8888 7777"
CARD_DIGITS = CARD.replace(" ", "")
RAW_TOPICS = (CHECKOUTS_RAW, CUSTOMERS_RAW, INTERACTIONS_RAW)
INJECTIONS = (
    '{"$gt": ""}',
    "'; DROP TABLE profiles; --",
    '" OR 1=1 --',
    "<script>alert(1)</script>",
    "{{ 7*7 }}{% raw %}",
    "../../etc/passwd",
    "\x00\x1b[31m\u202e\ufeff",
    "Robert'); DELETE FROM seen_events WHERE ('1'='1",
)
FIELDS = {
    CHECKOUTS_RAW: (
        "event_id",
        "store_id",
        "occurred_at",
        "card_number",
        "currency",
        "lines",
        "coupons",
    ),
    CUSTOMERS_RAW: (
        "event_id",
        "type",
        "occurred_at",
        "card_number",
        "email",
        "first_name",
        "birth_date",
        "marketing_consent",
        "other_card_number",
    ),
    INTERACTIONS_RAW: ("event_id", "type", "occurred_at", "card_number", "channel", "details"),
}
LINE_FIELDS = ("sku", "name", "category", "quantity", "unit_price", "discount")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(INJECTIONS),
    st.just(CARD),
    st.just("1e999999"),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.sampled_from(INJECTIONS), children, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def hostile_document(draw: st.DrawFn, topic: str) -> dict[str, Any]:
    """A document with the contract's field names, each maybe missing, any type or hostile."""
    doc: dict[str, Any] = {}
    for name in FIELDS[topic]:
        if draw(st.booleans()):
            if name == "lines":
                doc[name] = draw(
                    st.lists(
                        st.dictionaries(st.sampled_from(LINE_FIELDS), values, max_size=6) | values,
                        max_size=3,
                    )
                )
            else:
                doc[name] = draw(values)
    return doc


def _bytes_of(doc: Any) -> bytes:
    return json.dumps(doc, default=str, allow_nan=True).encode()


@st.composite
def hostile_message(draw: st.DrawFn) -> tuple[str, bytes]:
    topic = draw(st.sampled_from(RAW_TOPICS))
    kind = draw(st.sampled_from(["document", "bytes", "utf8", "deep", "control", "huge"]))
    if kind == "bytes":
        return topic, draw(st.binary(max_size=200))
    if kind == "utf8":  # invalid UTF-8 inside otherwise plausible JSON
        return topic, b'{"event_id": "\xff\xfe\xc3\x28", "card_number": "' + CARD.encode() + b'"}'
    if kind == "deep":
        depth = draw(st.integers(min_value=50, max_value=50_000))
        opener = draw(st.sampled_from([b"[", b'{"a":']))
        return topic, b'{"lines": ' + opener * depth
    if kind == "control":
        text = draw(st.text(alphabet=st.characters(max_codepoint=0x1F), min_size=1, max_size=30))
        return topic, _bytes_of({"event_id": text, "card_number": CARD, "store_id": text})
    if kind == "huge":
        return topic, _bytes_of({"event_id": "x", "card_number": CARD, "pad": "9" * (1 << 20)})
    return topic, _bytes_of(draw(hostile_document(topic)))


def good_checkout(event_id: str) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "store_id": "S001",
            "occurred_at": "2026-03-01T10:00:00Z",
            "card_number": "6035 1000 2000 3000",
            "lines": [{"sku": "milk-1l", "quantity": 1, "unit_price": "1,19"}],
        }
    )


async def new_service() -> ServiceApp[IngestService]:
    """Ingest as it runs (its edge and service), in-process on a memory store."""
    settings_ = Settings(privacy=PrivacySettings(card_key="hostile-key"))  # type: ignore[arg-type]
    repository = await SqliteIngestRepository.open(StoreLocation.parse("memory://"))
    return ServiceApp(SPEC, settings_, repository=repository)


async def process_sandwich(
    service: ServiceApp[IngestService], topic: str, value: bytes
) -> list[Any]:
    before, after = f"good-{uuid.uuid4().hex}", f"good-{uuid.uuid4().hex}"
    batch = [
        record(CHECKOUTS_RAW, good_checkout(before), 0),
        record(topic, value, 1),
        record(CHECKOUTS_RAW, good_checkout(after), 2),
    ]
    outgoing, handled = await service.prepare(batch)
    await handled.save()
    events = [orjson.loads(v) for t, _, v in outgoing if t == EVENTS and v]
    assert {before, after} <= {e["event_id"] for e in events}, "good neighbours were lost"
    letters = [DeadLetter.model_validate_json(v) for t, _, v in outgoing if t == DEADLETTER and v]
    hostile_out = [e for e in events if e["event_id"] not in {before, after}]
    # The hostile record is either a valid event after all, a dead letter, or an anonymous
    # interaction (built into nothing): never two outcomes, never an exception.
    assert len(letters) + len(hostile_out) <= 1
    for letter in letters:
        assert letter.reason
        assert letter.source_topic == topic
        assert letter.offset == 1
        assert CARD_DIGITS not in letter.model_dump_json()
        assert CARD_DIGITS not in letter.detail
    for _, _, v in outgoing:
        assert CARD_DIGITS.encode() not in (v or b"")
    return letters


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(message=hostile_message())
def test_any_input_is_dead_lettered_with_a_reason_or_normalized_and_neighbours_survive(
    message: tuple[str, bytes],
) -> None:
    topic, value = message

    async def one() -> None:
        await process_sandwich(await new_service(), topic, value)

    asyncio.run(one())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe not utf-8", "invalid_utf8"),
        (b"[" * 100_000, "too_deep"),
        (b'{"lines": ' + b'{"a":' * 100_000, "too_deep"),
        (b" " + b"x" * (1 << 20), "oversized"),
        (b'["an", "array"]', "not_an_object"),
        (b"", "empty_message"),
    ],
)
async def test_broken_bytes_get_their_own_dead_letter_reason(value: bytes, reason: str) -> None:
    letters = await process_sandwich(await new_service(), CHECKOUTS_RAW, value)
    assert [letter.reason for letter in letters] == [reason]


async def test_memory_stays_bounded_under_a_stream_of_hostile_messages() -> None:
    service = await new_service()
    examples = [
        (CHECKOUTS_RAW, b"[" * 50_000),
        (CHECKOUTS_RAW, b"x" * (1 << 20) + b"!"),
        (
            CUSTOMERS_RAW,
            _bytes_of({"event_id": "e", "email": "\x00" * 10_000, "card_number": CARD}),
        ),
        (INTERACTIONS_RAW, _bytes_of({"event_id": "i", "details": {"k" * 50: "v" * 100_000}})),
        (CHECKOUTS_RAW, _bytes_of({"event_id": "l", "lines": [{"sku": "A"}] * 2000})),
    ]

    async def rounds(n: int) -> None:
        for _ in range(n):
            for topic, value in examples:
                await process_sandwich(service, topic, value)

    tracemalloc.start()
    try:
        await rounds(5)  # warm caches (pydantic, regexes)
        gc.collect()  # rejected inputs leave exception/frame cycles for the cyclic collector
        baseline, _ = tracemalloc.get_traced_memory()
        await rounds(40)
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 200 hostile messages (40 MiB of input) leave less than 1 MiB behind, and no batch
    # holds more than a few copies of its largest message.
    assert current - baseline < 1024 * 1024, (current - baseline) // 1024
    assert peak < 48 * 1024 * 1024, peak // 1024


async def _wait_for(condition: Any, within: float = 45.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.3)
    raise AssertionError("condition not met in time")


@pytest.mark.integration
async def test_hostile_messages_through_kafka_leave_ingest_up_and_good_ones_processed(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    await ensure_topics(kafka_settings)
    settings_ = Settings(kafka=kafka_settings, store=StoreSettings(store_url="memory://"))
    app = create_app(
        settings_, repository=await SqliteIngestRepository.open(StoreLocation.parse("memory://"))
    )
    marker = f"hostile-{unique}"
    hostile: list[tuple[str, bytes]] = [
        (CHECKOUTS_RAW, marker.encode() + b"\xff\xfe\x00 not json"),
        (CHECKOUTS_RAW, b'{"m": "' + marker.encode() + b'", "lines": ' + b"[" * 20_000),
        (CHECKOUTS_RAW, b'{"m": "' + marker.encode() + b'", "pad": "' + b"9" * (1 << 20) + b'"}'),
        (CUSTOMERS_RAW, _bytes_of({"event_id": marker, "type": {"$gt": ""}, "card_number": CARD})),
        (INTERACTIONS_RAW, _bytes_of({"event_id": [marker], "type": "x", "occurred_at": 1e308})),
        (
            CHECKOUTS_RAW,
            _bytes_of(
                {
                    "event_id": marker + "-q",
                    "store_id": "S1",
                    "occurred_at": "2026-03-01T10:00:00Z",
                    "card_number": CARD,
                    "lines": [{"sku": "A", "quantity": 10**30, "unit_price": "-1"}],
                }
            ),
        ),
    ]
    goods = [f"{marker}-good-{n}" for n in range(len(hostile) + 1)]
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_settings.kafka_bootstrap, max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    await app.start()
    try:
        for n, (topic, value) in enumerate(hostile):
            await producer.send(CHECKOUTS_RAW, good_checkout(goods[n]), key=b"S001")
            await producer.send(topic, value, key=b"S001")
        await producer.send(CHECKOUTS_RAW, good_checkout(goods[-1]), key=b"S001")
        await producer.flush()

        async def goods_there() -> bool:
            ids = {
                orjson.loads(r.value)["event_id"] for r in await read_topic(kafka_settings, EVENTS)
            }
            return set(goods) <= ids

        await _wait_for(goods_there)

        hashes = {hashlib.sha256(value).hexdigest() for _, value in hostile}

        async def letters() -> list[DeadLetter]:
            return [
                letter
                for r in await read_topic(kafka_settings, DEADLETTER)
                if (letter := DeadLetter.model_validate_json(r.value)).payload_sha256 in hashes
            ]

        async def all_lettered() -> bool:
            return len(await letters()) >= len(hostile)

        await _wait_for(all_lettered)
        found = await letters()
        assert len(found) == len(hostile)
        assert all(letter.reason for letter in found)
        assert {letter.reason for letter in found} >= {"invalid_utf8", "too_deep", "oversized"}
        for letter in found:
            assert CARD_DIGITS not in letter.model_dump_json()
    finally:
        await app.stop()
        await producer.stop()
