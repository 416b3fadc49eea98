"""Write one batch of Observations in one transaction: checks -> binary COPY -> summaries -> dead letters.

Every check that could make the COPY fail is made first, for the whole batch at once, so that a bad row is
set aside with its reason and never fails the COPY of the good rows around it:
- the Datastreams are read (and KEY SHARE locked, so that a concurrent DELETE waits for this commit
  instead of breaking the foreign key in the middle of the COPY), with their observationType and the
  current Location of their Thing;
- referenced FeaturesOfInterest are read and locked the same way; generated ones are created;
- ids are allocated in one round trip; the rows go in with one binary COPY;
- the Datastream summaries are widened once per Datastream (one statement for the batch);
- dead letters of rejected MQTT payloads are written in the same transaction, so that acknowledging the
  batch also means its evidence is stored.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection, AsyncCursor, sql
from psycopg.types.json import Jsonb

from ingest.dead_letters import record_dead_letters
from ingest.rows import FEATURE_OF_INTEREST, FEATURE_RELATION, ObservationRow, Origin
from sensorthings.model import observation_ids
from sensorthings.model.access import Principal, Role
from sensorthings.model.entities import Relation, Storage
from sensorthings.model.kinds import RESULT_NUMBER
from sensorthings.model.results import OBSERVATION, STREAMS, result_error
from sensorthings.query.compiler import compile_created
from sensorthings.query.write_statements import PHENOMENON_END, PHENOMENON_START, RESULT_TIME
from sensorthings.write.authorize import covers, stream_scopes_query
from sensorthings.write.derived import (
    ObservationTouch,
    StreamFacts,
    StreamKey,
    add_touch,
    create_partition,
    generated_features,
    insert_row,
    stream_facts_sql,
    update_stream_summaries,
)
from sensorthings.write.ports import Change
from sensorthings.write.rollup_minutes import Merged
from sensorthings.write.rollups import (
    RESULT_KIND,
    RESULT_TEXT,
    ROLLUP_STREAM,
    merge_batch,
    rollup_changes,
    rollup_write_error,
)

# The Observation's id, its field columns and its foreign keys: its stream (STREAMS order), then its
# FeatureOfInterest (the order of every COPY row), each with its PostgreSQL type for the binary format.
_FOREIGN_KEYS = [*(r.column for r in STREAMS), FEATURE_RELATION.column]
_FIELD_COLUMNS = [c for f in OBSERVATION.fields for c in f.columns]
COPY_COLUMNS: list[tuple[str, str]] = [
    ("id", "int8"),
    *((c, kind) for f in OBSERVATION.fields for c, kind in zip(f.columns, f.column_types, strict=True)),
    *((c, "int8") for c in _FOREIGN_KEYS),
]
_JSONB_POSITIONS = [i for i, (_, kind) in enumerate(COPY_COLUMNS) if kind == "jsonb"]
_COPY_SQL = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.Identifier(OBSERVATION.table), sql.SQL(", ").join(sql.Identifier(c) for c, _ in COPY_COLUMNS)
).as_bytes(None)
_FEATURES_SQL = sql.SQL("SELECT id FROM {} WHERE id = ANY(%s) ORDER BY id FOR KEY SHARE").format(
    sql.Identifier(FEATURE_OF_INTEREST.table)).as_bytes(None)


def _as_is(text: str) -> str:
    return text


@dataclass(slots=True)
class Item:
    """One submission: a row to store, or a payload already rejected (`reason`) whose dead letter must be
    written. `origin` is set for MQTT payloads (their rejections become dead letters)."""

    row: ObservationRow | None
    origin: Origin | None = None
    reason: str | None = None
    id: int | None = None
    ticket: Any = None
    """Opaque to ingest: what the submitter needs to answer for the item (the MQTT packet to acknowledge)."""
    render_base: str | None = None
    """Set by a submitter that answers with the created entity (HTTP 201): the service URL for its links."""
    rendered: str | None = None
    """The stored Observation's JSON as GET renders it (when `render_base` was set), read in the batch's
    transaction: one statement per batch instead of a query per request."""
    publisher: Principal | None = None
    """Who sent it, when the submitter has not checked that it may (MQTT: the principal the broker stamped
    on the message); checked in the batch's transaction (`_check_publishers_apply`)."""
    status: int = 400
    """The HTTP-style code of a rejection (`reason`): 400, or 403 for a publisher that may not create there."""


