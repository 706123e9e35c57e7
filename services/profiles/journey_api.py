"""The customer journey for agents: a customer's timeline, and the notes agents add to it.

- `GET /api/customers/{customer_id}/timeline?limit=50&before=<cursor>&type=purchase&type=note`:
  the customer's entries (`services.profiles.timeline`) newest first, a page at a time; `next`
  is the cursor of the following page (null on the last). Each entry has `at` in UTC and
  `local_at` in the time zone of its store (`CRM_STORE_TIMEZONES`), else `CRM_TIMEZONE`.
  Audited (`get_timeline`).
- `POST /api/customers/{customer_id}/notes` with `{"text": "..."}`: the note goes out on
  `crm.events` as a `NoteAdded`, keyed by the customer, its text sealed with the customer's data
  key like every free text (`shared.vault`); the profiles service folds it into the timeline
  like any event, and an erasure destroys the key and deletes the entry. Answers 202 with the
  note id. Audited (`note_added`). A customer without a data key (who never gave personal data)
  cannot take a note yet: 409.

Both need the `agent` role (or `admin`); an erased or unknown customer is 404.
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' Annotated
# dependencies, which name local variables, at definition time.

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.profiles.api import AuditSource, LookupApi
from services.profiles.service import ProfilesService
from services.profiles.timeline import (
    ENTRY_TYPES,
    BadCursor,
    EntryType,
    TimelineEntry,
    Value,
    cursor_of,
    parse_cursor,
)
from shared.auth import AuditEntry, Principal, TokenTable, require
from shared.events import NoteAdded
from shared.logging import get_logger
from shared.settings import CalendarSettings
from shared.skeleton import NotStarted, ServiceApp
from shared.topics import EVENTS
from shared.vault import seal

log = get_logger(__name__)

NOTE_BODY_LIMIT = 8 * 1024
"""Bytes of a note's body: its text in JSON, escapes included."""
NOTE_MAX_CHARS = 2000
"""Characters of a note."""
PAGE_DEFAULT = 50
PAGE_MAX = 200


