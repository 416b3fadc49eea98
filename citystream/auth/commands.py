"""`citystream keys …` and `citystream users …`: the operator's commands for API keys and Basic users,
against the platform's database (the configured one, or the embedded cluster of the data directory, running
or not). A new key's secret is printed once and never again; a user's password is read from standard input
(or CITYSTREAM_USER_PASSWORD), never from the command line, where other local users could read it. With
`--project N` (repeatable or comma-separated) a key or user holds its roles only for those Projects' data."""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from citystream.auth import credentials
from sensorthings.model.access import Role, parse_roles
from sensorthings.schema.migrate import apply_migrations

Database = Callable[[], AbstractContextManager[str]]
"""Opens the platform's database for the command; yields its DSN."""

_DURATION = re.compile(r"^(\d+)([dhm])$")
_PROJECT_ID = re.compile(r"[0-9]+")


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """`30d`, `12h`, `90m`, or an ISO 8601 date-time (UTC when it names no zone)."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return now + {"d": timedelta(days=amount), "h": timedelta(hours=amount), "m": timedelta(minutes=amount)}[unit]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"--expires takes 30d, 12h, 90m or an ISO 8601 time, not {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_projects(values: list[str] | None) -> tuple[int, ...] | None:
    """The Project ids of `--project` (repeatable, each a comma- or space-separated list), sorted and without
    repeats; None where no --project was given (the roles hold everywhere). Refuses anything but positive
    integers, and a --project that names none."""
    if values is None:
        return None
    lists = [value.replace(",", " ").split() for value in values]
    if not all(lists):  # `--project "$UNSET"` must not widen to everywhere, nor pass beside another
        raise ValueError("each --project takes at least one Project id (leave it out for roles that hold everywhere)")
    names = [name for names in lists for name in names]
    bad = [name for name in names
           if not _PROJECT_ID.fullmatch(name) or not 0 < int(name) <= credentials.MAX_PROJECT_ID]
    if bad:
        raise ValueError(f"--project takes Project ids (positive integers), not {', '.join(map(repr, bad))}")
    return tuple(sorted({int(name) for name in names}))


def _scope(roles: frozenset[Role], projects: tuple[int, ...] | None) -> str:
    held = f"roles {','.join(sorted(roles)) or 'none'}"
    return held if projects is None else f"{held} for Project {','.join(map(str, projects))} only"


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, datetime):
            return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if isinstance(value, list):
            return ",".join(map(str, value))
        return "" if value is None else str(value)
    cells = [[cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
                     for line in [columns, *cells])


@contextmanager
def _connection(database: Database) -> Iterator[psycopg.Connection[Any]]:
    """The platform's database, migrated (the credential tables exist), on an autocommit connection."""
    with database() as dsn:
        apply_migrations(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            yield conn


def _error(message: str, code: int) -> int:
    print(f"citystream: error: {message}", file=sys.stderr)
    return code


def cmd_keys(args: argparse.Namespace, database: Database) -> int:
    try:
        roles = parse_roles(",".join(args.role)) if getattr(args, "role", None) else frozenset()
        expires = parse_expiry(args.expires) if getattr(args, "expires", None) else None
        projects = parse_projects(getattr(args, "project", None))
    except ValueError as exc:
        return _error(str(exc), 2)
    with _connection(database) as conn:
        if args.keys_command == "create":
            try:
                key = credentials.create_key(conn, args.name, roles, expires, projects)
            except credentials.UnknownProjects as exc:
                return _error(str(exc), 1)
            except psycopg.errors.CheckViolation:
                return _error("a key name takes 1 to 200 characters", 2)
            print(key.token)
            print(f"citystream: key {key.id} ({args.name}, {_scope(roles, projects)}) created; "
                  "the line above is its secret, shown only now", file=sys.stderr)
            return 0
        if args.keys_command == "list":
            print(_table(credentials.list_keys(conn), ["id", "name", "roles", "project_ids", "created_at",
                                                       "expires_at", "revoked_at"]))
            return 0
        if credentials.revoke_key(conn, args.id):
            print(f"citystream: key {args.id} revoked; every API process refuses it within seconds",
                  file=sys.stderr)
            return 0
        return _error(f"no key {args.id!r} that is not revoked already", 1)


def _password() -> str:
    if os.environ.get("CITYSTREAM_USER_PASSWORD"):
        return os.environ["CITYSTREAM_USER_PASSWORD"]
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise ValueError("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


def cmd_users(args: argparse.Namespace, database: Database) -> int:
    try:
        roles = parse_roles(",".join(args.role)) if getattr(args, "role", None) else frozenset()
        projects = parse_projects(getattr(args, "project", None))
        password = _password() if args.users_command == "create" else ""
        if args.users_command == "create" and len(password) < 12:
            raise ValueError("the password needs at least 12 characters")
        if len(password) > credentials.MAX_SECRET:
            raise ValueError(f"the password may have at most {credentials.MAX_SECRET} characters")
    except ValueError as exc:
        return _error(str(exc), 2)
    with _connection(database) as conn:
        if args.users_command == "create":
            try:
                credentials.create_user(conn, args.name, password, roles, projects)
            except credentials.UnknownProjects as exc:
                return _error(str(exc), 1)
            except psycopg.errors.UniqueViolation:
                return _error(f"a user {args.name!r} exists", 1)
            except psycopg.errors.CheckViolation:
                return _error("a user name takes letters, digits and . _ @ - (at most 100)", 2)
            print(f"citystream: user {args.name} ({_scope(roles, projects)}) created", file=sys.stderr)
            return 0
        if args.users_command == "list":
            print(_table(credentials.list_users(conn), ["name", "roles", "project_ids", "created_at", "disabled_at"]))
            return 0
        if credentials.disable_user(conn, args.name):
            print(f"citystream: user {args.name} disabled; every API process refuses it within seconds",
                  file=sys.stderr)
            return 0
        return _error(f"no user {args.name!r} that is not disabled already", 1)
