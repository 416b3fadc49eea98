"""The platform's answers to its Mosquitto plugin (citystream/mosquitto_plugin/citystream_auth.c), which asks
and caches but holds no rules of its own:

- POST /internal/mqtt/connect {username, password, client_id}: who the client is, by the same Authenticator
  as HTTP (an API key as id + secret or whole as the password, a user, an OIDC token as the password, the
  operator token), and what it may read;
- POST /internal/mqtt/publish {stamp, topic}: whether that principal may create on that topic, by the
  same rules as a POST (sensorthings.write.authorize); a topic that does not name the stream
  (`v1.1/Observations`) is allowed to any principal who might create somewhere, and the bridge checks the
  body's Datastream against the publisher the broker stamped on the message;
- POST /internal/mqtt/revalidate {revocations}: which connected clients' credentials no longer hold.

Only the broker may ask: the requests carry the platform's MQTT password (the one secret the broker and
the platform share) in X-CityStream-Broker-Secret; without it, 404, as if there were nothing here.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from psycopg_pool import AsyncConnectionPool

from citystream.auth.authenticate import OPERATOR, Authenticator
from citystream.auth.credentials import MAX_SECRET, split_key
from citystream.auth.oidc import looks_like_jwt
from mqtt_bridge.topics import create_target
from sensorthings.model.access import CURRENT, Principal, Role, Unauthorized, describe, from_description
from sensorthings.model.errors import StaError
from sensorthings.model.results import OBSERVATION
from sensorthings.write.authorize import check

log = logging.getLogger("citystream.broker")
SECRET_HEADER = "x-citystream-broker-secret"
PREFIX = "/internal/mqtt"
MAX_BODY_BYTES = 1024 * 1024
MAX_REVOCATIONS = 10_000


def _answer(body: Mapping[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


async def _request_body(request: Request) -> dict[str, Any] | None:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _text(body: Mapping[str, Any], name: str, limit: int = 4 * MAX_SECRET) -> str:
    value = body.get(name)
    return value if isinstance(value, str) and len(value) <= limit else ""


class BrokerDecisions:
    def __init__(self, authenticator: Authenticator, pool: AsyncConnectionPool[Any], secret: str,
                 anonymous_read: bool) -> None:
        self.authenticator = authenticator
        self.pool = pool
        self.secret = secret.encode()
        self.anonymous_read = anonymous_read

    def router(self) -> APIRouter:
        router = APIRouter(include_in_schema=False)
        router.add_api_route(f"{PREFIX}/connect", self.connect, methods=["POST"])
        router.add_api_route(f"{PREFIX}/publish", self.publish, methods=["POST"])
        router.add_api_route(f"{PREFIX}/revalidate", self.revalidate, methods=["POST"])
        return router

    def _from_broker(self, request: Request) -> bool:
        given = request.headers.get(SECRET_HEADER, "").encode()
        return hmac.compare_digest(given, self.secret)

    async def _identify(self, username: str, password: str) -> tuple[Principal, float | None] | None:
        """The principal of an MQTT login and its token's expiry; None for credentials that do not verify."""
        store, oidc = self.authenticator.store, self.authenticator.oidc
        try:
            if (parts := split_key(password)) is not None:  # the whole API key as the password
                principal = await store.key(*parts)
            elif self.authenticator.admin_token and hmac.compare_digest(
                    password.encode("utf-8", "surrogateescape"),
                    self.authenticator.admin_token.encode("utf-8", "surrogateescape")):  # bytes: any password
                principal = OPERATOR
            elif oidc is not None and looks_like_jwt(password):
                return await oidc.principal_until(password)
            elif username:  # a user, or an API key's id and secret
                principal = await store.basic(username, password)
            else:
                principal = None
        except Unauthorized:
            return None
        return (principal, None) if principal is not None else None

    async def connect(self, request: Request) -> Response:
        if not self._from_broker(request):
            return Response(status_code=404)
        body = await _request_body(request)
        if body is None:
            return _answer({"allow": False, "reason": "not a JSON object"})
        identified = await self._identify(_text(body, "username"), _text(body, "password"))
        if identified is None:
            return _answer({"allow": False, "reason": "unknown credentials"})
        principal, expires = identified
        return _answer({
            "allow": True,
            "stamp": describe(principal),
            "revocation": self.authenticator.store.revocation(principal) if principal is not OPERATOR else None,
            "expires": expires,
            "read": {"public": principal.has_somewhere(Role.READ) or self.anonymous_read,
                     "all": principal.has(Role.READ), "projects": list(principal.projects_with(Role.READ)),
                     "principal_id": principal.auth_id},
        })

    async def publish(self, request: Request) -> Response:
        if not self._from_broker(request):
            return Response(status_code=404)
        body = await _request_body(request)
        try:
            principal = from_description(_text(body or {}, "stamp", 64 * 1024))
        except ValueError:
            return _answer({"allow": False, "reason": "unknown publisher"})
        topic = _text(body or {}, "topic", 64 * 1024)
        try:
            allowed = await self._may_create(principal, topic)
        except StaError as exc:
            return _answer({"allow": False, "reason": exc.message})
        return _answer({"allow": True} if allowed else {"allow": False, "reason": (
            f"{principal.kind} {principal.name!r} may not create Observations: it holds the role 'create' "
            f"nowhere and owns no stream")})

    async def _may_create(self, principal: Principal, topic: str) -> bool:
        """Whether `principal` may create on `topic` (Forbidden, with the reason, where it names a stream the
        principal may not create in; BadRequest for a topic that cannot create)."""
        parents = create_target(topic)
        if principal.has(Role.CREATE):
            return True
        for name in OBSERVATION.exactly_one_of:
            if name in parents:
                token = CURRENT.set(principal)
                try:
                    async with self.pool.connection() as conn:
                        await check(conn, OBSERVATION.relation(name).target_entity, parents[name], Role.CREATE)
                finally:
                    CURRENT.reset(token)
                return True
        # The topic does not name the stream: the bridge checks the body's against the publisher.
        return principal.has_somewhere(Role.CREATE) or principal.auth_id is not None

    async def revalidate(self, request: Request) -> Response:
        if not self._from_broker(request):
            return Response(status_code=404)
        body = await _request_body(request) or {}
        revocations = body.get("revocations")
        if not isinstance(revocations, list):
            return _answer({"invalid": []})
        store = self.authenticator.store
        invalid = [r for r in revocations[:MAX_REVOCATIONS] if isinstance(r, str) and not store.valid(r)]
        return _answer({"invalid": invalid})

