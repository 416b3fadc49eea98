"""The statements of a retention pass (issue 18, part 2), run by citystream/retention.py in short
transactions of its own; every table and column comes from the model.

A stream (Datastream or MultiDatastream) with a `retention` keeps its Observations for that long. A pass
computes each such stream's horizon (`sta_retention_horizon`: now minus the retention, in UTC calendar terms;
for a rollup Datastream, the start of the bucket holding that instant, so that a rollup loses whole buckets
only), records it in `retainedFrom` (before anything is deleted, and never lower than it was), and deletes the
Observations whose phenomenonTime starts before it:

- `partitions` / `keeps_rows` / `partition_contents` / `empty_partition`: a month partition whose every row
  belongs to a raw stream expired past the partition's end is emptied with TRUNCATE (why not DROP:
  citystream/retention.py);
- `delete_batch`: otherwise the streams' expired Observations, oldest first, a batch (across streams of one
  table) per transaction, with what they gave the streams' summaries (`removed_streams`, as a filtered
  DELETE reports it);
- `purge_rollup_buckets`: a rollup with a retention of its own loses its old buckets' state (rollup_buckets)
  with their Observations, the state first (merges and recomputes write state, then Observation).

The summaries are then narrowed with write/derived.py's `narrow_stream_summaries`, as for a REST delete.
A source's retention never touches its rollups: their Observations belong to the rollup Datastream, and
their bucket state stays (it is what rollups outlive raw data with).

`horizons` is for rollup recomputation (write/rollups.py): the buckets of a source that start before its
horizon have lost raw Observations, and recomputing them from what is left would undercount them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from psycopg import AsyncConnection, sql

from sensorthings.model import observation_ids
from sensorthings.model.entities import ENTITIES, Entity, Relation
from sensorthings.model.results import STREAMS
from sensorthings.query.write_statements import (
    PHENOMENON_START,
    SUMMARY_COLUMNS,
    RemovedFromStream,
    read_removed,
    removed_streams,
)
from sensorthings.write.derived import OBSERVATION, StreamKey

DATASTREAM = ENTITIES["Datastream"]
ROLLUP_OF = DATASTREAM.relation("RollupOf")
RETENTION = "retention"
HORIZON = "retainedFrom"
"""The model's names of a stream's retention and of its horizon (read-only: only a pass sets it)."""


def horizon_column(stream: Entity = DATASTREAM) -> str:
    """The column of a stream's horizon (`retained_from`): its Observations whose phenomenonTime starts before
    it are gone (NULL: none ever were)."""
    return stream.fields_by_name[HORIZON].column


async def horizons(conn: AsyncConnection[Any], datastream_ids: list[int]) -> dict[int, datetime]:
    """The horizon of each of the Datastreams that has one."""
    rows = await (await conn.execute(_HORIZONS_SQL, (datastream_ids,))).fetchall()
    return {int(i): h for i, h in rows}


_HORIZONS_SQL = sql.SQL("SELECT id, {h} FROM {t} WHERE id = ANY(%s) AND {h} IS NOT NULL").format(
    h=sql.Identifier(horizon_column()), t=sql.Identifier(DATASTREAM.table)).as_bytes(None)


# ------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True, slots=True)
class Planned:
    """A stream with a retention, as a pass found it."""

    stream: Relation
    """The Observation's relation to it (Datastream or MultiDatastream)."""
    id: int
    name: str
    retention: str
    horizon: datetime
    """Its Observations that start before this go in this pass."""
    rollup: bool
    """A rollup Datastream: its Observations are computed, one per bucket, with their state in rollup_buckets."""
    retained_from: datetime | None
    """Its horizon before this pass."""
    behind: bool = False
    """Its summary starts before that horizon: late data came in below it, or a pass was stopped before it
    narrowed the summary (then what the deleted Observations gave it is not known: it is recomputed)."""

    @property
    def key(self) -> StreamKey:
        return self.stream, self.id


