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
from decimal import Decimal

import pytest

from crm.bench import BenchOptions, make_workload

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

KEYS = (
    "baseline_rate",
    "ingest_rate",
    "ingest_ratio",
    "pipeline_rate",
    "p50_ms",
    "p99_ms",
    "growth_ratio",
    "rss_mb",
    "till_p50_ms",
    "till_p99_ms",
)
TINY = (
    *("--checkouts", "600", "--customers", "100", "300", "--latency-checkouts", "300"),
    *("--till-requests", "200"),
)
"""A tiny workload: the smoke test checks correctness, not speed."""


@pytest.mark.parametrize("store", ["sqlite", pytest.param("mongodb", marks=pytest.mark.mongo)])
def test_quick_bench_reports_every_figure_and_passes_its_self_check(store: str) -> None:
    """On both code paths: a regression in the PyMongo adapters fails the self-check too."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    completed = subprocess.run(
        [sys.executable, "-m", "crm.cli", "bench", "--quick", "--json", "--store", store, *TINY],
        env=env,
        capture_output=True,
        timeout=240,
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
    assert result["latency_samples"]["profiles"] == 300
    assert result["baseline_rate"] > 0
    assert result["pipeline_rate"] > 0
    # Every till request answered 200, with an answer its real code, card and basket allow.
    assert sum(result["till_answers"].values()) == 200
    assert result["till_answers"]["valid"] > 0
    assert result["till_answers"]["applicable"] == 100


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


def test_reference_gives_no_offer_to_customers_without_consent() -> None:
    options = BenchOptions(consent_share=0.0)
    work = make_workload(3, 200, options=options, tag="unit")
    assert not work.offers
