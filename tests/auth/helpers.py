"""Helpers of the access control tests (tests/auth): credentials made directly in the database with
citystream.auth.credentials, request headers for each credential form, apps with their own settings, and
the checks of a refusal (401 with its challenge, 403 naming the missing role).

No tests live here.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import httpx
import psycopg

from citystream.auth import credentials
from citystream.embedded import find_free_port
from citystream.settings import Settings
from sensorthings.model.access import Role

ROLE_NAMES = tuple(role.value for role in Role)
PRINCIPALS = ("anonymous", *ROLE_NAMES)
"""Who asks in the matrix: nobody, or a key holding exactly one role."""

ANON = httpx.Client(timeout=30)
"""A client without credentials (tests.sta_helpers.HTTP sends the operator token)."""


@contextmanager
def connection(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def new_key(database_url: str, *roles: str, name: str = "test key", expires: datetime | None = None) -> str:
    """A new API key holding `roles`; its token (`cs_<id>_<secret>`)."""
    with connection(database_url) as conn:
        return credentials.create_key(conn, name, frozenset(Role(r) for r in roles), expires).token


def revoked_key(database_url: str, *roles: str) -> str:
    """A key created and revoked in one transaction, so no snapshot of any app ever held it valid."""
    with connection(database_url) as conn, conn.transaction():
        key = credentials.create_key(conn, "revoked at once", frozenset(Role(r) for r in roles))
        assert credentials.revoke_key(conn, key.id)
    return key.token


def new_user(database_url: str, name: str, password: str, *roles: str, disabled: bool = False) -> None:
    with connection(database_url) as conn, conn.transaction():
        credentials.create_user(conn, name, password, frozenset(Role(r) for r in roles))
        if disabled:
            assert credentials.disable_user(conn, name)


def key_id(token: str) -> str:
    parts = credentials.split_key(token)
    assert parts is not None, token
    return parts[0]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def basic_key(token: str) -> dict[str, str]:
    """HTTP Basic with the key's id as user name and its secret as password."""
    parts = credentials.split_key(token)
    assert parts is not None, token
    return basic(*parts)


def app_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings of an app of a test's own (run it with tests.conftest.running_app)."""
    base = Settings(database_url=database_url, host="127.0.0.1", http_port=find_free_port())
    return dataclasses.replace(base, **overrides)


def expected_status(who: str, needed: str) -> int | None:
    """401 for the anonymous caller, 403 for a key without the role (admin holds every one), None: allowed.
    Reading is open to anyone here (the apps of the matrix run with anonymous read on)."""
    if needed == "read" or who in (needed, "admin"):
        return None
    return 401 if who == "anonymous" else 403


def message(response: httpx.Response) -> str:
    """The error text of a JSON error: STA's `message`, OGC API's `description`."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    text = body.get("message", body.get("description"))
    assert isinstance(text, str) and text, body
    return text


def assert_refused(response: httpx.Response, status: int, needed: str | None = None) -> str:
    """A 401 with a WWW-Authenticate challenge and a message, or a 403 whose message names `needed`."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    text = message(response)
    if status == 401:
        challenge = response.headers.get("www-authenticate", "")
        assert challenge.startswith(("Bearer", "Basic")), response.headers
    else:
        assert "www-authenticate" not in response.headers
        if needed is not None:
            assert f"'{needed}'" in text, text
    return text
