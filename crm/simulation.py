"""Realistic store traffic for `crm demo`, `crm simulate`, `crm bench` and the tests.

Deterministic for a seed: the same configuration always gives the same raw messages, so tests
and benchmarks can compute their expected results from the generated data.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from shared.topics import CHECKOUTS_RAW, CUSTOMERS_RAW, INTERACTIONS_RAW

# (sku, name, category, unit price, weighed)
CATALOG: tuple[tuple[str, str, str, str, bool], ...] = (
    ("MILK-1L", "Milk 1 l", "dairy", "1.19", False),
    ("YOGURT-4", "Yogurt 4-pack", "dairy", "2.49", False),
    ("BUTTER-250", "Butter 250 g", "dairy", "2.29", False),
    ("CHEESE-EMM", "Emmental", "dairy", "14.90", True),
    ("EGGS-6", "Free-range eggs 6", "dairy", "2.99", False),
    ("BREAD-WHT", "White bread", "bakery", "1.89", False),
    ("BAGUETTE", "Baguette", "bakery", "0.99", False),
    ("CROISSANT", "Croissant", "bakery", "0.79", False),
    ("APPLES", "Apples", "produce", "2.99", True),
    ("BANANAS", "Bananas", "produce", "1.79", True),
    ("TOMATOES", "Tomatoes", "produce", "3.49", True),
    ("CARROTS", "Carrots", "produce", "1.29", True),
    ("SALAD", "Lettuce", "produce", "0.99", False),
    ("CHICKEN", "Chicken breast", "meat", "11.90", True),
    ("BEEF-MINCE", "Beef mince 500 g", "meat", "5.49", False),
    ("HAM-4", "Ham 4 slices", "meat", "2.79", False),
    ("SALMON", "Salmon fillet", "fish", "24.90", True),
    ("TUNA-CAN", "Tuna can", "fish", "1.69", False),
    ("PASTA-500", "Pasta 500 g", "pantry", "1.09", False),
    ("RICE-1KG", "Rice 1 kg", "pantry", "2.19", False),
    ("OLIVE-OIL", "Olive oil 1 l", "pantry", "8.99", False),
    ("COFFEE-250", "Coffee beans 250 g", "pantry", "4.99", False),
    ("TEA-40", "Black tea 40 bags", "pantry", "2.59", False),
    ("CEREAL", "Muesli 750 g", "pantry", "3.49", False),
    ("CHOCOLATE", "Dark chocolate", "sweets", "1.99", False),
    ("COOKIES", "Butter cookies", "sweets", "2.39", False),
    ("WATER-6", "Still water 6x1.5 l", "drinks", "2.94", False),
    ("JUICE-OJ", "Orange juice 1 l", "drinks", "2.49", False),
    ("COLA-15", "Cola 1.5 l", "drinks", "1.79", False),
    ("WINE-RED", "Red wine 75 cl", "drinks", "7.99", False),
    ("BEER-6", "Lager 6-pack", "drinks", "5.99", False),
    ("DIAPERS", "Diapers size 4", "baby", "11.49", False),
    ("SHAMPOO", "Shampoo 250 ml", "hygiene", "3.29", False),
    ("TOOTHPASTE", "Toothpaste", "hygiene", "1.99", False),
    ("DETERGENT", "Laundry detergent", "household", "9.99", False),
    ("TISSUE-8", "Toilet paper 8 rolls", "household", "4.49", False),
    ("CATFOOD", "Cat food 12 pouches", "pets", "6.49", False),
    ("FLOWERS", "Tulips bouquet", "garden", "5.99", False),
    ("PIZZA-FRZ", "Frozen pizza", "frozen", "3.99", False),
    ("ICECREAM", "Vanilla ice cream", "frozen", "4.49", False),
)
BRANDS: tuple[tuple[str, str, float], ...] = (
    ("Alpenhof", "dairy", 0.8),
    ("Maison Pain", "bakery", 0.7),
    ("Green Valley", "produce", 0.6),
    ("Nordsee", "fish", 0.4),
    ("Casa Roma", "pantry", 0.75),
    ("Kaffa", "pantry", 0.55),
    ("Choco Loco", "sweets", 0.85),
    ("FizzUp", "drinks", 0.3),
    ("Sparkle", "household", 0.5),
)
"""Brands that social listening and the support desk hear about: name, category, and the
share of their opinions that are positive (the rest is neutral or negative)."""
POSITIVE_SPELLINGS = ("positive", "Positive", "pos", "+1", "happy", "\N{THUMBS UP SIGN}")
NEGATIVE_SPELLINGS = ("negative", "Negative", "neg", "-1", "unhappy", "\N{THUMBS DOWN SIGN}")
FIRST_NAMES = (
    "Ana",
    "Ben",
    "Chloé",
    "Dario",
    "Emma",
    "Farid",
    "Greta",
    "Hugo",
    "Inès",
    "Jonas",
    "Kofi",
    "Lena",
    "Marta",
    "Noah",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
)


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """What to simulate."""

    stores: int = 4
    customers: int = 300
    days: int = 28
    start: dt.date = dt.date(2026, 3, 1)
    seed: int = 7
    visits_per_week: float = 2.0
    max_lines: int = 40
    signup_share: float = 0.85
    consent_share: float = 0.75
    anonymous_per_day_per_store: int = 4
    broken_share: float = 0.01
    duplicate_share: float = 0.01
    interaction_share: float = 0.05
    opinion_share: float = 0.08
    """Per visit, the chance of a social like or dislike or a rated support ticket about a
    brand (drawn from a generator of its own: the rest of the traffic stays as it was)."""
    linked_cards: int = 3
    erasures: int = 1
    consent_withdrawals: int = 3
    history_days: int = 0
    """With history: some customers first bought about a year before `start` (their anniversary
    falls in the simulated days) and some stopped coming 70 to 160 days before it (win-back)."""
    established_share: float = 0.15
    lapsed_share: float = 0.06
    store_timezones: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One raw message as a till or a channel would publish it."""

    topic: str
    key: bytes | None
    value: bytes
    at: dt.datetime

    @property
    def day(self) -> dt.date:
        return self.at.date()


