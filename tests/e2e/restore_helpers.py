"""What the restore drills share: the `crm` command as a process, the state compared before
the loss and after the replay, and the traffic split around the backup."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from crm.simulation import RawMessage
from services.notifier.store import open_repository as open_notifier
from services.offers.store import open_repository as open_offers
from services.profiles.store import open_repository as open_profiles
from shared.privacy import card_id, customer_id_for_card
from shared.settings import StoreSettings
from shared.topics import CHECKOUTS_RAW, CUSTOMERS_RAW
from shared.vault import open_vault
from tests.e2e.conftest import Mailbox
from tests.keys import SERVICE_KEYS
from tests.reliability.harness import traffic

GONE: dict[str, Any] = {
    "erased": True,
    "personal": (None, None, None),
    "contact": None,
    "deliveries": [],
    "keys": {},
}
"""What the stores hold of an erased customer."""


def crm(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "crm.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def wait_mail_settled(mailbox: Mailbox, quiet: float = 4.0, within: float = 60.0) -> None:
    """Until no new message arrived for `quiet` seconds."""
    deadline = time.monotonic() + within
    count, since = mailbox.count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if mailbox.count() != count:
            count, since = mailbox.count(), time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    raise AssertionError("the e-mails did not settle")


async def snapshot(
    store: StoreSettings, customers: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each customer's profile (its content, without the arrival bookkeeping) and live
    offers."""
    async with open_profiles(store) as profiles:
        found = await profiles.get_many(customers)
    async with open_offers(store) as offers:
        records = await offers.offers_of_customers(customers)
    shown = {cid: p.content() for cid, p in found.items()}
    live = {
        offer_id: (o.customer_id, o.coupon_code, o.state)
        for offer_id, o in records.items()
        if o.state not in ("revoked", "expired")
    }
    return shown, live


async def traces_of(store: StoreSettings, customer: str) -> dict[str, Any]:
    """What the stores still hold of one customer."""
    async with open_profiles(store) as profiles:
        profile = await profiles.get(customer)
    personal = None if profile is None else (profile.email, profile.first_name, profile.birth_date)
    async with open_notifier(store) as notifier:
        contact = (await notifier.get_contacts([customer])).get(customer)
        deliveries = await notifier.deliveries_of(customer)
    async with open_vault(store) as vault:
        keys = await vault.current([customer])
    return {
        "erased": profile is None or profile.erased,
        "personal": personal,
        "contact": contact,
        "deliveries": deliveries,
        "keys": keys,
    }


async def keys_of(store: StoreSettings, customer: str) -> dict[str, Any]:
    async with open_vault(store) as vault:
        return dict(await vault.current([customer]))


def customer_of(number: str) -> str:
    return customer_id_for_card(card_id(number, SERVICE_KEYS["CRM_CARD_KEY"].encode()))


@dataclass(frozen=True)
class DrillTraffic:
    """Three weeks of traffic split around the backup. After it: the last week's checkouts
    (offers, e-mails), every event of one customer in five (sign-up, interactions, purchases:
    personal data sealed with data keys the backup does not hold, which the restore recovers
    from `crm.data-keys`), and the erasure of the busiest card signed up before it."""

    first: list[RawMessage]
    second: list[RawMessage]
    customers: list[str]
    late_customers: list[str]
    """Signed up with an e-mail address after the backup: their personal data is sealed with
    keys it lacks."""
    erased_number: str

    @property
    def erased(self) -> str:
        return customer_of(self.erased_number)

    def erasure(self) -> RawMessage:
        now = dt.datetime.now(dt.UTC)
        document = {
            "event_id": "drill-erase",
            "type": "erase",
            "occurred_at": now.isoformat(),
            "card_number": self.erased_number,
        }
        return RawMessage(CUSTOMERS_RAW, None, orjson.dumps(document), now)


def digits(card_number: Any) -> str:
    """A card number in any spelling, as its digits (tills write spaces or dashes)."""
    return "".join(c for c in str(card_number or "") if c.isdigit())


def _document(message: RawMessage) -> dict[str, Any]:
    """A raw message's JSON object; {} for the broken ones the traffic holds on purpose."""
    try:
        document = orjson.loads(message.value)
    except orjson.JSONDecodeError:
        return {}
    return document if isinstance(document, dict) else {}


def drill_traffic(customers: int = 50, seed: int = 3) -> DrillTraffic:
    messages = traffic(customers, days=21, seed=seed)
    cut = max(m.at for m in messages) - dt.timedelta(days=7)
    documents = [_document(m) for m in messages]
    numbers = sorted(
        {
            d["card_number"]
            for m, d in zip(messages, documents, strict=True)
            if m.topic == CUSTOMERS_RAW and d.get("type") == "signup"
        }
    )
    late = {digits(n) for n in numbers[::5]}

    def after_backup(message: RawMessage, document: dict[str, Any]) -> bool:
        cards = {digits(document.get("card_number")), digits(document.get("other_card_number"))}
        return bool(cards & late) or (message.topic == CHECKOUTS_RAW and message.at >= cut)

    split = [after_backup(m, d) for m, d in zip(messages, documents, strict=True)]
    first = [m for m, later in zip(messages, split, strict=True) if not later]
    second = [m for m, later in zip(messages, split, strict=True) if later]
    busiest = Counter(_document(m).get("card_number") for m in second)
    early = [n for n in numbers if digits(n) not in late]
    return DrillTraffic(
        first=first,
        second=second,
        customers=sorted({customer_of(n) for n in numbers}),
        late_customers=sorted(
            {
                customer_of(d["card_number"])
                for m, d in zip(second, map(_document, second), strict=True)
                if m.topic == CUSTOMERS_RAW and d.get("type") == "signup" and d.get("email")
            }
        ),
        erased_number=next(n for n, _ in busiest.most_common() if n in early),
    )


def check_restore_said(out: str) -> None:
    """What `crm restore` printed: the drill's one erasure re-applied, and the data keys
    created since the restored instant recovered from crm.data-keys."""
    assert "1 erasures re-applied" in out, out
    recovered = re.search(r"(\d+) data keys recovered", out)
    assert recovered, out
    assert int(recovered[1]) > 0, "the keys created since the backup were not recovered"


Snapshot = tuple[dict[str, Any], dict[str, Any]]


def check_same_state(before: Snapshot, after: Snapshot, late_customers: list[str]) -> None:
    """The profiles and live offers after the restore and replay are those before the loss,
    personal data of the customers who signed up after the restored instant included."""
    profiles_before, offers_before = before
    profiles_after, offers_after = after
    assert profiles_after.keys() == profiles_before.keys()
    for customer, profile in profiles_before.items():
        assert profiles_after[customer] == profile, f"profile {customer} differs"
    # Their personal data opens with the data keys recovered from crm.data-keys.
    late = [profiles_after[c] for c in late_customers if c in profiles_after]
    assert late, "no customer signed up after the backup"
    assert all(p["email"] for p in late), "personal data since the backup is lost"
    assert offers_after == offers_before, "the live offers differ"
