"""Who is asking, and what they may do: the principal of a request and the roles of FROST-Server (read, create,
update, delete, admin). The platform authenticates (citystream/auth) and sets `CURRENT` for the request; the
STA and OGC API handlers ask `require(...)` before they act. The default is the anonymous principal, so
a code path that forgets to authenticate gets the least, never the most."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

import orjson

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


_NO_PROJECTS: Mapping[int, frozenset[Role]] = MappingProxyType({})


@dataclass(frozen=True)
class Principal:
    """An authenticated caller (or the anonymous one). `kind`: how it authenticated (anonymous, key, user,
    oidc, token); `name`: whom it names, for logs and the audit; `auth_id`: the stable id another system
    knows it by (a key id, a user name, a token's `sub`), which a STAplus Party's `authId` refers to.
    `roles` hold everywhere; `project_roles` only for the data of a Project (by its @iot.id)."""

    kind: str
    name: str
    roles: frozenset[Role] = field(default_factory=frozenset)
    auth_id: str | None = None
    project_roles: Mapping[int, frozenset[Role]] = field(default_factory=lambda: _NO_PROJECTS)

    @property
    def anonymous(self) -> bool:
        return self.kind == "anonymous"

    def has(self, role: Role) -> bool:
        """Whether the principal holds `role` everywhere (admin holds every role)."""
        return Role.ADMIN in self.roles or role in self.roles

    def has_in(self, role: Role, project_id: int | None) -> bool:
        """Whether the principal holds `role` everywhere or for the Project `project_id`."""
        if self.has(role):
            return True
        held = self.project_roles.get(project_id, frozenset()) if project_id is not None else frozenset()
        return Role.ADMIN in held or role in held

    def has_somewhere(self, role: Role) -> bool:
        """Whether the principal holds `role` everywhere or for at least one Project: enough to try a
        request; which entities it may touch, the entity's Project and owner decide."""
        return self.has(role) or any(self.has_in(role, project) for project in self.project_roles)

    def projects_with(self, role: Role) -> tuple[int, ...]:
        """The Projects the principal holds `role` for (beyond its global roles), in id order."""
        return tuple(sorted(p for p in self.project_roles if self.has_in(role, p)))


ANONYMOUS = Principal("anonymous", "anonymous")


def describe(principal: Principal) -> str:
    """The principal as compact JSON, which the broker stamps on an MQTT create so that the bridge knows its
    publisher (citystream/mosquitto_plugin): `from_description` reads it back."""
    return orjson.dumps({
        "kind": principal.kind, "name": principal.name, "roles": sorted(principal.roles),
        "auth_id": principal.auth_id,
        "project_roles": {str(p): sorted(r) for p, r in sorted(principal.project_roles.items())},
    }).decode()


@functools.lru_cache(maxsize=1024)
def from_description(text: str) -> Principal:
    """The principal `describe` wrote (ValueError for anything else). Unknown role names grant nothing."""
    try:
        data = orjson.loads(text)
        kind, name = str(data["kind"]), str(data["name"])
        roles = frozenset(Role(r) for r in data.get("roles") or () if r in ROLES)
        auth_id = data.get("auth_id")
        projects = {int(p): frozenset(Role(r) for r in held if r in ROLES)
                    for p, held in (data.get("project_roles") or {}).items()}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not a principal description: {text[:100]!r}") from exc
    return Principal(kind, name, roles, str(auth_id) if auth_id is not None else None,
                     MappingProxyType(projects) if projects else _NO_PROJECTS)

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
    """The current principal if it holds `role` everywhere or for some Project (admin holds every role;
    anyone may read while anonymous read is on: what each may see and change, sensorthings.write.authorize
    and sensorthings.query.visibility decide per entity); else Unauthorized for the anonymous caller (send
    a credential) or Forbidden."""
    principal = CURRENT.get()
    # admin is the operator's role: only held everywhere does it count (a Project's admin holds every role
    # for that Project's data, not the operator endpoints)
    held = principal.has(role) if role is Role.ADMIN else principal.has_somewhere(role)
    if held or (role is Role.READ and ANONYMOUS_READ.get()):
        return principal
    if principal.anonymous:
        raise Unauthorized(f"to {_DOING[role]}, authenticate: Authorization: Bearer <API key or token>, "
                           f"X-API-Key: <API key>, or HTTP Basic")
    projects = "".join(f"; {', '.join(sorted(roles))} for Project {p}"
                       for p, roles in sorted(principal.project_roles.items()))
    raise Forbidden(f"{principal.kind} {principal.name!r} may not {_DOING[role]}: it needs the role "
                    f"{role.value!r} everywhere (it has {', '.join(sorted(principal.roles)) or 'no roles'}"
                    f"{' everywhere' + projects if projects else ''})")
