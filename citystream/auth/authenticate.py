"""From a request's headers to its principal, and the ASGI middleware that does it once per request.

Credentials taken (FROST-Server's and what cities' identity providers issue):
- `Authorization: Bearer <API key>` or `X-API-Key: <API key>` (`cs_<id>_<secret>`, citystream keys create);
- `Authorization: Bearer <JWT>` from the configured OIDC issuer (citystream/auth/oidc.py);
- `Authorization: Basic` with a user's name and password (citystream users create), or with an API key's
  id and secret (what frost-sta-client's auth handler and MQTT clients can send);
- `Authorization: Bearer <CITYSTREAM_ADMIN_TOKEN>`, the operator's token from the environment, as admin.
No credential: the anonymous principal. A credential that does not verify is a 401 at once, even where
anonymous would do: a client whose key expired must learn it, not silently read less.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from citystream.auth.credentials import MAX_SECRET, split_key
from citystream.auth.oidc import OidcVerifier, looks_like_jwt
from citystream.auth.store import CredentialStore
from sensorthings.http.audit import READS, audit_entry
from sensorthings.http.common import error_response
from sensorthings.model.access import ANONYMOUS, ANONYMOUS_READ, CURRENT, Principal, Role, Unauthorized
from sensorthings.write.ports import AuditSink

BASIC_CHALLENGE = 'Basic realm="CityStream"'
KEY_CHALLENGE = 'Bearer realm="CityStream", error="invalid_token"'
USER_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,100}$")
"""What a user name may be (migration 0007_access.sql checks the same)."""
OPERATOR = Principal("token", "CITYSTREAM_ADMIN_TOKEN", frozenset({Role.ADMIN}), "operator")


@dataclass
class Authenticator:
    store: CredentialStore
    oidc: OidcVerifier | None = None
    admin_token: str | None = None

    async def principal(self, authorization: str | None, api_key: str | None) -> Principal:
        if api_key is not None:
            return await self._key(api_key, "X-API-Key")
        if not authorization:
            return ANONYMOUS
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            if self.admin_token and hmac.compare_digest(_digest(value), _digest(self.admin_token)):
                return OPERATOR
            if split_key(value) is not None:
                return await self._key(value, "bearer token")
            if self.oidc is not None and looks_like_jwt(value):
                return await self.oidc.principal(value)
            raise Unauthorized("the bearer token is neither an API key (cs_…) nor "
                               + ("a token of the configured OIDC issuer" if self.oidc else
                                  "the operator token (and no OIDC issuer is configured)"))
        if scheme.lower() == "basic":
            return await self._basic(value)
        raise Unauthorized(f"the Authorization scheme {scheme[:20]!r} is not taken; use Bearer or Basic")

    async def _key(self, token: str, where: str) -> Principal:
        parts = split_key(token.strip())
        principal = await self.store.key(*parts) if parts is not None else None
        if principal is None:
            raise Unauthorized(f"the API key in the {where} is unknown, revoked or expired", challenge=KEY_CHALLENGE)
        return principal

    async def _basic(self, value: str) -> Principal:
        parsed = basic_credentials(value)
        if parsed is None:
            raise Unauthorized("HTTP Basic credentials must be base64 of name:password", challenge=BASIC_CHALLENGE)
        name, password = parsed
        principal = await self.store.basic(name, password)
        if principal is None:
            raise Unauthorized("wrong user name or password (or API key id and secret)", challenge=BASIC_CHALLENGE)
        return principal


class Authentication:
    """Pure ASGI middleware: sets model.access.CURRENT (and ANONYMOUS_READ) for the rest of the request,
    or answers 401 for a credential that does not verify. WebSocket handshakes (/mqtt) pass unauthenticated
    here: MQTT authenticates inside the connection, at the broker. A write refused here goes into the audit
    log under the identity it claimed (`claimed`), kind "unverified"."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, anonymous_read: bool,
                 audit: AuditSink | None = None) -> None:
        self.app = app
        self.authenticator = authenticator
        self.anonymous_read = anonymous_read
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in (b"authorization", b"x-api-key"):
                headers[name] = value
        try:
            principal = await self.authenticator.principal(
                _text(headers.get(b"authorization")), _text(headers.get(b"x-api-key")))
        except Unauthorized as exc:
            if self.audit is not None and scope["method"] not in READS:
                self.audit.record(audit_entry(scope, claimed(_text(headers.get(b"authorization")),
                                                             _text(headers.get(b"x-api-key"))), 401, 0))
            await error_response(exc)(scope, receive, send)
            return
        principal_token = CURRENT.set(principal)
        read_token = ANONYMOUS_READ.set(self.anonymous_read)
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT.reset(principal_token)
            ANONYMOUS_READ.reset(read_token)


def basic_credentials(value: str) -> tuple[str, str] | None:
    """(name, password) of an HTTP Basic credential, None for one that is not base64 of name:password (or
    is longer than any credential taken)."""
    if len(value) > 4 * MAX_SECRET:
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):  # ValueError: non-ASCII in the header
        return None
    name, sep, password = decoded.partition(":")
    if not sep or not name or len(password) > MAX_SECRET:
        return None
    return name, password


def _digest(text: str) -> bytes:
    """SHA-256 of a secret, so that comparing two takes the same time whatever their lengths."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def claimed(authorization: str | None, api_key: str | None) -> Principal:
    """Whom a credential that did not verify claims to be, for the audit log, never its secret: an API key's
    id, a Basic user name, or only the kind of credential (a token's claims are not to be believed)."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if api_key is not None or scheme == "bearer":
        parts = split_key((api_key if api_key is not None else value).strip())
        if parts is not None:
            return Principal("unverified", parts[0], auth_id=parts[0])
        return Principal("unverified", "X-API-Key" if api_key is not None else "bearer token")
    if scheme == "basic":
        parsed = basic_credentials(value)
        name = parsed[0] if parsed is not None else ""
        key = split_key(name)
        if key is not None:  # `curl -u "$KEY:"`: the whole key in the name; only its id is recorded
            return Principal("unverified", key[0], auth_id=key[0])
        if not USER_NAME.match(name):  # a password typed into the name, perhaps: never recorded
            return Principal("unverified", "Basic credentials")
        return Principal("unverified", name, auth_id=name)
    return Principal("unverified", f"{scheme[:20]} credentials")


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
