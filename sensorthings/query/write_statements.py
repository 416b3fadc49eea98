"""Statements the write side and its listeners run: the ids a path addresses, the filtered DELETE of a
collection, and the JSON (as GET renders it) of entities just created (ingest's 201 bodies) or changed (MQTT
notifications), from templates compiled once per entity."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, NamedTuple

from psycopg import sql

from sensorthings.model import LATEST, observation_ids
from sensorthings.model.access import ANONYMOUS
from sensorthings.model.entities import ENTITIES, Entity, Relation, Storage
from sensorthings.model.results import STREAMS
from sensorthings.query import odata, visibility
from sensorthings.query.addressed import matching_rows, parent_exists
from sensorthings.query.compiled import Compiled
from sensorthings.query.entity_json import Limits, entity_json
from sensorthings.query.expressions import ExpressionCompiler
from sensorthings.query.options import QueryOptions
from sensorthings.query.path import ResourcePath
from sensorthings.query.sql import SqlBuilder, qualified, relation_join, step_conditions
from sensorthings.query.visibility import View

_OBSERVATION = ENTITIES["Observation"]
_OBSERVATION_FEATURE = _OBSERVATION.relation("FeatureOfInterest")
PHENOMENON_START, PHENOMENON_END = _OBSERVATION.fields_by_name["phenomenonTime"].columns
RESULT_TIME = _OBSERVATION.fields_by_name["resultTime"].column
FEATURE_COLUMN = _OBSERVATION_FEATURE.column
SUMMARY_COLUMNS: tuple[str, ...] = (PHENOMENON_START, PHENOMENON_END, RESULT_TIME, FEATURE_COLUMN,
                                    *(r.column for r in STREAMS))
"""The Observation columns its stream's summary (phenomenonTime, resultTime, observedArea) is made of."""


class RemovedFromStream(NamedTuple):
    """What Observations that left one stream (deleted, or moved away) had contributed to its summary."""

    stream: Relation
    stream_id: int
    start: datetime
    end: datetime
    result_start: datetime | None
    result_end: datetime | None
    feature_ids: list[int]


_DEFAULT_LIMITS = Limits()  # frozen: the limits of REST reads by default (compile_changed's expansions)

_REMOVED_KEYS = ("start", "end", "resultStart", "resultEnd", "features")
"""The keys of the objects of `removed_streams`, besides the stream's relation name."""


def removed_streams(observations: sql.Composable) -> sql.Composable:
    """A scalar subquery over `observations` (a FROM item with the SUMMARY_COLUMNS): one JSON object per stream
    of those Observations with their extent there (read by `read_removed`), NULL when there are none."""
    o = sql.Identifier("o")
    streams = [sql.SQL("{}.{} AS {}").format(o, sql.Identifier(r.column), sql.Identifier(r.name)) for r in STREAMS]
    start, end = (sql.SQL("{}.{}").format(o, sql.Identifier(c)) for c in (PHENOMENON_START, PHENOMENON_END))
    result_time = sql.SQL("{}.{}").format(o, sql.Identifier(RESULT_TIME))
    return sql.SQL(
        "(SELECT json_agg(s) FROM (SELECT {streams}, min({start}) AS {k0}, max(coalesce({end}, {start})) AS {k1},"
        " min({result}) AS {k2}, max({result}) AS {k3}, array_agg(DISTINCT {o}.{feature}) AS {k4}"
        " FROM {observation_rows} {o} GROUP BY {groups}) s)").format(
        streams=sql.SQL(", ").join(streams), start=start, end=end, result=result_time, o=o,
        feature=sql.Identifier(_OBSERVATION_FEATURE.column), observation_rows=observations,
        **{f"k{n}": sql.Identifier(k) for n, k in enumerate(_REMOVED_KEYS)},
        groups=sql.SQL(", ").join(sql.SQL("{}.{}").format(o, sql.Identifier(r.column)) for r in STREAMS))


def read_removed(value: Any) -> list[RemovedFromStream]:
    """The decoded JSON of `removed_streams` (None when there were no rows), as RemovedFromStream."""
    removed: list[RemovedFromStream] = []
    for row in value or ():
        stream = next(r for r in STREAMS if row[r.name] is not None)
        start, end, result_start, result_end = (None if row[k] is None else datetime.fromisoformat(row[k])
                                                for k in _REMOVED_KEYS[:4])
        assert start is not None and end is not None  # phenomenonTime is required
        removed.append(RemovedFromStream(stream, int(row[stream.name]), start, end, result_start, result_end,
                                         [int(f) for f in row[_REMOVED_KEYS[4]]]))
    return removed


