"""`crm bench --quick --json` through the real CLI on a tiny workload: its result is correct.

Speed is not asserted here (only the benchmark itself measures it): the test checks that every
figure the issue names is reported and that the run's self-check against the reference passed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from dataclasses import replace
from decimal import Decimal

import pytest

from crm.bench import BenchOptions, Workload, _reference, make_workload

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

KEYS = (
    "baseline_rate",
    "chain_rate",
    "ingest_rate",
    "ingest_ratio",
    "pipeline_rate",
    "pipeline_ratio",
    "capacity_rate",
    "latency_rate",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "growth_ratio",
    "rss_mb",
    "check_passed",
    "till_p50_ms",
    "till_p99_ms",
)
TINY = (
    *("--checkouts", "400", "--customers", "100", "300", "--latency-checkouts", "200"),
    *("--step-checkouts", "150", "--step-seconds", "1", "--till-requests", "100"),
)
"""A tiny workload: the smoke test checks correctness, not speed."""


def test_quick_bench_reports_every_figure_and_passes_its_self_check() -> None:
    """On SQLite; tests/integration/test_bench_mongo.py runs it on the PyMongo code path (a
    file of its own, so that the two runs go to different test workers)."""
    check_tiny_bench("sqlite")


def check_tiny_bench(store: str) -> None:
    """A tiny `crm bench --quick --json` on `store`: every figure there, self-check passed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    completed = subprocess.run(
        [sys.executable, "-m", "crm.cli", "bench", "--quick", "--json", "--store", store, *TINY],
        env=env,
        capture_output=True,
        timeout=480,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode()[-3000:]
    result = json.loads(completed.stdout)
    assert result["store"] == store
    for key in KEYS:
        assert key in result, key
    assert result["check_passed"] is True
    assert result["mismatch_count"] == 0
    assert set(result["rss_mb"]) >= {"ingest", "profiles", "offers"}
    assert all(mb and mb > 0 for mb in result["rss_mb"].values())
    assert result["latency_samples"]["profiles"] == 200
    for key in ("baseline_rate", "chain_rate", "ingest_rate", "pipeline_rate"):
        assert result[key] > 0, key
    # The capacity search went down 30 % a step and stopped at the first rate whose backlog
    # did not grow (or after its seven steps); latency ran at half the rate it found.
    steps = result["capacity_steps"]
    rates = [step["rate"] for step in steps]
    assert rates[1:] == [round(rate * 0.7) for rate in rates[:-1]]
    if result["capacity_verified"]:
        assert result["capacity_rate"] == rates[-1]
        assert steps[-1]["last_ms"] - steps[-1]["first_ms"] <= 500
        assert all(step["last_ms"] - step["first_ms"] > 500 for step in steps[:-1])
    else:
        assert len(steps) == 7
    assert result["latency_rate"] == max(1, round(result["capacity_rate"] / 2))
    assert result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    profiles_mb = result["profiles_store_mb"].values()
    assert all(mb > 0 for mb in profiles_mb) if store == "sqlite" else set(profiles_mb) == {None}
    # Both populations were given the same burst: the same offers are expected of each.
    assert len(set(result["offers_expected"].values())) == 1
    # Every till request answered 200, with an answer its real code, card and basket allow.
    assert sum(result["till_answers"].values()) == 100
    assert result["till_answers"]["valid"] > 0
    assert result["till_answers"]["applicable"] == 50


def test_reference_expects_an_offer_for_the_third_checkout_of_a_sku_in_thirty_days() -> None:
    options = BenchOptions(consent_share=1.0, email_share=1.0)
    work = make_workload(3, 200, options=options, tag="unit")
    assert work.offers, "a small population with many checkouts earns offers"
    assert sum(work.visits.values()) == 200
    assert sum(work.spend.values(), Decimal(0)) == sum(c.total for c in work.checkouts)
    by_id = {c.event_id: c for c in work.checkouts}
    for event_id, sku in work.offers:
        checkout = by_id[event_id]
        earlier = [
            c
            for c in work.checkouts
            if c.customer == checkout.customer
            and sku in c.skus
            and checkout.at - dt.timedelta(days=30) <= c.at <= checkout.at
        ]
        assert len(earlier) >= 3


def test_reference_counts_a_checkout_thirty_calendar_days_back_as_the_rules_do() -> None:
    """The window is in calendar days, both ends included (the offers rules' `window_days`):
    a checkout at 11:00 thirty days before one at 18:00 still counts."""
    options = BenchOptions(consent_share=1.0, email_share=1.0)
    work = make_workload(1, 3, options=options, tag="unit")
    first, second, third = work.checkouts
    sku = "BENCH-SKU"
    at = dt.datetime(2026, 11, 27, 18, 0, tzinfo=dt.UTC)
    spaced = [
        replace(first, at=at - dt.timedelta(days=30, hours=7), skus=frozenset({sku})),
        replace(second, at=at - dt.timedelta(days=3), skus=frozenset({sku})),
        replace(third, at=at, skus=frozenset({sku})),
    ]
    shifted = Workload(work.population, work.signups, spaced, work.reachable)
    _reference(shifted)
    assert shifted.offers == {(third.event_id, sku)}


def test_same_active_customers_get_the_same_work_in_a_small_and_a_large_population() -> None:
    options = BenchOptions(consent_share=0.5, email_share=0.8)
    small = make_workload(100, 400, options=options, tag="a", active=100)
    large = make_workload(1_000, 400, options=options, tag="b", active=100)
    assert len(small.offers) == len(large.offers) > 0
    assert [c.skus for c in small.checkouts] == [c.skus for c in large.checkouts]
    assert sorted(small.visits.values()) == sorted(large.visits.values())


def test_reference_gives_no_offer_to_customers_without_consent() -> None:
    options = BenchOptions(consent_share=0.0)
    work = make_workload(3, 200, options=options, tag="unit")
    assert not work.offers
