"""API access: bearer tokens with roles, checked against hashes, and the look-up audit log.

`CRM_API_TOKENS` holds comma-separated `role:sha256hex` pairs: the SHA-256 of each token, never
the token itself. Roles: `agent` (customer look-up), `marketing` (reports), `till` (coupons at
the checkout), `admin` (all of them, and the audit log). A missing or unknown token gets 401, a
known token with the wrong role 403. Each refusal is logged (the token's short hash id or
`missing`, the route, the client address; never the token) and counted, and a 401 is charged to
the client address (`shared.http_guard`).

Every customer look-up is written to the audit log (who: the role and a short id of the token's
hash; which customer: the pseudonymous id; when), kept in the store named by `CRM_STORE_URL`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, get_args

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pymongo import DESCENDING, IndexModel

from shared.http_guard import failed_auth
from shared.logging import get_logger
from shared.settings import StoreSettings
from shared.storage import Indexes, MongoStore, SqliteStore, StoreLocation

Role = Literal["agent", "marketing", "till", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)

log = get_logger(__name__)

_HEX = re.compile(r"^[0-9a-f]{64}$")


class TokenConfigError(ValueError):
    """`CRM_API_TOKENS` is not a list of `role:sha256hex` pairs."""


def token_hash(token: str) -> str:
    """The SHA-256 hex of a bearer token, as configured in `CRM_API_TOKENS`."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called: a role and a short, non-secret id of the token (its hash's first 12 hex)."""

    role: Role
    token_id: str


class TokenTable:
    """The configured token hashes; a token is checked against every hash in constant time."""

    def __init__(self, entries: list[tuple[Role, str]]) -> None:
        self._entries = entries

    @classmethod
    def parse(cls, text: str | None) -> TokenTable:
        """`role:sha256hex,...`; empty or unset gives no access at all."""
        entries: list[tuple[Role, str]] = []
        for raw in (text or "").split(","):
            item = raw.strip()
            if not item:
                continue
            role, _, digest = item.partition(":")
            role, digest = role.strip().lower(), digest.strip().lower()
            if role not in ROLES:
                raise TokenConfigError(
                    f"CRM_API_TOKENS: unknown role {role!r} ({', '.join(ROLES)})"
                )
            if not _HEX.match(digest):
                raise TokenConfigError("CRM_API_TOKENS: each hash must be 64 hex digits (SHA-256)")
            entries.append((role, digest))
        return cls(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def identify(self, token: str) -> Principal | None:
        digest = token_hash(token)
        found: Principal | None = None
        for role, expected in self._entries:
            # compare every entry: the time taken does not tell which one matched
            if hmac.compare_digest(digest, expected) and found is None:
                found = Principal(role=role, token_id=digest[:12])
        return found


def allows(principal: Principal, roles: tuple[Role, ...]) -> bool:
    """`admin` may do everything; the others what their role names."""
    return principal.role == "admin" or principal.role in roles


_bearer = HTTPBearer(auto_error=False, description="A token whose SHA-256 is in CRM_API_TOKENS.")


def require(
    tokens: TokenTable, *roles: Role
) -> Callable[[Request, HTTPAuthorizationCredentials | None], Awaitable[Principal]]:
    """A FastAPI dependency: the caller's principal, or 401 / 403."""

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> Principal:
        token = credentials.credentials if credentials is not None else None
        principal = tokens.identify(token) if token is not None else None
        route = getattr(request.scope.get("route"), "path", "?")  # the template, no ids
        if principal is None:
            failed_auth(
                request.scope,
                outcome="unknown" if token else "missing",
                token=token,
                route=route,
            )
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="missing or unknown bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not allows(principal, roles):
            failed_auth(request.scope, outcome="forbidden", token=token, route=route)
            raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="role not allowed")
        return principal

    return dependency


# ---------------------------------------------------------------- the audit log


class AuditEntry(BaseModel):
    """One customer look-up: who, which customer, when, how."""

    model_config = ConfigDict(frozen=True)

    at: AwareDatetime = Field(description="When the look-up happened (UTC).")
    role: Role = Field(description="Role of the caller.")
    token_id: str = Field(description="First 12 hex digits of the caller's token hash.")
    customer_id: str | None = Field(description="Customer looked up; null when none was found.")
    action: str = Field(
        description="`lookup_by_card`, `get_by_id`, or a change such as `campaign_created`."
    )
    found: bool = Field(description="Whether a profile was returned (or the change made).")
    subject: str | None = Field(
        default=None, description="What a change was about: a campaign id, a segment name."
    )
    rows: int | None = Field(default=None, description="Rows an export gave.")


class AuditLog(Protocol):
    async def record(self, entry: AuditEntry) -> None: ...

    async def latest(self, limit: int) -> list[AuditEntry]: ...

    async def of_customer(self, customer_id: str) -> list[AuditEntry]:
        """Every entry about this customer, oldest first (right of access)."""
        ...

    async def close(self) -> None: ...


class SqliteAuditLog(SqliteStore):
    """The audit log in its own SQLite file (`audit.sqlite3`), or in memory."""

    SERVICE = "audit"
    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS audit "
        "(id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, doc TEXT NOT NULL)"
    )

    async def record(self, entry: AuditEntry) -> None:
        row = (entry.at.isoformat(), entry.model_dump_json())
        await self.write(lambda db: db.execute("INSERT INTO audit (at, doc) VALUES (?, ?)", row))

    async def latest(self, limit: int) -> list[AuditEntry]:
        rows = await self.read(
            lambda db: db.execute(
                "SELECT doc FROM audit ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        )
        return [AuditEntry.model_validate_json(doc) for (doc,) in rows]

    async def of_customer(self, customer_id: str) -> list[AuditEntry]:
        rows = await self.read(
            lambda db: db.execute(
                "SELECT doc FROM audit WHERE json_extract(doc, '$.customer_id') = ?"
                " ORDER BY at, id",
                (str(customer_id),),
            ).fetchall()
        )
        return [AuditEntry.model_validate_json(doc) for (doc,) in rows]


class MongoAuditLog(MongoStore):
    """The audit log as a MongoDB collection `audit`."""

    SERVICE = "audit"
    INDEXES: ClassVar[Indexes] = {"audit": (IndexModel([("at", DESCENDING)], name="at"),)}

    async def record(self, entry: AuditEntry) -> None:
        await self.database["audit"].insert_one(entry.model_dump(mode="json") | {"at": entry.at})

    async def latest(self, limit: int) -> list[AuditEntry]:
        cursor = self.database["audit"].find({}, {"_id": 0}).sort("at", DESCENDING).limit(limit)
        return [AuditEntry.model_validate(doc) async for doc in cursor]

    async def of_customer(self, customer_id: str) -> list[AuditEntry]:
        query = {"customer_id": str(customer_id)}
        cursor = self.database["audit"].find(query, {"_id": 0}).sort([("at", 1), ("_id", 1)])
        return [AuditEntry.model_validate(doc) async for doc in cursor]


async def open_audit_log(store: StoreSettings) -> AuditLog:
    """The audit log in the store `CRM_STORE_URL` names (the caller closes it)."""
    location = StoreLocation.parse(store.store_url)
    if location.kind == "mongodb":
        return await MongoAuditLog.open(location, store.mongo_database)
    return await SqliteAuditLog.open(location)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