def card_number(index: int) -> str:
    """The canonical digits of simulated card `index`."""
    return f"6035{index:012d}"


def _spell(card: str, rng: random.Random) -> str:
    """The same card as different tills spell it."""
    style = rng.random()
    if style < 0.5:
        return " ".join(card[i : i + 4] for i in range(0, 16, 4))
    if style < 0.7:
        return "-".join(card[i : i + 4] for i in range(0, 16, 4))
    return card


def _price(price: str, rng: random.Random) -> Any:
    style = rng.random()
    if style < 0.6:
        return price
    if style < 0.8:
        return price.replace(".", ",")
    return float(price)


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, default=str).encode()


def _stamp(moment: dt.datetime, rng: random.Random) -> str:
    """ISO-8601 with an offset most of the time, naive (store-local = UTC here) sometimes."""
    if rng.random() < 0.8:
        return moment.isoformat()
    return moment.replace(tzinfo=None).isoformat()


def basket(
    rng: random.Random, favourites: list[int], *, max_lines: int = 40, spell: bool = True
) -> list[dict[str, Any]]:
    """1 to `max_lines` raw basket lines, the customer's favourite products often among them.
    `spell`: in the many spellings tills send (lower-case SKUs, `,` decimals, JSON numbers);
    without it, canonical (the bench computes its reference from the lines)."""
    size = max(1, min(max_lines, int(rng.expovariate(1 / 8)) + 1))
    chosen = [f for f in favourites if rng.random() < 0.6]
    while len(chosen) < size:
        chosen.append(rng.randrange(len(CATALOG)))
    lines = []
    for index in chosen[:size]:
        sku, name, category, price, weighed = CATALOG[index]
        quantity: Any = (
            str(Decimal(rng.randrange(150, 2500)) / 1000)
            if weighed
            else rng.choice([1, 1, 1, 2, 3])
        )
        line: dict[str, Any] = {
            "sku": sku.lower() if spell and rng.random() < 0.1 else sku,
            "name": name,
            "category": category,
            "quantity": quantity,
            "unit_price": _price(price, rng) if spell else price,
        }
        if rng.random() < 0.05:
            line["discount"] = "0.20"
        lines.append(line)
    return lines


