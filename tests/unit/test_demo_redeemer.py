"""The demo's shoppers bring the same coupons in every run with the same seed, though every
run has a new coupon key and so new codes: they choose by offer, not by code."""

from __future__ import annotations

import datetime as dt
import hashlib

import orjson

from crm.demo import CouponRedeemer
from crm.simulation import RawMessage
from shared.privacy import card_id, customer_id_for_card
from shared.settings import KafkaSettings
from shared.topics import CHECKOUTS_RAW

CARD_KEY = "k" * 32
CARD = "6035 0000 0000 0042"
DAY = dt.date(2026, 11, 10)


def chosen_offers(coupon_key: str) -> list[str]:
    """The offers whose codes the shoppers list, with codes made under `coupon_key`."""
    redeemer = CouponRedeemer(KafkaSettings(), seed=5, card_key=CARD_KEY, share=1.0)
    customer = customer_id_for_card(card_id(CARD, CARD_KEY.encode()))
    codes = {}
    for n in range(6):
        offer_id = f"offer-{n}"
        code = hashlib.sha256(f"{coupon_key}|{offer_id}".encode()).hexdigest()[:12].upper()
        codes[code] = offer_id
        redeemer._note(
            {
                "type": "offer_issued",
                "offer_id": offer_id,
                "customer_id": customer,
                "coupon_code": code,
                "valid_until": "2026-11-30",
                "scope": "basket",
            }
        )
    checkouts = [
        RawMessage(
            CHECKOUTS_RAW,
            None,
            orjson.dumps({"card_number": CARD, "lines": [{"sku": "MILK"}], "n": n}),
            dt.datetime(2026, 11, 10, 9, tzinfo=dt.UTC),
        )
        for n in range(40)
    ]
    listed = []
    for message in redeemer.redeem(DAY, checkouts):
        for code in orjson.loads(message.value).get("coupons", []):
            listed.append(codes.get(code, "unknown"))
    return listed


def test_the_same_seed_brings_the_same_offers_whatever_their_codes() -> None:
    first = chosen_offers("one run's coupon key")
    assert len(set(first)) > 2, first  # several coupons to choose from, several chosen
    assert chosen_offers("another run's coupon key") == first
