"""The credentials an API process checks requests against, held in memory and reloaded from the database
every `reload_seconds` (2 by default): a request costs no database round trip, and a key revoked or a user
disabled on one process (`citystream keys revoke`) is refused by every process within that time.

A key id or user name that the snapshot does not know makes it reload (at most once per
`MISS_RELOAD_SECONDS`, the request waiting for it), so a key works the moment `keys create` returns; a flood
of unknown credentials costs the database at most that one query per interval, and each of them that wait.

A user's scrypt check costs ~40 ms of CPU, too much for every request of a FROST client that sends Basic
each time: a successful check is remembered (by a SHA-256 of name and password, never the password) until
the next reload that changes that user, or for `VERIFIED_TTL` seconds at most.

A key or user whose `projects` lists Project ids holds its roles only there: its Principal has no global
roles and `project_roles` {id: roles} for each of them; one without (`projects` NULL) holds them everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import psycopg

from citystream.auth.credentials import VERIFIED_MAX, VERIFIED_TTL, check_password, secret_digest
from citystream.pool import side_connection
from sensorthings.model.access import ROLES, Principal, Role, describe

log = logging.getLogger("citystream.auth")

MISS_RELOAD_SECONDS = 0.5
MIN_RELOAD_SECONDS = 0.5
SCRYPT_CONCURRENCY = 2
"""scrypt checks at once (each ~40 ms of a core and 16 MiB): wrong passwords cannot take every core."""


@dataclass(frozen=True)
class _Key:
    digest: bytes
    principal: Principal
    expires_at: datetime | None


@dataclass(frozen=True)
class _User:
    password_hash: str
    principal: Principal


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _roles(names: list[str]) -> frozenset[Role]:
    return frozenset(Role(name) for name in names if name in ROLES)


def _principal(kind: str, name: str, roles: list[str], auth_id: str, projects: list[int | None] | None) -> Principal:
    """Roles everywhere (`projects` NULL), or only for the listed Projects (an empty list: for none)."""
    held = _roles(roles)
    if projects is None:
        return Principal(kind, name, held, auth_id)
    return Principal(kind, name, frozenset(), auth_id,
                     MappingProxyType({project: held for project in projects if project is not None}))


class CredentialStore:
    """The snapshot, reloaded on a connection of its own, not one of the request pool's: there, a query every
    two seconds made each paged read of 1000 Observations ~1 ms slower (benchmarks/query.py, probe 7a: p50
    8.1-8.5 ms; on its own connection 7.2-7.5 ms; 7.1 ms before access control)."""

    def __init__(self, conninfo: str, reload_seconds: float = 2.0) -> None:
        self.conninfo = conninfo
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.reload_seconds = max(MIN_RELOAD_SECONDS, reload_seconds)
        self._hashing = asyncio.Semaphore(SCRYPT_CONCURRENCY)
        self._keys: dict[str, _Key] = {}
        self._users: dict[str, _User] = {}
        self._verified: OrderedDict[bytes, tuple[float, str, Principal]] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._reloaded_at = 0.0
        self._reloading = asyncio.Lock()
        self.loaded = False

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.create_task(self._reload_forever(), name="credential-reload")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await side_connection(self.conninfo)
        return self._conn

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reload_seconds)
            try:
                async with self._reloading:  # one reload at a time on the one connection
                    await self.reload()
            except Exception:  # the database is away: keep the last credentials, try again
                log.warning("could not reload the API keys and users; keeping the last ones", exc_info=True)

    async def reload(self) -> None:
        self._reloaded_at = time.monotonic()
        conn = await self._connection()
        try:
            keys = await (await conn.execute(
                "SELECT id, name, secret_sha256, roles, expires_at, project_ids FROM api_keys "
                "WHERE revoked_at IS NULL")).fetchall()
            users = await (await conn.execute(
                "SELECT name, password_hash, roles, project_ids FROM api_users WHERE disabled_at IS NULL")).fetchall()
        except psycopg.Error:
            await conn.close()  # a fresh connection next time
            raise
        self._keys = {key_id: _Key(bytes(digest), _principal("key", name, roles, key_id, projects), expires)
                      for key_id, name, digest, roles, expires, projects in keys}
        self._users = {name: _User(password_hash, _principal("user", name, roles, name, projects))
                       for name, password_hash, roles, projects in users}
        stale = [k for k, (_, password_hash, principal) in self._verified.items()
                 if (user := self._users.get(principal.name)) is None or user.password_hash != password_hash
                 or user.principal != principal]
        for k in stale:
            del self._verified[k]
        self.loaded = True

    async def _reload_for(self, name: str, *known: dict[str, Any]) -> None:
        """If `name` is in none of `known`: make sure a reload has started since this call began (so that a key
        created before the request counts), waiting for MISS_RELOAD_SECONDS after the last one if need be."""
        if any(name in names for names in known):
            return
        arrived = time.monotonic()
        async with self._reloading:
            if self._reloaded_at >= arrived:
                return  # another miss reloaded meanwhile
            await asyncio.sleep(max(0.0, self._reloaded_at + MISS_RELOAD_SECONDS - time.monotonic()))
            try:
                await self.reload()
            except (psycopg.Error, OSError):  # the database is away: the credential counts as unknown (401)
                log.warning("could not reload the API keys and users for an unknown credential", exc_info=True)

    async def key(self, key_id: str, secret: str) -> Principal | None:
        """The principal of a valid, unexpired key; None for anything else."""
        await self._reload_for(key_id, self._keys)
        return self._valid_key(key_id, secret)

    def _valid_key(self, key_id: str, secret: str) -> Principal | None:
        key = self._keys.get(key_id)
        if key is None or not hmac.compare_digest(key.digest, secret_digest(secret)):
            return None
        if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
            return None
        return key.principal

    def revocation(self, principal: Principal) -> str | None:
        """What identifies `principal`'s credential as it is now (`key:<id>:<fingerprint>`, `user:<name>:…`):
        `valid` says whether it still is. The fingerprint covers the roles, Projects, expiry and a user's
        password hash, so a changed credential counts as revoked (the MQTT broker asks every few seconds)."""
        if principal.kind == "key" and (key := self._keys.get(principal.auth_id or "")) is not None:
            return f"key:{principal.auth_id}:{_fingerprint(describe(key.principal), str(key.expires_at))}"
        if principal.kind == "user" and (user := self._users.get(principal.name)) is not None:
            return f"user:{principal.name}:{_fingerprint(describe(user.principal), user.password_hash)}"
        return None

    def valid(self, revocation: str) -> bool:
        """Whether the credential `revocation` identifies is still there and unchanged (and a key unexpired)."""
        kind, _, rest = revocation.partition(":")
        name = rest.rpartition(":")[0]
        if kind == "key" and (key := self._keys.get(name)) is not None:
            if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
                return False
            return self.revocation(key.principal) == revocation
        if kind == "user" and (user := self._users.get(name)) is not None:
            return self.revocation(user.principal) == revocation
        return False

    async def basic(self, name: str, password: str) -> Principal | None:
        """HTTP Basic: a user and its password, or an API key's id and secret."""
        await self._reload_for(name, self._keys, self._users)
        if name in self._keys:
            return self._valid_key(name, password)
        return await self._user(name, password)

    async def _user(self, name: str, password: str) -> Principal | None:
        """The principal of a user whose password matches; the slow check runs in a thread, once per TTL."""
        user = self._users.get(name)
        if user is None:
            return None
        remembered = secret_digest(f"{name}\x00{password}")
        now = time.monotonic()
        hit = self._verified.get(remembered)
        if hit is not None and hit[0] > now and hit[1] == user.password_hash:
            return hit[2]
        async with self._hashing:  # a flood of wrong passwords takes at most this many cores
            matches = await asyncio.to_thread(check_password, password, user.password_hash)
        if not matches:
            return None
        self._verified[remembered] = (now + VERIFIED_TTL, user.password_hash, user.principal)
        while len(self._verified) > VERIFIED_MAX:
            self._verified.popitem(last=False)
        return user.principal
