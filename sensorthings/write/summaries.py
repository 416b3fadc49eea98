"""What one REST request's writes do to the summaries of the streams they touch (phenomenonTime,
resultTime, observedArea of Datastreams and MultiDatastreams): widened by new and changed Observations,
narrowed where Observations left (deleted, moved, given other times or another FeatureOfInterest), and
reshaped where a FeatureOfInterest's geometry changed. Collected while the writer works, applied once per
request before commit (`apply`), never per row; bulk ingest only widens (write/derived.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql

from sensorthings.model.results import stream_of
from sensorthings.query.sql import SqlBuilder, id_predicate
from sensorthings.query.write_statements import (
    FEATURE_COLUMN,
    PHENOMENON_END,
    PHENOMENON_START,
    RESULT_TIME,
    SUMMARY_COLUMNS,
    RemovedFromStream,
    read_removed,
    removed_streams,
)
from sensorthings.write.derived import (
    FEATURE_OF_INTEREST,
    OBSERVATION,
    ObservationTouch,
    StreamKey,
    add_touch,
    lock_streams,
    narrow_stream_summaries,
    note_removed,
    update_stream_summaries,
)

MOVED_READS = 3
"""Reads of an Observation's row before concluding it is gone. A concurrent request that moved it to
another time (a DELETE and INSERT into another partition) hides it from the locking read that waited for
it; the next statement (a new snapshot) finds it where it went, so what the move took is noted too."""


class StreamSummaries:
    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn
        self._touched: dict[StreamKey, ObservationTouch] = {}
        self._removed: dict[StreamKey, ObservationTouch] = {}  # what Observations that left a stream had given it
        self._reshaped: set[StreamKey] = set()  # streams with a FeatureOfInterest whose geometry changed

    def gained(self, columns: dict[str, Any]) -> None:
        """An Observation with these columns was created or changed: its stream's summary widens by it."""
        stream = stream_of(columns)
        assert stream is not None
        add_touch(self._touched, stream, columns[PHENOMENON_START],
                  columns[PHENOMENON_END], columns.get(RESULT_TIME), columns.get(FEATURE_COLUMN))

    async def leaving(self, observation_id: int, changed: dict[str, Any]) -> None:
        """Before `changed` is written to an Observation: note what it gives its stream's summary now, when
        the change may take some of that away (new times, FeatureOfInterest or stream). Locks the row, so
        that what is noted is what the change replaces."""
        if not any(c in changed for c in SUMMARY_COLUMNS):
            return
        row = None
        for _ in range(MOVED_READS):
            b = SqlBuilder("")
            cursor = await self.conn.execute(sql.SQL("SELECT {} FROM {} e WHERE {} FOR UPDATE").format(
                sql.SQL(", ").join(map(sql.Identifier, SUMMARY_COLUMNS)), sql.Identifier(OBSERVATION.table),
                id_predicate(OBSERVATION, sql.Identifier("e"), observation_id, b)), b.params)
            row = await cursor.fetchone()
            if row is not None:
                break
        if row is None:
            return  # the update finds nothing either, and says so
        before = dict(zip(SUMMARY_COLUMNS, row, strict=True))
        if any(changed.get(c, value) != value for c, value in before.items()):
            self.left(before)

    def left(self, columns: dict[str, Any]) -> None:
        """An Observation with these SUMMARY_COLUMNS left its stream (deleted, or moved away from them)."""
        stream = stream_of(columns)
        assert stream is not None  # an Observation has exactly one stream
        add_touch(self._removed, stream, columns[PHENOMENON_START], columns[PHENOMENON_END],
                  columns[RESULT_TIME], columns[FEATURE_COLUMN])

    def removed_by_statement(self, removed: Any) -> None:
        """Observations were deleted by a statement of their own (compile_filtered_delete): `removed` is what
        it reports they took from their streams' summaries (the decoded JSON of `removed_streams`)."""
        note_removed(self._removed, read_removed(removed))

    async def feature_deleting(self, feature_id: int) -> None:
        """A FeatureOfInterest is about to be deleted, and its Observations with it (the foreign key
        cascades): note what they give their streams, with the FeatureOfInterest locked so that no new
        Observation of it comes in between."""
        await self.conn.execute(sql.SQL("SELECT 1 FROM {} WHERE id = %s FOR UPDATE").format(
            sql.Identifier(FEATURE_OF_INTEREST.table)), (feature_id,))
        note_removed(self._removed, await self._observations_of_feature(feature_id))

    async def feature_reshaped(self, feature_id: int) -> None:
        """A FeatureOfInterest's geometry changed: the observed areas of the streams with Observations of it
        may be wider or narrower."""
        self._reshaped.update((r.stream, r.stream_id) for r in await self._observations_of_feature(feature_id))

    async def _observations_of_feature(self, feature_id: int) -> list[RemovedFromStream]:
        """Per stream: what the Observations of a FeatureOfInterest give its summary."""
        cursor = await self.conn.execute(sql.SQL("SELECT {}").format(removed_streams(sql.SQL(
            "(SELECT {} FROM {} WHERE {} = %(id)s)").format(
            sql.SQL(", ").join(map(sql.Identifier, SUMMARY_COLUMNS)), sql.Identifier(OBSERVATION.table),
            sql.Identifier(FEATURE_COLUMN)))), {"id": feature_id})
        row = await cursor.fetchone()
        assert row is not None  # a SELECT without FROM yields its row
        return read_removed(row[0])

    def rollup_changed(self, stream: StreamKey, start: datetime, end: datetime, feature_id: int | None, *,
                       emptied: bool) -> None:
        """A rollup's bucket [start, end) got its Observation, with FeatureOfInterest `feature_id` (widening
        the rollup's summary), or lost it."""
        add_touch(self._removed if emptied else self._touched, stream, start, end, None, feature_id)

    def datastream_spans(self) -> dict[int, tuple[datetime, datetime]]:
        """Per Datastream whose Observations this request created, changed or removed: the span of phenomenon
        time it touched (what its rollups compute again; read before `apply` clears it)."""
        spans: dict[int, tuple[datetime, datetime]] = {}
        for (stream, stream_id), touch in (*self._touched.items(), *self._removed.items()):
            if stream.target != "Datastream":
                continue
            low, high = spans.get(stream_id, (touch.start, touch.end))
            spans[stream_id] = (min(low, touch.start), max(high, touch.end))
        return spans

    async def apply(self) -> None:
        """Widen the summaries of the streams that got Observations, then narrow those that lost some; all
        of their rows locked first, in one order, when both happen. Idempotent: what is applied is cleared."""
        if self._removed or self._reshaped:
            await lock_streams(self.conn, [*self._touched, *self._removed, *self._reshaped])
        await update_stream_summaries(self.conn, self._touched)
        await narrow_stream_summaries(self.conn, self._removed, self._reshaped)
        self._touched.clear()
        self._removed.clear()
        self._reshaped.clear()
