"""Retention of raw Observations (issue 18, part 2): a pass that deletes what each stream's `retention` no
longer keeps, run every CITYSTREAM_RETENTION_INTERVAL_SECONDS inside the API process (`RetentionJob`) and
by `citystream retention run [--dry-run]` (`cmd_retention`). The statements are in
sensorthings/write/retention.py; this module decides what runs in which transaction, and when.

One pass, across all processes (a session-level `pg_try_advisory_lock`: a second one skips its turn):

1. plan: every stream with a retention and its horizon now (a rollup's: the start of a bucket);
2. raise each stream's horizon (`retainedFrom`) first, so that it is never behind what is gone;
3. rollups with a retention of their own: their oldest buckets' state and Observations, batch by batch;
4. month partitions whose every row belongs to a raw stream expired past the partition's end: emptied;
5. every other expired Observation, per stream, in batches of `batch_rows`, oldest first;
6. the summaries (phenomenonTime, resultTime, observedArea) of the streams that lost Observations, narrowed
   as a REST delete narrows them (write/derived.py), a few streams per transaction.

How it deletes without stalling ingest. Ingest COPYs into the current month's partition and updates its
streams' rows; readers of Observations that are not pruned by time lock every partition. Measured on
PostgreSQL 15, what each way of getting rid of a month locks:

- DROP TABLE of the partition: ACCESS EXCLUSIVE on the parent `observations`: every COPY and every read
  waits behind it (and behind whatever it waits for).
- DETACH PARTITION: the same on the parent, and SHARE ROW EXCLUSIVE on datastreams, multi_datastreams and
  features_of_interest (its foreign keys become the detached table's own).
- DETACH PARTITION CONCURRENTLY (outside a transaction block): only SHARE UPDATE EXCLUSIVE on the parent,
  but still SHARE ROW EXCLUSIVE on those three; and dropping the detached table afterwards removes the
  foreign-key triggers it got, which takes ACCESS EXCLUSIVE on datastreams, multi_datastreams and
  features_of_interest: every request waits.
- TRUNCATE of the partition: ACCESS EXCLUSIVE on that partition alone. Ingest into other months does not
  notice; readers that touch the partition wait at most `LOCK_TIMEOUT_MS` per attempt.

So a fully expired partition is emptied with TRUNCATE and stays attached, empty: its storage is freed at
commit, and writers that know the month (ingest's partition cache) still find it for late data. Before the
TRUNCATE the partition is held in SHARE mode (readers go on; only writers of that old month wait) while
its rows are checked once more and counted for the summaries. Everything else is deleted in batches of
`batch_rows` (10,000 by default), each in its own short transaction under `lock_timeout`, committed before
the next; between batches the pass sleeps `pause` times as long as the batch took, so that it never takes
the machine from ingest. A batch or partition whose locks stay busy is retried a few times and otherwise
left to the next pass. On TimescaleDB (a hypertable, no native partitions) every deletion is batched.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from prometheus_client import Counter, Gauge
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from sensorthings.model.entities import Relation
from sensorthings.model.results import STREAMS
from sensorthings.query.write_statements import RemovedFromStream
from sensorthings.write.derived import (
    ObservationTouch,
    StreamKey,
    lock_streams,
    narrow_stream_summaries,
    note_removed,
)
from sensorthings.write.retention import (
    Deleted,
    Partition,
    Planned,
    count_expired,
    delete_batch,
    empty_partition,
    has_rows,
    keeps_rows,
    partition_contents,
    partitions,
    plan,
    purge_rollup_buckets,
    raise_horizons,
    share_lock,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

BATCH_ROWS = 10_000
LOCK_TIMEOUT_MS = 200
"""How long one statement of a pass waits for a lock before it gives up (and is tried again)."""
ATTEMPTS = 5
PAUSE = 0.5
"""Between two batches a pass sleeps this many times as long as the batch took."""
NARROW_GROUP = 64
"""Streams whose summaries are narrowed in one transaction (their rows are locked meanwhile: an ingest batch
that writes to one of them waits for its commit, so the pass pauses after each, as after a batch)."""
STOP_SECONDS = 10.0
_BUSY = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_PASS_LOCK = "SELECT pg_try_advisory_lock(hashtextextended('citystream-retention', 0))"
_PASS_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended('citystream-retention', 0))"
_LOCAL_LIMITS = "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', '600s', true)"

DELETED = Counter("citystream_retention_deleted_observations",
                  "Observations deleted by retention passes", ["how"])
PASS_SECONDS = Gauge("citystream_retention_last_pass_seconds", "Duration of the last retention pass that ran")


@dataclass
class StreamOutcome:
    """What a pass did (or, dry, would do) to one stream."""

    entity: str
    id: int
    name: str
    retention: str
    horizon: datetime
    deleted: int = 0
    busy: bool = False
    """Some of its Observations could not be deleted: their locks stayed busy (the next pass goes on)."""


@dataclass
class PassOutcome:
    dry_run: bool
    skipped: bool = False
    """Another process was running a pass."""
    seconds: float = 0.0
    streams: list[StreamOutcome] = field(default_factory=list)
    emptied: list[str] = field(default_factory=list)
    """The partitions emptied whole (or, dry, that would be)."""
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds each step of the pass took."""

    @property
    def deleted(self) -> int:
        return sum(s.deleted for s in self.streams)