async def plan(conn: AsyncConnection[Any], at: datetime) -> list[Planned]:
    """Every stream with a retention, with its horizon at `at`, by stream table and id."""
    planned: list[Planned] = []
    for stream in STREAMS:
        rows = await (await conn.execute(_plan_sql(stream), {"at": at})).fetchall()
        planned += [Planned(stream, int(i), name, retention, horizon, bool(rollup), previous, bool(behind))
                    for i, name, retention, horizon, rollup, previous, behind in rows]
    return planned


@functools.cache
def _plan_sql(stream: Relation) -> bytes:
    target = stream.target_entity
    horizon = sql.SQL("sta_retention_horizon(d.{}, %(at)s)").format(sql.Identifier(_column(target, RETENTION)))
    rollup: sql.Composable = sql.SQL("false")
    if "Rollups" in target.relations:  # a rollup loses whole buckets: its horizon is the start of one
        rollup_field = sql.Identifier(target.fields_by_name["rollup"].column)
        rollup = sql.SQL("d.{} IS NOT NULL").format(sql.Identifier(ROLLUP_OF.column))
        horizon = sql.SQL("CASE WHEN {rollup} THEN sta_rollup_bucket_start({h}, d.{r}->>'width', "
                          "coalesce(d.{r}->>'timeZone', 'UTC')) ELSE {h} END").format(
            rollup=rollup, h=horizon, r=rollup_field)
    return sql.SQL("SELECT d.id, d.{name}, d.{retention}, {horizon}, {rollup}, d.{previous},"
                   " coalesce(d.{summary_start} < d.{previous}, false) FROM {table} d"
                   " WHERE d.{retention} IS NOT NULL ORDER BY d.id").format(
        name=sql.Identifier(_column(target, "name")), retention=sql.Identifier(_column(target, RETENTION)),
        horizon=horizon, rollup=rollup, previous=sql.Identifier(horizon_column(target)),
        summary_start=sql.Identifier(target.fields_by_name["phenomenonTime"].columns[0]),
        table=sql.Identifier(target.table)).as_bytes(None)


def _column(entity: Entity, name: str) -> str:
    return entity.fields_by_name[name].column


async def raise_horizons(conn: AsyncConnection[Any], planned: list[Planned]) -> None:
    """Set each planned stream's horizon, where it is higher than the one it had (rows locked in id order,
    as every writer of stream rows locks them). Before anything is deleted: a horizon may be ahead of what is
    gone, never behind it."""
    for stream in STREAMS:
        rows = [{"id": p.id, "h": p.horizon.isoformat()} for p in planned if p.stream is stream]
        if rows:
            await conn.execute(_raise_sql(stream), (_json(rows),))


@functools.cache
def _raise_sql(stream: Relation) -> bytes:
    target = stream.target_entity
    return sql.SQL(
        "WITH v AS (SELECT * FROM json_to_recordset(%s::json) AS v(id bigint, h timestamptz)),"
        " locked AS (SELECT d.id FROM {table} d WHERE d.id IN (SELECT id FROM v) ORDER BY d.id FOR NO KEY UPDATE)"
        " UPDATE {table} d SET {horizon} = v.h FROM v JOIN locked USING (id)"
        " WHERE d.id = v.id AND (d.{horizon} IS NULL OR d.{horizon} < v.h)").format(
        table=sql.Identifier(target.table), horizon=sql.Identifier(horizon_column(target))).as_bytes(None)


def _json(rows: list[dict[str, Any]]) -> str:
    return orjson.dumps(rows).decode()


# ------------------------------------------------------------------------------------------ batches


class Deleted(NamedTuple):
    rows: int
    per_stream: dict[int, int]
    """How many went, per stream id."""
    removed: list[RemovedFromStream]
    """What the deleted Observations gave their streams' summaries (derived.note_removed takes it)."""


async def delete_batch(conn: AsyncConnection[Any], planned: list[Planned], limit: int) -> Deleted:
    """Delete (in the caller's transaction) up to `limit` expired Observations of the streams `planned` (of one
    stream table, in id order), with their relocation records: each stream's oldest first, stream by stream,
    so that a batch that ends in a stream leaves every stream before it without expired Observations (a
    pass of thousands of small streams takes few batches)."""
    assert len({p.stream for p in planned}) == 1
    horizons = _json([{"id": p.id, "h": p.horizon.isoformat()} for p in sorted(planned, key=lambda p: p.id)])
    row = await (await conn.execute(_delete_sql(planned[0].stream), {
        "streams": horizons, "latest": max(p.horizon for p in planned), "n": limit})).fetchone()
    assert row is not None  # one row
    per_stream = {int(i): int(n) for i, n in row[0] or ()}
    return Deleted(sum(per_stream.values()), per_stream, read_removed(row[1]))


