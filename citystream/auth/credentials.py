"""API keys and users: how their secrets look, how they are hashed, and how they are created, listed and
revoked in the database (the tables of migration 0007_access.sql).

A key or user holds its roles everywhere (`projects` NULL), or only for the data of the STAplus Projects
listed in `projects` (migration 0009_visibility.sql), each of which must exist when the key or user is made.

An API key is `cs_<id>_<secret>`: a 12-character id (public: listed, logged, the MQTT user name later) and a
256-bit random secret shown once. Only the secret's SHA-256 is stored: for a secret of that entropy a slow
hash adds nothing, and a key is checked on every request. A user's password is chosen by a person, so it is
stored as a salted scrypt hash (hashlib's, OpenSSL's implementation) and checked slowly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from sensorthings.model.access import Role
from sensorthings.model.entities import ENTITIES

KEY_PREFIX = "cs_"
KEY_ID_LENGTH = 12
_ID_ALPHABET = string.ascii_lowercase + string.digits
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MiB and ~40 ms per check: OWASP's minimum for scrypt
VERIFIED_TTL = 60.0
"""Seconds a successful slow check (a password's scrypt, a token's signature) is remembered at most."""
VERIFIED_MAX = 10_000
"""Checks remembered per kind and process, the oldest forgotten first."""
MAX_SECRET = 200
"""Longest secret or password read: a longer one is refused before any hashing."""
MAX_PROJECT_ID = 2**63 - 1
"""A Project's @iot.id is a bigint."""


@dataclass(frozen=True)
class NewKey:
    id: str
    secret: str

    @property
    def token(self) -> str:
        """What a client sends: `Authorization: Bearer <token>` or `X-API-Key: <token>`."""
        return f"{KEY_PREFIX}{self.id}_{self.secret}"


def generate_key() -> NewKey:
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))
    return NewKey(key_id, secrets.token_urlsafe(32))


def split_key(token: str) -> tuple[str, str] | None:
    """(id, secret) of a `cs_<id>_<secret>` token, None for anything else."""
    if not token.startswith(KEY_PREFIX) or len(token) > MAX_SECRET:
        return None
    key_id, sep, secret = token[len(KEY_PREFIX):].partition("_")
    if not sep or len(key_id) != KEY_ID_LENGTH or not secret:
        return None
    return key_id, secret


def secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    encode = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """True when `password` hashes to `stored` (with the parameters stored beside it)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                  dklen=32, maxmem=2**26)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))


def _roles(roles: frozenset[Role]) -> list[str]:
    return sorted(role.value for role in roles)


class UnknownProjects(ValueError):
    """Project ids a key or user was to hold its roles for that name no Project."""

    def __init__(self, missing: list[int]) -> None:
        super().__init__(f"no Project {', '.join(map(str, missing))}: a key or user holds roles only for "
                         "Projects that exist (create the Project first)")
        self.missing = missing


def _projects(conn: psycopg.Connection[Any], projects: Iterable[int] | None) -> list[int] | None:
    """`projects` sorted and without repeats, after checking that each names a Project: NULL (None) for a
    credential whose roles hold everywhere. The Projects stay locked (FOR KEY SHARE) until the caller's
    transaction ends, so none is deleted between the check and the insert."""
    if projects is None:
        return None
    ids = sorted(set(projects))
    if not ids or any(not 0 < p <= MAX_PROJECT_ID for p in ids):
        raise ValueError(f"Project ids are positive integers, got {ids or 'none'}")
    existing = sql.SQL("SELECT id FROM {} WHERE id = ANY(%s) FOR KEY SHARE").format(
        sql.Identifier(ENTITIES["Project"].table))
    found = {row[0] for row in conn.execute(existing, (ids,))}
    missing = [p for p in ids if p not in found]
    if missing:
        raise UnknownProjects(missing)
    return ids


def create_key(conn: psycopg.Connection[Any], name: str, roles: frozenset[Role],
               expires: datetime | None = None, projects: Iterable[int] | None = None) -> NewKey:
    """A new key holding `roles` everywhere, or only for `projects` (UnknownProjects if one does not exist)."""
    key = generate_key()
    store_key(conn, key, name, roles, expires, projects)
    return key


def store_key(conn: psycopg.Connection[Any], key: NewKey, name: str, roles: frozenset[Role],
              expires: datetime | None = None, projects: Iterable[int] | None = None) -> None:
    """Store `key` (its secret only as a hash)."""
    with conn.transaction():
        conn.execute("INSERT INTO api_keys (id, name, secret_sha256, roles, expires_at, project_ids) "
                     "VALUES (%s, %s, %s, %s, %s, %s)",
                     (key.id, name, secret_digest(key.secret), _roles(roles), expires, _projects(conn, projects)))


def list_keys(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    cursor = conn.execute("SELECT id, name, roles, project_ids, created_at, expires_at, revoked_at FROM api_keys "
                          "ORDER BY created_at, id")
    names = [c.name for c in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def revoke_key(conn: psycopg.Connection[Any], key_id: str) -> bool:
    """Revoke the key (kept, for the record); False if there is no such key or it was revoked before."""
    cursor = conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL", (key_id,))
    return cursor.rowcount == 1


def create_user(conn: psycopg.Connection[Any], name: str, password: str, roles: frozenset[Role],
                projects: Iterable[int] | None = None) -> None:
    """A user holding `roles` everywhere, or only for `projects` (UnknownProjects if one does not exist)."""
    with conn.transaction():
        conn.execute("INSERT INTO api_users (name, password_hash, roles, project_ids) VALUES (%s, %s, %s, %s)",
                     (name, hash_password(password), _roles(roles), _projects(conn, projects)))


def list_users(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    cursor = conn.execute("SELECT name, roles, project_ids, created_at, disabled_at FROM api_users ORDER BY name")
    names = [c.name for c in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def disable_user(conn: psycopg.Connection[Any], name: str) -> bool:
    cursor = conn.execute("UPDATE api_users SET disabled_at = now() WHERE name = %s AND disabled_at IS NULL",
                          (name,))
    return cursor.rowcount == 1
