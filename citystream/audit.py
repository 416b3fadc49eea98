"""The audit log: every write request on record (who, when, method, path, status, rows), in the append-only,
day-partitioned table `audit_log` (migration 0008_audit.sql); listed at GET /admin/audit.

`AuditLog` is the `AuditSink` (sensorthings/write/ports.py) that the STA handlers and the authentication
middleware record to. Recording costs the request a few microseconds: the entry, stamped with the request
id, is appended to an in-memory buffer, and one background task writes what is buffered with one COPY every
`flush_seconds` (0.5) or as soon as `flush_rows` (500) are waiting. The buffer is bounded (`capacity`): when
the database cannot keep up or is away, entries beyond it are dropped and counted
(`citystream_audit_dropped_total`), never waited for. So the log can lose the entries of the last flush
interval when the process dies, while the writes they describe were committed (docs/access.md, Audit log).

A missing day partition is created (`audit_ensure_partition`) and the COPY sent again. Retention drops the
day partitions older than `retention_days` at start and every hour (0: keep everything).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from prometheus_client import Counter
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from citystream.logs import request_id
from sensorthings.write.ports import AuditEntry

log = logging.getLogger("citystream.audit")

DROPPED = Counter("citystream_audit_dropped_total", "Audit log entries lost: the buffer was full (buffer_full) "
                  "or the database refused them (write_failed)", ["reason"])
WRITTEN = Counter("citystream_audit_written_total", "Audit log entries written")
_DROPPED_FULL = DROPPED.labels("buffer_full")

CAPACITY = 100_000
FLUSH_SECONDS = 0.5
FLUSH_ROWS = 500
COPY_ROWS = 10_000
"""Most entries in one COPY (a flush after a long outage sends several)."""
WARN_SECONDS = 10.0
"""At most one warning about dropped entries, or about a failing database, this often."""
RETENTION_SECONDS = 3600.0
STOP_SECONDS = 10.0
"""How long stopping waits for the last flush."""
MAX_TEXT = 2100
"""Characters of a text value kept (paths arrive bounded to 2000 by sensorthings/http/audit.py)."""

COLUMNS = ("at", "principal_kind", "principal", "principal_id", "method", "path", "status", "rows", "request_id")
_TYPES = ("timestamptz", "text", "text", "text", "text", "text", "int2", "int4", "text")
_COPY = sql.SQL("COPY audit_log ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))
"""Binary: about 1 µs of the flushing process's CPU per entry, a third of what text COPY costs."""
_MAX_ROWS = 2**31 - 1  # the column is an integer
_MISSING_PARTITION = "23514"  # check_violation: "no partition of relation "audit_log" found for row"


def _text(value: str) -> str:
    """A string PostgreSQL can store, bounded: a client's path or a token's claim may carry NUL or lone
    surrogates."""
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\\u0000")[:MAX_TEXT]


def _row(entry: AuditEntry) -> tuple[Any, ...]:
    """The COPY row of an entry. Only the values from outside (path, principal, request id) can be strings
    PostgreSQL refuses; one check covers them all (the common case), `_text` repairs the rare others."""
    path, name, principal_id, rid = entry.path, entry.principal, entry.principal_id, entry.request_id
    outside = f"{path}{name}{principal_id}{rid}"
    if len(outside) > MAX_TEXT or not outside.isascii() or "\x00" in outside:
        path, name = _text(path), _text(name)
        principal_id = None if principal_id is None else _text(principal_id)
        rid = None if rid is None else _text(rid)
    rows = entry.rows if entry.rows is None or entry.rows <= _MAX_ROWS else _MAX_ROWS
    return (datetime.fromtimestamp(entry.at, UTC), entry.principal_kind, name, principal_id, entry.method, path,
            entry.status, rows, rid)


def _retryable(exc: Exception) -> bool:
    """Failures of the database rather than of the entries: the same COPY may succeed later."""
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate or ""
    return (isinstance(exc, psycopg.OperationalError) or not state
            or state.startswith(("08", "40", "53", "55", "57")))


