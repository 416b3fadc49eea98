"""The database pool of a platform process: psycopg's pool, made safe against what a failed request leaves
behind, and able to tell /health when its connections are failing.

Why: psycopg prepares a statement after a few executions and remembers its name. In pipeline mode (the OGC
API sends its query and the Last-Modified query in one round trip), when an earlier statement fails the
server skips the rest of the pipeline, including a Parse that psycopg has already recorded as done; every
later use of that statement on that connection then fails with `prepared statement "_pg3_N" does not
exist`, until the process restarts (issue 13: `/ogcapi/collections` failed 30 of 30 while /health said
ok). Inside a transaction the rollback resets psycopg's record; outside one nothing does. So a connection
whose pipeline fails outside a transaction is closed (the pool replaces it), and so is any connection
that reports a missing prepared statement, whatever caused it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import AsyncConnection, AsyncPipeline
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("citystream.database")

FAILURE_WINDOW_S = 30.0
FAILURES_UNHEALTHY = 3
"""/health reports the pool unhealthy after this many connection-level failures within FAILURE_WINDOW_S."""
_CONNECTION_STATES = ("08", "26", "53", "57P", "58", "XX001", "XX002")
"""SQLSTATEs that say something about the connection or the server rather than the request: connection
exceptions, a prepared statement missing, insufficient resources, the server shutting down, system errors,
corrupted data. What a request can cause (bad data, conflicts, timeouts, PostGIS's internal errors on odd
geometries, program limits) is not counted: a client must not be able to make /health fail."""


def connection_level(exc: psycopg.Error) -> bool:
    if exc.sqlstate is None:  # raised by psycopg itself: only a lost or closed connection counts
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return exc.sqlstate.startswith(_CONNECTION_STATES)


class GuardedConnection(AsyncConnection[Any]):
    """A connection that closes itself when a pipeline fails outside a transaction (see above)."""

    @asynccontextmanager
    async def pipeline(self) -> AsyncIterator[AsyncPipeline]:
        try:
            async with super().pipeline() as pipeline:
                yield pipeline
        except BaseException:
            if not self.closed and self.info.transaction_status == TransactionStatus.IDLE:
                log.info("closing a pooled connection after a failed pipeline (its prepared statements "
                         "cannot be trusted)")
                await self.close()
            raise


class GuardedPool(AsyncConnectionPool[GuardedConnection]):
    """An AsyncConnectionPool of GuardedConnections that keeps the recent connection-level failures for
    /health."""

    def __init__(self, conninfo: str, **kwargs: Any) -> None:
        super().__init__(conninfo, connection_class=GuardedConnection, **kwargs)
        self.failures: deque[tuple[float, str]] = deque(maxlen=100)
        """(monotonic time, message) of recent connection-level failures."""

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[GuardedConnection]:
        async with super().connection(timeout) as conn:
            try:
                yield conn
            except psycopg.Error as exc:
                if connection_level(exc):
                    self.failures.append((time.monotonic(), f"{type(exc).__name__}: {exc}".strip()))
                if isinstance(exc, psycopg.errors.InvalidSqlStatementName) and not conn.closed:
                    log.warning("closing a pooled connection whose prepared statements are out of step: %s", exc)
                    await conn.close()
                raise

    def recent_failures(self, window_s: float = FAILURE_WINDOW_S) -> list[str]:
        since = time.monotonic() - window_s
        return [message for at, message in self.failures if at >= since]

    @property
    def healthy(self) -> bool:
        return len(self.recent_failures()) < FAILURES_UNHEALTHY


async def side_connection(conninfo: str) -> AsyncConnection[Any]:
    """A connection of its own for a periodic background query (credential reloads, the restriction
    watch), beside the request pool: a periodic borrower in the pool made sequential reads ~1 ms slower."""
    return await AsyncConnection.connect(conninfo, autocommit=True, connect_timeout=5,
                                         options="-c statement_timeout=10000")
