"""Compile a resource path + query options into ONE parameterised SQL statement whose JSON PostgreSQL builds.

Every user-supplied value becomes a bind parameter (`SqlBuilder.param`); identifiers and JSON keys come only
from the entity model. Python never loops over rows: the statement returns the finished JSON text.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from typing import Any
from urllib.parse import urlencode

from psycopg import sql

from sensorthings.model import observation_ids
from sensorthings.model.entities import Entity, Relation, Storage
from sensorthings.model.errors import BadRequest
from sensorthings.query.expressions import ExpressionCompiler
from sensorthings.query.odata import ExpandItem, OrderItem, Path
from sensorthings.query.options import QueryOptions
from sensorthings.query.path import ResourcePath, Step
from sensorthings.query.sql import (
    SqlBuilder,
    by_relation,
    qualified,
    rank_of,
    relation_join,
    self_link,
    step_conditions,
)


@dataclass(frozen=True)
class Limits:
    """Paging and nesting limits that also apply inside $expand."""

    default_top: int = 100
    max_top: int = 10_000
    max_expand_depth: int = 5
    exact_count_limit: int = 100_000


def selectable_names(entity: Entity) -> tuple[str, ...]:
    """What `$select` takes for `entity`: the id and selfLink annotations, properties, navigation properties."""
    return ("id", "@iot.id", "@iot.selfLink", *entity.property_names, *entity.relations)


def _select_names(entity: Entity, select: tuple[str, ...]) -> set[str]:
    allowed = set(selectable_names(entity))
    unknown = [name for name in select if name not in allowed]
    if unknown:
        raise BadRequest(f"$select: {entity.name} has no property {unknown[0]!r}; choose from "
                         f"{', '.join(['id', *entity.property_names, *entity.relations])}")
    return set(select)


def entity_json(entity: Entity, alias: sql.Identifier, b: SqlBuilder, select: tuple[str, ...] = (),
                expand: tuple[ExpandItem, ...] = (), limits: Limits = Limits(), depth: int = 0) -> sql.Composable:
    """The entity as STA JSON: @iot.id, @iot.selfLink, properties and navigation links (only those named
    in `select`, when given), with the `expand`ed related entities inline."""
    chosen = _select_names(entity, select)

    def wanted(name: str) -> bool:
        return not chosen or name in chosen

    link = self_link(entity, alias, b)
    pairs: list[sql.Composable] = []
    if wanted("@iot.id") or "id" in chosen:
        pairs += [sql.Literal("@iot.id"), qualified(alias, "id")]
    if wanted("@iot.selfLink"):
        pairs += [sql.Literal("@iot.selfLink"), link]
    for f in entity.fields:
        if wanted(f.name):
            pairs += [sql.Literal(f.name), f.json_sql(alias)]
    expanded = {item.path for item in expand}
    navigation: list[tuple[str, list[sql.Composable]]] = [
        (name, [sql.Literal(f"{name}@iot.navigationLink"), sql.SQL("{} || {}").format(link, sql.Literal(f"/{name}"))])
        for name in entity.relations if wanted(name) and name not in expanded]
    expanded_pairs: list[sql.Composable] = []
    extras: list[tuple[str, sql.Composable]] = []
    for item in merge_expands(expand):
        relation = entity.relations.get(item.path)
        if relation is None:
            raise BadRequest(f"$expand: {entity.name} has no relation {item.path!r}; "
                             f"relations: {', '.join(entity.relations)}")
        if depth + 1 > limits.max_expand_depth:
            raise BadRequest(f"$expand is nested deeper than the limit of {limits.max_expand_depth} levels")
        value, more = _expanded(relation, alias, link, item, b, limits, depth + 1)
        expanded_pairs += [sql.Literal(relation.name), value]
        extras += more

    streams = [entity.relation(name) for name, _ in navigation if name in entity.exactly_one_of]
    if streams and len(streams) == len(entity.exactly_one_of):
        # An Observation links the stream it has (the database holds exactly one), not the other: one pair
        # whose key and link follow the row, in the place of the first. (A CASE over one object per stream
        # tripled the planning time of an Observation's JSON.)
        switch = [by_relation(alias, streams, lambda r: sql.Literal(f"{r.name}@iot.navigationLink")),
                  sql.SQL("{} || {}").format(link, by_relation(alias, streams, lambda r: sql.Literal(f"/{r.name}")))]
        navigation = [(name, switch if name == streams[0].name else pair) for name, pair in navigation
                      if name == streams[0].name or name not in entity.exactly_one_of]
    else:  # $select names only some of them: each link where the row has that stream, left out elsewhere
        navigation = [(name, pair) for name, pair in navigation if name not in entity.exactly_one_of]
        extras += [(f"{r.name}@iot.navigationLink",
                    sql.SQL("CASE WHEN {} IS NOT NULL THEN to_json({} || {}) END").format(
                        qualified(alias, r.column), link, sql.Literal(f"/{r.name}"))) for r in streams]
    links = [part for _, pair in navigation for part in pair]
    obj = sql.SQL("json_build_object({})").format(sql.SQL(", ").join([*pairs, *links, *expanded_pairs]))
    for key, value in extras:
        obj = sql.SQL("sta_json_with({}, {}, {})").format(obj, sql.Literal(key), value)
    return obj


def merge_expands(items: tuple[ExpandItem, ...]) -> list[ExpandItem]:
    """One item per navigation property: `Datastreams/Sensor,Datastreams/ObservedProperty` expands
    Datastreams once with both inside (as FROST does), instead of writing the key twice."""
    merged: dict[str, ExpandItem] = {}
    for item in items:
        earlier = merged.get(item.path)
        if earlier is None:
            merged[item.path] = item
            continue
        if replace(earlier, expand=(), texts=()) != replace(item, expand=(), texts=()):
            raise BadRequest(f"$expand names {item.path} twice with different options; give its options once")
        merged[item.path] = replace(earlier, expand=earlier.expand + item.expand,
                                    texts=_merged_texts(earlier.texts, item.texts))
    return list(merged.values())


def _merged_texts(first: tuple[tuple[str, str], ...], second: tuple[tuple[str, str], ...]
                  ) -> tuple[tuple[str, str], ...]:
    """Nested option texts of two merged expand items; their $expand lists are joined."""
    texts = dict(first)
    for key, value in second:
        texts[key] = f"{texts[key]},{value}" if key == "$expand" and key in texts else value
    return tuple(texts.items())


def _expanded(relation: Relation, source: sql.Identifier, source_link: sql.Composable, item: ExpandItem,
              b: SqlBuilder, limits: Limits, depth: int) -> tuple[sql.Composable, list[tuple[str, sql.Composable]]]:
    """SQL for one expanded navigation property, plus conditional keys (count, nextLink)."""
    target = relation.target_entity
    t = b.alias()
    conditions = [relation_join(relation, source, t)]
    if item.filter is not None:
        conditions.append(ExpressionCompiler(b, target, t, relation_join).predicate(item.filter))
    where = sql.SQL(" AND ").join(conditions)
    rendered = entity_json(target, t, b, item.select, item.expand, limits, depth)
    if not relation.to_many:
        return sql.SQL("(SELECT {} FROM {} {} WHERE {})").format(rendered, sql.Identifier(target.table), t, where), []
    top = min(item.top if item.top is not None else limits.default_top, limits.max_top)
    keys = (order_keys(target, t, item.orderby, b) if item.orderby or not relation.rank_column
            else [rank_of(relation, qualified(source, "id"), t), qualified(t, "id")])
    r = b.alias()
    value = sql.SQL(
        "(SELECT coalesce(json_agg({r}.j ORDER BY {r}.n), '[]'::json) FROM ("
        "SELECT {rendered} AS j, row_number() OVER (ORDER BY {keys}) AS n FROM {table} {t} WHERE {where} "
        "ORDER BY {keys} LIMIT {top} OFFSET {skip}) {r})"
    ).format(r=r, rendered=rendered, keys=sql.SQL(", ").join(keys), table=sql.Identifier(target.table), t=t,
             where=where, top=b.param(top), skip=b.param(item.skip))
    extras: list[tuple[str, sql.Composable]] = []
    if item.count:  # counted up to the exact-count limit + 1, never a scan of a whole large collection
        extras.append((f"{relation.name}@iot.count", sql.SQL(
            "to_json((SELECT count(*) FROM (SELECT 1 FROM {} {} WHERE {} LIMIT {}) AS counted))").format(
            sql.Identifier(target.table), t, where, b.param(limits.exact_count_limit + 1))))
    query = _expand_query(item, top)
    if top == 0:
        return value, extras
    extras.append((f"{relation.name}@iot.nextLink", sql.SQL(
        "CASE WHEN EXISTS (SELECT 1 FROM {} {} WHERE {} OFFSET {}) THEN to_json({} || {}) END").format(
        sql.Identifier(target.table), t, where, b.param(item.skip + top), source_link,
        b.param(f"/{relation.name}?{query}"))))
    return value, extras


def _expand_query(item: ExpandItem, top: int) -> str:
    """The query of the nextLink of an expanded collection: its own options with the next $skip."""
    options = [*item.texts, ("$top", str(top)), ("$skip", str(item.skip + top))]
    if item.count:
        options.append(("$count", "true"))
    return urlencode(options, safe="$(),'/:").replace("+", "%20")


def ref_json(entity: Entity, alias: sql.Identifier, b: SqlBuilder) -> sql.Composable:
    return sql.SQL("json_build_object('@iot.selfLink', {})").format(self_link(entity, alias, b))


def order_keys(entity: Entity, alias: sql.Identifier, orderby: tuple[OrderItem, ...], b: SqlBuilder
               ) -> list[sql.Composable]:
    """ORDER BY keys for $orderby, always ending with the id so that paging is stable."""
    compiler = ExpressionCompiler(b, entity, alias, relation_join, "$orderby")
    keys: list[sql.Composable] = []
    for item in orderby:
        direction = sql.SQL(" DESC") if item.descending else sql.SQL("")
        for expr in compiler.order_values(item.expr):
            keys.append(sql.SQL("{}{}").format(expr, direction))
    keys.append(qualified(alias, "id"))
    return keys


@dataclass(frozen=True)
class Compiled:
    statement: sql.Composed
    params: dict[str, Any]
    rendered: bytes | None = None
    """The statement's text when it is already known (a template's)."""

    @cached_property
    def query(self) -> bytes:
        """The statement as text, rendered once (compiled reads are cached and executed repeatedly)."""
        return self.rendered if self.rendered is not None else self.statement.as_bytes(None)


@dataclass(frozen=True)
class KeysetKey:
    """One ORDER BY key usable for keyset paging: never NULL, with its SQL type for the continuation value."""

    expr: sql.Composable
    descending: bool
    sql_type: str


_KEYSET_TYPES = {"string": "text", "datetime": "timestamptz", "interval": "timestamptz", "number": "bigint"}


def keyset_keys(entity: Entity, alias: sql.Identifier, orderby: tuple[OrderItem, ...]) -> list[KeysetKey] | None:
    """The ORDER BY as keyset keys, or None when a key may be NULL or is computed (then paging uses $skip).
    Keys are top-level properties that are always present (required or defaulted) and the id."""
    keys: list[KeysetKey] = []
    for item in orderby:
        if not isinstance(item.expr, Path) or len(item.expr.segments) != 1:
            return None
        name = item.expr.segments[0]
        if name in ("id", "@iot.id"):
            keys.append(KeysetKey(qualified(alias, "id"), item.descending, "bigint"))
            continue
        field = entity.field(name)
        if field is None or not (field.required or field.defaults_to_now):
            return None
        operand = field.operand(alias, (), lambda value: sql.Literal(value))
        if operand.kind not in _KEYSET_TYPES:
            return None
        keys.append(KeysetKey(operand.value, item.descending, _KEYSET_TYPES[operand.kind]))
    keys.append(KeysetKey(qualified(alias, "id"), False, "bigint"))
    return keys


def _keyset_value(key: KeysetKey, value: Any) -> Any:
    """A continuation value of the type its key has (the token came from a client: check, don't trust)."""
    if key.sql_type == "bigint" and isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63:
        return value
    if key.sql_type == "text" and isinstance(value, str):
        return value
    if key.sql_type == "timestamptz" and isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise BadRequest("$skiptoken is not valid for this request; follow @iot.nextLink as given")


def _after(keys: list[KeysetKey], values: list[Any], b: SqlBuilder) -> sql.Composable:
    """Rows after the row whose key values are `values`, in the order of `keys`."""
    values = [_keyset_value(key, value) for key, value in zip(keys, values, strict=True)]
    alternatives = []
    for i, key in enumerate(keys):
        equal = [sql.SQL("{} = {}::{}").format(k.expr, b.param(v), sql.SQL(k.sql_type))
                 for k, v in zip(keys[:i], values[:i], strict=True)]
        beyond = sql.SQL("{} {} {}::{}").format(key.expr, sql.SQL("<" if key.descending else ">"),
                                                 b.param(values[i]), sql.SQL(key.sql_type))
        alternatives.append(sql.SQL("({})").format(sql.SQL(" AND ").join([*equal, beyond])))
    return sql.SQL("({})").format(sql.SQL(" OR ").join(alternatives))


def compile_collection(path: ResourcePath, options: QueryOptions, base_url: str, limits: Limits = Limits()
                       ) -> Compiled:
    """Columns: value JSON text, more-rows flag, count up to `limits.exact_count_limit + 1` (or NULL),
    parent-exists flag, and the keyset of the page's last row as JSON text (or NULL when the order is not
    keyset-safe; the caller then continues with $skip)."""
    b = SqlBuilder(base_url)
    entity = path.entity
    e, p = b.alias(), b.alias()
    ranked = path.last.relation if path.last.relation is not None and path.last.relation.rank_column else None
    # An ordered list (a MultiDatastream's ObservedProperties) comes in its order unless $orderby says
    # otherwise; it is short, so it pages by $skip.
    rank_order = ranked is not None and not options.orderby and path.steps[-2].id is not None
    keyset = None if rank_order else keyset_keys(entity, e, options.orderby)
    if options.skiptoken is not None and (keyset is None or len(keyset) != len(options.skiptoken)):
        raise BadRequest("$skiptoken does not belong to this request; follow @iot.nextLink as given")

    def where(with_keyset: bool = True) -> sql.Composable:
        matching = _matching(path, options, e, b)
        if with_keyset and keyset is not None and options.skiptoken is not None:
            return sql.SQL("{} AND {}").format(matching, _after(keyset, list(options.skiptoken), b))
        return matching

    keys = order_keys(entity, e, options.orderby, b)
    if rank_order:
        assert ranked is not None
        keys = [rank_of(ranked, b.param(path.steps[-2].id), e), *keys]
    if options.result_format == "dataArray":
        if path.ref:
            raise BadRequest("$resultFormat=dataArray cannot be combined with $ref")
        value = data_array_value(entity, options, p, b.param(options.skip + options.top), b)
    else:
        item = (ref_json(entity, p, b) if path.ref
                else entity_json(entity, p, b, options.select, options.expand, limits))
        value = sql.SQL("(SELECT coalesce(json_agg({item} ORDER BY {p}.sta_n) FILTER (WHERE {p}.sta_n <= {last}),"
                        " '[]'::json) FROM page {p})").format(item=item, p=p,
                                                             last=b.param(options.skip + options.top))
    count = (
        sql.SQL("(SELECT count(*) FROM (SELECT 1 FROM {} {} WHERE {} LIMIT {}) AS counted)").format(
            sql.Identifier(entity.table), e, where(with_keyset=False), b.param(limits.exact_count_limit + 1))
        if options.count else sql.SQL("NULL::bigint")
    )
    last_key = (sql.SQL("json_build_array({})").format(sql.SQL(", ").join(k.expr for k in keyset))
                if keyset is not None else sql.SQL("NULL::json"))
    statement = sql.SQL(
        "WITH page AS ("
        " SELECT {e}.*, row_number() OVER (ORDER BY {keys}) AS sta_n, {last_key} AS sta_key"
        " FROM {table} {e} WHERE {cond}"
        " ORDER BY {keys} LIMIT {limit} OFFSET {skip})"
        " SELECT {value}::text,"
        " (SELECT count(*) FROM page) > {top}, {count}, {parent},"
        " (SELECT sta_key FROM page WHERE sta_n = {last})::text"
    ).format(
        e=e, keys=sql.SQL(", ").join(keys), table=sql.Identifier(entity.table), cond=where(),
        last_key=last_key, limit=b.param(options.top + 1), skip=b.param(options.skip), value=value,
        last=b.param(options.skip + options.top), top=b.param(options.top), count=count,
        parent=parent_exists(path, b),
    )
    return Compiled(statement, b.params)


DATA_ARRAY_COMPONENTS = ("id", "phenomenonTime", "resultTime", "result")
"""The components of a Data Array without $select: those of STA 1.1's example (§14.3)."""


def data_array_value(entity: Entity, options: QueryOptions, p: sql.Identifier, last: sql.Composable,
                     b: SqlBuilder) -> sql.Composable:
    """The page (CTE `page`, rows numbered `sta_n`) as STA 1.1 Data Array objects: one per Datastream or
    MultiDatastream (the Observation's `exactly_one_of` streams), in the order of its first row, with
    `components` ($select, or DATA_ARRAY_COMPONENTS) and one array of values per Observation, in page order."""
    groups = [entity.relation(name) for name in entity.exactly_one_of]
    if not groups or entity.field("result") is None:
        raise BadRequest(f"$resultFormat=dataArray applies to Observations, not {entity.set_name}")
    if options.expand:
        raise BadRequest("$resultFormat=dataArray cannot be combined with $expand")
    components = options.select or DATA_ARRAY_COMPONENTS
    allowed = ("id", *entity.property_names)
    unknown = [c for c in components if c not in allowed]
    if unknown:
        raise BadRequest(f"$select: {unknown[0]!r} cannot be a Data Array component; choose from "
                         f"{', '.join(allowed)}")
    values = [qualified(p, "id") if c == "id" else entity.fields_by_name[c].json_sql(p) for c in components]
    nav = by_relation(p, groups, lambda g: sql.Literal(f"{g.name}@iot.navigationLink"))
    link = by_relation(p, groups, lambda g: sql.SQL("{}::text || {} || {} || ')'").format(
        b.base, sql.Literal(f"/{g.target_entity.set_name}("), qualified(p, g.column)))
    return sql.SQL(
        "(SELECT coalesce(json_agg(g.v ORDER BY g.first), '[]'::json) FROM ("
        " SELECT min({p}.sta_n) AS first, json_build_object({nav}, {link}, 'components', {components},"
        " 'dataArray@iot.count', count(*), 'dataArray', json_agg(json_build_array({values}) ORDER BY {p}.sta_n))"
        " AS v FROM page {p} WHERE {p}.sta_n <= {last} GROUP BY {columns}) AS g)"
    ).format(p=p, nav=nav, link=link,
             components=sql.SQL("json_build_array({})").format(sql.SQL(", ").join(map(sql.Literal, components))),
             values=sql.SQL(", ").join(values), last=last,
             columns=sql.SQL(", ").join(qualified(p, g.column) for g in groups))


def compile_count_estimate(path: ResourcePath, options: QueryOptions) -> Compiled:
    """EXPLAIN of the rows a collection request matches: the planner's estimate, used for @iot.count when
    an exact count would exceed the configured limit (a count must never scan millions of rows)."""
    b = SqlBuilder("")
    e = b.alias()
    statement = sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} {} WHERE {}").format(
        sql.Identifier(path.entity.table), e, _matching(path, options, e, b))
    return Compiled(statement, b.params)


