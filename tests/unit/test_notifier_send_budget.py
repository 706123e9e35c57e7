"""The shared sending budget's arithmetic: windows every instance agrees on, and the settings
that make one."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from services.notifier.settings import NotifierSettings, backoff_total_s, worst_case_batch_s
from services.notifier.store import SendBudget

UTC = dt.UTC


def test_instances_agree_on_the_window_from_the_time_alone() -> None:
    budget = SendBudget(per_window=20, window_s=1.0)
    early = dt.datetime(2026, 3, 2, 12, 0, 5, 10_000, tzinfo=UTC)
    late = dt.datetime(2026, 3, 2, 13, 0, 5, 990_000, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert budget.window_key(early) == budget.window_key(late) == "2026-03-02T12:00:05.000000+00:00"
    assert budget.next_window(early) == dt.datetime(2026, 3, 2, 12, 0, 6, tzinfo=UTC)


def test_a_longer_window_holds_the_rate_times_its_length() -> None:
    budget = SendBudget.of(rate_per_s=0.5, window_s=60)
    assert budget == SendBudget(per_window=30, window_s=60)
    moment = dt.datetime(2026, 3, 2, 12, 0, 59, tzinfo=UTC)
    assert budget.window(moment) == dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def test_no_rate_limit_means_no_budget() -> None:
    assert SendBudget.of(rate_per_s=0, window_s=1) is None


def test_a_window_too_short_for_one_email_is_refused() -> None:
    with pytest.raises(ValidationError, match="CRM_SEND_BUDGET_WINDOW_S"):
        NotifierSettings(send_rate_per_s=0.5, send_budget_window_s=1)
    assert NotifierSettings(send_rate_per_s=0.5, send_budget_window_s=2).send_rate_per_s == 0.5


def test_the_worst_case_batch_sends_a_full_batch_at_the_rate_then_waits_every_backoff() -> None:
    settings = NotifierSettings(
        send_rate_per_s=20, send_max_attempts=5, send_backoff_base_s=1, send_backoff_max_s=60
    )
    assert backoff_total_s(settings) == 1 + 2 + 4 + 8
    assert worst_case_batch_s(settings, batch_max_records=1000) == 1000 / 20 + 15
    capped = settings.model_copy(update={"send_backoff_max_s": 3})
    assert backoff_total_s(capped) == 1 + 2 + 3 + 3
