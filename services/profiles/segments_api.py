"""Marketing's segments API on the profiles service (role `marketing`; `admin` may too).

- `POST /api/segments` saves a segment (`SegmentDefinition`): its definition goes out on
  `crm.segment-definitions` (every profiles instance reads that topic whole), is applied here
  at once, and every profile is evaluated against it right away, its entries published on
  `crm.segments`; answers 201 with the segment and its count. A built-in name (`all`,
  `rfm-...`) is a conflict (409); a rule profiles cannot answer exactly is refused (422, the
  field named, as pydantic names it). Audited.
- `POST /api/segments/preview` with `{"rule": ...}`: how many customers the rule selects now
  (nothing saved or published).
- `GET /api/segments` and `GET /api/segments/{name}`: segments with their current counts.
- `GET /api/segments/{name}/members.csv`: the members for the call centre, as CSV with
  `customer_id,first_name,email`: the e-mail only of customers who gave marketing consent,
  never a card number; cells that a spreadsheet would read as a formula are neutralised.
  Audited (who exported which segment, how many rows).
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' Annotated
# dependencies, which name local variables, at definition time.

import csv
import io
from collections.abc import Collection
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from services.profiles.api import AuditSource
from services.profiles.domain import CustomerProfile
from services.profiles.segments import definition_cause, is_reserved
from services.profiles.service import Busy, ProfilesService
from shared.auth import AuditEntry, Principal, TokenTable, require
from shared.campaigns import SegmentCount, SegmentDefinition, SegmentRule, SegmentView
from shared.edge import dump
from shared.logging import get_logger
from shared.skeleton import NotStarted, ServiceApp
from shared.topics import SEGMENT_DEFINITIONS

log = get_logger(__name__)

SEGMENT_BODY_LIMIT = 16 * 1024
"""Bytes of a segment definition (a name and a rule of predicates)."""

CSV_COLUMNS = ("customer_id", "first_name", "email")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A cell starting with one of these is read as a formula by spreadsheets (CSV injection)."""
EXPORT_PAGE = 500
"""Members read at a time when exporting."""


class PreviewRequest(BaseModel):
    """What `POST /api/segments/preview` takes."""

    model_config = ConfigDict(extra="forbid")

    rule: SegmentRule = Field(description="The rule to count.")


class SegmentList(BaseModel):
    """What `GET /api/segments` answers."""

    segments: list[SegmentView] = Field(description="Every segment, built-ins included, by name.")


def csv_cell(value: str | None) -> str:
    """A CSV cell that a spreadsheet shows as text: one starting like a formula gets a `'`."""
    text = value or ""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def member_row(profile: CustomerProfile) -> list[str]:
    """A member's row: id, first name, and the e-mail only where consent allows."""
    email = profile.email if profile.marketing_consent else None
    return [csv_cell(profile.customer_id), csv_cell(profile.first_name), csv_cell(email)]


class SegmentsApi:
    """The routes' dependencies: the running service (its definitions and store), how to
    publish, and the audit log."""

    def __init__(self, app: ServiceApp[ProfilesService], audit: AuditSource) -> None:
        self.app = app
        self._audit = audit

    def service(self) -> ProfilesService:
        try:
            return self.app.service
        except NotStarted as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "not started") from exc

    async def record(
        self, principal: Principal, action: str, subject: str, rows: int | None = None
    ) -> None:
        await (await self._audit.get()).record(
            AuditEntry(
                at=self.service().clock(),
                role=principal.role,
                token_id=principal.token_id,
                customer_id=None,
                action=action,
                found=True,
                subject=subject,
                rows=rows,
            )
        )

    async def views(self, names: Collection[str] | None = None) -> list[SegmentView]:
        service = self.service()
        chosen = [
            s for name, s in (await service.segments()).items() if names is None or name in names
        ]
        counts = await service.repository.segment_counts([s.name for s in chosen])
        return [
            SegmentView(
                name=s.name,
                description=s.description,
                rule=s.rule,
                version=s.version,
                count=counts.get(s.name, 0),
                builtin=s.builtin,
            )
            for s in chosen
        ]

    async def view(self, name: str) -> SegmentView:
        found = await self.views([name])
        if not found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such segment")
        return found[0]

    def check_rule(self, rule: SegmentRule) -> None:
        """422 for a rule profiles cannot answer exactly, naming the field like pydantic."""
        problems = self.service().unanswerable(rule)
        if problems:
            raise RequestValidationError(
                [
                    {"type": "value_error", "loc": ("body", "rule", *loc), "msg": msg}
                    for loc, msg in problems
                ]
            )

    async def members_csv(self, name: str) -> tuple[str, int]:
        """The members of a segment as CSV text, and the number of rows (header aside)."""
        repository = self.service().repository
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        rows = 0
        after: str | None = None
        while True:
            ids = await repository.segment_members(name, after=after, limit=EXPORT_PAGE)
            profiles = await repository.get_many(ids)
            for customer_id in ids:
                profile = profiles.get(customer_id)
                if profile is None or profile.erased or profile.merged_into is not None:
                    continue
                writer.writerow(member_row(profile))
                rows += 1
            if len(ids) < EXPORT_PAGE:
                return buffer.getvalue(), rows
            after = ids[-1]