def _matching(path: ResourcePath, options: QueryOptions, alias: sql.Identifier, b: SqlBuilder) -> sql.Composable:
    """The rows of a collection request: those the path addresses that pass its $filter."""
    conditions = step_conditions(path.steps, alias, b)
    if options.filter is None:
        return conditions
    return sql.SQL("{} AND {}").format(
        conditions, ExpressionCompiler(b, path.entity, alias, relation_join).predicate(options.filter))


def compile_filtered_delete(path: ResourcePath, options: QueryOptions) -> Compiled:
    """DELETE of every entity of a collection path that passes `$filter`, in one statement that returns how
    many went, or NULL when an entity the path names before its last step does not exist. Link-table
    cascades the model declares (a Location's HistoricalLocations) go first, as for a single delete."""
    b = SqlBuilder("")
    entity, e = path.entity, b.alias()
    matching = sql.SQL("SELECT {e}.id FROM {table} {e} WHERE {cond}").format(
        e=e, table=sql.Identifier(entity.table), cond=_matching(path, options, e, b))
    steps: list[sql.Composable] = []
    for n, relation in enumerate(r for r in entity.relations.values() if r.delete_targets):
        steps.append(sql.SQL("cascade{n} AS (DELETE FROM {target} WHERE id IN (SELECT {tcol} FROM {link} "
                             "WHERE {scol} IN ({matching})))").format(
            n=sql.SQL(str(n)), target=sql.Identifier(relation.target_entity.table),
            tcol=sql.Identifier(relation.link_target_column), link=sql.Identifier(relation.link_table),
            scol=sql.Identifier(relation.link_source_column), matching=matching))
    gone = b.alias()
    steps.append(sql.SQL("gone AS (DELETE FROM {table} {g} WHERE {g}.id IN ({matching}) RETURNING {g}.id)").format(
        table=sql.Identifier(entity.table), g=gone, matching=matching))
    if entity.partition_column:
        steps.append(sql.SQL("relocated AS (DELETE FROM observation_relocations WHERE id IN (SELECT id FROM gone))"))
    statement = sql.SQL("WITH {} SELECT CASE WHEN {} THEN (SELECT count(*) FROM gone) END").format(
        sql.SQL(", ").join(steps), parent_exists(path, b))
    return Compiled(statement, b.params)


