"""Marketing's campaigns API on the offers service (role `marketing`; `admin` may too).

A change publishes the campaign's whole new state on `crm.campaigns` (every offers instance
reads that topic whole and applies it at once, no restart) and is applied here right away, so
the answer already shows it. Every change is written to the audit log (who, what, when).
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' Annotated
# dependencies, which are local to `build_router`, from the live annotations.

import datetime as dt
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field

from services.offers.campaigns import BUILTIN_KIND, changed, created, slug, status_of
from services.offers.service import OffersService
from shared.auth import AuditEntry, AuditLog, Principal, TokenTable, open_audit_log, require
from shared.campaigns import (
    CampaignChanged,
    CampaignCounts,
    CampaignCreated,
    CampaignSpec,
    CampaignVariantCounts,
    CampaignView,
)
from shared.edge import dump
from shared.logging import get_logger
from shared.skeleton import NotStarted, ServiceApp
from shared.topics import CAMPAIGNS

log = get_logger(__name__)

CAMPAIGN_BODY_LIMIT = 16 * 1024
"""Bytes of a campaign definition (a name, a trigger, an audience, an offer, A/B arms)."""


class CampaignList(BaseModel):
    campaigns: list[CampaignView] = Field(description="Every campaign, by id.")


class CampaignsApi:
    """The routes' dependencies: the running service (its campaign book and store), the
    audit log and the clock."""

    def __init__(self, app: ServiceApp[OffersService], audit: AuditLog | None = None) -> None:
        self.app = app
        self._audit = audit

    def service(self) -> OffersService:
        try:
            return self.app.service
        except NotStarted as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "not started") from exc

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    async def audit(self, principal: Principal, action: str, subject: str) -> None:
        if self._audit is None:
            self._audit = await open_audit_log(self.app.settings.store)
        await self._audit.record(
            AuditEntry(
                at=self.now(),
                role=principal.role,
                token_id=principal.token_id,
                customer_id=None,
                action=action,
                found=True,
                subject=subject,
            )
        )

    async def views(self, ids: list[str] | None = None) -> list[CampaignView]:
        service = self.service()
        book = service.book
        counts = await service.repository.campaign_counts()
        today = self.now().astimezone(service.decider._zone).date()
        out = []
        for campaign in book.ordered():
            if ids is not None and campaign.campaign_id not in ids:
                continue
            mine = {v: c for (cid, v), c in counts.items() if cid == campaign.campaign_id}
            total = _sum(mine.values())
            variants = tuple(
                CampaignVariantCounts(variant=name, **c.model_dump())
                for name, c in sorted(mine.items(), key=lambda kv: str(kv[0]))
                if name is not None
            )
            out.append(
                CampaignView(
                    campaign_id=campaign.campaign_id,
                    name=campaign.spec.name,
                    status=status_of(
                        campaign,
                        today=today,
                        now=self.now(),
                        spent=campaign.campaign_id in book.spent,
                    ),
                    version=len(campaign.versions),
                    spec=campaign.spec,
                    history=campaign.history,
                    counts=total,
                    variants=variants,
                    builtin=campaign.campaign_id in BUILTIN_KIND,
                )
            )
        return out

    async def view(self, campaign_id: str) -> CampaignView:
        found = await self.views([campaign_id])
        if not found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such campaign")
        return found[0]

    def current(self, campaign_id: str) -> CampaignChanged:
        campaign = self.service().book.campaigns.get(campaign_id)
        if campaign is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such campaign")
        return campaign

    async def publish(self, record: CampaignChanged) -> None:
        """Publish the campaign's new state, then apply it here (the other instances apply
        it from the topic)."""
        await self.app.publish([(CAMPAIGNS, record.campaign_id.encode(), dump(record))])
        await self.service().apply_campaigns([record])


def _sum(counts: Iterable[CampaignCounts]) -> CampaignCounts:
    total: dict[str, Any] = {}
    for c in counts:
        for name, value in c.model_dump().items():
            total[name] = total.get(name, 0) + value
    return CampaignCounts.model_validate(total)


def build_router(api: CampaignsApi, tokens: TokenTable) -> APIRouter:
    router = APIRouter(tags=["campaigns"])
    marketing = require(tokens, "marketing")

    @router.post(
        "/api/campaigns",
        response_model=CampaignCreated,
        status_code=status.HTTP_201_CREATED,
        max_body_size=CAMPAIGN_BODY_LIMIT,
    )
    async def create(
        spec: CampaignSpec, principal: Annotated[Principal, Depends(marketing)]
    ) -> CampaignCreated:
        """Create a campaign, active at once (or from `starts_on`), without any restart."""
        book = api.service().book
        campaign_id = slug(spec.name, book.campaigns)
        record = created(campaign_id, spec, at=api.now(), by=principal.token_id)
        await api.publish(record)
        await api.audit(principal, "campaign_created", campaign_id)
        log.info("campaign_created", campaign_id=campaign_id, token_id=principal.token_id)
        view = await api.view(campaign_id)
        return CampaignCreated(campaign_id=campaign_id, status=view.status, version=1)

    @router.get("/api/campaigns", response_model=CampaignList)
    async def list_campaigns(_: Annotated[Principal, Depends(marketing)]) -> CampaignList:
        """Every campaign with its status and what it has done."""
        return CampaignList(campaigns=await api.views())

    @router.get("/api/campaigns/{campaign_id}", response_model=CampaignView)
    async def get_campaign(
        campaign_id: str, _: Annotated[Principal, Depends(marketing)]
    ) -> CampaignView:
        """One campaign, its history and its counts (issued, redeemed, held out...)."""
        return await api.view(campaign_id)

    @router.put(
        "/api/campaigns/{campaign_id}",
        response_model=CampaignView,
        max_body_size=CAMPAIGN_BODY_LIMIT,
    )
    async def update(
        campaign_id: str, spec: CampaignSpec, principal: Annotated[Principal, Depends(marketing)]
    ) -> CampaignView:
        """A new version of the campaign, in force from now on (decisions already taken stand)."""
        current = api.current(campaign_id)
        record = changed(
            current,
            spec=spec,
            status=current.history[-1].status,
            at=api.now(),
            by=principal.token_id,
            action="updated",
        )
        await api.publish(record)
        await api.audit(principal, "campaign_updated", campaign_id)
        return await api.view(campaign_id)

    async def set_status(campaign_id: str, principal: Principal, wanted: str) -> CampaignView:
        current = api.current(campaign_id)
        if current.history[-1].status != wanted:
            action = "paused" if wanted == "paused" else "resumed"
            record = changed(
                current, status=wanted, at=api.now(), by=principal.token_id, action=action
            )
            await api.publish(record)
            await api.audit(principal, f"campaign_{action}", campaign_id)
        return await api.view(campaign_id)

    @router.post("/api/campaigns/{campaign_id}/pause", response_model=CampaignView)
    async def pause(
        campaign_id: str, principal: Annotated[Principal, Depends(marketing)]
    ) -> CampaignView:
        """Stop issuing from now on (coupons issued stay valid); pausing twice changes nothing."""
        return await set_status(campaign_id, principal, "paused")

    @router.post("/api/campaigns/{campaign_id}/resume", response_model=CampaignView)
    async def resume(
        campaign_id: str, principal: Annotated[Principal, Depends(marketing)]
    ) -> CampaignView:
        """Issue again from now on."""
        return await set_status(campaign_id, principal, "active")

    return router


def campaign_routes(app: ServiceApp[OffersService]) -> APIRouter:
    """Marketing's campaign routes of a running offers service (served by `crm run`)."""
    settings = app.settings
    tokens = TokenTable.parse(
        settings.http.api_tokens.get_secret_value() if settings.http.api_tokens else None
    )
    return build_router(CampaignsApi(app), tokens)
