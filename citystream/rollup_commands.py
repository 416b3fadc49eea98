"""`citystream rollups add|list|remove`: rollup Datastreams (docs/rollups.md) from the operator's shell,
against the platform's database (the configured one, or the embedded cluster of the data directory).

Why in-process and not over HTTP: the operator needs no API key, and computing a rollup over years of
history is not bound by the API's statement timeout. Why through the REST writer all the same: a rollup
added here is the one `POST /v1.1/Datastreams {"RollupOf": …, "rollup": …}` makes (same checks, same
inherited Thing, unit and name, its history computed in the same transaction), and a removal deletes as
`DELETE Datastreams(n)` does. A running API needs no restart: every ingest batch reads which Datastreams
have rollups. Not sent: MQTT notifications of the created Datastream and the audit-log entry of a REST
write (neither process is here).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from sensorthings.http.transactions import write
from sensorthings.model.access import CURRENT, Principal, Role
from sensorthings.model.entities import ENTITIES
from sensorthings.model.errors import BadRequest, StaError
from sensorthings.schema.migrate import apply_migrations
from sensorthings.write.rollups import definition
from sensorthings.write.writer import Writer

Database = Callable[[], AbstractContextManager[str]]
"""Opens the platform's database for the command; yields its DSN."""

DATASTREAM = ENTITIES["Datastream"]
OPERATOR = Principal("cli", "citystream rollups", frozenset({Role.ADMIN}))
"""Whom the writer acts for: whoever may reach the database may change anything in it."""
COLUMNS = ("id", "source", "width", "function", "zone", "buckets", "name")
FLAGS = {"/width": "--width", "/function": "--function", "/timeZone": "--time-zone", "/finalAfter": "--final-after",
         ".RollupOf": "the source", ".name": "--name"}
"""The writer's error fields (`rollup/width`, …) as what the operator typed."""


class Refused(Exception):
    """The command cannot do what was asked; `code` is its exit status (1: nothing to act on, 2: a value
    that cannot be)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def cmd_rollups(args: argparse.Namespace, database: Database) -> int:
    try:
        with _migrated(database) as dsn:
            if args.rollups_command == "add":
                return _add(dsn, args)
            if args.rollups_command == "list":
                return _list(dsn, args.source, as_json=args.json)
            return _remove(dsn, args.rollup)
    except Refused as exc:
        return _error(str(exc), exc.code)
    except psycopg.OperationalError as exc:
        return _error(f"cannot use the database: {str(exc).strip()}", 1)
    except psycopg.Error as exc:  # a database the platform cannot use (privileges, a foreign schema)
        return _error(f"the database refused the command: {str(exc).strip()}", 1)


@contextmanager
def _migrated(database: Database) -> Iterator[str]:
    """The platform's database, migrated (as `keys` and `users` do: a fresh one has no Datastreams yet)."""
    with database() as dsn:
        apply_migrations(dsn)
        yield dsn


def _error(message: str, code: int) -> int:
    print(f"citystream: error: {message}", file=sys.stderr)
    return code


# ------------------------------------------------------------------------------------------ add / remove


def _add(dsn: str, args: argparse.Namespace) -> int:
    spec = {"width": args.width, "function": args.function}
    if args.time_zone is not None:
        spec["timeZone"] = args.time_zone
    if args.final_after is not None:
        spec["finalAfter"] = args.final_after
    body: dict[str, Any] = {"RollupOf": {"@iot.id": args.source}, "rollup": spec}
    if args.name is not None:
        body["name"] = args.name

    async def create(conn: AsyncConnection[Any], writer: Writer) -> int:
        await _existing(conn, args.source)
        new_id = await writer.create(DATASTREAM, body, "rollup")
        await writer.finish()
        return new_id

    new_id = asyncio.run(_write(dsn, create))
    [row] = _rows(dsn, rollup_id=new_id)
    print(new_id)
    print(f"citystream: rollup {new_id} ({row.name}) of Datastream {args.source} created: {row.buckets} buckets "
          f"computed; new Observations of Datastream {args.source} update it", file=sys.stderr)
    return 0