def parent_exists(path: ResourcePath, b: SqlBuilder) -> sql.Composable:
    """TRUE when every entity the path names before its last step exists (else the request is a 404)."""
    if len(path.steps) == 1:
        return sql.SQL("TRUE")
    parent_steps = path.steps[:-1]
    alias = b.alias()
    return sql.SQL("EXISTS (SELECT 1 FROM {} {} WHERE {})").format(
        sql.Identifier(parent_steps[-1].entity.table), alias, step_conditions(parent_steps, alias, b))


def compile_entity(path: ResourcePath, base_url: str, options: QueryOptions | None = None,
                   limits: Limits = Limits()) -> Compiled:
    """One row (JSON text) when the addressed entity exists, no row otherwise."""
    b = SqlBuilder(base_url)
    e = b.alias()
    entity = path.entity
    if path.prop is not None:
        field = path.prop
        value: sql.Composable
        if path.members:
            value = sql.SQL("{}::json").format(field.operand(e, path.members, b.param).value)
            name = path.members[-1]
        else:
            value, name = field.json_sql(e), field.name
        body = (sql.SQL("{}::text").format(value) if path.value
                else sql.SQL("json_build_object({}, {})::text").format(sql.Literal(name), value))
    else:
        rendered = (ref_json(entity, e, b) if path.ref else
                    entity_json(entity, e, b, options.select if options else (), options.expand if options else (),
                                limits))
        body = sql.SQL("{}::text").format(rendered)
    statement = sql.SQL("SELECT {} FROM {} {} WHERE {} LIMIT 1").format(
        body, sql.Identifier(entity.table), e, step_conditions(path.steps, e, b))
    return Compiled(statement, b.params)


