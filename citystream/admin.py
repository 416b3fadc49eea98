"""Operator endpoints under /admin: dead letters of MQTT payloads that could not be stored, and the
notification topics that have subscribers.

They show what devices sent, so they are not public: with CITYSTREAM_ADMIN_TOKEN set they need
`Authorization: Bearer <token>`; without it they answer only clients on the loopback interface.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from psycopg_pool import AsyncConnectionPool

from ingest.dead_letters import list_dead_letters
from mqtt_bridge.subscriptions import SubscriptionRegistry
from sensorthings.model.errors import BadRequest, StaError
from sensorthings.model.times import is_ascii_digits

MAX_LIMIT = 1000


class Forbidden(StaError):
    status = 403


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _int_param(request: Request, name: str, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not is_ascii_digits(raw) or len(raw) > 18:
        raise BadRequest(f"{name} must be a non-negative integer")
    return int(raw)


def admin_guard(token: str | None) -> Callable[[Request], None]:
    """The check for operator-only requests (these endpoints, and bulk deletes in the STA API): the bearer
    token when CITYSTREAM_ADMIN_TOKEN is set, else a loopback client. Raises Forbidden (403)."""

    def authorise(request: Request) -> None:
        if token:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise Forbidden("send Authorization: Bearer <CITYSTREAM_ADMIN_TOKEN>")
        elif not _is_loopback(request.client.host if request.client else None):
            raise Forbidden("this answers only loopback clients unless CITYSTREAM_ADMIN_TOKEN is set")

    return authorise


def admin_router(pool: AsyncConnectionPool[Any], token: str | None, registry: SubscriptionRegistry) -> APIRouter:
    router = APIRouter()
    authorise = admin_guard(token)

    @router.get("/admin/dead-letters", include_in_schema=False)
    async def dead_letters(request: Request) -> Response:
        authorise(request)
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
    async def subscriptions(request: Request) -> Response:
        """The STA topic filters this process publishes notifications for (learned from the broker)."""
        authorise(request)
        return Response(orjson.dumps({"value": registry.filters()}), media_type="application/json")

    return router
