"""The one write path for Observations: validate -> bounded queue -> batch -> COPY -> commit -> acknowledge
-> notify.

Submitters (the MQTT bridge, `POST Observations`) put validated items into a bounded queue and wait for
their item's outcome; waiting is the backpressure (a full queue makes `submit` wait, memory stays bounded).
Writer tasks (one database connection each) take what is queued, up to `batch_rows`: group commit, so a
batch is written as soon as a writer is free and grows by itself under load. `batch_wait_ms` > 0 lets a
writer wait that long for a partial batch to fill (fewer, larger commits at the price of latency).
A batch that fails for a reason of the database (deadlock, lost connection) is retried whole; a failure no
check foresaw is narrowed down by halving the batch, so only the offending row is rejected.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from ingest import metrics
from ingest.rows import data_array_row, parse_observation
from ingest.store import Item, PartitionCache, write_batch
from sensorthings.model.errors import BadRequest, ServiceUnavailable
from sensorthings.model.results import OBSERVATION, STREAMS
from sensorthings.write.data_array import DataArray
from sensorthings.write.ports import Change, ChangeListener

log = logging.getLogger("citystream.ingest")
RETRYABLE_STATES = ("40001", "40P01")  # serialization failure, deadlock
MAX_BACKOFF_S = 5.0


@dataclass(frozen=True)
class IngestConfig:
    batch_rows: int = 5000
    batch_wait_ms: int = 0
    queue_rows: int = 50_000
    writers: int = 2


@dataclass(slots=True)
class _Queued:
    item: Item
    done: Callable[[Item], None]
    """Called once, after the batch holding the item is committed (or has failed for good)."""
    source: str


def _ignore(_: Item) -> None:
    """The completion callback of rows that a request writes itself (it reads their outcome afterwards)."""


def _retryable(exc: psycopg.Error) -> bool:
    """Failures of the database rather than of the data: the same batch may succeed when sent again."""
    state = exc.sqlstate or ""
    return (state in RETRYABLE_STATES or state.startswith(("08", "53", "57")) or exc.sqlstate is None
            or isinstance(exc, psycopg.OperationalError))


def _unstorable_reason(exc: Exception) -> str:
    """Why the one row that fails its batch was rejected: the database's words for a fault in the data
    (class 22 data exception, 23 integrity violation), never those of an internal error."""
    if isinstance(exc, psycopg.Error) and (exc.sqlstate or "").startswith(("22", "23")):
        return f"could not be stored: {exc.diag.message_primary or exc}"
    return "could not be stored because of an internal error (recorded in the server log)"


_NO_STREAM: dict[str, int | None] = dict.fromkeys(s.name for s in STREAMS)
"""Change.links of an Observation before its own stream is set: it has none of the others."""
_YIELD_ROWS = 250
"""CreateObservations validates this many rows between chances for its batch writer to run."""


class IngestPipeline:
    def __init__(self, pool: AsyncConnectionPool[Any], config: IngestConfig,
                 listener: ChangeListener | None = None) -> None:
        self.pool = pool
        self.config = config
        self.listener = listener
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(maxsize=config.queue_rows)
        self._partitions = PartitionCache()
        self._writers: list[asyncio.Task[None]] = []
        self.stored = 0
        """Observations this pipeline committed (for the log of a stopping bridge)."""

    async def start(self) -> None:
        self._writers = [asyncio.create_task(self._run_writer(), name=f"ingest-writer-{n}")
                         for n in range(self.config.writers)]

    async def stop(self) -> None:
        """Write what is queued, then stop the writers."""
        await self._queue.join()
        for task in self._writers:
            task.cancel()
        await asyncio.gather(*self._writers, return_exceptions=True)

    async def submit(self, item: Item, source: str) -> Item:
        """Queue `item` and return it once its batch is committed, with `id` or `reason` set."""
        done: asyncio.Future[Item] = asyncio.get_running_loop().create_future()

        def complete(result: Item) -> None:
            if not done.done():  # the waiting request may have been cancelled
                done.set_result(result)

        await self._queue.put(_Queued(item, complete, source))
        return await done

    def offer(self, item: Item, source: str, done: Callable[[Item], None]) -> bool:
        """Queue `item` if there is room (False when the queue is full); `done(item)` follows its commit.
        For submitters that handle thousands of items per second without a task each (the MQTT bridge)."""
        try:
            self._queue.put_nowait(_Queued(item, done, source))
        except asyncio.QueueFull:
            return False
        return True

    async def put(self, item: Item, source: str, done: Callable[[Item], None]) -> None:
        """Like `offer`, waiting for room."""
        await self._queue.put(_Queued(item, done, source))

    # ObservationSink (sensorthings.write.ports) for POST Observations
    async def create_observation(self, body: Any, *, parents: Mapping[str, int], base_url: str) -> tuple[int, str]:
        row = parse_observation(body, parents=parents, now=None)
        item = await self.submit(Item(row, render_base=base_url), "http")
        if item.reason is not None:
            raise BadRequest(f"body: {item.reason}")
        if item.id is None or item.rendered is None:
            raise ServiceUnavailable("the Observation could not be stored (see the server log); send it again")
        return item.id, item.rendered

    async def create_observations(self, arrays: Sequence[DataArray]) -> list[int | str]:
        """CreateObservations: the valid rows are written in batches of `batch_rows` by this request itself,
        through the same batch writer (COPY, checks, summaries, retries, notifications) as queued rows: a
        request of thousands of rows is a batch already, and the queue's per-row hand-offs cost ~15% of
        its time. Up to `writers` batches (as many as the queue has writers) are written at once, each in its
        own transaction, and the next one is validated meanwhile: validation yields to the event loop every
        `_YIELD_ROWS` rows, so that the writers' waits for the database (COPY, commit) are spent validating.
        (Without the yields the writer task only started once validation was done; with one batch in
        flight a single uploader reached 0.56-0.64 of COPY, with two 0.74-0.77.)"""
        rows = [(array, values) for array in arrays for values in array.rows]
        results: list[int | str] = [""] * len(rows)
        written: list[tuple[int, Item]] = []
        writing: list[asyncio.Task[None]] = []
        size = self.config.batch_rows
        for first in range(0, len(rows), size):
            batch: list[tuple[int, Item]] = []
            for n in range(first, min(first + size, len(rows))):
                if writing and n % _YIELD_ROWS == 0:
                    await asyncio.sleep(0)
                array, values = rows[n]
                try:
                    row = data_array_row(array.components, values, array.stream, array.stream_id, "row")
                except BadRequest as exc:
                    results[n] = exc.message
                    continue
                batch.append((n, Item(row)))
            if not batch:
                continue
            while len(writing) >= max(1, self.config.writers):
                await writing.pop(0)
            writing.append(asyncio.create_task(self._write([_Queued(item, _ignore, "http") for _, item in batch])))
            written += batch
        for task in writing:
            await task
        for n, item in written:
            results[n] = item.id if item.id is not None else (item.reason or "could not be stored; send it again")
        return results

    async def _run_writer(self) -> None:
        while True:
            batch = await self._take()
            try:
                await self._write(batch)
            except Exception:  # a bug: the waiters still get their items back, with neither id nor reason
                log.exception("ingest batch failed")  # (not stored; MQTT leaves them unacknowledged)
            finally:
                for queued in batch:
                    try:
                        queued.done(queued.item)
                    except Exception:  # e.g. an HTTP request that went away; the others still get theirs
                        log.exception("completion callback failed")
                    self._queue.task_done()
                metrics.QUEUED.set(self._queue.qsize())

    async def _take(self) -> list[_Queued]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.batch_wait_ms / 1000
        while len(batch) < self.config.batch_rows:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _write(self, batch: list[_Queued]) -> None:
        items = [q.item for q in batch]
        started = perf_counter()
        rollup_notifications = await self._write_items(items)
        metrics.COMMIT_SECONDS.observe(perf_counter() - started)
        metrics.BATCH_ROWS.observe(len(batch))
        counts: dict[tuple[str, bool], int] = {}
        for queued in batch:
            key = (queued.source, queued.item.id is not None)
            counts[key] = counts.get(key, 0) + 1
        self.stored += sum(count for (_, stored), count in counts.items() if stored)
        for (source, stored), count in counts.items():
            metrics.RECEIVED.labels(source).inc(count)
            (metrics.STORED if stored else metrics.REJECTED).labels(source).inc(count)
        if self.listener is not None and self.listener.listening:
            changes = [Change(OBSERVATION, i.id, created=True, links={
                           **_NO_STREAM, i.row.stream.name: i.row.stream_id,
                           "FeatureOfInterest": i.row.feature_id or 0})
                       for i in items if i.id is not None and i.row is not None]
            changes += rollup_notifications
            if changes:
                self.listener.changed(changes)

    async def _write_items(self, items: list[Item]) -> list[Change]:
        """Write with retries; narrow an unforeseen data error down to the rows that cause it. Returns the
        notifications of the rollup Observations the committed writes changed."""
        attempt = 0
        while True:
            saved = [(i.reason, i.row.feature_id if i.row else None, i.row.new_feature if i.row else None)
                     for i in items]
            try:
                async with self.pool.connection() as conn:
                    await self._partitions.ensure(conn, items)
                    return await write_batch(conn, items, datetime.now(UTC))
            except Exception as exc:  # psycopg's, or one no check foresaw (then narrowed down like a data error)
                for item, (reason, feature_id, new_feature) in zip(items, saved, strict=True):
                    item.reason, item.id, item.rendered = reason, None, None
                    if item.row is not None:
                        item.row.feature_id, item.row.new_feature = feature_id, new_feature
                if not isinstance(exc, psycopg.Error):
                    log.exception("ingest batch of %d failed unexpectedly; narrowing it down", len(items))
                elif _retryable(exc):
                    attempt += 1
                    metrics.RETRIES.inc()
                    delay = min(MAX_BACKOFF_S, 0.01 * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.0)
                    log.warning("ingest batch of %d will be retried in %.2f s: %s", len(items), delay, exc)
                    await asyncio.sleep(delay)
                    continue
                pending = [i for i in items if i.reason is None]
                if not pending:
                    log.error("dead letters could not be written (%s): %s", exc,
                              [(i.origin, i.reason) for i in items])
                    return []
                if len(pending) == 1:
                    for item in pending:
                        item.reason = _unstorable_reason(exc)
                    if all(i.reason is None or i.origin is None for i in items):
                        return []  # nothing to record
                    continue  # write the dead letters
                half = len(items) // 2
                return [*await self._write_items(items[:half]), *await self._write_items(items[half:])]