def check_foreign_keys_match_model() -> None:
    """Every foreign key of an Observation must have its place in a COPY row (fails at import otherwise)."""
    model = {r.column for r in OBSERVATION.relations.values() if r.storage is Storage.FK_ON_SOURCE}
    if model != set(_FOREIGN_KEYS):
        raise RuntimeError(f"ingest COPY foreign keys differ from the Observation model: {sorted(model)}")


check_foreign_keys_match_model()


class PartitionCache:
    """Months whose observation partition is known to exist; new months are created outside the batch's
    transaction (see migrations/0001_core.sql for why)."""

    def __init__(self) -> None:
        self._months: set[tuple[int, int]] = set()

    async def ensure(self, conn: AsyncConnection[Any], items: Sequence[Item]) -> None:
        for item in items:
            if item.row is None or item.reason is not None:
                continue
            start: datetime = item.row.columns[PHENOMENON_START]
            utc = start.astimezone(UTC)
            key = (utc.year, utc.month)
            if key not in self._months:
                await create_partition(conn, start)
                # and the month before, once per new month: a rollup bucket holding this Observation may
                # start there (a week, or a local month east of UTC, which begins on the UTC month's eve)
                await create_partition(conn, utc.replace(day=1, hour=12) - timedelta(days=1))
                self._months.add(key)


async def write_batch(conn: AsyncConnection[Any], items: Sequence[Item], now: datetime) -> list[Change]:
    """Store the acceptable rows of `items` in one transaction; set `id` or `reason` on every item. Returns
    the notifications of the rollup Observations the batch changed (its own rows' the caller makes).
    Raises psycopg errors only for failures of the database itself (the caller retries or bisects).

    Statements that do not wait for each other share a round trip (psycopg pipeline mode): the batch's
    waits are BEGIN, (Datastreams + ids), COPY, (summaries + 201 bodies + dead letters), COMMIT. Each wait
    also yields the event loop to the HTTP requests of the same process, so fewer waits mean shorter
    batches under load."""
    async with conn.transaction():
        rows = [i for i in items if i.reason is None and i.row is not None]
        async with conn.pipeline():
            scopes_read = await _publisher_scopes_send(conn, rows)
            streams_read = await _read_streams_send(conn, rows)
            ids_read = await _allocate_ids_send(conn, len(rows))
            await _check_publishers_apply(scopes_read)  # first: a forbidden row learns nothing of its stream
            rows = [i for i in rows if i.reason is None]
            streams = await _read_streams_apply(streams_read, rows)
            sequence_values = [int(v) for (v,) in await ids_read.fetchall()] if ids_read else []
        rows = [i for i in rows if i.reason is None]
        await _check_features(conn, rows)
        rows = [i for i in rows if i.reason is None]
        await _assign_features(conn, rows, streams)
        rows = [i for i in rows if i.reason is None]
        if rows:
            await _copy(conn, rows, sequence_values)
        touched = _touches(rows)
        rollup_notifications: list[Change] = []
        if rows and any(facts.has_rollups for facts in streams.values()):
            buckets = await merge_batch(conn, [
                Merged(i.row.stream_id, i.id, i.row.columns[PHENOMENON_START],
                       i.row.columns.get(RESULT_TEXT) if i.row.columns.get(RESULT_KIND) == RESULT_NUMBER else None,
                       i.row.feature_id)
                for i in rows if i.row and i.id is not None and streams[(i.row.stream, i.row.stream_id)].has_rollups])
            for bucket in buckets:  # the rollups' summaries: phenomenonTime and observedArea
                add_touch(touched, (ROLLUP_STREAM, bucket.rollup_id), bucket.start, bucket.end, None, bucket.feature_id)
            rollup_notifications = rollup_changes(buckets)
        async with conn.pipeline():
            if rows:
                await update_stream_summaries(conn, touched)
                await _render(conn, rows)
            await record_dead_letters(conn, [(i.origin, i.reason) for i in items if i.reason and i.origin], now)
    return rollup_notifications


