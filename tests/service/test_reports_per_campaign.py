"""The campaigns report per campaign and variant through the reports app: `crm.campaigns` and
`crm.offers` in through TestKafkaBroker, the rows out over HTTP as JSON and CSV, and in
`crm report campaigns`."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
from decimal import Decimal
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from faststream.kafka import TestKafkaBroker
from typer.testing import CliRunner

from crm.cli import cli
from services.reports.app import SPEC, create_app
from services.reports.store import open_repository
from shared.auth import token_hash
from shared.campaigns import (
    CampaignChange,
    CampaignChanged,
    CampaignOffer,
    CampaignSpec,
    CampaignTrigger,
    Variant,
)
from shared.edge import dump
from shared.events import (
    DeliveryRecorded,
    OfferHeldOut,
    OfferIssued,
    OfferRedeemed,
    PurchaseLine,
    PurchaseRecorded,
)
from shared.settings import HttpSettings, KafkaSettings, Settings, StoreSettings
from shared.topics import CAMPAIGNS, DELIVERIES, EVENTS, OFFERS

AT = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
DAY = AT.date()
TOKENS = {"marketing": "m-token", "agent": "a-token"}


def coffee(*statuses: str) -> CampaignChanged:
    spec = CampaignSpec(
        name="Coffee lovers",
        trigger=CampaignTrigger(type="purchase", sku="COFFEE-1KG", min_checkouts=2),
        offer=CampaignOffer(discount_percent=Decimal(15), scope="sku"),
        variants=(
            Variant(name="a", offer=CampaignOffer(discount_percent=Decimal(10), scope="sku")),
            Variant(name="b", offer=CampaignOffer(discount_percent=Decimal(20), scope="sku")),
        ),
    )
    history = tuple(
        CampaignChange(
            at=AT - dt.timedelta(days=1) + dt.timedelta(minutes=n),
            version=1,
            status=status,
            by="t",
            action="created" if n == 0 else "paused" if status == "paused" else "resumed",
        )
        for n, status in enumerate(statuses)
    )
    return CampaignChanged(campaign_id="coffee-lovers", versions=(spec,), history=history)


def issued(n: int, customer: str, *, campaign: str | None, variant: str | None) -> OfferIssued:
    return OfferIssued(
        offer_id=f"o{n}",
        customer_id=customer,
        kind="frequent_item",
        coupon_code=f"CODE-{n}",
        discount_percent=Decimal(15),
        sku="COFFEE-1KG",
        valid_from=DAY,
        valid_until=DAY + dt.timedelta(days=14),
        issued_at=AT,
        template="campaign",
        scope="sku",
        campaign_id=campaign,
        variant=variant,
    )


def held(n: int, customer: str, variant: str) -> OfferHeldOut:
    return OfferHeldOut(
        offer_id=f"o{n}",
        customer_id=customer,
        kind="frequent_item",
        period="2026-W10",
        valid_from=DAY,
        valid_until=DAY + dt.timedelta(days=14),
        decided_at=AT,
        campaign_id="coffee-lovers",
        variant=variant,
    )


def purchase(customer: str, total: str) -> PurchaseRecorded:
    amount = Decimal(total)
    return PurchaseRecorded(
        event_id=f"p-{customer}",
        occurred_at=AT + dt.timedelta(hours=3),
        customer_id=customer,
        card_id=None,
        store_id="S001",
        currency="EUR",
        total=amount,
        lines=(
            PurchaseLine(sku="COFFEE-1KG", quantity=Decimal(1), unit_price=amount, amount=amount),
        ),
    )


def traffic() -> list[tuple[str, object]]:
    return [
        (CAMPAIGNS, coffee("active")),
        (CAMPAIGNS, coffee("active", "paused")),
        (OFFERS, issued(1, "c1", campaign="coffee-lovers", variant="a")),
        (OFFERS, issued(2, "c2", campaign="coffee-lovers", variant="b")),
        (OFFERS, issued(3, "c3", campaign="coffee-lovers", variant="b")),
        (OFFERS, held(4, "c4", "a")),
        (OFFERS, held(5, "c5", "b")),
        (OFFERS, issued(6, "c6", campaign=None, variant=None)),  # before campaigns existed
        (
            OFFERS,
            OfferRedeemed(
                offer_id="o2",
                customer_id="c2",
                kind="frequent_item",
                coupon_code="CODE-2",
                redeemed_at=AT + dt.timedelta(hours=3),
                checkout_event_id="p-c2",
                store_id="S001",
                basket_total=Decimal("24.00"),
                discount=Decimal("3.60"),
            ),
        ),
        (
            DELIVERIES,
            DeliveryRecorded(
                offer_id="o1",
                customer_id="c1",
                state="sent",
                attempts=1,
                message_id="m1",
                recorded_at=AT,
            ),
        ),
        *((EVENTS, purchase(c, t)) for c, t in (("c1", "20"), ("c2", "24"), ("c4", "8"))),
    ]


def settings(store_url: str) -> Settings:
    tokens = ",".join(f"{role}:{token_hash(t)}" for role, t in TOKENS.items())
    return Settings(
        kafka=KafkaSettings(kafka_bootstrap="localhost:9092"),
        store=StoreSettings(store_url=store_url),
        http=HttpSettings(api_tokens=tokens),
    )


async def test_campaign_and_variant_rows_reach_the_api_as_json_and_csv_and_the_cli(
    tmp_path: Path,
) -> None:
    store_url = f"sqlite:///{tmp_path / 'store'}"
    async with open_repository(StoreSettings(store_url=store_url)) as repository:
        app = create_app(settings(store_url), repository=repository)
        async with TestKafkaBroker(app.broker) as broker:
            for _ in range(2):  # every message delivered twice: counted once
                for topic, event in traffic():
                    await broker.publish(dump(event), topic, key=b"k")  # type: ignore[arg-type]
            # an older record of the campaign, redelivered late, changes nothing
            await broker.publish(dump(coffee("active")), CAMPAIGNS, key=b"coffee-lovers")
            await broker.publish(b"not a campaign", CAMPAIGNS, key=b"x")
        assert app.service.stats["facts_definition"] == 5
        assert app.service.stats["skipped_invalid"] == 1

        http = FastAPI()
        assert SPEC.routes is not None
        http.include_router(SPEC.routes(app))
        marketing = {"Authorization": f"Bearer {TOKENS['marketing']}"}
        with TestClient(http) as client:
            assert client.get("/api/reports/campaigns").status_code == 401
            agent = {"Authorization": f"Bearer {TOKENS['agent']}"}
            assert client.get("/api/reports/campaigns", headers=agent).status_code == 403
            body = client.get(
                "/api/reports/campaigns", params={"as_of": str(DAY)}, headers=marketing
            ).json()
            csv_text = client.get(
                "/api/reports/campaigns",
                params={"format": "csv", "as_of": str(DAY)},
                headers=marketing,
            ).text
        # the rows per kind and week are still there
        assert {(r["kind"], r["week"]) for r in body["rows"]} == {
            ("frequent_item", "2026-W10"),
            ("frequent_item", "all"),
        }
        rows = {(r["campaign_id"], r["variant"]): r for r in body["campaigns"]}
        assert list(rows) == [
            ("coffee-lovers", None),
            ("coffee-lovers", "a"),
            ("coffee-lovers", "b"),
            ("frequent-item", None),
        ]
        whole = rows[("coffee-lovers", None)]
        assert (whole["name"], whole["status"]) == ("Coffee lovers", "paused")
        assert (whole["eligible"], whole["held_out"], whole["issued"]) == (5, 2, 3)
        assert (whole["delivered"], whole["redeemed"]) == (1, 1)
        assert (whole["revenue"], whole["discount"]) == ("24.00", "3.60")
        # lift of arm b against the campaign's whole hold-out (c4 spent 8, c5 nothing)
        b = rows[("coffee-lovers", "b")]
        assert (b["issued"], b["held_out"], b["redeemed"]) == (2, 1, 1)
        assert (b["treated_spend"], b["control_spend"], b["lift"]) == ("12.00", "4.00", "8.00")
        assert b["lift_low"] is not None
        assert rows[("coffee-lovers", "a")]["treated_spend"] == "20.00"
        assert rows[("frequent-item", None)]["issued"] == 1

        sections = csv_text.split("\n\n")
        assert sections[0].startswith("# every offer up to 2026-03-02\neligible,held_out,issued,")
        assert sections[1].startswith("# campaigns (as of 2026-03-02)\nkind,week,")
        title, table = sections[2].split("\n", 1)
        assert title == "# per campaign and variant (as of 2026-03-02)"
        parsed = list(csv.DictReader(io.StringIO(table)))
        assert [(r["campaign_id"], r["variant"]) for r in parsed] == [
            ("coffee-lovers", ""),
            ("coffee-lovers", "a"),
            ("coffee-lovers", "b"),
            ("frequent-item", ""),
        ]
        assert parsed[2]["lift"] == "8.00"
        assert parsed[0]["name"] == "Coffee lovers"

    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli,
        ["report", "campaigns", "--format", "csv", "--as-of", str(DAY)],
        env={"CRM_STORE_URL": store_url},
    )
    assert result.exit_code == 0, result.output
    assert result.output == csv_text
