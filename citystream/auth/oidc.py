"""OIDC bearer tokens (Keycloak, Azure AD, Authentik, …): JWTs verified by PyJWT against the identity
provider's JWKS, with issuer, audience and expiry checked, and the roles read from a configured claim; the
roles held for STAplus Projects, from another (if configured): {"<project id>": ["read", …]} or
["<project id>:<role>", …]. What neither form can read (an unknown role, an id that is not a positive
integer, a claim of another shape) is left out and logged at debug: it grants nothing and fails nothing.

PyJWKClient caches the key set and fetches it again when a token names a key id it does not know (a rotated
key), at most once per cooldown. A verified token is remembered (by its SHA-256) until it expires or for
`VERIFIED_TTL` seconds, so a client sending the same token with every request costs one verification.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from citystream.auth.credentials import MAX_PROJECT_ID, VERIFIED_MAX, VERIFIED_TTL
from sensorthings.model.access import ROLES, Principal, Role, Unauthorized

log = logging.getLogger("citystream.auth")

MAX_TOKEN = 16_384
"""Longest token read: a larger Authorization header is refused before parsing."""
_PROJECT_ID = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class OidcConfig:
    jwks_url: str
    issuer: str
    audience: str
    roles_claim: str = "realm_access.roles"
    """Dotted path to a list of role names in the token (Keycloak: realm_access.roles)."""
    role_map: tuple[tuple[str, Role], ...] = ()
    """Claim values that grant a role under another name (`sta-writer` -> create); our role names map to
    themselves."""
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    project_roles_claim: str | None = None
    """Dotted path to the roles held for Projects: an object {"<project id>": [role, …]} or a list of
    "<project id>:<role>" strings (role names mapped like the global ones); None: tokens hold no Project roles."""


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith("cs_")


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


class OidcVerifier:
    def __init__(self, config: OidcConfig) -> None:
        import jwt  # here: PyJWT and cryptography load only where OIDC is configured

        self.config = config
        self._jwks = jwt.PyJWKClient(config.jwks_url, cache_jwk_set=True, lifespan=300, timeout=10,
                                     cooldown_duration=10)
        self._verified: OrderedDict[bytes, tuple[float, Principal, float]] = OrderedDict()
        self._mapped = {**{role.value: role for role in ROLES}, **dict(config.role_map)}

    async def principal(self, token: str) -> Principal:
        """The principal a valid token names; Unauthorized (with the reason, RFC 6750 style) otherwise."""
        return (await self.principal_until(token))[0]

    async def principal_until(self, token: str) -> tuple[Principal, float]:
        """The principal a valid token names and when the token expires (its `exp`, Unix seconds): the MQTT
        broker disconnects a client when its token expires."""
        if len(token) > MAX_TOKEN:
            raise _invalid("the token is longer than the limit")
        remembered = hashlib.sha256(token.encode()).digest()
        hit = self._verified.get(remembered)
        if hit is not None and hit[0] > time.time():
            return hit[1], hit[2]
        claims = await asyncio.to_thread(self._verify, token)
        principal = Principal("oidc", str(claims.get("preferred_username") or claims["sub"]),
                              self._roles(claims), str(claims["sub"]), self._project_roles(claims))
        expires = float(claims["exp"])
        self._verified[remembered] = (min(expires, time.time() + VERIFIED_TTL), principal, expires)
        while len(self._verified) > VERIFIED_MAX:
            self._verified.popitem(last=False)
        return principal, expires

    def _verify(self, token: str) -> dict[str, Any]:
        import jwt

        config = self.config
        try:  # the header first: a token no configured algorithm or key could verify fetches no keys
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise _invalid("the token is not a JWT", f"{type(exc).__name__}: {exc}") from None
        if header.get("alg") not in config.algorithms or not isinstance(header.get("kid"), str):
            raise _invalid(f"the token must be signed with {' or '.join(config.algorithms)} and name its key (kid)")
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=list(config.algorithms), audience=config.audience, issuer=config.issuer,
                options={"require": ["exp", "iss", "aud", "sub"]}, leeway=30)
        except jwt.ExpiredSignatureError:
            raise _invalid("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise _invalid(f"the token is not for this service (audience {config.audience!r})") from None
        except jwt.InvalidIssuerError:
            raise _invalid(f"the token is not from the configured issuer {config.issuer!r}") from None
        except (jwt.PyJWKClientConnectionError, jwt.PyJWKSetError, ValueError):  # down, or answering garbage
            raise _invalid("the identity provider's keys (JWKS) cannot be fetched now; try again") from None
        except jwt.PyJWKClientError as exc:
            raise _invalid("the token's signing key is not the identity provider's", str(exc)) from None
        except jwt.InvalidTokenError as exc:
            raise _invalid("the token does not verify", f"{type(exc).__name__}: {exc}") from None
        return claims

    def _roles(self, claims: dict[str, Any]) -> frozenset[Role]:
        names = _claim(claims, self.config.roles_claim)
        if not isinstance(names, list):
            return frozenset()
        return frozenset(self._mapped[name] for name in names if isinstance(name, str) and name in self._mapped)

    def _project_roles(self, claims: dict[str, Any]) -> MappingProxyType[int, frozenset[Role]]:
        """{project id: roles} from the configured claim; whatever cannot be read is left out (logged at debug)."""
        path = self.config.project_roles_claim
        value = _claim(claims, path) if path else None
        pairs: list[tuple[Any, Any]] = []
        if isinstance(value, dict):
            for project, roles in value.items():
                pairs.extend((project, role) for role in (roles if isinstance(roles, list) else [roles]))
        elif isinstance(value, list):
            for entry in value:
                project, sep, role = entry.partition(":") if isinstance(entry, str) else (entry, "", None)
                pairs.append((project, role if sep else None))
        elif value is not None:
            log.debug("OIDC claim %s is a %s, neither an object nor a list: no Project roles", path,
                      type(value).__name__)
        held: dict[int, set[Role]] = {}
        ignored: list[tuple[Any, Any]] = []
        for project, role in pairs:
            project_id = _project_id(project)
            if project_id is None or not isinstance(role, str) or role not in self._mapped:
                ignored.append((project, role))
                continue
            held.setdefault(project_id, set()).add(self._mapped[role])
        if ignored:
            log.debug("OIDC claim %s: %d Project role(s) ignored (not a Project id and a role), e.g. %.200r",
                      path, len(ignored), ignored[:5])
        return MappingProxyType({project: frozenset(roles) for project, roles in held.items()})


def _project_id(value: Any) -> int | None:
    """A Project's @iot.id from a claim: a positive integer, or its decimal digits."""
    if isinstance(value, str) and _PROJECT_ID.fullmatch(value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_PROJECT_ID:
        return value
    return None


_HEADER_SAFE = re.compile(r"[^\x20-\x7e]|[\\\"]")


def _invalid(description: str, detail: str = "") -> Unauthorized:
    """401 with an RFC 6750 challenge. Only `description`, our own words, goes into the header, reduced to
    printable ASCII; `detail` (which may quote the token: its kid) goes only into the JSON body."""
    quoted = _HEADER_SAFE.sub("'", description)[:200]
    return Unauthorized(f"invalid bearer token: {description}" + (f" ({detail[:300]})" if detail else ""),
                        challenge=f'Bearer realm="CityStream", error="invalid_token", error_description="{quoted}"')
