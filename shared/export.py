"""Right of access over HTTP: what one service keeps of one customer, from its own store.

`GET /api/admin/customers/{customer_id}/export/{service}` (role `admin`) on every service that
keeps data of customers (ingest, profiles, offers, notifier, reports) answers
`{"customer_id": ..., "service": ..., "data": {...}}`: that service's part only, read from its
own store (services never read each other's). The service's name is in the path, so that
`crm run all` serves every service's route on its one port. `crm export-customer` puts every
service's part together. The answer is personal data: `Cache-Control: no-store`,
and each export is logged (role, token id and the pseudonymous customer id; nothing personal).
"""

# No `from __future__ import annotations`: FastAPI resolves the route's Annotated dependency,
# which names a local variable, at definition time.

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Response, status
from pydantic import BaseModel, Field

from shared.auth import Principal, TokenTable, require
from shared.logging import get_logger
from shared.settings import Settings
from shared.skeleton import BatchService, NotStarted, ServiceApp

log = get_logger(__name__)

S = TypeVar("S", bound=BatchService)

Gather = Callable[[S, str], Awaitable[dict[str, Any]]]
"""A service's part of an export: (its service object, customer id) -> JSON-able data."""

EXPORT_PATH = "/api/admin/customers/{customer_id}/export/"
"""Followed by the service's name."""


class CustomerExport(BaseModel):
    customer_id: str = Field(description="The pseudonymous customer id asked for.")
    service: str = Field(description="The service that answered, from its own store.")
    data: dict[str, Any] = Field(description="Everything this service keeps of the customer.")


def plain(value: Any) -> Any:
    """JSON types only: pydantic models, dataclasses, dates and Decimals flattened."""

    def default(item: Any) -> Any:
        if isinstance(item, BaseModel):
            return item.model_dump(mode="json")
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
        return str(item)

    return orjson.loads(orjson.dumps(value, default=default))


def tokens_of(settings: Settings) -> TokenTable:
    http = settings.http
    return TokenTable.parse(http.api_tokens.get_secret_value() if http.api_tokens else None)


def export_router(
    name: str, tokens: TokenTable, gather: Callable[[str], Awaitable[Any]]
) -> APIRouter:
    """The export route of service `name`; `gather(customer_id)` reads its part."""
    router = APIRouter(tags=["right of access"])
    admin = require(tokens, "admin")

    @router.get(
        EXPORT_PATH + name,
        response_model=CustomerExport,
        summary=f"Export what {name} keeps of one customer",
        operation_id=f"export_customer_{name}",
    )
    async def export(
        principal: Annotated[Principal, Depends(admin)],
        response: Response,
        customer_id: str = Path(min_length=1, max_length=128),
    ) -> CustomerExport:
        data = plain(await gather(customer_id))
        response.headers["Cache-Control"] = "no-store"
        log.info(
            "customer_exported",
            service=name,
            role=principal.role,
            token_id=principal.token_id,
            customer_id=customer_id,
        )
        return CustomerExport(customer_id=customer_id, service=name, data=data)

    return router


def export_routes(app: ServiceApp[S], gather: Gather[S]) -> APIRouter:
    """The export route of a running service (`crm run`), over its service's store."""

    async def from_service(customer_id: str) -> dict[str, Any]:
        try:
            service = app.service
        except NotStarted as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "not started") from exc
        return await gather(service, customer_id)

    return export_router(app.spec.name, tokens_of(app.settings), from_service)
