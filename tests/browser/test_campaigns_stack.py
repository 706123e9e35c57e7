"""A marketing user creates a campaign from the form, sees the reach preview, activates it and
sees its figures move: the page against the real services (`crm run all` as a process on a
fresh embedded broker and a SQLite store), store traffic sent on the raw topics."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from crm.embedded import EmbeddedKafka, free_port
from crm.simulation import RawMessage
from shared.auth import token_hash
from shared.topics import CHECKOUTS_RAW, CUSTOMERS_RAW
from tests.browser.support import CHROMIUM, run_async, shoot, sign_in
from tests.keys import SERVICE_KEYS
from tests.reliability.harness import send, wait_drained

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (apt-get install chromium)"),
]

MARKETING = "marketing-browser-stack-token"
SKU = "ESPRESSO-250"
CONSENTING = (1, 2, 3, 4)
WITHOUT_CONSENT = 5


@dataclass
class Stack:
    """`crm run all` on its broker: where its page is, and how to reach its raw topics."""

    base: str
    bootstrap: str
    log: Path
    serial: int = 0

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def _message(self, topic: str, doc: dict[str, Any]) -> RawMessage:
        now = dt.datetime.now(dt.UTC)
        doc = {"occurred_at": now.isoformat(), **doc}
        return RawMessage(topic, str(doc["card_number"]).encode(), orjson.dumps(doc), now)

    def sign_up(self, n: int, *, consent: bool) -> RawMessage:
        return self._message(
            CUSTOMERS_RAW,
            {
                "event_id": f"signup-{n}",
                "type": "signup",
                "occurred_at": (dt.datetime.now(dt.UTC) - dt.timedelta(days=40)).isoformat(),
                "card_number": card(n),
                "first_name": f"Customer {n}",
                "email": f"customer{n}@example.com",
                "marketing_consent": consent,
            },
        )

    def checkout(self, n: int, sku: str) -> RawMessage:
        self.serial += 1
        line = {"sku": sku, "name": sku, "category": "coffee", "quantity": 1, "unit_price": "4.90"}
        return self._message(
            CHECKOUTS_RAW,
            {
                "event_id": f"till-{self.serial}",
                "store_id": "S001",
                "card_number": card(n),
                "lines": [line],
            },
        )

    def send(self, messages: list[RawMessage]) -> None:
        """Send, then wait until every service has read everything (bounded)."""
        run_async(send(self.bootstrap, messages))
        run_async(wait_drained(self.bootstrap))


def card(n: int) -> str:
    return f"6035 7777 0000 {n:04d}"


def wait_ready(process: subprocess.Popen[bytes], base: str, log: Path, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"crm run all exited: {log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"crm run all not ready: {log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    log = tmp_path / "crm-run-all.log"
    with EmbeddedKafka(log_file=tmp_path / "broker.log") as broker:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
        env.update(
            {
                "CRM_KAFKA_BOOTSTRAP": broker.bootstrap,
                "CRM_STORE_URL": f"sqlite:///{tmp_path / 'store'}",
                "CRM_OUTBOX_DIR": str(tmp_path / "outbox"),
                "CRM_API_TOKENS": f"marketing:{token_hash(MARKETING)}",
                **SERVICE_KEYS,
                "CRM_HTTP_PORT": str(port),
                "CRM_HTTP_HOST": "127.0.0.1",
                "CRM_SEND_GRACE_S": "0",
                "CRM_QUIET_HOURS": "off",
                "CRM_LOG_FORMAT": "json",
                "CRM_BATCH_TIMEOUT_MS": "50",
            }
        )
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "crm.cli", "run", "all"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(process, base, log, within=90)
            yield Stack(base=base, bootstrap=broker.bootstrap, log=log)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def figure(page: Any, campaign_id: str, name: str) -> str:
    text: str = page.locator(
        f'#campaign-list [data-campaign-id="{campaign_id}"] [data-figure="{name}"] dd'
    ).inner_text()
    return text


def wait_for_figure(page: Any, campaign_id: str, name: str, expected: str, within: float) -> None:
    """Refresh the list as a user would until the figure shows `expected` (bounded)."""
    deadline = time.monotonic() + within
    script = (
        "([id, name, expected]) => { const node = document.querySelector("
        '`#campaign-list [data-campaign-id="${id}"] [data-figure="${name}"] dd`);'
        " return node !== null && node.textContent === expected; }"
    )
    while time.monotonic() < deadline:
        page.click("#campaigns-refresh")
        try:
            page.wait_for_function(script, arg=[campaign_id, name, expected], timeout=1500)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(
        f"{campaign_id} {name}: {figure(page, campaign_id, name)!r}, not {expected!r}"
    )


def test_a_marketing_user_creates_a_campaign_sees_its_reach_activates_it_and_sees_its_figures_move(
    stack: Stack, browser: Any
) -> None:
    stack.send(
        [stack.sign_up(n, consent=True) for n in CONSENTING]
        + [stack.sign_up(WITHOUT_CONSENT, consent=False)]
    )
    # Some shopping before the campaign exists: one visit each, nothing that earns an offer.
    stack.send([stack.checkout(n, "MILK-1L") for n in (*CONSENTING, WITHOUT_CONSENT)])
    api = httpx.Client(
        base_url=stack.base, headers={"Authorization": f"Bearer {MARKETING}"}, timeout=10
    )
    reach = api.get("/api/segments/all")
    assert reach.status_code == 200, reach.text
    everyone = reach.json()["count"]
    assert everyone >= len(CONSENTING)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        sign_in(page, stack.base, MARKETING)
        page.click("nav button[data-page=campaigns]")
        page.wait_for_selector('[data-campaign-id="frequent-item"]', timeout=30_000)

        page.click("#campaign-new")
        page.fill("#c-name", "Espresso fans")
        page.select_option("#c-trigger-type", "purchase")
        page.select_option("#c-trigger-by", "sku")
        page.fill("#c-trigger-sku", SKU)
        page.fill("#c-trigger-min-checkouts", "2")
        page.fill("#c-trigger-window", "30")
        page.select_option("#c-audience", "all")
        page.wait_for_selector(f"#c-reach[data-count='{everyone}']", timeout=15_000)
        assert f"This would reach {everyone} customers today." == page.inner_text("#c-reach")
        page.fill("[data-path='offer.discount_percent']", "15")
        page.select_option("[data-path='offer.scope']", "sku")
        page.fill("#c-holdout", "0")  # every eligible customer is treated: a known count
        page.click("#campaign-save")
        page.wait_for_selector('[data-campaign-id="espresso-fans"]', timeout=15_000)
        assert "Created espresso-fans: active." in page.inner_text("#campaigns-status")
        assert figure(page, "espresso-fans", "issued") == "0"

        # Each consenting customer buys the SKU twice: each earns the campaign's coupon; the
        # customer without consent earns nothing.
        stack.send(
            [stack.checkout(n, SKU) for n in (*CONSENTING, WITHOUT_CONSENT) for _ in range(2)]
        )
        expected = str(len(CONSENTING))
        wait_for_figure(page, "espresso-fans", "issued", expected, within=90)
        # the e-mails went out: the reports count them against the campaign
        wait_for_figure(page, "espresso-fans", "delivered", expected, within=90)
        row = next(
            r
            for r in api.get("/api/reports/campaigns").json()["campaigns"]
            if r["campaign_id"] == "espresso-fans" and r["variant"] is None
        )
        assert (row["name"], row["status"], row["issued"]) == (
            "Espresso fans",
            "active",
            len(CONSENTING),
        )
        page.click("#campaigns-refresh")  # the charts too, for the picture
        page.wait_for_load_state("networkidle")
        shoot(page, "campaigns-marketing")
    except Exception:
        print(stack.logs())  # the services' log, to see why
        raise
    finally:
        page.close()