_TEMPLATE_ID = 3_141_592_653_589  # a dummy id whose value and day bounds appear in no other parameter


@functools.lru_cache(maxsize=64)
def _entity_template(entity: Entity, base_url: str) -> tuple[Compiled, dict[str, str]]:
    compiled = compile_entity(ResourcePath((Step(entity, None, _TEMPLATE_ID),)), base_url)
    lower, upper = observation_ids.day_bounds(_TEMPLATE_ID)
    roles: dict[str, str] = {}
    for name, value in compiled.params.items():
        if value == _TEMPLATE_ID:
            roles[name] = "id"
        elif value is not None and value == lower:
            roles[name] = "lower"
        elif value is not None and value == upper:
            roles[name] = "upper"
    return compiled, roles


def compile_entity_by_id(entity: Entity, entity_id: int, base_url: str) -> Compiled:
    """`compile_entity` for `Set(id)` without options, from a statement compiled once per entity and base
    URL (compiling costs ~0.5 ms; every POST, PATCH and PUT answers with the entity)."""
    template, roles = _entity_template(entity, base_url)
    lower, upper = observation_ids.day_bounds(entity_id)
    values = {"id": entity_id, "lower": lower, "upper": upper}
    params = {k: values[roles[k]] if k in roles else v for k, v in template.params.items()}
    return Compiled(template.statement, params, rendered=template.query)


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


