"""A small in-process stand-in for the campaigns API (offers) and the segments API (profiles),
with the contract's shapes and pydantic's own 422s, to test the page's campaigns view alone."""

# No `from __future__ import annotations`: FastAPI resolves the routes' Annotated
# dependencies, which name local variables, at definition time.

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict

from shared.auth import Principal, TokenTable, require
from shared.campaigns import (
    CampaignChange,
    CampaignCounts,
    CampaignCreated,
    CampaignOffer,
    CampaignSpec,
    CampaignTrigger,
    CampaignView,
    SegmentCount,
    SegmentDefinition,
    SegmentRule,
    SegmentView,
)

NOW = dt.datetime.now(dt.UTC)


class Preview(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: SegmentRule


def count_of(rule: SegmentRule) -> int:
    """A made-up but predictable audience: each predicate given narrows it."""
    count = 120
    if rule.min_visits is not None:
        count -= 10 * rule.min_visits
    if rule.min_spend is not None:
        count -= int(rule.min_spend)
    if rule.consent is not None:
        count //= 2
    count -= 5 * len(rule.bought) + 3 * len(rule.rfm_segment)
    return max(count, 0)


def builtin(campaign_id: str, name: str, trigger: CampaignTrigger) -> CampaignView:
    scope = "sku" if trigger.any_sku else "basket"
    spec = CampaignSpec(
        name=name, trigger=trigger, offer=CampaignOffer(discount_percent=Decimal(10), scope=scope)
    )
    return CampaignView(
        campaign_id=campaign_id,
        name=name,
        status="active",
        version=1,
        spec=spec,
        history=(
            CampaignChange(
                at=dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
                version=1,
                status="active",
                by="system",
                action="seeded",
            ),
        ),
        counts=CampaignCounts(issued=150, held_out=30, redeemed=60),
        builtin=True,
    )


@dataclass
class MarketingApi:
    """The campaigns and segments it was told about; `previews` counts the live-count calls."""

    campaigns: dict[str, CampaignView] = field(default_factory=dict)
    segments: dict[str, SegmentView] = field(default_factory=dict)
    previews: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def seeded(cls) -> "MarketingApi":
        api = cls()
        api.campaigns["frequent-item"] = builtin(
            "frequent-item",
            "Frequent item",
            CampaignTrigger(type="purchase", any_sku=True, min_checkouts=3),
        )
        api.campaigns["birthday"] = builtin(
            "birthday", "Birthday", CampaignTrigger(type="birthday")
        )
        for name, count in (("all", 240), ("rfm-champions", 12)):
            api.segments[name] = SegmentView(
                name=name, rule=SegmentRule(), version=1, count=count, builtin=True
            )
        api.segments["coffee-fans"] = SegmentView(
            name="coffee-fans",
            description="bought coffee <b>twice</b>",
            rule=SegmentRule(min_visits=2),
            version=1,
            count=37,
        )
        return api

    def router(self, tokens: TokenTable) -> APIRouter:
        router = APIRouter()
        marketing = Annotated[Principal, Depends(require(tokens, "marketing"))]

        def view(campaign_id: str) -> CampaignView:
            if campaign_id not in self.campaigns:
                raise HTTPException(status.HTTP_404_NOT_FOUND, "no such campaign")
            return self.campaigns[campaign_id]

        def changed(current: CampaignView, *, paused: bool, action: str) -> CampaignView:
            entry = CampaignChange(
                at=dt.datetime.now(dt.UTC),
                version=current.version,
                status="paused" if paused else "active",
                by="test",
                action=action,
            )
            updated = current.model_copy(
                update={
                    "status": "paused" if paused else "active",
                    "history": (*current.history, entry),
                }
            )
            self.campaigns[current.campaign_id] = updated
            return updated

        @router.get("/api/campaigns")
        async def campaigns(_: marketing) -> dict[str, list[CampaignView]]:
            return {"campaigns": [self.campaigns[k] for k in sorted(self.campaigns)]}

        @router.post("/api/campaigns", status_code=201)
        async def create(spec: CampaignSpec, _: marketing) -> CampaignCreated:
            campaign_id = "-".join(spec.name.lower().split())
            scheduled = spec.starts_on is not None and spec.starts_on > NOW.date()
            self.campaigns[campaign_id] = CampaignView(
                campaign_id=campaign_id,
                name=spec.name,
                status="scheduled" if scheduled else "active",
                version=1,
                spec=spec,
                history=(
                    CampaignChange(
                        at=dt.datetime.now(dt.UTC),
                        version=1,
                        status="active",
                        by="test",
                        action="created",
                    ),
                ),
                counts=CampaignCounts(),
            )
            return CampaignCreated(
                campaign_id=campaign_id, status=self.campaigns[campaign_id].status, version=1
            )

        @router.put("/api/campaigns/{campaign_id}")
        async def edit(campaign_id: str, spec: CampaignSpec, _: marketing) -> CampaignView:
            current = view(campaign_id)
            updated = current.model_copy(
                update={"spec": spec, "name": spec.name, "version": current.version + 1}
            )
            self.campaigns[campaign_id] = updated
            return updated

        @router.post("/api/campaigns/{campaign_id}/pause")
        async def pause(campaign_id: str, _: marketing) -> CampaignView:
            return changed(view(campaign_id), paused=True, action="paused")

        @router.post("/api/campaigns/{campaign_id}/resume")
        async def resume(campaign_id: str, _: marketing) -> CampaignView:
            return changed(view(campaign_id), paused=False, action="resumed")

        @router.get("/api/segments")
        async def segments(_: marketing) -> dict[str, list[SegmentView]]:
            return {"segments": [self.segments[k] for k in sorted(self.segments)]}

        @router.get("/api/segments/{name}")
        async def segment(name: str, _: marketing) -> SegmentView:
            if name not in self.segments:
                raise HTTPException(status.HTTP_404_NOT_FOUND, "no such segment")
            return self.segments[name]

        @router.post("/api/segments/preview")
        async def preview(body: Preview, _: marketing) -> SegmentCount:
            self.previews.append(body.rule.model_dump(mode="json", exclude_defaults=True))
            return SegmentCount(count=count_of(body.rule))

        @router.post("/api/segments", status_code=201)
        async def define(body: SegmentDefinition, _: marketing) -> SegmentView:
            saved = SegmentView(
                name=body.name,
                description=body.description,
                rule=body.rule,
                version=1,
                count=count_of(body.rule),
            )
            self.segments[body.name] = saved
            return saved

        return router
