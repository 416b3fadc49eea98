"""Operator endpoints under /admin: dead letters of MQTT payloads that could not be stored, the
notification topics that have subscribers, and the audit log. They show what devices and people sent, so
they need the admin role (an admin API key or user, an OIDC token with admin, or CITYSTREAM_ADMIN_TOKEN).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from psycopg_pool import AsyncConnectionPool

from citystream import audit
from ingest.dead_letters import list_dead_letters
from mqtt_bridge.subscriptions import SubscriptionRegistry
from sensorthings.model.access import Role, require
from sensorthings.model.errors import BadRequest
from sensorthings.model.times import is_ascii_digits

MAX_LIMIT = 1000


def _int_param(request: Request, name: str, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not is_ascii_digits(raw) or len(raw) > 18:
        raise BadRequest(f"{name} must be a non-negative integer")
    return int(raw)


def admin_router(pool: AsyncConnectionPool[Any], registry: SubscriptionRegistry) -> APIRouter:
    router = APIRouter()

    @router.get("/admin/dead-letters", include_in_schema=False)
    async def dead_letters(request: Request) -> Response:
        require(Role.ADMIN)
        unknown = set(request.query_params) - {"limit", "before"}
        if unknown:
            raise BadRequest(f"unknown parameter(s) {', '.join(sorted(unknown))}; use limit and before")
        limit = min(_int_param(request, "limit", 100) or 1, MAX_LIMIT)
        before = _int_param(request, "before", None)
        async with pool.connection() as conn:
            letters = await list_dead_letters(conn, limit, before)
        body: dict[str, Any] = {"value": letters}
        if len(letters) == limit:
            body["nextLink"] = str(request.url.replace_query_params(limit=limit, before=letters[-1]["id"]))
        return Response(orjson.dumps(body), media_type="application/json")

    @router.get("/admin/subscriptions", include_in_schema=False)
    async def subscriptions() -> Response:
        """The STA topic filters this process publishes notifications for (learned from the broker)."""
        require(Role.ADMIN)
        return Response(orjson.dumps({"value": registry.filters()}), media_type="application/json")

    @router.get("/admin/audit", include_in_schema=False)
    async def audit_log(request: Request) -> Response:
        """The audit log, newest first (citystream/audit.py): `limit`, `before` (an id), and the filters
        `principal` (a name or an id) and `status`."""
        require(Role.ADMIN)
        unknown = set(request.query_params) - {"limit", "before", "principal", "status"}
        if unknown:
            raise BadRequest(f"unknown parameter(s) {', '.join(sorted(unknown))}; use limit, before, principal "
                             "and status")
        limit = min(_int_param(request, "limit", 100) or 1, MAX_LIMIT)
        status = _int_param(request, "status", None)
        if status is not None and not 100 <= status <= 599:
            raise BadRequest("status must be an HTTP status code (100 to 599)")
        principal = request.query_params.get("principal")
        if principal is not None and not 0 < len(principal) <= 1000:
            raise BadRequest("principal must be a name or an id of 1 to 1000 characters")
        async with pool.connection() as conn:
            entries = await audit.list_entries(conn, limit, _int_param(request, "before", None), principal, status)
        body: dict[str, Any] = {"value": entries}
        if len(entries) == limit:
            body["nextLink"] = str(request.url.include_query_params(limit=limit, before=entries[-1]["id"]))
        return Response(orjson.dumps(body), media_type="application/json")

    return router