def compile_filtered_delete(path: ResourcePath, options: QueryOptions, *, view: View) -> Compiled:
    """DELETE of every entity of a collection path that passes `$filter`, in one statement that returns how
    many went, or NULL when an entity the path names before its last step does not exist, and (see
    `removed_streams`, NULL for none) what the Observations it deletes took from their streams' summaries:
    the Observations themselves, or those of deleted FeaturesOfInterest, which the foreign key cascades to.
    Link-table cascades the model declares (a Location's HistoricalLocations) go first, as for a single
    delete. Only what `view` lets the principal bound at execution see is matched, and never the computed
    Observations of a rollup Datastream: they follow their source's (the writer recomputes them)."""
    b = SqlBuilder("", path.version, view=view)
    entity, e = path.entity, b.alias()
    condition = matching_rows(path, options, e, b)
    if entity is _OBSERVATION:
        condition = sql.SQL("{} AND {}").format(condition, _not_computed(e))
    matching = sql.SQL("SELECT {e}.id FROM {table} {e} WHERE {cond}").format(
        e=e, table=b.source(entity), cond=condition)
    steps: list[sql.Composable] = []
    for n, relation in enumerate(r for r in entity.relations.values() if r.delete_targets):
        steps.append(sql.SQL("cascade{n} AS (DELETE FROM {target} WHERE id IN (SELECT {tcol} FROM {link} "
                             "WHERE {scol} IN ({matching})))").format(
            n=sql.SQL(str(n)), target=sql.Identifier(relation.target_entity.table),
            tcol=sql.Identifier(relation.link_target_column), link=sql.Identifier(relation.link_table),
            scol=sql.Identifier(relation.link_source_column), matching=matching))
    gone = b.alias()
    returned = [sql.SQL("{}.id").format(gone)]
    removed: sql.Composable = sql.SQL("NULL::json")
    if entity is _OBSERVATION:
        returned += [sql.SQL("{}.{}").format(gone, sql.Identifier(c)) for c in SUMMARY_COLUMNS]
        removed = removed_streams(sql.Identifier("gone"))
    elif entity is _OBSERVATION_FEATURE.target_entity:  # read before the cascade (the statement's snapshot)
        removed = removed_streams(sql.SQL("(SELECT {} FROM {} WHERE {} IN (SELECT id FROM gone))").format(
            sql.SQL(", ").join(map(sql.Identifier, SUMMARY_COLUMNS)), sql.Identifier(_OBSERVATION.table),
            sql.Identifier(_OBSERVATION_FEATURE.column)))
    steps.append(sql.SQL("gone AS (DELETE FROM {table} {g} WHERE {g}.id IN ({matching}) RETURNING {returned})").format(
        table=sql.Identifier(entity.table), g=gone, matching=matching, returned=sql.SQL(", ").join(returned)))
    if entity.partition_column:
        steps.append(sql.SQL("relocated AS (DELETE FROM {} WHERE id IN (SELECT id FROM gone))").format(
            sql.Identifier(observation_ids.RELOCATIONS_TABLE)))
    statement = sql.SQL("WITH {} SELECT CASE WHEN {} THEN (SELECT count(*) FROM gone) END, {}").format(
        sql.SQL(", ").join(steps), parent_exists(path, b), removed)
    return Compiled(statement, b.params)


def _not_computed(alias: sql.Composable) -> sql.Composable:
    """The condition that Observation `alias` is not one of a rollup's (write/rollups.py)."""
    datastream = _OBSERVATION.relation("Datastream")
    rollup_of = datastream.target_entity.relation("RollupOf")
    column = sql.SQL("{}.{}").format(alias, sql.Identifier(datastream.column))
    return sql.SQL("({c} IS NULL OR {c} NOT IN (SELECT r.id FROM {} r WHERE r.{} IS NOT NULL))").format(
        sql.Identifier(datastream.target_entity.table), sql.Identifier(rollup_of.column), c=column)


@functools.lru_cache(maxsize=64)
def _created_template(entity: Entity, base_url: str) -> tuple[Compiled, tuple[str, str, str]]:
    b = SqlBuilder(base_url)
    e = b.alias()
    names = tuple(f"p{len(b.params) + n}" for n in range(3))  # the names b.param gives the next three
    ids, earliest, latest = b.param(None), b.param(None), b.param(None)
    assert all(name in b.params for name in names)
    condition = sql.SQL("{} = ANY({})").format(qualified(e, "id"), ids)
    if entity.partition_column:
        time_col = qualified(e, entity.partition_column)
        condition = sql.SQL("{} AND {} >= {} AND {} <= {}").format(condition, time_col, earliest, time_col, latest)
    statement = sql.SQL("SELECT {}, {}::text FROM {} {} WHERE {}").format(
        qualified(e, "id"), entity_json(entity, e, b, ()), sql.Identifier(entity.table), e, condition)
    return Compiled(statement, b.params, rendered=statement.as_bytes(None)), (names[0], names[1], names[2])


