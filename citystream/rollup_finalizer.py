"""Makes rollup buckets final once their rollup's `finalAfter` has passed since their end, and releases the
buckets of streams with a privacy class to the public once it may see them (issue 18).

A bucket written after that moment is final when it is written (sensorthings/write/rollups.py); this task
finalizes the ones that were still provisional, every `interval` seconds: it sets their `final`, marks their
Observations (`parameters.rollup.final`) and tells the notifier, so that subscribers of a rollup Datastream
learn when a bucket will no longer change. A stream whose privacy class withholds something from the public
(docs/privacy.md) has its buckets notified live to its members only; the same pass notifies everyone of each
changed bucket once the public may see it (its publication delay passed since its end; never one narrower
than the minimum aggregation or below the minimum count: write/rollups.py `release_due`). One pass at a time
across processes (a transaction-level advisory lock: a second API process skips the pass), in transactions
of at most FINALIZE_BATCH buckets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg
from prometheus_client import Counter
from psycopg_pool import AsyncConnectionPool

from sensorthings.write.ports import Change, ChangeListener
from sensorthings.write.rollups import FINALIZE_BATCH, finalize_due, release_due

log = logging.getLogger(__name__)
FINALIZED = Counter("citystream_rollup_buckets_finalized", "Rollup buckets made final by the finalizer")
RELEASED = Counter("citystream_rollup_buckets_released", "Rollup buckets of classed streams notified to the public")
_PASS_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended('citystream-rollup-finalizer', 0))"


class RollupFinalizer:
    def __init__(self, pool: AsyncConnectionPool[Any], listener: ChangeListener | None, interval: float) -> None:
        """`interval`: seconds between passes (0: never run)."""
        self.pool = pool
        self.listener = listener
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """One pass: finalize every due bucket, then release every due bucket to the public; how many
        notifications that made (0 if another process holds the pass)."""
        total = 0
        for step, counter in ((finalize_due, FINALIZED), (release_due, RELEASED)):
            while True:
                changes: list[Change] = []
                async with self.pool.connection() as conn, conn.transaction():
                    row = await (await conn.execute(_PASS_LOCK)).fetchone()
                    if row is None or not row[0]:
                        return total
                    changes = await step(conn)
                total += len(changes)
                counter.inc(len(changes))
                if changes and self.listener is not None and self.listener.listening:
                    self.listener.changed(changes)
                if len(changes) < FINALIZE_BATCH:
                    break
        return total

    async def _run(self) -> None:
        while True:
            try:
                made = await self.run_once()
                if made:
                    log.debug("rollups: %d bucket(s) made final", made)
            except (psycopg.Error, OSError) as exc:  # the next pass tries again
                log.warning("rollups: finalizing buckets failed, trying again in %.0f s: %s", self.interval, exc)
            await asyncio.sleep(self.interval)

    async def start(self) -> None:
        if self.interval > 0:
            self._task = asyncio.create_task(self._run(), name="rollup-finalizer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