class _Generator:
    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)  # noqa: S311 - simulated traffic, not secrets
        self.messages: list[RawMessage] = []
        self.stores = [f"S{n:03d}" for n in range(1, config.stores + 1)]
        self.serial = 0
        self.opinions: list[RawMessage] = []
        """Kept apart until the end, so that the rest of the traffic is what it was."""

    def _event_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.config.seed}-{self.serial:08d}"

    def _add(
        self, topic: str, key: str | None, doc: dict[str, Any] | bytes, at: dt.datetime
    ) -> None:
        value = doc if isinstance(doc, bytes) else _dump(doc)
        self.messages.append(RawMessage(topic, key.encode() if key else None, value, at))

    def _moment(self, day: dt.date) -> dt.datetime:
        minute = self.rng.randrange(8 * 60, 21 * 60)
        second = self.rng.randrange(60)
        return dt.datetime.combine(day, dt.time(minute // 60, minute % 60, second), dt.UTC)

    def _basket(self, favourites: list[int]) -> list[dict[str, Any]]:
        return basket(self.rng, favourites, max_lines=self.config.max_lines)

    def run(self) -> list[RawMessage]:
        config, rng = self.config, self.rng
        days = [config.start + dt.timedelta(days=d) for d in range(config.days)]
        end = days[-1]
        for index in range(1, config.customers + 1):
            self._customer(index, days, end)
        for day in days:
            for store in self.stores:
                for _ in range(config.anonymous_per_day_per_store):
                    at = self._moment(day)
                    doc = {
                        "event_id": self._event_id("anon"),
                        "store_id": store,
                        "occurred_at": _stamp(at, rng),
                        "currency": "EUR",
                        "lines": self._basket([]),
                    }
                    self._add(CHECKOUTS_RAW, store, doc, at)
        self._broken(days)
        self._duplicates()
        self.messages.extend(self.opinions)
        self.messages.sort(key=lambda m: m.at)
        return self.messages

    def _customer(self, index: int, days: list[dt.date], end: dt.date) -> None:
        config, rng = self.config, self.rng
        opinions = random.Random(f"{config.seed}:opinions:{index}")  # noqa: S311
        card = card_number(index)
        home = rng.choice(self.stores)
        favourites = rng.sample(range(len(CATALOG)), 3)
        first_day = rng.choice(days[: max(1, len(days) // 3)])
        earlier = self._history(days) if config.history_days > 0 else None
        if earlier is not None:
            first_day = earlier[0]
        if rng.random() < config.signup_share:
            at = self._moment(first_day) - dt.timedelta(hours=1)
            birth = dt.date(rng.randrange(1950, 2005), 1, 1) + dt.timedelta(days=rng.randrange(365))
            doc: dict[str, Any] = {
                "event_id": self._event_id("signup"),
                "type": "signup",
                "occurred_at": _stamp(at, rng),
                "card_number": _spell(card, rng),
                "store_id": home,
                "first_name": rng.choice(FIRST_NAMES),
                "birth_date": birth.isoformat(),
                "marketing_consent": rng.random() < config.consent_share,
            }
            if rng.random() < 0.95:
                doc["email"] = f"customer{index}@example.com"
            self._add(CUSTOMERS_RAW, home, doc, at)
        second_card = None
        if index <= config.linked_cards:
            second_card = card_number(config.customers + index)
        lapsed = earlier is not None and earlier[-1] < days[0] - dt.timedelta(days=60)
        visits = [
            day
            for day in days
            if not lapsed and day >= first_day and rng.random() <= config.visits_per_week / 7
        ]
        for day in [*(earlier or []), *visits]:
            at = self._moment(day)
            store = home if rng.random() < 0.8 else rng.choice(self.stores)
            use = second_card if second_card and rng.random() < 0.3 else card
            doc = {
                "event_id": self._event_id("chk"),
                "store_id": store,
                "occurred_at": _stamp(at, rng),
                "card_number": _spell(use, rng),
                "currency": "EUR",
                "lines": self._basket(favourites),
            }
            self._add(CHECKOUTS_RAW, store, doc, at)
            if rng.random() < config.interaction_share:
                kind = rng.choice(["support_ticket", "email_open", "email_click", "web_visit"])
                interaction = {
                    "event_id": self._event_id("int"),
                    "type": kind,
                    "occurred_at": (at + dt.timedelta(hours=2)).isoformat(),
                    "card_number": _spell(card, rng),
                    "channel": {"support_ticket": "phone", "web_visit": "web"}.get(kind, "email"),
                    "details": {"topic": rng.choice(["billing", "product", "delivery"])},
                }
                self._add(INTERACTIONS_RAW, None, interaction, at + dt.timedelta(hours=2))
            if opinions.random() < config.opinion_share:
                self._opinion(opinions, card, at + dt.timedelta(hours=5))
        midpoint = dt.datetime.combine(days[len(days) // 2], dt.time(12), dt.UTC)
        if second_card:
            link = {
                "event_id": self._event_id("link"),
                "type": "link_card",
                "occurred_at": midpoint.isoformat(),
                "card_number": _spell(card, rng),
                "other_card_number": _spell(second_card, rng),
            }
            self._add(CUSTOMERS_RAW, home, link, midpoint)
        if config.linked_cards < index <= config.linked_cards + config.consent_withdrawals:
            withdraw = {
                "event_id": self._event_id("consent"),
                "type": "consent",
                "occurred_at": midpoint.isoformat(),
                "card_number": card,
                "marketing_consent": False,
            }
            self._add(CUSTOMERS_RAW, home, withdraw, midpoint)
        if config.customers - config.erasures < index:
            erase_at = midpoint + dt.timedelta(hours=1)
            erase = {
                "event_id": self._event_id("erase"),
                "type": "erase",
                "occurred_at": erase_at.isoformat(),
                "card_number": card,
            }
            self._add(CUSTOMERS_RAW, home, erase, erase_at)

    def _history(self, days: list[dt.date]) -> list[dt.date] | None:
        """Visit days before `start` for an established or a lapsed customer, else None."""
        config, rng = self.config, self.rng
        start = days[0]
        roll = rng.random()
        if roll < config.established_share:
            first = start - dt.timedelta(days=365) + dt.timedelta(days=rng.randrange(len(days)))
            later = [
                first + dt.timedelta(days=n)
                for n in range(1, (start - first).days)
                if rng.random() < 1 / 14
            ]
            return [first, *later]
        if roll < config.established_share + config.lapsed_share:
            span = [start - dt.timedelta(days=n) for n in range(160, 70, -1)]
            return sorted(rng.sample(span, rng.randrange(5, 10)))
        return None

    def _opinion(self, rng: random.Random, card: str, at: dt.datetime) -> None:
        """A social like or dislike, or a support ticket with a sentiment, about a brand and
        its category, in the spellings producers send."""
        brand, category, liked = rng.choice(BRANDS)
        positive = rng.random() < liked
        kind = rng.choice(["social_like", "social_like", "support_ticket"])
        details: dict[str, Any] = {"brand": rng.choice([brand, brand.upper(), f" {brand} "])}
        if kind == "support_ticket":
            details["category"] = category.title()
            details["topic"] = "product"
            neutral = not positive and rng.random() < 0.3
            details["sentiment"] = (
                "neutral"
                if neutral
                else rng.choice(POSITIVE_SPELLINGS if positive else NEGATIVE_SPELLINGS)
            )
        elif not positive:
            kind = "social_dislike"
        if kind != "support_ticket" and rng.random() < 0.5:
            details["category"] = category
        interaction = {
            "event_id": f"op-{self.config.seed}-{len(self.opinions) + 1:08d}",
            "type": kind,
            "occurred_at": at.isoformat(),
            "card_number": _spell(card, rng),
            "channel": "phone" if kind == "support_ticket" else "social",
            "details": details,
        }
        self.opinions.append(RawMessage(INTERACTIONS_RAW, None, _dump(interaction), at))

    def _broken(self, days: list[dt.date]) -> None:
        rng = self.rng
        count = int(len(self.messages) * self.config.broken_share)
        for n in range(count):
            at = self._moment(rng.choice(days))
            store = rng.choice(self.stores)
            kind = n % 5
            doc: dict[str, Any] | bytes
            if kind == 0:
                doc = b'{"event_id": "broken", "store_id": '
            elif kind == 1:
                doc = {
                    "event_id": self._event_id("bad"),
                    "store_id": store,
                    "occurred_at": at.isoformat(),
                    "lines": [],
                }
            elif kind == 2:
                doc = {
                    "event_id": self._event_id("bad"),
                    "store_id": store,
                    "occurred_at": at.isoformat(),
                    "card_number": _spell(card_number(1), rng),
                    "lines": [{"sku": "MILK-1L", "quantity": -2, "unit_price": "1.19"}],
                }
            elif kind == 3:
                doc = {
                    "event_id": self._event_id("bad"),
                    "store_id": store,
                    "occurred_at": "31/02/2026 25:61",
                    "lines": [{"sku": "MILK-1L", "quantity": 1, "unit_price": "1.19"}],
                }
            else:
                doc = b'["not", "an", "object"]'
            self._add(CHECKOUTS_RAW, store, doc, at)

    def _duplicates(self) -> None:
        rng = self.rng
        checkouts = [m for m in self.messages if m.topic == CHECKOUTS_RAW]
        for message in rng.sample(checkouts, int(len(checkouts) * self.config.duplicate_share)):
            later = message.at + dt.timedelta(minutes=rng.randrange(1, 120))
            self.messages.append(RawMessage(message.topic, message.key, message.value, later))


def generate(config: SimulationConfig) -> list[RawMessage]:
    """All raw messages of a simulation, in time order."""
    return _Generator(config).run()


def by_day(messages: list[RawMessage]) -> Iterator[tuple[dt.date, list[RawMessage]]]:
    """The messages grouped per calendar day, in order."""
    current: dt.date | None = None
    bucket: list[RawMessage] = []
    for message in messages:
        if message.day != current:
            if current is not None:
                yield current, bucket
            current, bucket = message.day, []
        bucket.append(message)
    if current is not None:
        yield current, bucket