def compile_ids(path: ResourcePath) -> Compiled:
    """Ids of the entities a path addresses (used by writes to resolve `Things(1)/Locations(2)`)."""
    b = SqlBuilder("")
    e = b.alias()
    statement = sql.SQL("SELECT {}.id FROM {} {} WHERE {}").format(
        e, sql.Identifier(path.entity.table), e, step_conditions(path.steps, e, b))
    return Compiled(statement, b.params)


def notified_relations(entity: Entity) -> list[Relation]:
    """Relations whose other end lists this entity in a collection (`Datastreams(1)/Observations`): a
    change of the entity is also notified on that collection's topic (STA §14.1)."""
    return [r for r in entity.relations.values()
            if r.inverse.to_many and r.storage in (Storage.FK_ON_SOURCE, Storage.LINK_TABLE)]


def compile_changed(entity: Entity, ids: list[int], base_url: str, select: tuple[str, ...] = ()) -> Compiled:
    """For each of `ids`: the id, the ids of related entities per `notified_relations` (one array each) and
    the entity's JSON exactly as GET renders it (with `select` as `$select`), for MQTT notifications. From a
    statement compiled once per entity, base URL and select: the notifier runs it for every batch."""
    template, ids_name = _changed_template(entity, base_url, select)
    return Compiled(template.statement, {**template.params, ids_name: ids}, rendered=template.rendered)