async def _publisher_scopes_send(conn: AsyncConnection[Any], rows: Sequence[Item]
                                 ) -> list[tuple[Relation, list[Item], AsyncCursor[Any]]]:
    """Send the reads that `_check_publishers_apply` needs: for rows whose publisher may not create
    everywhere, one statement per stream table. A publisher with the role everywhere costs nothing."""
    publishers = {id(i.publisher): i.publisher for i in rows if i.publisher is not None}  # one per client
    unchecked = {key for key, publisher in publishers.items() if not publisher.has(Role.CREATE)}
    if not unchecked:
        return []
    limited = [i for i in rows if id(i.publisher) in unchecked]
    sent = []
    for stream in STREAMS:
        wanted = [i for i in limited if i.row is not None and i.row.stream is stream]
        if wanted:
            query, params = stream_scopes_query(stream.target_entity,
                                                sorted({i.row.stream_id for i in wanted if i.row}))
            sent.append((stream, wanted, await conn.execute(query, params)))
    return sent


async def _check_publishers_apply(sent: list[tuple[Relation, list[Item], AsyncCursor[Any]]]) -> None:
    """Reject the rows whose publisher may not create Observations in their stream (sensorthings.write.
    authorize's rule: the role everywhere, for the stream's Project, or owning it), decided once per
    publisher and stream. A stream that does not exist is refused the same way, so the answer does not
    tell such a publisher which streams exist."""
    for stream, wanted, cursor in sent:
        scopes = {int(i): (project, owner) for i, project, owner in await cursor.fetchall()}
        decided: dict[tuple[int, int], bool] = {}
        for item in wanted:
            assert item.row is not None and item.publisher is not None
            key = (id(item.publisher), item.row.stream_id)
            allowed = decided.get(key)
            if allowed is None:
                scope = scopes.get(item.row.stream_id)
                allowed = decided[key] = scope is not None and covers(item.publisher, Role.CREATE, *scope)
            if not allowed:
                item.status = 403
                item.reason = (f"{item.publisher.kind} {item.publisher.name!r} may not create Observations in "
                               f"{stream.name} {item.row.stream_id}: that needs the role 'create' everywhere, for "
                               f"its Project, or to own it")


async def _allocate_ids_send(conn: AsyncConnection[Any], count: int) -> AsyncCursor[Any] | None:
    """Sequence values for up to `count` rows (rows rejected later leave gaps, as sequences do anyway)."""
    if not count:
        return None
    return await conn.execute("SELECT nextval(%s) FROM generate_series(1, %s)", (OBSERVATION.id_sequence, count))


async def _read_streams_send(conn: AsyncConnection[Any], items: list[Item]
                             ) -> list[tuple[Relation, AsyncCursor[Any]]]:
    """One statement per stream table for what the batch needs of its streams (read with
    `_read_streams_apply`)."""
    cursors = []
    for stream in STREAMS:
        wanted = sorted({i.row.stream_id for i in items if i.row and i.row.stream is stream})
        if wanted:
            cursors.append((stream, await conn.execute(stream_facts_sql(stream), (wanted,))))
    return cursors


async def _read_streams_apply(cursors: list[tuple[Relation, AsyncCursor[Any]]], items: list[Item]
                              ) -> dict[StreamKey, StreamFacts]:
    """Reject rows whose stream is missing or whose result does not fit it."""
    streams = {(stream, int(row[0])): StreamFacts(*row[1:]) for stream, cursor in cursors
               for row in await cursor.fetchall()}
    for item in items:
        assert item.row is not None
        found = streams.get((item.row.stream, item.row.stream_id))
        if found is None:
            item.reason = f"there is no {item.row.stream.name} with @iot.id {item.row.stream_id}"
        elif found.rollup_of is not None:
            item.reason = rollup_write_error(item.row.stream_id, found.rollup_of)
        else:
            item.reason = result_error(found.result_types, item.row.columns)
    return streams


