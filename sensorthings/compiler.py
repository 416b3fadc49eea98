"""Compile a resource path + query options into ONE parameterised SQL statement whose JSON PostgreSQL builds.

Every user-supplied value becomes a bind parameter (`SqlBuilder.param`); identifiers and JSON keys come only
from the entity model. Python never loops over rows: the statement returns the finished JSON text.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from sensorthings import observation_ids
from sensorthings.errors import BadRequest
from sensorthings.fields import GeoJson, Json, Result
from sensorthings.model import Entity, Relation, Storage
from sensorthings.path import ResourcePath, Step
from sensorthings.query import OrderItem, QueryOptions


class SqlBuilder:
    """Collects bind parameters and hands out fresh table aliases for one statement."""

    def __init__(self, base_url: str) -> None:
        self.params: dict[str, Any] = {}
        self._aliases = itertools.count()
        self.base = self.param(base_url)

    def param(self, value: Any) -> sql.Composable:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return sql.Placeholder(name)

    def alias(self) -> sql.Identifier:
        return sql.Identifier(f"e{next(self._aliases)}")


def qualified(alias: sql.Identifier, column: str) -> sql.Composable:
    return sql.SQL("{}.{}").format(alias, sql.Identifier(column))


def id_predicate(entity: Entity, alias: sql.Identifier, entity_id: int, b: SqlBuilder) -> sql.Composable:
    """`alias.id = :id`, plus, for time-partitioned entities, the day the id encodes so that the lookup
    prunes to one partition (see observation_ids)."""
    id_param = b.param(entity_id)
    condition = sql.SQL("{} = {}").format(qualified(alias, "id"), id_param)
    if not entity.partition_column:
        return condition
    lower, upper = observation_ids.day_bounds(entity_id)
    time_col = qualified(alias, entity.partition_column)
    relocated = sql.SQL("(SELECT r.day_start FROM observation_relocations r WHERE r.id = {})").format(id_param)
    parts = [condition]
    parts.append(sql.SQL("{} >= coalesce({}, {}::timestamptz)").format(
        time_col, relocated, b.param(lower) if lower else sql.Literal("-infinity")))
    parts.append(sql.SQL("{} < coalesce({} + interval '1 day', {}::timestamptz)").format(
        time_col, relocated, b.param(upper) if upper else sql.Literal("infinity")))
    return sql.SQL(" AND ").join(parts)


def relation_join(relation: Relation, source: sql.Identifier, target: sql.Identifier) -> sql.Composable:
    """Condition that links a row `source` (of relation.source) to a row `target` (of relation.target)."""
    if relation.storage is Storage.FK_ON_SOURCE:
        return sql.SQL("{} = {}").format(qualified(target, "id"), qualified(source, relation.column))
    if relation.storage is Storage.FK_ON_TARGET:
        return sql.SQL("{} = {}").format(qualified(target, relation.column), qualified(source, "id"))
    return sql.SQL("EXISTS (SELECT 1 FROM {t} l WHERE l.{s} = {sid} AND l.{g} = {gid})").format(
        t=sql.Identifier(relation.link_table),
        s=sql.Identifier(relation.link_source_column),
        sid=qualified(source, "id"),
        g=sql.Identifier(relation.link_target_column),
        gid=qualified(target, "id"),
    )


def step_conditions(steps: tuple[Step, ...], alias: sql.Identifier, b: SqlBuilder) -> sql.Composable:
    """Constraints on `alias` (a row of steps[-1]) implied by the whole path before it."""
    last = steps[-1]
    parts: list[sql.Composable] = []
    if last.id is not None:
        parts.append(id_predicate(last.entity, alias, last.id, b))
    if len(steps) > 1 and last.relation is not None:
        parent = b.alias()
        parts.append(sql.SQL("EXISTS (SELECT 1 FROM {} {} WHERE {} AND {})").format(
            sql.Identifier(steps[-2].entity.table), parent,
            relation_join(last.relation, parent, alias),
            step_conditions(steps[:-1], parent, b),
        ))
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("TRUE")


def self_link(entity: Entity, alias: sql.Identifier, b: SqlBuilder) -> sql.Composable:
    return sql.SQL("{}::text || {} || {} || ')'").format(
        b.base, sql.Literal(f"/{entity.set_name}("), qualified(alias, "id"))


def entity_json(entity: Entity, alias: sql.Identifier, b: SqlBuilder) -> sql.Composable:
    """The entity as STA JSON: @iot.id, @iot.selfLink, properties, navigation links."""
    link = self_link(entity, alias, b)
    pairs: list[sql.Composable] = [
        sql.Literal("@iot.id"), qualified(alias, "id"),
        sql.Literal("@iot.selfLink"), link,
    ]
    for f in entity.fields:
        pairs += [sql.Literal(f.name), f.json_sql(alias)]
    for name in entity.relations:
        pairs += [sql.Literal(f"{name}@iot.navigationLink"), sql.SQL("{} || {}").format(link, sql.Literal(f"/{name}"))]
    return sql.SQL("json_build_object({})").format(sql.SQL(", ").join(pairs))


def ref_json(entity: Entity, alias: sql.Identifier, b: SqlBuilder) -> sql.Composable:
    return sql.SQL("json_build_object('@iot.selfLink', {})").format(self_link(entity, alias, b))


def order_keys(entity: Entity, alias: sql.Identifier, orderby: tuple[OrderItem, ...], b: SqlBuilder
               ) -> list[sql.Composable]:
    """ORDER BY keys for $orderby, always ending with the id so that paging is stable."""
    keys: list[sql.Composable] = []
    for item in orderby:
        direction = sql.SQL(" DESC") if item.descending else sql.SQL("")
        for expr in _order_exprs(entity, alias, item, b):
            keys.append(sql.SQL("{}{}").format(expr, direction))
    keys.append(qualified(alias, "id"))
    return keys


def _order_exprs(entity: Entity, alias: sql.Identifier, item: OrderItem, b: SqlBuilder) -> list[sql.Composable]:
    head, *rest = item.expr.segments
    if head in ("id", "@iot.id") and not rest:
        return [qualified(alias, "id")]
    field = entity.field(head)
    if field is None:
        if head in entity.relations:
            raise BadRequest(f"$orderby: ordering by the related {head} is not supported yet; "
                             f"order by a property of {entity.name}")
        raise BadRequest(f"$orderby: {entity.name} has no property {head!r}; "
                         f"properties: {', '.join(['id', *entity.property_names])}")
    if not rest:
        return field.order_sql(alias)
    if isinstance(field, Json | GeoJson):
        return [sql.SQL("{} #> {}").format(qualified(alias, field.column), b.param(list(rest)))]
    if isinstance(field, Result):
        return [sql.SQL("{} #> {}").format(qualified(alias, "result_json"), b.param(list(rest)))]
    raise BadRequest(f"$orderby: {head} is not a JSON property; {item.expr} has no meaning")


@dataclass(frozen=True)
class Compiled:
    statement: sql.Composed
    params: dict[str, Any]


def compile_collection(path: ResourcePath, options: QueryOptions, base_url: str) -> Compiled:
    """Columns: value JSON text, more-rows flag, count (or NULL), parent-exists flag."""
    b = SqlBuilder(base_url)
    entity = path.entity
    e, p = b.alias(), b.alias()
    conditions = step_conditions(path.steps, e, b)
    keys = order_keys(entity, e, options.orderby, b)
    item = ref_json(entity, p, b) if path.ref else entity_json(entity, p, b)
    count = (
        sql.SQL("(SELECT count(*) FROM {} {} WHERE {})").format(
            sql.Identifier(entity.table), e, step_conditions(path.steps, e, b))
        if options.count else sql.SQL("NULL::bigint")
    )
    statement = sql.SQL(
        "WITH page AS ("
        " SELECT {e}.*, row_number() OVER (ORDER BY {keys}) AS sta_n FROM {table} {e} WHERE {cond}"
        " ORDER BY {keys} LIMIT {limit} OFFSET {skip})"
        " SELECT (SELECT coalesce(json_agg({item} ORDER BY {p}.sta_n) FILTER (WHERE {p}.sta_n <= {last}),"
        " '[]'::json) FROM page {p})::text,"
        " (SELECT count(*) FROM page) > {top}, {count}, {parent}"
    ).format(
        e=e, p=p, keys=sql.SQL(", ").join(keys), table=sql.Identifier(entity.table), cond=conditions,
        limit=b.param(options.top + 1), skip=b.param(options.skip), item=item,
        last=b.param(options.skip + options.top), top=b.param(options.top), count=count,
        parent=parent_exists(path, b),
    )
    return Compiled(statement, b.params)


def parent_exists(path: ResourcePath, b: SqlBuilder) -> sql.Composable:
    """TRUE when every entity the path names before its last step exists (else the request is a 404)."""
    if len(path.steps) == 1:
        return sql.SQL("TRUE")
    parent_steps = path.steps[:-1]
    alias = b.alias()
    return sql.SQL("EXISTS (SELECT 1 FROM {} {} WHERE {})").format(
        sql.Identifier(parent_steps[-1].entity.table), alias, step_conditions(parent_steps, alias, b))


def compile_entity(path: ResourcePath, base_url: str) -> Compiled:
    """One row (JSON text) when the addressed entity exists, no row otherwise."""
    b = SqlBuilder(base_url)
    e = b.alias()
    entity = path.entity
    if path.prop is not None:
        field = path.prop
        value = field.json_sql(e)
        body = (sql.SQL("{}::text").format(value) if path.value
                else sql.SQL("json_build_object({}, {})::text").format(sql.Literal(field.name), value))
    else:
        body = sql.SQL("{}::text").format(ref_json(entity, e, b) if path.ref else entity_json(entity, e, b))
    statement = sql.SQL("SELECT {} FROM {} {} WHERE {} LIMIT 1").format(
        body, sql.Identifier(entity.table), e, step_conditions(path.steps, e, b))
    return Compiled(statement, b.params)


def compile_ids(path: ResourcePath) -> Compiled:
    """Ids of the entities a path addresses (used by writes to resolve `Things(1)/Locations(2)`)."""
    b = SqlBuilder("")
    e = b.alias()
    statement = sql.SQL("SELECT {}.id FROM {} {} WHERE {}").format(
        e, sql.Identifier(path.entity.table), e, step_conditions(path.steps, e, b))
    return Compiled(statement, b.params)
