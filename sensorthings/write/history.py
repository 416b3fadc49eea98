"""HistoricalLocations, which STA derives from a Thing's new Locations: collected while a request links
Things and Locations, recorded once per Thing before commit (`record`). A Thing that already existed has its
earlier Locations replaced, so that its Locations are always its current position (as FROST does)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql

from sensorthings.model.entities import ENTITIES
from sensorthings.write.ports import Change

THING = ENTITIES["Thing"]
HISTORICAL_LOCATION = ENTITIES["HistoricalLocation"]
THING_LOCATIONS = THING.relation("Locations")
LOCATION_HISTORY = ENTITIES["Location"].relation("HistoricalLocations")

_LOCK_THING = sql.SQL("SELECT 1 FROM {} WHERE id = %s FOR NO KEY UPDATE").format(sql.Identifier(THING.table))
_UNLINK_OTHER_LOCATIONS = sql.SQL("DELETE FROM {} WHERE {thing} = %s AND {location} <> ALL(%s)").format(
    sql.Identifier(THING_LOCATIONS.link_table), thing=sql.Identifier(THING_LOCATIONS.link_source_column),
    location=sql.Identifier(THING_LOCATIONS.link_target_column))
_INSERT_HISTORICAL_LOCATION = sql.SQL("INSERT INTO {} ({}, {}) VALUES (%(t)s, %(thing)s) RETURNING id").format(
    sql.Identifier(HISTORICAL_LOCATION.table), sql.Identifier(HISTORICAL_LOCATION.fields_by_name["time"].column),
    sql.Identifier(HISTORICAL_LOCATION.relation("Thing").column))
_LINK_HISTORY = sql.SQL("INSERT INTO {} ({}, {}) SELECT unnest(%s::bigint[]), %s").format(
    sql.Identifier(LOCATION_HISTORY.link_table), sql.Identifier(LOCATION_HISTORY.link_source_column),
    sql.Identifier(LOCATION_HISTORY.link_target_column))


class LocationHistory:
    def __init__(self) -> None:
        self._new_things: set[int] = set()
        self._located: dict[int, set[int]] = {}  # thing id -> Locations newly linked in this request

    def thing_created(self, thing_id: int) -> None:
        self._new_things.add(thing_id)

    def located(self, thing_id: int, location_id: int) -> None:
        """The Thing was newly linked to the Location in this request."""
        self._located.setdefault(thing_id, set()).add(location_id)

    async def record(self, conn: AsyncConnection[Any], now: datetime, changes: list[Change]) -> None:
        """One HistoricalLocation per relocated Thing (appended to `changes` for notifications). Idempotent:
        what is recorded is cleared."""
        for thing_id, location_ids in sorted(self._located.items()):
            # Serialise concurrent relocations of one Thing, so that the last one wins instead of each
            # keeping its own Location (every statement below then sees the others' committed links).
            # NO KEY UPDATE: it must not conflict with the KEY SHARE locks the link rows' foreign keys hold.
            await conn.execute(_LOCK_THING, (thing_id,))
            if thing_id not in self._new_things:
                await conn.execute(_UNLINK_OTHER_LOCATIONS, (thing_id, sorted(location_ids)))
            cursor = await conn.execute(_INSERT_HISTORICAL_LOCATION, {"t": now, "thing": thing_id})
            row = await cursor.fetchone()
            assert row is not None  # RETURNING always yields the row
            changes.append(Change(HISTORICAL_LOCATION, int(row[0]), created=True, links={"Thing": thing_id}))
            await conn.execute(_LINK_HISTORY, (sorted(location_ids), row[0]))
        self._located.clear()