@functools.cache
def _delete_sql(stream: Relation) -> bytes:
    # The batch: a nested loop over the streams in id order, each one's expired Observations from its (stream,
    # time) index, stopped at `limit` rows. `latest` bounds the DELETE's time too, so that the partitions
    # after every horizon are pruned when it is planned.
    return sql.SQL(
        "WITH h AS MATERIALIZED (SELECT * FROM json_to_recordset(%(streams)s::json) AS h(id bigint, h timestamptz)"
        "                        ORDER BY id),"
        " batch AS (SELECT x.id, x.{start} FROM h CROSS JOIN LATERAL ("
        "             SELECT o.id, o.{start} FROM {obs_table} o WHERE o.{stream} = h.id AND o.{start} < h.h"
        "             ORDER BY o.{start} LIMIT %(n)s) x LIMIT %(n)s),"
        " gone AS (DELETE FROM {obs_table} o USING batch b"
        "          WHERE o.id = b.id AND o.{start} = b.{start} AND o.{start} < %(latest)s RETURNING o.id, {returned}),"
        " relocated AS (DELETE FROM {relocations} WHERE id IN (SELECT id FROM gone))"
        " SELECT (SELECT json_agg(json_build_array(c.s, c.n)) FROM (SELECT g.{stream} s, count(*) n FROM gone g"
        "         GROUP BY g.{stream}) c), {removed}").format(
        start=sql.Identifier(PHENOMENON_START), obs_table=sql.Identifier(OBSERVATION.table),
        stream=sql.Identifier(stream.column),
        returned=sql.SQL(", ").join(sql.SQL("o.{}").format(sql.Identifier(c)) for c in SUMMARY_COLUMNS),
        relocations=sql.Identifier(observation_ids.RELOCATIONS_TABLE),
        removed=removed_streams(sql.Identifier("gone"))).as_bytes(None)


async def purge_rollup_buckets(conn: AsyncConnection[Any], planned: Planned, limit: int) -> int:
    """Delete the state of the oldest `limit` buckets of a rollup that start before its horizon (their
    Observations go with `delete_batch` in the same transaction, after this: the order in which merges,
    recomputes and the finalizer lock a bucket's state and its Observation). How many went."""
    cursor = await conn.execute(_PURGE_SQL, {"id": planned.id, "h": planned.horizon, "n": limit})
    return cursor.rowcount


_PURGE_SQL = b"""
DELETE FROM rollup_buckets k WHERE k.rollup_id = %(id)s AND k.bucket_start IN (
    SELECT bucket_start FROM rollup_buckets WHERE rollup_id = %(id)s AND bucket_start < %(h)s
    ORDER BY bucket_start LIMIT %(n)s)
"""


async def count_expired(conn: AsyncConnection[Any], planned: Planned) -> int:
    """How many of the stream's Observations start before its horizon (what a pass would delete)."""
    row = await (await conn.execute(_count_sql(planned.stream), {"id": planned.id, "h": planned.horizon})).fetchone()
    return int(row[0]) if row else 0


@functools.cache
def _count_sql(stream: Relation) -> bytes:
    return sql.SQL("SELECT count(*) FROM {} o WHERE o.{} = %(id)s AND o.{} < %(h)s").format(
        sql.Identifier(OBSERVATION.table), sql.Identifier(stream.column),
        sql.Identifier(PHENOMENON_START)).as_bytes(None)


# ------------------------------------------------------------------------------------------ partitions


@dataclass(frozen=True, slots=True)
class Partition:
    """A month partition of the Observations (migration 0001): [lower, upper) of phenomenonTime start."""

    schema: str
    name: str
    lower: datetime
    upper: datetime

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