class _Abandon(Exception):
    """Leave this partition to the batches: it holds rows to keep, or its lock stayed busy."""


class RetentionPass:
    def __init__(self, pool: AsyncConnectionPool[Any], *, batch_rows: int = BATCH_ROWS, pause: float = PAUSE,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.pool = pool
        self.batch_rows = batch_rows
        self.pause = pause
        self.stopping = stopping
        """Checked between batches: a stopping process ends the pass early (the next one goes on)."""

    async def run(self, *, dry_run: bool = False, at: datetime | None = None) -> PassOutcome:
        """One pass with horizons as of `at` (default: the database's now)."""
        started = time.monotonic()
        outcome = PassOutcome(dry_run)
        if dry_run:
            await self._dry(outcome, at)
        else:
            async with self.pool.connection() as lock:
                row = await (await lock.execute(_PASS_LOCK)).fetchone()
                if not (row and row[0]):
                    outcome.skipped = True
                    return outcome
                try:
                    await self._pass(outcome, at)
                finally:
                    await _unlock(lock)
            PASS_SECONDS.set(time.monotonic() - started)
        outcome.seconds = time.monotonic() - started
        return outcome

    async def _planned(self, at: datetime | None) -> list[Planned]:
        async with self.pool.connection() as conn:
            if at is None:
                row = await (await conn.execute("SELECT now()")).fetchone()
                assert row is not None
                at = row[0]
            assert at is not None
            return await plan(conn, at)

    async def _dry(self, outcome: PassOutcome, at: datetime | None) -> None:
        planned = await self._planned(at)
        async with self.pool.connection() as conn:
            for p in planned:
                outcome.streams.append(_outcome(p, await count_expired(conn, p)))
            for part in await self._candidates(conn, planned):
                expired = _expired_through(planned, part)
                if any(expired.values()) and await has_rows(conn, part) and not await keeps_rows(conn, part, expired):
                    outcome.emptied.append(part.name)

    async def _pass(self, outcome: PassOutcome, at: datetime | None) -> None:
        clock = time.monotonic()

        def phase(name: str) -> None:
            nonlocal clock
            outcome.phases[name] = round(time.monotonic() - clock, 3)
            clock = time.monotonic()

        planned = await self._planned(at)
        phase("plan")
        if not planned:
            return
        results = {p.key: _outcome(p) for p in planned}
        outcome.streams = list(results.values())
        if await self._attempt(lambda conn: _raised(conn, planned)) is None:
            log.warning("retention: the stream rows stayed locked; nothing deleted, the next pass tries again")
            for result in outcome.streams:
                result.busy = True
            return
        phase("horizons")
        removed: dict[StreamKey, ObservationTouch] = {}
        for p in planned:  # rollups first, one by one (with their buckets' state)
            if p.rollup:
                await self._delete([p], removed, results)
        phase("rollups")
        outcome.emptied = await self._empty_partitions(planned, removed, results)
        phase("partitions")
        for stream in STREAMS:  # then the raw streams of each table, many to a batch
            await self._delete([p for p in planned if p.stream is stream and not p.rollup], removed, results)
        phase("batches")
        await self._narrow(planned, removed)
        phase("summaries")

    # ------------------------------------------------------------------ batches

    async def _delete(self, planned: list[Planned], removed: dict[StreamKey, ObservationTouch],
                      results: dict[StreamKey, StreamOutcome]) -> None:
        """Batches over `planned` (streams of one table in id order, or one rollup) until none has expired
        Observations left. A full batch that ended in stream n has emptied the streams before it: the next
        one starts at n."""
        remaining = sorted(planned, key=lambda p: p.id)
        while remaining and not self.stopping():
            began = time.monotonic()
            done = await self._attempt(functools.partial(self._batch, planned=remaining))
            if done is None:
                for p in remaining:
                    results[p.key].busy = True
                log.warning("retention: the Observations of %d stream(s) stayed locked; the next pass goes on",
                            len(remaining))
                return
            buckets, deleted = done
            note_removed(removed, deleted.removed)
            for p in remaining:
                results[p.key].deleted += deleted.per_stream.get(p.id, 0)
            DELETED.labels("batch").inc(deleted.rows)
            if deleted.rows < self.batch_rows and buckets < self.batch_rows:
                return
            last = max(deleted.per_stream, default=remaining[0].id)
            remaining = [p for p in remaining if p.id >= last]
            await asyncio.sleep(self.pause * (time.monotonic() - began))

    async def _batch(self, conn: AsyncConnection[Any], planned: list[Planned]) -> tuple[int, Deleted]:
        buckets = await purge_rollup_buckets(conn, planned[0], self.batch_rows) if planned[0].rollup else 0
        return buckets, await delete_batch(conn, planned, self.batch_rows)

    async def _attempt(self, work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T | None:
        """`work` in a transaction of its own with the pass's lock timeout; tried again (after a growing
        pause) while its locks are busy; None if they stayed busy."""
        for attempt in range(ATTEMPTS):
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    await conn.execute(_LOCAL_LIMITS, (f"{LOCK_TIMEOUT_MS}ms",))
                    return await work(conn)
            except _BUSY as exc:
                log.debug("retention: busy (%s), attempt %d of %d", exc, attempt + 1, ATTEMPTS)
                await asyncio.sleep(0.05 * 2 ** attempt)
        return None

    # ------------------------------------------------------------------ partitions

    async def _candidates(self, conn: AsyncConnection[Any], planned: list[Planned]) -> list[Partition]:
        """Partitions that may be wholly expired: they end before the latest horizon of a raw stream."""
        latest = max((p.horizon for p in planned if not p.rollup), default=None)
        if latest is None:
            return []
        return [part for part in await partitions(conn) if part.upper <= latest]

    async def _empty_partitions(self, planned: list[Planned], removed: dict[StreamKey, ObservationTouch],
                                results: dict[StreamKey, StreamOutcome]) -> list[str]:
        async with self.pool.connection() as conn:
            candidates = await self._candidates(conn, planned)
        emptied: list[str] = []
        for part in candidates:
            expired = _expired_through(planned, part)
            if self.stopping() or not any(expired.values()):
                continue
            try:
                found = await self._attempt(functools.partial(self._empty, part=part, expired=expired))
            except _Abandon:
                continue
            if found is None:
                continue
            counts, gone = found
            note_removed(removed, gone)
            for key, n in counts.items():
                results[key].deleted += n
            DELETED.labels("partition").inc(sum(counts.values()))
            emptied.append(part.name)
            log.info("retention: emptied partition %s (%d Observations)", part.name, sum(counts.values()))
        return emptied

    async def _empty(self, conn: AsyncConnection[Any], part: Partition, expired: dict[Relation, list[int]]
                     ) -> tuple[dict[StreamKey, int], list[RemovedFromStream]]:
        """Empty `part` if every row in it is expired; raise _Abandon (rolling back) if not."""
        if not await has_rows(conn, part) or await keeps_rows(conn, part, expired):  # cheap: index probes
            raise _Abandon
        await share_lock(conn, part)
        if await keeps_rows(conn, part, expired):  # a late row came in before the lock
            raise _Abandon
        contents = await partition_contents(conn, part)
        for attempt in range(ATTEMPTS):  # the rows stay locked in SHARE mode meanwhile: count them once
            try:
                async with conn.transaction():
                    await empty_partition(conn, part)
                return contents
            except psycopg.errors.LockNotAvailable:
                await asyncio.sleep(0.05 * 2 ** attempt)
        log.info("retention: partition %s stayed in use; its rows go in batches", part.name)
        raise _Abandon

    # ------------------------------------------------------------------ summaries

    async def _narrow(self, planned: list[Planned], removed: dict[StreamKey, ObservationTouch]) -> None:
        stale = {p.key for p in planned if p.behind}  # recomputed whole
        keys = sorted({*removed, *stale}, key=lambda k: (k[0].name, k[1]))
        for n in range(0, len(keys), NARROW_GROUP):
            if self.stopping():  # those left start before their horizon: the next pass recomputes them
                return
            began = time.monotonic()
            group = keys[n:n + NARROW_GROUP]
            touched = {k: removed[k] for k in group if k in removed}
            reshaped = [k for k in group if k in stale]

            async def narrow(conn: AsyncConnection[Any], group: list[StreamKey] = group,
                             touched: dict[StreamKey, ObservationTouch] = touched,
                             reshaped: list[StreamKey] = reshaped) -> bool:
                await lock_streams(conn, group)
                await narrow_stream_summaries(conn, touched, reshaped)
                return True

            if await self._attempt(narrow) is None:
                log.warning("retention: the summaries of %d stream(s) stayed locked; the next pass narrows them",
                            len(group))
            await asyncio.sleep(self.pause * (time.monotonic() - began))


async def _unlock(conn: AsyncConnection[Any]) -> None:
    """Release the pass's lock; a connection that cannot is closed (which releases it) so the pool never
    hands out a connection that still holds it."""
    try:
        await conn.execute(_PASS_UNLOCK)
    except BaseException:
        await conn.close()
        raise


async def _raised(conn: AsyncConnection[Any], planned: list[Planned]) -> bool:
    await raise_horizons(conn, planned)
    return True


def _outcome(p: Planned, deleted: int = 0) -> StreamOutcome:
    return StreamOutcome(p.stream.name, p.id, p.name, p.retention, p.horizon, deleted)


def _expired_through(planned: list[Planned], part: Partition) -> dict[Relation, list[int]]:
    """Per stream relation, the raw streams whose horizon is at or past the partition's end (rollups never
    count: their Observations keep a partition)."""
    return {stream: [p.id for p in planned if p.stream is stream and not p.rollup and p.horizon >= part.upper]
            for stream in STREAMS}


# ------------------------------------------------------------------ the job in the API process


class RetentionJob:
    """A pass every `interval` seconds (the first at start; 0: never), in the background of the API process."""

    def __init__(self, pool: AsyncConnectionPool[Any], interval: float, batch_rows: int = BATCH_ROWS) -> None:
        self.interval = interval
        self._stopping = False
        self.retention = RetentionPass(pool, batch_rows=batch_rows, stopping=lambda: self._stopping)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.interval > 0:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        """Let a running pass end after its current batch (up to STOP_SECONDS), then cancel it."""
        if self._task is None:
            return
        self._stopping = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), STOP_SECONDS)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def _run(self) -> None:
        while not self._stopping:
            try:
                outcome = await self.retention.run()
                if outcome.deleted or outcome.emptied:
                    log.info("retention: deleted %d Observations of %d stream(s) in %.1f s; partitions emptied: %s",
                             outcome.deleted, sum(1 for s in outcome.streams if s.deleted), outcome.seconds,
                             ", ".join(outcome.emptied) or "none")
            except (psycopg.Error, OSError) as exc:  # the database is away: the next pass tries again
                log.warning("retention: the pass failed, trying again in %.0f s: %s", self.interval, exc)
            except Exception:  # a bug: logged, and the job lives on for the next pass
                log.exception("retention: the pass failed unexpectedly; trying again in %.0f s", self.interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_stop(), self.interval)

    async def _wait_stop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(min(1.0, self.interval))