async def _check_features(conn: AsyncConnection[Any], items: list[Item]) -> None:
    wanted = sorted({i.row.feature_id for i in items if i.row and i.row.feature_id is not None})
    if not wanted:
        return
    cursor = await conn.execute(_FEATURES_SQL, (wanted,))
    found = {int(f) for (f,) in await cursor.fetchall()}
    for item in items:
        assert item.row is not None
        if item.row.feature_id is not None and item.row.feature_id not in found:
            item.reason = f"there is no FeatureOfInterest with @iot.id {item.row.feature_id}"


async def _assign_features(conn: AsyncConnection[Any], items: list[Item], streams: dict[StreamKey, StreamFacts]
                           ) -> None:
    """Create inline FeaturesOfInterest; give rows without one the FeatureOfInterest generated from the
    current Location of their stream's Thing (as a REST create does), generating it if need be."""
    for item in items:
        assert item.row is not None
        if item.row.new_feature is not None:
            item.row.feature_id = await insert_row(conn, FEATURE_OF_INTEREST, item.row.new_feature)
            item.row.new_feature = None
    needing = [i for i in items if i.row and i.row.feature_id is None]
    ungenerated = {d.location_id for i in needing if i.row
                   for d in (streams[i.row.stream, i.row.stream_id],) if d.generated_feature_id is None}
    generated = await generated_features(conn, [loc for loc in ungenerated if loc is not None])
    for item in needing:
        assert item.row is not None
        stream = streams[item.row.stream, item.row.stream_id]
        if stream.location_id is None:
            item.reason = (f"the Observation has no FeatureOfInterest and the Thing of {item.row.stream.name} "
                           f"{item.row.stream_id} has no Location to generate one from; give a "
                           f"FeatureOfInterest or link the Thing to a Location")
        else:
            item.row.feature_id = stream.generated_feature_id or generated[stream.location_id]


async def _copy(conn: AsyncConnection[Any], items: list[Item], sequence_values: list[int]) -> None:
    assert len(sequence_values) >= len(items)  # allocated for every candidate row; some were rejected since
    field_values = operator.itemgetter(*_FIELD_COLUMNS)
    async with conn.cursor() as cur, cur.copy(_COPY_SQL) as copy:
        copy.set_types([kind for _, kind in COPY_COLUMNS])
        for item, sequence_value in zip(items, sequence_values, strict=False):
            row = item.row
            assert row is not None
            columns = row.columns
            item.id = observation_ids.observation_id(sequence_value, columns[PHENOMENON_START])
            values = [item.id, *field_values(columns),
                      *(row.stream_id if row.stream is stream else None for stream in STREAMS), row.feature_id]
            for position in _JSONB_POSITIONS:
                if values[position] is not None:
                    values[position] = Jsonb(values[position], _as_is)
            await copy.write_row(values)


async def _render(conn: AsyncConnection[Any], items: list[Item]) -> None:
    by_base: dict[str, list[Item]] = {}
    for item in items:
        if item.render_base is not None:
            by_base.setdefault(item.render_base, []).append(item)
    for base, wanted in by_base.items():
        starts = [i.row.columns[PHENOMENON_START] for i in wanted if i.row is not None]
        ids = [i.id for i in wanted if i.id is not None]
        compiled = compile_created(OBSERVATION, ids, base, min(starts), max(starts))
        # Planned anew each time (not prepared): a plan cached while the month's partition was small (or
        # just analyzed empty) would scan it sequentially for every batch until the next ANALYZE.
        cursor = await conn.execute(compiled.query, compiled.params, prepare=False)
        rendered: dict[int, str] = {int(i): text for i, text in await cursor.fetchall()}
        for item in wanted:
            item.rendered = rendered[item.id] if item.id is not None else None


def _touches(items: list[Item]) -> dict[StreamKey, ObservationTouch]:
    touched: dict[StreamKey, ObservationTouch] = {}
    for item in items:
        row = item.row
        assert row is not None
        columns = row.columns
        add_touch(touched, (row.stream, row.stream_id), columns[PHENOMENON_START],
                  columns[PHENOMENON_END], columns[RESULT_TIME], row.feature_id)
    return touched
