"""A REST write as one transaction: `write` runs a request's change with a fresh `Writer`, retries it after
creating a missing time partition or losing a deadlock, and tells the change listener after the commit.

Apart from routes.py because two callers share it: the route handlers, and the `$batch` change sets
(batch_dispatch.py), whose requests all join the one transaction that `change_set_transaction` hands them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from sensorthings.http.common import RETRYABLE
from sensorthings.model.errors import PartitionMissing, ServiceUnavailable
from sensorthings.write.derived import create_partition
from sensorthings.write.ports import ChangeListener
from sensorthings.write.writer import Writer

WRITE_ATTEMPTS = 10  # each new month a request touches, and each deadlock it loses, costs one attempt
T = TypeVar("T")
_CHANGE_SET: contextvars.ContextVar[tuple[AsyncConnection[Any], Writer] | None] = contextvars.ContextVar(
    "sta_change_set", default=None)
"""The transaction and writer of the $batch change set being executed: every write joins it."""


def in_change_set() -> bool:
    """True while the requests of a $batch change set run: their writes join its transaction."""
    return _CHANGE_SET.get() is not None


@contextlib.contextmanager
def change_set_transaction(conn: AsyncConnection[Any], writer: Writer) -> Iterator[None]:
    """Within the block, every `write` joins the transaction of `conn` and uses `writer` (a change set's)."""
    token = _CHANGE_SET.set((conn, writer))
    try:
        yield
    finally:
        _CHANGE_SET.reset(token)


async def write(pool: AsyncConnectionPool[Any], listener: ChangeListener | None,
                work: Callable[[AsyncConnection[Any], Writer], Awaitable[T]]) -> T:
    """Run `work` in one transaction, with the writer's side effects applied before commit. A missing
    time partition is created outside the transaction and the whole request is retried, as is a
    transaction chosen as a deadlock or serialization victim; a failed attempt leaves nothing behind."""
    shared = _CHANGE_SET.get()
    if shared is not None:  # inside a $batch change set: its transaction, its commit, its retries
        return await work(*shared)
    for attempt in range(WRITE_ATTEMPTS):
        try:
            async with pool.connection() as conn, conn.transaction():
                writer = Writer(conn, datetime.now(UTC))
                result = await work(conn, writer)
                await writer.finish()
            if listener is not None and listener.listening and writer.changes:
                listener.changed(writer.changes)
            return result
        except PartitionMissing as missing:
            try:
                async with pool.connection() as conn:
                    await create_partition(conn, missing.time)
            except psycopg.Error as exc:
                if exc.sqlstate not in RETRYABLE:
                    raise
        except psycopg.Error as exc:
            if exc.sqlstate not in RETRYABLE or attempt == WRITE_ATTEMPTS - 1:
                raise
        await asyncio.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
    raise ServiceUnavailable("the change could not be applied because of concurrent changes; send it again")
