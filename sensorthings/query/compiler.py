"""Compile a read (resource path + query options) into ONE parameterised SQL statement whose JSON PostgreSQL builds.

Every user-supplied value becomes a bind parameter (`SqlBuilder.param`); identifiers and JSON keys come only
from the entity model. Python never loops over rows: the statement returns the finished JSON text.
"""

from __future__ import annotations

import functools

from psycopg import sql

from sensorthings.model import LATEST, observation_ids
from sensorthings.model.entities import Entity
from sensorthings.model.errors import BadRequest
from sensorthings.query import visibility
from sensorthings.query.addressed import matching_rows, parent_exists
from sensorthings.query.compiled import Compiled
from sensorthings.query.entity_json import Limits, entity_json, merge_expands, ref_json, selectable_names
from sensorthings.query.options import QueryOptions
from sensorthings.query.ordering import KeysetKey, keyset_after, keyset_keys, order_keys
from sensorthings.query.path import ResourcePath, Step
from sensorthings.query.sql import SqlBuilder, by_relation, qualified, rank_of, step_conditions
from sensorthings.query.visibility import View
from sensorthings.query.write_statements import (
    compile_changed,
    compile_created,
    compile_filtered_delete,
    compile_ids,
    notified_relations,
)

__all__ = [
    # defined here: the read statements
    "DATA_ARRAY_COMPONENTS", "compile_collection", "compile_count_estimate", "compile_entity", "compile_entity_by_id",
    "data_array_value",
    # re-exported from the modules they moved to, so that importers of this module keep working
    "Compiled", "KeysetKey", "Limits", "compile_changed", "compile_created", "compile_filtered_delete", "compile_ids",
    "entity_json", "keyset_keys", "merge_expands", "notified_relations", "order_keys", "parent_exists", "ref_json",
    "selectable_names",
]

_DEFAULT_LIMITS = Limits()  # frozen; the defaults of a read's limits (as `Limits()` was in the signatures)


def compile_collection(path: ResourcePath, options: QueryOptions, base_url: str, limits: Limits = _DEFAULT_LIMITS,
                       *, view: View) -> Compiled:
    """Columns: value JSON text, more-rows flag, count up to `limits.exact_count_limit + 1` (or NULL),
    parent-exists flag, and the keyset of the page's last row as JSON text (or NULL when the order is not
    keyset-safe; the caller then continues with $skip alone). After a `$skiptoken` the page starts at its
    position and `$skip` is not applied (`options.offset`). Rendered as the path's version has it, of
    what `view` lets the principal bound at execution see (query.visibility; CHECKED: the plain statement,
    guarded once at its top, where a guard on the tables cost a one-time filter per row of a partition)."""
    b = SqlBuilder(base_url, path.version, view=_tables_view(view))
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
        matching = matching_rows(path, options, e, b)
        if with_keyset and keyset is not None and options.skiptoken is not None:
            return sql.SQL("{} AND {}").format(matching, keyset_after(keyset, list(options.skiptoken), b))
        return matching

    keys = order_keys(entity, e, options.orderby, b)
    if rank_order:
        assert ranked is not None
        keys = [rank_of(ranked, b.param(path.steps[-2].id), e), *keys]
    if options.result_format == "dataArray":
        if path.ref:
            raise BadRequest("$resultFormat=dataArray cannot be combined with $ref")
        value = data_array_value(entity, options, p, b.param(options.offset + options.top), b)
    elif path.ref:
        value = sql.SQL("(SELECT coalesce(json_agg({item} ORDER BY {p}.sta_n) FILTER (WHERE {p}.sta_n <= {last}),"
                        " '[]'::json) FROM page {p})").format(item=ref_json(entity, p, b), p=p,
                                                             last=b.param(options.offset + options.top))
    else:  # the page's texts joined (json_agg would parse each row's text again): 10 ms of 8,784 rows
        item = entity_json(entity, p, b, options.select, options.expand, limits, as_text=True)
        value = sql.SQL("(SELECT '[' || coalesce(string_agg({item}, ',' ORDER BY {p}.sta_n) FILTER (WHERE"
                        " {p}.sta_n <= {last}), '') || ']' FROM page {p})").format(
            item=item, p=p, last=b.param(options.offset + options.top))
    count = (
        sql.SQL("(SELECT count(*) FROM (SELECT 1 FROM {} {} WHERE {} LIMIT {}) AS counted)").format(
            b.source(entity), e, where(with_keyset=False), b.param(limits.exact_count_limit + 1))
        if options.count else sql.SQL("NULL::bigint")
    )
    last_key = (sql.SQL("json_build_array({})").format(sql.SQL(", ").join(k.expr for k in keyset))
                if keyset is not None else sql.SQL("NULL::json"))
    statement = sql.SQL(
        "WITH page AS ("
        " SELECT {e}.*, row_number() OVER (ORDER BY {keys}) AS sta_n"
        " FROM {table} {e} WHERE {cond}"
        " ORDER BY {keys} LIMIT {limit} OFFSET {skip})"
        " SELECT {value}::text,"
        " (SELECT count(*) FROM page) > {top}, {count}, {parent},"
        " (SELECT {last_key} FROM page {e} WHERE {e}.sta_n = {last})::text"  # the last row's only, not each row's
        " WHERE {guard}"
    ).format(
        e=e, keys=sql.SQL(", ").join(keys), table=b.source(entity), cond=where(),
        last_key=last_key, limit=b.param(options.top + 1), skip=b.param(options.offset), value=value,
        last=b.param(options.offset + options.top), top=b.param(options.top), count=count,
        parent=parent_exists(path, b),
        guard=_statement_guard(view, b),  # last: once every table of the statement is known
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
    allowed = ("id", *entity.property_names_in(b.version))
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


def compile_count_estimate(path: ResourcePath, options: QueryOptions, *, view: View) -> Compiled:
    """EXPLAIN of the rows a collection request matches: the planner's estimate, used for @iot.count when
    an exact count would exceed the configured limit (a count must never scan millions of rows)."""
    b = SqlBuilder("", path.version, view=view)
    e = b.alias()
    statement = sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} {} WHERE {}").format(
        b.source(path.entity), e, matching_rows(path, options, e, b))
    return Compiled(statement, b.params)