def build_router(api: SegmentsApi, tokens: TokenTable) -> APIRouter:
    router = APIRouter(tags=["segments"])
    marketing = require(tokens, "marketing")
    Name = Annotated[str, Path(min_length=1, max_length=64, description="Segment name.")]

    @router.post(
        "/api/segments",
        response_model=SegmentView,
        status_code=status.HTTP_201_CREATED,
        max_body_size=SEGMENT_BODY_LIMIT,
    )
    async def define(
        body: SegmentDefinition, principal: Annotated[Principal, Depends(marketing)]
    ) -> SegmentView:
        """Save a segment (a new one, or a new version of one): every profile is evaluated
        against it at once, and from then on on every profile change and clock day."""
        if is_reserved(body.name):
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"`{body.name}` is a built-in segment name"
            )
        api.check_rule(body.rule)
        service = api.service()
        record = await service.next_definition(body, by=principal.token_id, at=service.clock())
        await api.app.publish([(SEGMENT_DEFINITIONS, record.name.encode(), dump(record))])
        await service.apply_definitions([record])
        await api.record(principal, "segment_defined", record.name)
        log.info(
            "segment_defined",
            segment=record.name,
            version=record.version,
            role=principal.role,
            token_id=principal.token_id,
        )
        try:
            await service.sweep(
                [record.name],
                at=record.defined_at,
                cause=definition_cause(record.name, record.version),
                publish=api.app.publish,
            )
        except Busy as exc:
            # Saved, but not evaluated for everyone yet: the next changes and clock day do it.
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
        return await api.view(record.name)

    @router.post(
        "/api/segments/preview", response_model=SegmentCount, max_body_size=SEGMENT_BODY_LIMIT
    )
    async def preview(
        body: PreviewRequest, _: Annotated[Principal, Depends(marketing)]
    ) -> SegmentCount:
        """How many customers a rule selects now, before it is saved."""
        api.check_rule(body.rule)
        return SegmentCount(count=await api.service().preview(body.rule))

    @router.get("/api/segments", response_model=SegmentList)
    async def list_segments(_: Annotated[Principal, Depends(marketing)]) -> SegmentList:
        """Every segment, built-ins included, with its current count."""
        return SegmentList(segments=await api.views())

    @router.get("/api/segments/{name}", response_model=SegmentView)
    async def get_segment(name: Name, _: Annotated[Principal, Depends(marketing)]) -> SegmentView:
        """One segment and its current count."""
        return await api.view(name)

    @router.get(
        "/api/segments/{name}/members.csv",
        response_class=Response,
        responses={200: {"content": {"text/csv": {}}, "description": "The members."}},
    )
    async def members(name: Name, principal: Annotated[Principal, Depends(marketing)]) -> Response:
        """The members for the call centre: customer id, first name, e-mail where consent
        allows (never a card number)."""
        if name not in await api.service().segments():
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such segment")
        text, rows = await api.members_csv(name)
        # The audit entry has no field of its own for the rows: they go with the subject.
        await api.record(principal, "segment_exported", name, rows=rows)
        log.info(
            "segment_exported",
            segment=name,
            rows=rows,
            role=principal.role,
            token_id=principal.token_id,
        )
        return Response(
            text,
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{name}-members.csv"',
                "Cache-Control": "no-store",
            },
        )

    return router


def segment_routes(app: ServiceApp[ProfilesService], audit: AuditSource) -> APIRouter:
    """The segments API of a running profiles service (served by `crm run`)."""
    settings = app.settings
    tokens = TokenTable.parse(
        settings.http.api_tokens.get_secret_value() if settings.http.api_tokens else None
    )
    return build_router(SegmentsApi(app, audit), tokens)