def compile_created(entity: Entity, ids: list[int], base_url: str, earliest: datetime, latest: datetime
                    ) -> Compiled:
    """(id, JSON as GET renders it) of entities just created in this transaction: the 201 bodies of an ingest
    batch in one statement. `earliest`/`latest` bound the partition column (the batch's phenomenon times), so
    that a time-partitioned table is searched only in the partitions the batch wrote to."""
    template, (ids_name, earliest_name, latest_name) = _created_template(entity, base_url)
    params = {**template.params, ids_name: ids, earliest_name: earliest, latest_name: latest}
    return Compiled(template.statement, params, rendered=template.rendered)


def compile_ids(path: ResourcePath, *, view: View) -> Compiled:
    """Ids of the entities a path addresses (used by writes to resolve `Things(1)/Locations(2)`), of those
    `view` lets the principal bound at execution see (the others are not found)."""
    b = SqlBuilder("", view=view)
    e = b.alias()
    statement = sql.SQL("SELECT {}.id FROM {} {} WHERE {}").format(
        e, b.source(path.entity), e, step_conditions(path.steps, e, b))
    return Compiled(statement, b.params)


def notified_relations(entity: Entity) -> list[Relation]:
    """Relations whose other end lists this entity in a collection (`Datastreams(1)/Observations`): a
    change of the entity is also notified on that collection's topic (STA §14.1)."""
    return [r for r in entity.relations.values()
            if r.inverse.to_many and r.storage in (Storage.FK_ON_SOURCE, Storage.LINK_TABLE)]


def compile_changed(entity: Entity, ids: list[int], base_url: str, select: tuple[str, ...] = (),
                    version: str = LATEST, *, filter: str | None = None, expand: str | None = None,
                    limits: Limits = _DEFAULT_LIMITS) -> Compiled:
    """For each of `ids`: the id, the ids of related entities per `notified_relations` (one array each), the
    row's audience (`visibility.audience`: NULL when it is public) and the entity's JSON exactly as GET of
    `version` renders it (with `select` as `$select`), for MQTT notifications. Every row comes back,
    restricted ones too: the notifier publishes a row with an audience only to a broker that delivers it
    to that audience alone. From a statement compiled once per entity, base URL, select and version (and
    filter and expand): the notifier runs it for every batch.

    `filter` and `expand` (the texts of `$filter` and `$expand`, parsed by query.odata; `expand` within
    `limits`) make it the element of GET of a collection with those options: only the rows that pass the
    filter, rendered with the expansions. Such a statement is compiled for the public (VISIBLE, bound to
    ANONYMOUS), and its audience column is NULL: a filter or an expansion across relations reads related
    rows, which could be restricted even where the row itself is public, so no audience of the row could say
    who may learn what it reveals. Raises StaError for options that GET would reject."""
    template, ids_name = _changed_template(entity, base_url, select, version, filter, expand, limits)
    params = {**template.params, ids_name: ids}
    if filter is not None or expand is not None:
        params.update(visibility.params(ANONYMOUS))
    return Compiled(template.statement, params, rendered=template.rendered)


@functools.lru_cache(maxsize=256)
def _changed_template(entity: Entity, base_url: str, select: tuple[str, ...], version: str, filter_text: str | None,
                      expand_text: str | None, limits: Limits) -> tuple[Compiled, str]:
    public = filter_text is not None or expand_text is not None
    b = SqlBuilder(base_url, version, view=View.VISIBLE if public else View.ALL)
    e = b.alias()
    related: list[sql.Composable] = []
    for relation in notified_relations(entity):
        if relation.storage is Storage.FK_ON_SOURCE:
            related.append(sql.SQL("ARRAY[{}]").format(qualified(e, relation.column)))
        else:
            related.append(sql.SQL("ARRAY(SELECT l.{} FROM {} l WHERE l.{} = {})").format(
                sql.Identifier(relation.link_target_column), sql.Identifier(relation.link_table),
                sql.Identifier(relation.link_source_column), qualified(e, "id")))
    expand: tuple[odata.ExpandItem, ...] = odata.parse("expand", expand_text) if expand_text is not None else ()
    rendered = entity_json(entity, e, b, select, expand, limits)
    condition: sql.Composable = sql.SQL("")
    if filter_text is not None:
        condition = sql.SQL(" AND {}").format(
            ExpressionCompiler(b, entity, e, relation_join).predicate(odata.parse("filter", filter_text)))
    audience = sql.SQL("NULL::text") if public else visibility.audience(entity, e)
    ids_name = f"p{len(b.params)}"  # the name b.param gives the next one
    statement = sql.SQL("SELECT {id}, {related} {audience}, {json}::text FROM {table} {e}"
                        " WHERE {id} = ANY({ids}){condition}").format(
        id=qualified(e, "id"), related=sql.SQL("").join(sql.SQL("{}, ").format(r) for r in related),
        audience=audience, json=rendered, table=b.source(entity), e=e, ids=b.param(None), condition=condition)
    assert ids_name in b.params
    return Compiled(statement, b.params, rendered=statement.as_bytes(None)), ids_name