def compile_entity(path: ResourcePath, base_url: str, options: QueryOptions | None = None,
                   limits: Limits = _DEFAULT_LIMITS, *, view: View) -> Compiled:
    """One row (JSON text) when the addressed entity exists (and `view` lets the principal bound at
    execution see it), no row otherwise; for a property without a value, one row holding NULL."""
    b = SqlBuilder(base_url, path.version, view=_tables_view(view))
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
        if path.value:
            body = sql.SQL("{}::text").format(value)
        elif field.null_is_a_value or path.members:  # a member of a JSON value: null where it is missing
            body = sql.SQL("json_build_object({}, {})::text").format(sql.Literal(name), value)
        else:  # a property without a value is absent (NULL: the caller answers 204), as in the entity's JSON
            body = sql.SQL("CASE WHEN {v} IS NOT NULL THEN json_build_object({}, {v})::text END").format(
                sql.Literal(name), v=value)
    else:
        rendered = (ref_json(entity, e, b) if path.ref else
                    entity_json(entity, e, b, options.select if options else (), options.expand if options else (),
                                limits))
        body = sql.SQL("{}::text").format(rendered)
    statement = sql.SQL("SELECT {} FROM {} {} WHERE {} AND {} LIMIT 1").format(
        body, b.source(entity), e, step_conditions(path.steps, e, b), _statement_guard(view, b))
    return Compiled(statement, b.params)


def _tables_view(view: View) -> View:
    """How a read's tables are compiled: a CHECKED read reads the plain tables (`_statement_guard`)."""
    return View.ALL if view is View.CHECKED else view


def _statement_guard(view: View, b: SqlBuilder) -> sql.Composable:
    """The condition at the top of a read's statement: the guard of a CHECKED read (query.visibility), where
    the statement reads a table that can hold restricted rows (so far: call it when all are known)."""
    return visibility.guard() if view is View.CHECKED and b.reads_restrictable else sql.SQL("TRUE")


_TEMPLATE_ID = 3_141_592_653_589  # a dummy id whose value and day bounds appear in no other parameter


@functools.lru_cache(maxsize=64)
def _entity_template(entity: Entity, base_url: str, version: str) -> tuple[Compiled, dict[str, str]]:
    # a write's answer: the entity the principal just wrote, whatever it may read
    compiled = compile_entity(ResourcePath((Step(entity, None, _TEMPLATE_ID),), version=version), base_url,
                              view=View.ALL)
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


def compile_entity_by_id(entity: Entity, entity_id: int, base_url: str, version: str = LATEST) -> Compiled:
    """`compile_entity` for `Set(id)` without options, from a statement compiled once per entity, base
    URL and version (compiling costs ~0.5 ms; every POST, PATCH and PUT answers with the entity)."""
    template, roles = _entity_template(entity, base_url, version)
    lower, upper = observation_ids.day_bounds(entity_id)
    values = {"id": entity_id, "lower": lower, "upper": upper}
    params = {k: values[roles[k]] if k in roles else v for k, v in template.params.items()}
    return Compiled(template.statement, params, rendered=template.query)