async def partitions(conn: AsyncConnection[Any]) -> list[Partition]:
    """The range partitions of the Observations, oldest first; none where they are not natively partitioned
    (a TimescaleDB hypertable: its chunks are left to batched deletes)."""
    rows = await (await conn.execute(_PARTITIONS_SQL, (OBSERVATION.table,))).fetchall()
    return [Partition(schema, name, lower, upper) for schema, name, lower, upper in rows]


# Bounds as pg_get_expr renders them: FOR VALUES FROM ('2024-01-01 00:00:00+00') TO ('2024-02-01 00:00:00+00')
_PARTITIONS_SQL = rb"""
SELECT n.nspname, c.relname, b.m[1]::timestamptz, b.m[2]::timestamptz
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                        '^FOR VALUES FROM \(''([^'']+)''\) TO \(''([^'']+)''\)$') AS m) b
WHERE i.inhparent = to_regclass(%s) AND NOT i.inhdetachpending AND b.m IS NOT NULL
ORDER BY 3
"""


async def has_rows(conn: AsyncConnection[Any], partition: Partition) -> bool:
    row = await (await conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(partition.identifier))
                 ).fetchone()
    return bool(row and row[0])


async def keeps_rows(conn: AsyncConnection[Any], partition: Partition, expired: dict[Relation, list[int]]) -> bool:
    """Whether the partition holds an Observation of a stream that is not in `expired` (the streams whose
    horizon is past the partition's end): one index probe of the partition per other stream."""
    tests = [sql.SQL("EXISTS (SELECT 1 FROM {table} d WHERE NOT (d.id = ANY(%(e{n})s))"
                     " AND EXISTS (SELECT 1 FROM {part} o WHERE o.{stream} = d.id))").format(
        table=sql.Identifier(stream.target_entity.table), n=sql.SQL(str(n)), part=partition.identifier,
        stream=sql.Identifier(stream.column)) for n, stream in enumerate(STREAMS)]
    params = {f"e{n}": expired.get(stream, []) for n, stream in enumerate(STREAMS)}
    row = await (await conn.execute(sql.SQL("SELECT {}").format(sql.SQL(" OR ").join(tests)), params)).fetchone()
    return bool(row and row[0])


async def partition_contents(conn: AsyncConnection[Any], partition: Partition
                             ) -> tuple[dict[StreamKey, int], list[RemovedFromStream]]:
    """How many Observations each stream has in the partition, and what they give its summary (one pass
    over the partition each)."""
    streams = sql.SQL(", ").join(sql.Identifier(s.column) for s in STREAMS)
    row = await (await conn.execute(sql.SQL(
        "SELECT (SELECT json_agg(json_build_array({streams}, n)) FROM (SELECT {streams}, count(*) n FROM {part}"
        " GROUP BY {streams}) c), {removed}").format(
        streams=streams, part=partition.identifier, removed=removed_streams(partition.identifier)))).fetchone()
    assert row is not None  # one row
    counts: dict[StreamKey, int] = {}
    for *ids, n in row[0] or ():
        for stream, stream_id in zip(STREAMS, ids, strict=True):
            if stream_id is not None:
                counts[(stream, int(stream_id))] = int(n)
    return counts, read_removed(row[1])


async def empty_partition(conn: AsyncConnection[Any], partition: Partition) -> None:
    """TRUNCATE the partition (ACCESS EXCLUSIVE on it alone) and forget the relocations of its rows (a
    relocation records the day an Observation now lives on: this partition's days)."""
    await conn.execute(sql.SQL("TRUNCATE {}").format(partition.identifier))
    await conn.execute(sql.SQL("DELETE FROM {} WHERE {day} >= %s AND {day} < %s").format(
        sql.Identifier(observation_ids.RELOCATIONS_TABLE), day=sql.Identifier(observation_ids.RELOCATED_DAY_COLUMN)),
        (partition.lower, partition.upper))


async def share_lock(conn: AsyncConnection[Any], partition: Partition) -> None:
    """Hold the partition's rows still for the rest of the transaction (SHARE: readers go on, only writers
    of this old month wait)."""
    await conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(partition.identifier))
