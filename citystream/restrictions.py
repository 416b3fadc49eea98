"""Keeps an app's `visibility.Restrictions` current: every CHECK_SECONDS, whether any restricted data exists.
While none does, reads by principals who may not see restricted data run the plain statement under a guard
(sensorthings/query/visibility.py), and reads are not audited as reads of restricted data. A wrong answer
here costs time (reads retried with the hiding statement) or audit entries, never a leak: the guard checks in
each statement's own snapshot.

It asks on a connection of its own (citystream.pool.side_connection), not one of the request pool's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg

from citystream.pool import side_connection
from sensorthings.query.visibility import RESTRICTED_DATA_EXISTS, Restrictions

log = logging.getLogger(__name__)
CHECK_SECONDS = 2.0


class RestrictionWatch:
    def __init__(self, conninfo: str, restrictions: Restrictions, check_seconds: float = CHECK_SECONDS) -> None:
        self.conninfo = conninfo
        self.restrictions = restrictions
        self.check_seconds = check_seconds
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> None:
        """Learn whether restricted data exists; when the database cannot say, assume it does."""
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = await side_connection(self.conninfo)
            row = await (await self._conn.execute(RESTRICTED_DATA_EXISTS)).fetchone()
            self.restrictions.exist = bool(row is None or row[0])
        except (psycopg.Error, OSError) as exc:
            self.restrictions.exist = True
            log.debug("cannot tell whether restricted data exists (%s); hiding and auditing as if it did", exc)

    async def _run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.check_seconds)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="restriction-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
