"""Create, update, link and delete entities inside ONE transaction per request.

The writer walks request JSON with the entity model: fields are validated by their kinds, relations are
linked by `@iot.id` or created inline (deep insert), and the side effects STA requires are applied before
commit — HistoricalLocations when a Thing's Locations change, a FeatureOfInterest generated from the
Thing's Location, and the Datastream summaries (once per Datastream per request, never per row): widened by
new and changed Observations, narrowed again where Observations were changed, moved or deleted
(write/summaries.py).
Any error raises StaError; the caller's transaction then rolls back, so nothing partial remains.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection, sql

from sensorthings.model import LATEST, observation_ids
from sensorthings.model.access import Role
from sensorthings.model.access import require as require_role
from sensorthings.model.entities import ENTITIES, Entity, Relation, Storage
from sensorthings.model.errors import BadRequest, NotFound, PartitionMissing
from sensorthings.model.kinds import GeoJson, JsonList, Result
from sensorthings.model.results import STREAMS, result_error, stream_of
from sensorthings.model.times import EARLIEST as EARLIEST_TIME
from sensorthings.model.times import LATEST as LATEST_TIME
from sensorthings.query.sql import SqlBuilder, id_predicate
from sensorthings.query.write_statements import (
    FEATURE_COLUMN,
    PHENOMENON_END,
    PHENOMENON_START,
    RESULT_TIME,
    SUMMARY_COLUMNS,
)
from sensorthings.write.bodies import check_keys, column_value, link_id, parse_fields
from sensorthings.write.derived import (
    FEATURE_OF_INTEREST,
    LOCATION,
    OBSERVATION,
    generated_features,
    insert_row,
    stream_facts,
)
from sensorthings.write.history import LocationHistory
from sensorthings.write.ports import Change
from sensorthings.write.rollups import (
    ROLLUP_STREAM,
    Bucket,
    complete_rollup_create,
    definition,
    recompute,
    refuse_rollup_change,
    rollup_changes,
    rollup_write_error,
    rollups_of,
)
from sensorthings.write.summaries import StreamSummaries

THING = ENTITIES["Thing"]
DATASTREAM = ENTITIES["Datastream"]
THING_LOCATIONS = THING.relation("Locations")
LOCATION_THINGS = THING_LOCATIONS.inverse
_result = OBSERVATION.fields_by_name["result"]
assert isinstance(_result, Result)
RESULT: Result = _result
_RELOCATIONS = sql.Identifier(observation_ids.RELOCATIONS_TABLE)
_FORGET_RELOCATION = sql.SQL("DELETE FROM {} WHERE id = %s").format(_RELOCATIONS)


class Writer:
    def __init__(self, conn: AsyncConnection[Any], now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.history = LocationHistory()
        self.summaries = StreamSummaries(conn)
        self._partitions: set[tuple[int, int]] = set()
        self.changes: list[Change] = []
        """What this request created or updated, for notifications after commit."""

    # ---------------------------------------------------------------- helpers

    async def _fetch_one(self, statement: sql.Composed | sql.SQL, params: dict[str, Any] | None = None) -> Any:
        cursor = await self.conn.execute(statement, params or {})
        return await cursor.fetchone()

    async def exists(self, entity: Entity, entity_id: int) -> bool:
        b = SqlBuilder("")
        row = await self._fetch_one(
            sql.SQL("SELECT 1 FROM {} e WHERE {}").format(
                sql.Identifier(entity.table), id_predicate(entity, sql.Identifier("e"), entity_id, b)),
            b.params)
        return row is not None

    async def require(self, entity: Entity, entity_id: int, where: str) -> int:
        if not await self.exists(entity, entity_id):
            raise BadRequest(f"{where}: there is no {entity.name} with @iot.id {entity_id}", field=where)
        return entity_id

    # ---------------------------------------------------------------- create

    async def create(self, entity: Entity, body: Any, where: str,
                     via: Relation | None = None, via_id: int | None = None) -> int:
        """Create `entity` from `body`. `via` is a relation from the new entity to an existing one with id
        `via_id` (the parent in the URL path or in a deep insert)."""
        if not isinstance(body, dict):
            raise BadRequest(f"{where} must be a JSON object with the properties of a {entity.name}")
        check_keys(entity, body, where)
        rollup = entity is DATASTREAM and ("RollupOf" in body or body.get("rollup") is not None)
        if rollup:
            body = await complete_rollup_create(self.conn, body, where)
        columns = parse_fields(entity, body, where, complete=True, now=self.now)
        if via is not None and via.name in body:
            raise BadRequest(f"{where}: {via.name} is given by the URL or the enclosing entity; leave it out",
                             field=f"{where}.{via.name}")

        for relation in entity.relations.values():
            if relation.storage is not Storage.FK_ON_SOURCE:
                continue
            rel_where = f"{where}.{relation.name}"
            if via is relation:
                columns[relation.column] = via_id
            elif relation.name in body:
                columns[relation.column] = await self._resolve_or_create(relation, body[relation.name], rel_where)
            elif relation.generated:
                continue  # generated from the stream's Thing once the stream is known (below)
            elif relation.required:
                raise BadRequest(
                    f"{where}: a {entity.name} needs a {relation.name}; give {{\"@iot.id\": n}} of an existing "
                    f"{relation.target} or a new one inline, or POST to {relation.target_entity.set_name}(n)/"
                    f"{relation.inverse_name}", field=rel_where)

        if entity.exactly_one_of:
            given = [name for name in entity.exactly_one_of if columns.get(entity.relation(name).column) is not None]
            if len(given) != 1:
                names = " or ".join(entity.exactly_one_of)
                raise BadRequest(f"{where}: a {entity.name} needs its {names}, exactly one; give {{\"@iot.id\": n}} "
                                 f"of an existing one or a new one inline", field=f"{where}.{entity.exactly_one_of[0]}")
        if entity is OBSERVATION:
            await self._check_observation(columns, where)

        for relation in entity.relations.values():
            if relation.required and relation.to_many and via is not relation and not body.get(relation.name):
                raise BadRequest(f"{where}: a {entity.name} needs at least one of its {relation.name}; "
                                 f"give [{{\"@iot.id\": n}}] or new ones inline", field=f"{where}.{relation.name}")

        new_id = await self.insert(entity, columns)

        if via is not None and via.storage is Storage.LINK_TABLE:
            await self.link(via, new_id, via_id or 0, rank=0 if via.rank_column else None)
        elif via is not None and via.storage is Storage.FK_ON_TARGET:
            raise BadRequest(f"{where}: create the {entity.name} in its own collection and link it instead")
        for relation in entity.relations.values():
            if relation.to_many and relation.name in body:
                await self._create_children(relation, new_id, body[relation.name], f"{where}.{relation.name}")
        await self._check_components(entity, new_id, where)
        if rollup:  # its Observations, from all of its source's
            self._rollup_summaries(await recompute(self.conn, [new_id], EARLIEST_TIME, LATEST_TIME,
                                                   self.ensure_partition))
        # every to-one link, None where it has none (the stream it does not have, an optional Party)
        links: dict[str, int | None] = {r.name: columns.get(r.column) for r in entity.relations.values()
                                        if r.storage is Storage.FK_ON_SOURCE}
        self.changes.append(Change(entity, new_id, created=True, links=links))
        if entity is ENTITIES["Thing"]:
            self.history.thing_created(new_id)
        if entity is OBSERVATION:
            self.summaries.gained(columns)
        return new_id

    async def _resolve_or_create(self, relation: Relation, value: Any, where: str) -> int:
        target = relation.target_entity
        existing = link_id(value, where)
        if existing is not None:
            return await self.require(target, existing, where)
        return await self.create(target, value, where)

    async def _create_children(self, relation: Relation, parent_id: int, items: Any, where: str) -> None:
        if not isinstance(items, list):
            raise BadRequest(f"{where} must be a JSON array of entities", field=where)
        for index, item in enumerate(items):
            item_where = f"{where}[{index}]"
            existing = link_id(item, item_where)
            if relation.rank_column:  # an ordered list: each one linked at its position
                target_id = (await self.create(relation.target_entity, item, item_where) if existing is None
                             else await self.require(relation.target_entity, existing, item_where))
                if not await self.link(relation, parent_id, target_id, rank=index):
                    raise BadRequest(f"{item_where}: {relation.target}({target_id}) is already in {relation.name}; "
                                     f"each may appear once", field=item_where)
                continue
            if existing is None:
                await self.create(relation.target_entity, item, item_where, relation.inverse, parent_id)
                continue
            await self.require(relation.target_entity, existing, item_where)
            if relation.storage is Storage.FK_ON_TARGET:  # moving an existing entity to the new one changes it
                require_role(Role.UPDATE)
            await self.link(relation, parent_id, existing)

    async def _check_components(self, entity: Entity, entity_id: int, where: str) -> None:
        """An entity with an ordered relation (a MultiDatastream) has as many items in each of its list
        properties (multiObservationDataTypes, unitOfMeasurements) as in that relation: one per component."""
        ranked = [r for r in entity.relations.values() if r.rank_column]
        lists = [f for f in entity.fields if isinstance(f, JsonList)]
        if not ranked or not lists:
            return
        counts = [sql.SQL("jsonb_array_length(e.{})").format(sql.Identifier(f.column)) for f in lists]
        counts += [sql.SQL("(SELECT count(*) FROM {} l WHERE l.{} = e.id)").format(
            sql.Identifier(r.link_table), sql.Identifier(r.link_source_column)) for r in ranked]
        row = await self._fetch_one(sql.SQL("SELECT {} FROM {} e WHERE e.id = %(id)s").format(
            sql.SQL(", ").join(counts), sql.Identifier(entity.table)), {"id": entity_id})
        if row is not None and len(set(row)) > 1:
            found = ", ".join(f"{n} {name}" for n, name in zip(row, [*(f.name for f in lists),
                                                                        *(r.name for r in ranked)], strict=True))
            raise BadRequest(f"{where}: a {entity.name} has one item per component in each of "
                             f"{', '.join(f.name for f in lists)} and {', '.join(r.name for r in ranked)} (in the same "
                             f"order); found {found}", field=where)

    async def insert(self, entity: Entity, columns: dict[str, Any]) -> int:
        """INSERT one row of already validated column values; returns its id."""
        if entity.id_sequence:
            columns = {"id": await self._allocate_id(entity, columns), **columns}
        return await insert_row(self.conn, entity, columns)

    async def _allocate_id(self, entity: Entity, columns: dict[str, Any]) -> int:
        start: datetime = columns[entity.partition_column]
        await self.ensure_partition(start)
        row = await self._fetch_one(sql.SQL("SELECT nextval({})").format(sql.Literal(entity.id_sequence)))
        return observation_ids.observation_id(int(row[0]), start)

    async def ensure_partition(self, time: datetime) -> None:
        """Raise PartitionMissing when the month partition for `time` does not exist (never under
        TimescaleDB); the caller creates it outside this transaction and retries. Checked once per month."""
        utc = time.astimezone(UTC)
        key = (utc.year, utc.month)
        if key in self._partitions:
            return
        row = await self._fetch_one(sql.SQL("SELECT sta_observation_partition_missing(%(t)s)"), {"t": time})
        if row[0]:
            raise PartitionMissing(time)
        self._partitions.add(key)

    async def _check_observation(self, columns: dict[str, Any], where: str) -> None:
        """The result must fit the stream (as in an ingest batch); a missing FeatureOfInterest is generated
        from the current Location of the stream's Thing."""
        found = stream_of(columns)
        assert found is not None
        stream, stream_id = found
        facts = await stream_facts(self.conn, stream, stream_id)
        assert facts is not None  # the stream was required (or created) just before
        if facts.rollup_of is not None:
            raise BadRequest(f"{where}: {rollup_write_error(stream_id, facts.rollup_of)}",
                             field=f"{where}.{stream.name}")
        error = result_error(facts.result_types, columns)
        if error is not None:
            raise BadRequest(f"{where}: {error}", field=f"{where}.result")
        feature = OBSERVATION.relation("FeatureOfInterest")
        if columns.get(feature.column) is not None:
            return
        location_id = facts.location_id
        if location_id is None:
            raise BadRequest(
                f"{where}: the Observation has no FeatureOfInterest and the Thing of {stream.name} "
                f"{stream_id} has no Location to generate one from; give a FeatureOfInterest or "
                f"link the Thing to a Location", field=f"{where}.FeatureOfInterest")
        columns[feature.column] = (facts.generated_feature_id
                                   or (await generated_features(self.conn, [location_id]))[location_id])

    # ---------------------------------------------------------------- links

    async def link(self, relation: Relation, source_id: int, target_id: int, *, rank: int | None = None) -> bool:
        """Link two existing entities through `relation` (source -> target); False when they already were.
        A ranked relation is linked only while its ranked side is created, at position `rank`."""
        if relation.fixed and rank is None:
            raise _fixed_links(relation)
        if relation.storage is Storage.LINK_TABLE:
            ranked = relation.rank_column or relation.inverse.rank_column
            cursor = await self.conn.execute(
                sql.SQL("INSERT INTO {} ({}, {}{}) VALUES (%(s)s, %(t)s{}) ON CONFLICT DO NOTHING").format(
                    sql.Identifier(relation.link_table), sql.Identifier(relation.link_source_column),
                    sql.Identifier(relation.link_target_column),
                    sql.SQL(", {}").format(sql.Identifier(ranked)) if ranked else sql.SQL(""),
                    sql.SQL(", %(rank)s") if ranked else sql.SQL("")),
                {"s": source_id, "t": target_id, "rank": rank})
            if cursor.rowcount == 0:
                return False  # already linked: nothing changed, so no history either
            if relation is THING_LOCATIONS:
                self.history.located(source_id, target_id)
            elif relation is LOCATION_THINGS:
                self.history.located(target_id, source_id)
        elif relation.storage is Storage.FK_ON_TARGET:
            await self._set_fk(relation.target_entity, target_id, relation.inverse, source_id)
        else:
            await self._set_fk(relation.source_entity, source_id, relation, target_id)
        return True

    async def _set_fk(self, entity: Entity, entity_id: int, relation: Relation, value: int) -> None:
        """Point `entity`'s to-one `relation` at `value`; for one of its `exactly_one_of` relations (an
        Observation moved to another stream) the others are cleared and the result checked again."""
        assignments: dict[str, int | None] = {relation.column: value}
        if relation.name in entity.exactly_one_of:
            assignments.update({entity.relation(other).column: None for other in entity.exactly_one_of
                                if other != relation.name})
        if entity is OBSERVATION:
            await self.summaries.leaving(entity_id, assignments)
        b = SqlBuilder("")
        settings = [sql.SQL("{} = {}").format(sql.Identifier(c), b.param(v)) for c, v in assignments.items()]
        await self.conn.execute(sql.SQL("UPDATE {} e SET {} WHERE {}").format(
            sql.Identifier(entity.table), sql.SQL(", ").join(settings),
            id_predicate(entity, sql.Identifier("e"), entity_id, b)), b.params)
        if entity is OBSERVATION:
            await self._after_observation_update(entity_id, assignments, "body")

    async def unlink(self, relation: Relation, source_id: int, target_id: int) -> None:
        if relation.fixed:
            raise _fixed_links(relation)
        if relation.storage is not Storage.LINK_TABLE:
            raise BadRequest(f"{relation.source}.{relation.name} is required by the {relation.target}; "
                             f"link it to another entity instead of removing the link")
        cursor = await self.conn.execute(
            sql.SQL("DELETE FROM {} WHERE {} = %(s)s AND {} = %(t)s").format(
                sql.Identifier(relation.link_table), sql.Identifier(relation.link_source_column),
                sql.Identifier(relation.link_target_column)),
            {"s": source_id, "t": target_id})
        if cursor.rowcount == 0:
            raise NotFound(f"{relation.source}({source_id}) is not linked to {relation.target}({target_id})")

    # ---------------------------------------------------------------- update

    async def update(self, entity: Entity, entity_id: int, body: Any, *, replace: bool, where: str = "body",
                     version: str = LATEST) -> None:
        """PATCH (only the fields sent change) or PUT (`replace`: fields not sent are reset)."""
        if not isinstance(body, dict):
            raise BadRequest(f"{where} must be a JSON object with the properties to change")
        body = dict(body)
        if "@iot.id" in body:
            if str(body.pop("@iot.id")) != str(entity_id):
                raise BadRequest(f"{where}.@iot.id differs from the id in the URL; ids cannot change")
        check_keys(entity, body, where)
        if entity is DATASTREAM and ("RollupOf" in body or "rollup" in body):
            current = await definition(self.conn, entity_id)
            if current is not None:
                refuse_rollup_change(body, current, where)
                body.pop("RollupOf", None)  # unchanged
        columns = parse_fields(entity, body, where, complete=replace, now=self.now, version=version)
        relinks: list[tuple[Relation, list[int]]] = []
        for name, relation in entity.relations.items():
            if name not in body:
                continue
            rel_where = f"{where}.{name}"
            inline_hint = (f"{rel_where}: an update may only link existing entities with {{\"@iot.id\": n}}; "
                           f"create new related entities with POST")
            if relation.storage is Storage.FK_ON_SOURCE and body[name] is None and relation.optional:
                columns[relation.column] = None  # an optional link removed (a STAplus Party, Project, License)
            elif relation.storage is Storage.FK_ON_SOURCE:
                target_id = link_id(body[name], rel_where)
                if target_id is None:
                    raise BadRequest(inline_hint, field=rel_where)
                columns[relation.column] = await self.require(relation.target_entity, target_id, rel_where)
                if name in entity.exactly_one_of:  # moving to another stream leaves the old one
                    if sum(other in body for other in entity.exactly_one_of) > 1:
                        raise BadRequest(f"{where}: give one of {' or '.join(entity.exactly_one_of)}, not "
                                         f"several: a {entity.name} has exactly one", field=rel_where)
                    columns.update({entity.relation(other).column: None for other in entity.exactly_one_of
                                    if other != name})
            elif relation is THING_LOCATIONS:
                items = body[name]
                if not isinstance(items, list):
                    raise BadRequest(f"{rel_where} must be an array of {{\"@iot.id\": n}}", field=rel_where)
                linked: list[int] = []
                for i, item in enumerate(items):
                    target_id = link_id(item, f"{rel_where}[{i}]")
                    if target_id is None:
                        raise BadRequest(inline_hint, field=rel_where)
                    linked.append(await self.require(relation.target_entity, target_id, rel_where))
                relinks.append((relation, linked))
            else:
                raise BadRequest(f"{rel_where}: {name} cannot be changed in an update; link entities with "
                                 f"POST {entity.set_name}({entity_id})/{name}/$ref", field=rel_where)

        if entity is OBSERVATION:
            await self._refuse_computed(entity_id, where)
            await self.summaries.leaving(entity_id, columns)
        if columns:
            if entity.partition_column and entity.partition_column in columns:
                await self._move_partitioned(entity, entity_id, columns)
            else:
                await self._update_columns(entity, entity_id, columns)
        if entity is FEATURE_OF_INTEREST and any(c in columns for f in entity.fields if isinstance(f, GeoJson)
                                                 for c in f.columns):
            await self.summaries.feature_reshaped(entity_id)
        if entity is LOCATION and any(isinstance(f, GeoJson) and f.column in columns for f in entity.fields):
            # A FeatureOfInterest generated from the old position must not be reused for the new one.
            await self.conn.execute(sql.SQL("UPDATE {} SET {generated} = NULL WHERE {generated} = %s").format(
                sql.Identifier(FEATURE_OF_INTEREST.table),
                generated=sql.Identifier(FEATURE_OF_INTEREST.generated_from_column)), (entity_id,))
        for relation, ids in relinks:
            for target_id in ids:
                await self.link(relation, entity_id, target_id)
        if entity is OBSERVATION and columns:
            await self._after_observation_update(entity_id, columns, where)
        if any(isinstance(f, JsonList) and f.column in columns for f in entity.fields):
            await self._check_components(entity, entity_id, where)
        sent = tuple(name for name in entity.property_names if name in body)
        self.changes.append(Change(entity, entity_id, created=False, properties=sent))

    async def _update_columns(self, entity: Entity, entity_id: int, columns: dict[str, Any]) -> None:
        b = SqlBuilder("")
        assignments = [sql.SQL("{} = {}").format(sql.Identifier(name), column_value(entity, name, b.param(v)))
                       for name, v in columns.items()]
        cursor = await self.conn.execute(sql.SQL("UPDATE {} e SET {} WHERE {}").format(
            sql.Identifier(entity.table), sql.SQL(", ").join(assignments),
            id_predicate(entity, sql.Identifier("e"), entity_id, b)), b.params)
        if cursor.rowcount == 0:
            raise NotFound(f"no {entity.name} with @iot.id {entity_id}")

    async def _move_partitioned(self, entity: Entity, entity_id: int, columns: dict[str, Any]) -> None:
        """Change the partition key by delete + insert with the same id (works for native partitions and
        TimescaleDB chunks alike) and record the new day so that id lookups still prune."""
        new_time: datetime = columns[entity.partition_column]
        await self.ensure_partition(new_time)
        b = SqlBuilder("")
        all_columns = ["id", *(c for f in entity.fields for c in f.columns),
                       *(r.column for r in entity.relations.values() if r.storage is Storage.FK_ON_SOURCE)]
        select_list = [column_value(entity, c, b.param(columns[c])) if c in columns else sql.Identifier(c)
                       for c in all_columns]
        statement = sql.SQL(
            "WITH moved AS (DELETE FROM {table} e WHERE {pred} RETURNING e.*) "
            "INSERT INTO {table} ({cols}) SELECT {select} FROM moved"
        ).format(table=sql.Identifier(entity.table), pred=id_predicate(entity, sql.Identifier("e"), entity_id, b),
                 cols=sql.SQL(", ").join(map(sql.Identifier, all_columns)), select=sql.SQL(", ").join(select_list))
        cursor = await self.conn.execute(statement, b.params)
        if cursor.rowcount == 0:
            raise NotFound(f"no {entity.name} with @iot.id {entity_id}")
        day = observation_ids.day_start(new_time)
        if observation_ids.day_bounds(entity_id)[0] == day:
            await self.conn.execute(_FORGET_RELOCATION, (entity_id,))
        else:
            await self.conn.execute(sql.SQL(
                "INSERT INTO {} (id, {day}) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET {day} = EXCLUDED.{day}"
            ).format(_RELOCATIONS, day=sql.Identifier(observation_ids.RELOCATED_DAY_COLUMN)), (entity_id, day))

    async def _after_observation_update(self, observation_id: int, changed: dict[str, Any], where: str) -> None:
        """Widen the stream's summary by the updated Observation; when its result or its stream changed, the
        result must still fit the stream."""
        keys = (PHENOMENON_START, PHENOMENON_END, RESULT_TIME, FEATURE_COLUMN, *RESULT.columns,
                *(r.column for r in STREAMS))
        # a JSON result as its stored text, as a create holds it (not decoded and written again)
        selected = [sql.SQL("{}::text").format(sql.Identifier(k)) if k == RESULT.json_column else sql.Identifier(k)
                    for k in keys]
        b = SqlBuilder("")
        row = await self._fetch_one(sql.SQL("SELECT {} FROM {} e WHERE {}").format(
            sql.SQL(", ").join(selected), sql.Identifier(OBSERVATION.table),
            id_predicate(OBSERVATION, sql.Identifier("e"), observation_id, b)), b.params)
        if row is None:
            return
        columns = dict(zip(keys, row, strict=True))
        if any(c in changed for c in (*OBSERVATION.fields_by_name["result"].columns, *(r.column for r in STREAMS))):
            stream, stream_id = stream_of(columns) or (STREAMS[0], 0)
            facts = await stream_facts(self.conn, stream, stream_id)
            error = result_error(facts.result_types if facts else None, columns)
            if error is not None:
                raise BadRequest(f"{where}: {error}", field=f"{where}.result")
        self.summaries.gained(columns)

    async def _refuse_computed(self, observation_id: int, where: str) -> None:
        """Observations of a rollup are computed from its source's (write/rollups.py): not changed by hand."""
        b = SqlBuilder("")
        rollup_of = sql.Identifier(DATASTREAM.relation("RollupOf").column)
        row = await self._fetch_one(sql.SQL(
            "SELECT d.id, d.{of} FROM {} e JOIN {} d ON d.id = e.{} WHERE {} AND d.{of} IS NOT NULL"
        ).format(sql.Identifier(OBSERVATION.table), sql.Identifier(DATASTREAM.table),
                 sql.Identifier(OBSERVATION.relation("Datastream").column),
                 id_predicate(OBSERVATION, sql.Identifier("e"), observation_id, b), of=rollup_of), b.params)
        if row is not None:
            raise BadRequest(f"{where}: Observation {observation_id} is computed, not written; "
                             f"{rollup_write_error(int(row[0]), int(row[1]))}")

    def observations_removed(self, removed: Any) -> None:
        """Observations were deleted by a statement of their own (compile_filtered_delete): `removed` is what
        it reports they took from their streams' summaries."""
        self.summaries.removed_by_statement(removed)

    # ---------------------------------------------------------------- delete

    async def delete(self, entity: Entity, entity_id: int) -> None:
        """Delete one entity; foreign keys cascade (Thing -> Datastreams -> Observations, ...), link-table
        cascades the model declares (Location -> HistoricalLocations) are applied here."""
        for relation in entity.relations.values():
            if relation.delete_targets:
                await self.conn.execute(sql.SQL(
                    "DELETE FROM {target} WHERE id IN (SELECT {tcol} FROM {link} WHERE {scol} = %(id)s)").format(
                    target=sql.Identifier(relation.target_entity.table),
                    tcol=sql.Identifier(relation.link_target_column), link=sql.Identifier(relation.link_table),
                    scol=sql.Identifier(relation.link_source_column)), {"id": entity_id})
        if entity is FEATURE_OF_INTEREST:
            await self.summaries.feature_deleting(entity_id)
        if entity is OBSERVATION:
            await self._refuse_computed(entity_id, "the request")
        b = SqlBuilder("")
        returning: sql.Composable = sql.SQL("")
        if entity is OBSERVATION:
            returning = sql.SQL(" RETURNING {}").format(sql.SQL(", ").join(map(sql.Identifier, SUMMARY_COLUMNS)))
        cursor = await self.conn.execute(sql.SQL("DELETE FROM {} e WHERE {}{}").format(
            sql.Identifier(entity.table), id_predicate(entity, sql.Identifier("e"), entity_id, b), returning),
            b.params)
        if cursor.rowcount == 0:
            raise NotFound(f"no {entity.name} with @iot.id {entity_id}")
        if entity is OBSERVATION:
            row = await cursor.fetchone()
            assert row is not None  # one row went
            self.summaries.left(dict(zip(SUMMARY_COLUMNS, row, strict=True)))
        if entity.partition_column:
            await self.conn.execute(_FORGET_RELOCATION, (entity_id,))

    # ---------------------------------------------------------------- finish

    async def finish(self) -> None:
        """Apply the per-request side effects before commit. Idempotent: a second call finds nothing to do
        (POST calls it early so that the entity it returns already shows them)."""
        await self.history.record(self.conn, self.now, self.changes)
        spans = self.summaries.datastream_spans()
        await self.summaries.apply()
        await self._recompute_rollups(spans)
        await self.summaries.apply()  # the rollups' own summaries

    async def _recompute_rollups(self, spans: dict[int, tuple[datetime, datetime]]) -> None:
        """The rollups of Datastreams whose Observations this request created, changed or deleted: their
        buckets over what changed, computed again from the raw Observations (an ingest batch merges instead:
        write/rollups.py)."""
        if not spans:
            return
        for rollup_id, source_id in await rollups_of(self.conn, spans):
            low, high = spans[source_id]
            self._rollup_summaries(await recompute(self.conn, [rollup_id], low, high, self.ensure_partition))

    def _rollup_summaries(self, buckets: list[Bucket]) -> None:
        """What changed buckets do to their rollups' summaries, and the notifications they make."""
        self.changes.extend(rollup_changes(buckets))
        for bucket in buckets:
            self.summaries.rollup_changed((ROLLUP_STREAM, bucket.rollup_id), bucket.start, bucket.end,
                                          bucket.feature_id, emptied=not bucket.count)


def _fixed_links(relation: Relation) -> BadRequest:
    ranked = relation if relation.rank_column else relation.inverse
    return BadRequest(f"the {ranked.name} of a {ranked.source} are set when it is created, one per component in "
                      f"order; they cannot be linked or unlinked later (create a new {ranked.source})")


def changed_fields(before: dict[str, Any], after: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Top-level properties that differ between two JSON documents (for JSON-Patch)."""
    return {name: after.get(name) for name in names if before.get(name) != after.get(name)}
