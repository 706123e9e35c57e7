"""A basket line the one way: as ingest normalizes a till's line, and as a coupon sees it.

Ingest normalizes every checkout's lines with `normalize_line`; the till's coupon check
normalizes the lines it is sent the same way, and both the profile change and the till's check
hand a coupon the basket as `basket_lines` (one line per product and category, amounts
summed), so a discount is computed on the same figures at the till and at the checkout.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Final

from shared.events import BasketLine, PurchaseLine
from shared.raw import RawLine

MONEY_PLACES: Final = Decimal("0.01")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def clean_text(value: str | None, limit: int = 200) -> str | None:
    """Trim and drop control characters from free text; empty becomes None."""
    if value is None:
        return None
    cleaned = _CONTROL.sub("", value).strip()[:limit]
    return cleaned or None


def normalize_line(line: RawLine) -> PurchaseLine:
    """SKU trimmed and upper-cased, category lower-cased, amount = quantity x price - discount
    (never below zero), to the cent."""
    gross = line.quantity * line.unit_price
    amount = max(gross - line.discount, Decimal(0)).quantize(MONEY_PLACES)
    return PurchaseLine(
        sku=line.sku.strip().upper(),
        name=clean_text(line.name),
        category=(clean_text(line.category) or "").lower() or None,
        quantity=line.quantity,
        unit_price=line.unit_price,
        discount=line.discount,
        amount=amount,
    )


def basket_lines(lines: Iterable[PurchaseLine]) -> tuple[BasketLine, ...]:
    """The basket as a coupon sees it: one line per (SKU, category), amounts summed, sorted."""
    amounts: dict[tuple[str, str | None], Decimal] = {}
    for line in lines:
        key = (line.sku, line.category)
        amounts[key] = amounts.get(key, Decimal(0)) + line.amount
    return tuple(
        BasketLine(sku=sku, category=category, amount=amount)
        for (sku, category), amount in sorted(
            amounts.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
        )
    )