@functools.lru_cache(maxsize=256)
def _changed_template(entity: Entity, base_url: str, select: tuple[str, ...]) -> tuple[Compiled, str]:
    b = SqlBuilder(base_url)
    e = b.alias()
    related: list[sql.Composable] = []
    for relation in notified_relations(entity):
        if relation.storage is Storage.FK_ON_SOURCE:
            related.append(sql.SQL("ARRAY[{}]").format(qualified(e, relation.column)))
        else:
            related.append(sql.SQL("ARRAY(SELECT l.{} FROM {} l WHERE l.{} = {})").format(
                sql.Identifier(relation.link_target_column), sql.Identifier(relation.link_table),
                sql.Identifier(relation.link_source_column), qualified(e, "id")))
    rendered = entity_json(entity, e, b, select)
    ids_name = f"p{len(b.params)}"  # the name b.param gives the next one
    statement = sql.SQL("SELECT {id}, {related} {json}::text FROM {table} {e} WHERE {id} = ANY({ids})").format(
        id=qualified(e, "id"), related=sql.SQL("").join(sql.SQL("{}, ").format(r) for r in related),
        json=rendered, table=sql.Identifier(entity.table), e=e, ids=b.param(None))
    assert ids_name in b.params
    return Compiled(statement, b.params, rendered=statement.as_bytes(None)), ids_name
