"""The audit record of STA writes: after each request that is not a read, one `AuditEntry` (who, when, what,
the status, the rows) handed to the platform's `AuditSink` (write.ports), which buffers it: a few
microseconds on the request path, never a database round trip.

`StaApi.handle` calls `recorded` for every write, the requests inside a `$batch` included (each with its own
status; the outer `$batch` is not recorded). A handler that changes more than one row says how many with
`count_rows` (a filtered DELETE, CreateObservations); any other success counts 1, a refusal or failure 0.

A `$batch` change set is all or nothing and may be retried as a whole (a missing partition, a lost
deadlock), so its requests' entries wait in `change_set` until its outcome is known: committed, they are
recorded as answered; rolled back, the failing request keeps its status and those before it are recorded as
424 (not applied) with 0 rows; a retried attempt starts its entries afresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import psycopg
from fastapi import Request, Response
from starlette.types import Scope

from sensorthings.http.common import database_error
from sensorthings.model.access import CURRENT, Principal
from sensorthings.model.errors import StaError
from sensorthings.query import visibility
from sensorthings.write.ports import AuditEntry, AuditSink

READS = frozenset(("GET", "HEAD"))
"""Methods that read: recorded only where they may see restricted data (`read_recorded`)."""
MAX_PATH = 2000
"""Characters of path and query kept; a longer one is cut and says how long it was."""
MAX_UNVERIFIED_PATH = 200
"""The same for a caller nobody verified (anonymous, or a credential that failed): such entries cost the
caller nothing, so each may cost the log little."""
ROWS_KEY = "citystream.audit_rows"
"""Where a handler leaves, in the request's scope, how many rows a successful request changed."""
NOT_APPLIED = 424

_PENDING: ContextVar[ChangeSetEntries | None] = ContextVar("sta_audit_change_set", default=None)


def read_recorded(sink: AuditSink | None, restrictions: visibility.Restrictions | None) -> bool:
    """Whether a read by the current principal is recorded: while restricted data may exist, every read by
    a principal that may see some (visibility.may_see_restricted); never an anonymous one."""
    return (sink is not None and (restrictions is None or restrictions.exist)
            and visibility.may_see_restricted(CURRENT.get()))


def count_rows(request: Request, rows: int | None) -> None:
    """The request changed `rows` rows (recorded if it succeeds); without this a success counts 1."""
    request.scope[ROWS_KEY] = rows


async def recorded(sink: AuditSink, request: Request, answer: Awaitable[Response]) -> Response:
    """`answer`'s response, recorded in `sink` with its status and rows. A request that raised (the app
    answers 500) or was cancelled (499) is recorded too, its rows unknown."""
    try:
        response = await answer
    except asyncio.CancelledError:
        record(sink, request, 499, None)
        raise
    except BaseException:
        record(sink, request, 500, None)
        raise
    status = response.status_code
    record(sink, request, status, request.scope.get(ROWS_KEY, 1) if 200 <= status < 300 else 0)
    return response


def record(sink: AuditSink, request: Request, status: int, rows: int | None) -> None:
    """An entry of the request, by the current principal; held back inside a change set (`change_set`)."""
    entry = audit_entry(request.scope, CURRENT.get(), status, rows)
    pending = _PENDING.get()
    if pending is None:
        sink.record(entry)
    else:
        pending.entries.append((sink, entry))


def audit_entry(scope: Scope, principal: Principal, status: int, rows: int | None) -> AuditEntry:
    """The entry of the request of `scope` (an ASGI scope), answered `status`, by `principal`."""
    raw_path = scope.get("raw_path")
    path = raw_path.decode("utf-8", "replace") if raw_path else scope["path"]
    query = scope.get("query_string")
    if query:
        path = f"{path}?{query.decode('utf-8', 'replace')}"
    limit = MAX_UNVERIFIED_PATH if principal.kind in ("anonymous", "unverified") else MAX_PATH
    if len(path) > limit:
        path = f"{path[:limit - 30]}…({len(path)} characters)"
    return AuditEntry(time.time(), principal.kind, principal.name, principal.auth_id, scope["method"], path,
                      status, rows)


class ChangeSetEntries:
    """The entries of one change set's requests, held until its transaction's outcome is known."""

    def __init__(self) -> None:
        self.entries: list[tuple[AuditSink, AuditEntry]] = []

    def attempt(self) -> None:
        """A (new) attempt at the change set's transaction begins: what an earlier one recorded is void."""
        self.entries.clear()

    def rolled_back(self, status: int | None = None, rows: int | None = 0) -> None:
        """Nothing of the change set was applied: each entry gets `rows`, and those that succeeded `status`
        (by default 424, what the change set's answer says of them)."""
        for _, entry in self.entries:
            if entry.status < 400 or status is not None:
                entry.status = NOT_APPLIED if status is None else status
            entry.rows = rows

    def emit(self) -> None:
        for sink, entry in self.entries:
            sink.record(entry)
        self.entries.clear()


@contextmanager
def change_set() -> Iterator[ChangeSetEntries]:
    """Within the block, entries wait in the yielded holder; they are recorded when the block ends. A block
    left by an exception (the transaction failed as a whole) records them as the request's answer has it."""
    pending = ChangeSetEntries()
    token = _PENDING.set(pending)
    try:
        yield pending
    except BaseException as exc:
        pending.rolled_back(*_failure(exc))
        raise
    finally:
        _PENDING.reset(token)
        pending.emit()


def _failure(exc: BaseException) -> tuple[int, int | None]:
    """Status and rows of a change set that failed with `exc`: the status the $batch is answered with; 0
    rows, unless the database connection failed (perhaps while committing: not known)."""
    if isinstance(exc, StaError):
        return exc.status, 0
    if isinstance(exc, psycopg.Error):
        rows = None if isinstance(exc, psycopg.OperationalError) else 0
        try:
            return database_error(exc, 0).status, rows
        except psycopg.Error:
            return 500, rows
    return (499 if isinstance(exc, asyncio.CancelledError) else 500), None