class NoteRequest(BaseModel):
    """What `POST /api/customers/{customer_id}/notes` takes."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(
        min_length=1, max_length=NOTE_MAX_CHARS, description="The note, as the agent wrote it."
    )


class NoteAccepted(BaseModel):
    """What it answers (202): the note is on its way to the timeline."""

    note_id: str = Field(description="Id of the note (its event id).")


class TimelineEntryView(BaseModel):
    """One entry of the journey."""

    id: str = Field(description="Entry id: `<type>/<id of the event it comes from>`.")
    at: AwareDatetime = Field(description="When it happened, UTC.")
    local_at: AwareDatetime = Field(
        description="The same instant in the store's time zone (the entry's store, else "
        "`CRM_TIMEZONE`), with its offset."
    )
    zone: str = Field(description="The time zone of `local_at`.")
    type: EntryType = Field(description="What happened.")
    store_id: str | None = Field(description="Store it happened at, if any.")
    details: dict[str, Value] = Field(
        description="Per type: sign-up and consent (`marketing_consent`, `source`, `channel`, "
        "`consent_text_version`), purchase (`total`, `currency`, `lines`), interaction "
        "(`interaction_type`, `channel`, `detail_<name>` as sent: topic, sentiment, brand...), "
        "offers (`offer_id`, `kind`, `coupon_code`...), e-mail (`offer_id`, `state`, "
        "`attempts`, `reason`), note (`text`, `author`: the agent's token id)."
    )


class TimelinePage(BaseModel):
    """What `GET /api/customers/{customer_id}/timeline` answers."""

    customer_id: str = Field(description="The customer (the live profile, aliases followed).")
    entries: list[TimelineEntryView] = Field(description="Newest first.")
    next: str | None = Field(
        description="Cursor of the next (older) page, for `before`; null on the last page."
    )


def entry_view(entry: TimelineEntry, calendar: CalendarSettings) -> TimelineEntryView:
    zone = calendar.zone_of(entry.store_id)
    return TimelineEntryView(
        id=entry.entry_id,
        at=entry.at,
        local_at=entry.at.astimezone(zone),
        zone=zone.key,
        type=entry.type,
        store_id=entry.store_id,
        details=dict(entry.details),
    )


class JourneyApi:
    """The routes' dependencies: the look-up's (profiles, aliases, audit) and the service."""

    def __init__(self, app: ServiceApp[ProfilesService], lookup: LookupApi) -> None:
        self.app = app
        self.lookup = lookup

    def service(self) -> ProfilesService:
        try:
            return self.app.service
        except NotStarted as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "not started") from exc

    async def record(self, principal: Principal, action: str, customer_id: str | None) -> None:
        await (await self.lookup.audit()).record(
            AuditEntry(
                at=self.service().clock(),
                role=principal.role,
                token_id=principal.token_id,
                customer_id=customer_id,
                action=action,
                found=customer_id is not None,
            )
        )
        log.info(
            "customer_journey",
            action=action,
            role=principal.role,
            token_id=principal.token_id,
            customer_id=customer_id,
        )


def build_router(api: JourneyApi, tokens: TokenTable) -> APIRouter:
    router = APIRouter(tags=["customers"])
    agent = require(tokens, "agent")

    @router.get("/api/customers/{customer_id}/timeline", response_model=TimelinePage)
    async def timeline(
        customer_id: str,
        principal: Annotated[Principal, Depends(agent)],
        limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
        before: Annotated[str | None, Query(max_length=512)] = None,
        kinds: Annotated[
            list[EntryType] | None, Query(alias="type", description="Only these types.")
        ] = None,
    ) -> TimelinePage:
        """The customer's journey, newest first, a page at a time."""
        try:
            position = parse_cursor(before) if before is not None else None
        except BadCursor as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        profile = await api.lookup.live(customer_id)
        await api.record(principal, "get_timeline", profile.customer_id if profile else None)
        if profile is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such customer")
        types = sorted(set(kinds)) if kinds else None
        found = await api.service().repository.timeline(
            [profile.customer_id, *profile.merged_from],
            before=position,
            limit=limit + 1,
            types=types if types is None or set(types) != set(ENTRY_TYPES) else None,
        )
        page = found[:limit]
        calendar = api.app.settings.calendar
        return TimelinePage(
            customer_id=profile.customer_id,
            entries=[entry_view(e, calendar) for e in page],
            next=cursor_of(page[-1]) if len(found) > limit else None,
        )

    @router.post(
        "/api/customers/{customer_id}/notes",
        response_model=NoteAccepted,
        status_code=status.HTTP_202_ACCEPTED,
        max_body_size=NOTE_BODY_LIMIT,
    )
    async def add_note(
        customer_id: str, body: NoteRequest, principal: Annotated[Principal, Depends(agent)]
    ) -> NoteAccepted:
        """Add a note to the customer's journey (shown once profiles has folded it)."""
        profile = await api.lookup.live(customer_id)
        if profile is None:
            await api.record(principal, "note_added", None)
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such customer")
        service = api.service()
        target = profile.customer_id
        key = (await service.vault.current([target])).get(target)
        if key is None:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                "the customer has no data key (no personal data on file): a note cannot be "
                "sealed for them yet",
            )
        now = service.clock().astimezone(dt.UTC)
        note = NoteAdded(
            event_id=f"note:{uuid.uuid4().hex}",
            occurred_at=now,
            customer_id=target,
            text=body.text,
            author=principal.token_id,
        )
        await api.app.publish([(EVENTS, target.encode(), seal(note, key))])
        await api.record(principal, "note_added", target)
        return NoteAccepted(note_id=note.event_id)

    return router


def journey_routes(app: ServiceApp[ProfilesService], audit: AuditSource) -> APIRouter:
    """The journey API of a running profiles service (served by `crm run`)."""
    settings = app.settings
    tokens = TokenTable.parse(
        settings.http.api_tokens.get_secret_value() if settings.http.api_tokens else None
    )
    return build_router(JourneyApi(app, LookupApi(settings, app=app, audit=audit)), tokens)