class AuditLog:
    """The audit sink of one API process: a bounded buffer and the task that writes it (start, stop)."""

    def __init__(self, pool: AsyncConnectionPool[Any], *, retention_days: int = 365, capacity: int = CAPACITY,
                 flush_seconds: float = FLUSH_SECONDS, flush_rows: int = FLUSH_ROWS) -> None:
        self.pool = pool
        self.retention_days = retention_days
        self.capacity = capacity
        self.flush_seconds = flush_seconds
        self.flush_rows = flush_rows
        self._buffer: deque[AuditEntry] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._dropped_unreported = 0
        self._warned_at = -WARN_SECONDS

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # ------------------------------------------------------------ the request path

    def record(self, entry: AuditEntry) -> None:
        """Buffer `entry` (with the current request id, if it has none); drop and count it when full."""
        buffer = self._buffer
        if len(buffer) >= self.capacity:
            _DROPPED_FULL.inc()
            self._dropped_unreported += 1
            if time.monotonic() >= self._warned_at + WARN_SECONDS:
                self._warn_dropped()
            return
        if entry.request_id is None:
            entry.request_id = request_id.get()
        buffer.append(entry)
        if len(buffer) >= self.flush_rows and not self._wake.is_set():
            self._wake.set()

    def _warn_dropped(self) -> None:
        self._warned_at = time.monotonic()
        log.warning("audit log buffer full (%d entries): %d entries dropped since the last warning; the database "
                    "does not keep up or is unreachable (citystream_audit_dropped_total counts them)",
                    self.capacity, self._dropped_unreported)
        self._dropped_unreported = 0

    # ------------------------------------------------------------ the background task

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="audit-log")

    async def stop(self) -> None:
        """Write what is buffered (waiting up to STOP_SECONDS), then end the task."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), STOP_SECONDS)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        if self._buffer:
            log.error("audit log: %d entries could not be written before shutdown and are lost", len(self._buffer))

    async def _run(self) -> None:
        expire_at = 0.0  # at start, then every RETENTION_SECONDS
        while True:
            if not self._stopping and time.monotonic() >= expire_at:
                expire_at = time.monotonic() + RETENTION_SECONDS
                await self._expire_logged()
            if not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_seconds)
                self._wake.clear()
            written = await self.flush()
            if self._stopping and (not self._buffer or written == 0):
                return
            if self._dropped_unreported and time.monotonic() >= self._warned_at + WARN_SECONDS:
                self._warn_dropped()

    async def flush(self) -> int:
        """Write what is buffered, COPY_ROWS at a time; how many were written. On a failure of the database
        the entries stay buffered for the next flush; entries the database refuses are dropped and counted."""
        written = 0
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), COPY_ROWS))]
            try:
                await self._write([_row(entry) for entry in batch])
            except Exception as exc:
                if _retryable(exc):
                    self._buffer.extendleft(reversed(batch))
                    self._warn_failing(exc)
                    return written
                DROPPED.labels("write_failed").inc(len(batch))
                log.error("audit log: %d entries could not be written and are lost", len(batch), exc_info=True)
                continue
            written += len(batch)
            WRITTEN.inc(len(batch))
        return written

    def _warn_failing(self, exc: Exception) -> None:
        if time.monotonic() >= self._warned_at + WARN_SECONDS:
            self._warned_at = time.monotonic()
            log.warning("audit log: cannot write to the database (%s); %d entries wait in the buffer", exc,
                        len(self._buffer))

    async def _write(self, rows: list[tuple[Any, ...]]) -> None:
        try:
            await self._copy(rows)
        except psycopg.Error as exc:
            if exc.sqlstate != _MISSING_PARTITION:
                raise
            async with self.pool.connection() as conn:
                for day in sorted({row[0].date() for row in rows}):
                    await conn.execute("SELECT audit_ensure_partition(%s)", (day,))
            await self._copy(rows)

    async def _copy(self, rows: list[tuple[Any, ...]]) -> None:
        async with self.pool.connection() as conn, conn.cursor() as cursor, cursor.copy(_COPY) as copy:
            copy.set_types(_TYPES)
            for row in rows:
                await copy.write_row(row)

    # ------------------------------------------------------------ retention

    async def _expire_logged(self) -> None:
        try:
            dropped = await self.expire()
        except Exception:  # the database is away or a partition is busy: the next hour tries again
            log.warning("audit log: could not drop expired partitions; trying again in an hour", exc_info=True)
            return
        if dropped:
            log.info("audit log: dropped %d day partition(s) older than %d days", dropped, self.retention_days)

    async def expire(self, today: date | None = None) -> int:
        """Drop the day partitions older than `retention_days` (none when it is 0); how many were dropped."""
        if self.retention_days <= 0:
            return 0
        keep_from = (today or datetime.now(UTC).date()) - timedelta(days=self.retention_days)
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '2s'")  # never queue the log's writers behind a reader
            row = await (await conn.execute("SELECT audit_drop_partitions(%s)", (keep_from,))).fetchone()
        return int(row[0]) if row else 0


ENTRY_FIELDS = ("id", "at", "principalKind", "principal", "principalId", "method", "path", "status", "rows",
                "requestId")


async def list_entries(conn: AsyncConnection[Any], limit: int, before: int | None = None,
                       principal: str | None = None, status: int | None = None) -> list[dict[str, Any]]:
    """Newest first; `before` (an id) continues a previous page; `principal` matches a name or an id."""
    conditions: list[sql.Composable] = []
    params: dict[str, Any] = {"limit": limit}
    if before is not None:
        conditions.append(sql.SQL("id < %(before)s"))
        params["before"] = before
    if principal is not None:
        conditions.append(sql.SQL("(principal = %(principal)s OR principal_id = %(principal)s)"))
        params["principal"] = principal
    if status is not None:
        conditions.append(sql.SQL("status = %(status)s"))
        params["status"] = status
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    query = sql.SQL("SELECT id, {} FROM audit_log{} ORDER BY id DESC LIMIT %(limit)s").format(
        sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), where)
    cursor = await conn.execute(query, params)
    return [dict(zip(ENTRY_FIELDS, row, strict=True)) for row in await cursor.fetchall()]
