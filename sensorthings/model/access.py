"""Who is asking, and what they may do: the principal of a request and the roles of FROST-Server (read, create,
update, delete, admin). The platform authenticates (citystream/auth) and sets `CURRENT` for the request; the
STA and OGC API handlers ask `require(...)` before they act. The default is the anonymous principal, so
a code path that forgets to authenticate gets the least, never the most."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum

from sensorthings.model.errors import StaError


class Role(StrEnum):
    READ = "read"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    ADMIN = "admin"


ROLES = tuple(Role)


def parse_roles(text: str) -> frozenset[Role]:
    """Roles from a comma- or space-separated list (`create,read`), refusing names that are not roles."""
    names = [name for name in text.replace(",", " ").split() if name]
    unknown = [name for name in names if name not in ROLES]
    if unknown:
        raise ValueError(f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(ROLES)}")
    return frozenset(Role(name) for name in names)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller (or the anonymous one). `kind`: how it authenticated (anonymous, key, user,
    oidc, token); `name`: whom it names, for logs and the audit; `auth_id`: the stable id another system
    knows it by (a key id, a user name, a token's `sub`), which a STAplus Party's `authId` refers to."""

    kind: str
    name: str
    roles: frozenset[Role] = field(default_factory=frozenset)
    auth_id: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.kind == "anonymous"

    def has(self, role: Role) -> bool:
        return Role.ADMIN in self.roles or role in self.roles


ANONYMOUS = Principal("anonymous", "anonymous")

CURRENT: ContextVar[Principal] = ContextVar("citystream_principal", default=ANONYMOUS)
"""The principal of the request being served (set by the platform's authentication middleware)."""

ANONYMOUS_READ: ContextVar[bool] = ContextVar("citystream_anonymous_read", default=False)
"""Whether anonymous callers may read public data (CITYSTREAM_ANONYMOUS_READ), set with CURRENT; off where
nobody set it, like CURRENT's default."""

CHALLENGE = 'Bearer realm="CityStream", Basic realm="CityStream"'


class Unauthorized(StaError):
    """401: no credential where one is needed, or one that does not verify. Carries the challenge."""

    status = 401

    def __init__(self, message: str, *, challenge: str = CHALLENGE) -> None:
        super().__init__(message)
        self.headers = {"WWW-Authenticate": challenge}


class Forbidden(StaError):
    status = 403


_DOING = {Role.READ: "read", Role.CREATE: "create entities", Role.UPDATE: "change entities",
          Role.DELETE: "delete entities", Role.ADMIN: "use the operator endpoints"}


def require(role: Role) -> Principal:
    """The current principal if it holds `role` (admin holds every role; anyone may read while anonymous
    read is on); else Unauthorized for the anonymous caller (send a credential) or Forbidden."""
    principal = CURRENT.get()
    if principal.has(role) or (role is Role.READ and ANONYMOUS_READ.get()):
        return principal
    if principal.anonymous:
        raise Unauthorized(f"to {_DOING[role]}, authenticate: Authorization: Bearer <API key or token>, "
                           f"X-API-Key: <API key>, or HTTP Basic")
    raise Forbidden(f"{principal.kind} {principal.name!r} may not {_DOING[role]}: it needs the role "
                    f"{role.value!r} (it has {', '.join(sorted(principal.roles)) or 'no roles'})")