def _remove(dsn: str, rollup_id: int) -> int:
    async def delete(conn: AsyncConnection[Any], writer: Writer) -> int:
        source_id = await _existing(conn, rollup_id)
        if source_id is None:
            raise Refused(f"Datastream {rollup_id} is not a rollup (it has no RollupOf); `citystream rollups "
                          f"remove` deletes only rollups: delete other Datastreams through the API "
                          f"(DELETE /v1.1/Datastreams({rollup_id}))", 1)
        await writer.delete(DATASTREAM, rollup_id)
        return source_id

    source_id = asyncio.run(_write(dsn, delete))
    print(f"citystream: rollup {rollup_id} of Datastream {source_id} removed, with its Observations",
          file=sys.stderr)
    return 0


async def _existing(conn: AsyncConnection[Any], datastream_id: int) -> int | None:
    """The RollupOf of an existing Datastream (None: it is no rollup); Refused if there is none."""
    found = await definition(conn, datastream_id)
    if found is None:
        raise Refused(f"there is no Datastream {datastream_id}", 1)
    return found[0]


async def _write(dsn: str, work: Callable[[AsyncConnection[Any], Writer], Any]) -> Any:
    """`work` in one transaction, as a REST write runs (sensorthings.http.transactions: a missing month
    partition created and the write repeated, a lost deadlock retried), acting for OPERATOR."""
    CURRENT.set(OPERATOR)
    async with AsyncConnectionPool(dsn, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False) as pool:
        try:
            return await write(pool, None, work)
        except BadRequest as exc:
            raise Refused(_in_flags(exc), 2) from None
        except StaError as exc:
            raise Refused(exc.message, 1) from None


def _in_flags(exc: StaError) -> str:
    """The writer's message, naming the flag to change instead of the JSON member."""
    field = exc.field or ""
    for suffix, flag in FLAGS.items():
        if field.endswith(suffix) and exc.message.startswith(field):
            return flag + exc.message[len(field):]
    return exc.message


# ------------------------------------------------------------------------------------------ list


@dataclass(frozen=True)
class _Row:
    id: int
    source: int
    rollup: dict[str, Any]
    buckets: int
    name: str

    def cells(self) -> list[str]:
        return [str(self.id), str(self.source), str(self.rollup.get("width")), str(self.rollup.get("function")),
                str(self.rollup.get("timeZone", "UTC")), str(self.buckets), self.name]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, **self.rollup, "buckets": self.buckets, "name": self.name}


def _statement() -> sql.Composed:
    observation = ENTITIES["Observation"]
    return sql.SQL(
        "SELECT d.id, d.{of}, d.{rollup}, (SELECT count(*) FROM {obs_table} o WHERE o.{stream} = d.id), d.{name} "
        "FROM {ds_table} d WHERE d.{of} IS NOT NULL AND d.{of} = coalesce(%(source)s, d.{of}) "
        "AND d.id = coalesce(%(rollup)s, d.id) ORDER BY d.{of}, d.id").format(
        of=sql.Identifier(DATASTREAM.relation("RollupOf").column),
        rollup=sql.Identifier(DATASTREAM.fields_by_name["rollup"].column),
        name=sql.Identifier(DATASTREAM.fields_by_name["name"].column),
        obs_table=sql.Identifier(observation.table), stream=sql.Identifier(observation.relation("Datastream").column),
        ds_table=sql.Identifier(DATASTREAM.table))


_LIST = _statement()
"""Rollups (of one source, or one rollup) with the number of their buckets (one Observation each)."""


def _rows(dsn: str, *, source: int | None = None, rollup_id: int | None = None) -> list[_Row]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if source is not None and conn.execute(sql.SQL("SELECT 1 FROM {} WHERE id = %s").format(
                sql.Identifier(DATASTREAM.table)), (source,)).fetchone() is None:
            raise Refused(f"there is no Datastream {source}", 1)
        found = conn.execute(_LIST, {"source": source, "rollup": rollup_id}).fetchall()
    return [_Row(int(i), int(of), dict(spec), int(n), str(name)) for i, of, spec, n, name in found]


def _list(dsn: str, source: int | None, *, as_json: bool) -> int:
    rows = _rows(dsn, source=source)
    if as_json:
        print(orjson.dumps([row.to_json() for row in rows], option=orjson.OPT_INDENT_2).decode())
        return 0
    print(_table([list(COLUMNS), *(row.cells() for row in rows)]))
    return 0


def _table(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines)