# ------------------------------------------------------------------ citystream retention run

Database = Callable[[], AbstractContextManager[str]]


def cmd_retention(args: argparse.Namespace, batch_rows: int, database: Database) -> int:
    """`citystream retention run [--dry-run]`: one pass now, and what it deleted (or would) per stream;
    `batch_rows` unless --batch-rows says otherwise."""
    if args.batch_rows is not None and args.batch_rows < 1:
        print("citystream: error: --batch-rows must be at least 1", file=sys.stderr)
        return 2
    with database() as database_url:
        outcome = asyncio.run(_run_once(database_url, args.dry_run, args.batch_rows or batch_rows))
    if outcome.skipped:
        print("citystream: another process is running a retention pass; try again when it is done", file=sys.stderr)
        return 1
    for line in report_lines(outcome):
        print(line)
    return 0


async def _run_once(database_url: str, dry_run: bool, batch_rows: int) -> PassOutcome:
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, kwargs={"autocommit": True},
                                   open=False) as pool:
        return await RetentionPass(pool, batch_rows=batch_rows).run(dry_run=dry_run)


def report_lines(outcome: PassOutcome) -> Iterator[str]:
    """The CLI's table: one line per stream with a retention."""
    verb = "would delete" if outcome.dry_run else "deleted"
    if not outcome.streams:
        yield "no Datastream or MultiDatastream has a retention: nothing to delete"
        return
    yield (f"retention pass{' (dry run)' if outcome.dry_run else ''}: {verb} {outcome.deleted:,} Observations "
           f"in {outcome.seconds:.1f} s; partitions {'to empty' if outcome.dry_run else 'emptied'}: "
           f"{', '.join(outcome.emptied) or 'none'}")
    if outcome.phases:
        yield "seconds per step: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in outcome.phases.items())
    rows = [("stream", "id", "retention", "horizon", verb, "name")] + [
        (s.entity, str(s.id), s.retention, s.horizon.isoformat().replace("+00:00", "Z"),
         f"{s.deleted:,}" + (" (busy: the next pass goes on)" if s.busy else ""), s.name) for s in outcome.streams]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        yield "  ".join([*(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True)), row[5]]).rstrip()
