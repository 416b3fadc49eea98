"""An entity row as STA JSON built in SQL: `$select`ed properties, self and navigation links, and the
`$expand`ed related entities nested inside (with their own paging, count and nextLink), within `Limits`."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlencode

from psycopg import sql

from sensorthings.model.entities import Entity, Relation
from sensorthings.model.errors import BadRequest
from sensorthings.query.expressions import ExpressionCompiler
from sensorthings.query.odata import ExpandItem
from sensorthings.query.ordering import order_keys
from sensorthings.query.sql import SqlBuilder, by_relation, qualified, rank_of, relation_join, self_link


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
    """One item per navigation property, as FROST does: `Datastreams/Sensor,Datastreams/ObservedProperty`
    expands Datastreams once with both inside, and pygeoapi's `Observations($select=@iot.id;$orderby=…),
    Observations/FeatureOfInterest($select=feature)` expands Observations once, with the options of the
    first and the nested $expand of the second. An option that one item gives is taken, the same value twice
    is fine; only the same option with two different values is refused. The nested $expand lists are
    joined, and merged in turn one level down (where this runs again)."""
    merged: dict[str, ExpandItem] = {}
    for item in items:
        earlier = merged.get(item.path)
        if earlier is None:
            merged[item.path] = replace(item, texts=_texts_of(item))
            continue
        options: dict[str, Any] = {}
        for option in fields(ExpandItem):
            if option.name in ("path", "expand", "texts"):
                continue
            mine, theirs = getattr(earlier, option.name), getattr(item, option.name)
            if repr(mine) == repr(theirs) or theirs == option.default:  # repr: 1 and true are not one value
                continue
            if mine != option.default:
                raise BadRequest(
                    f"$expand names {item.path} twice with different ${option.name} "
                    f"({_option_text(earlier, option.name)} and {_option_text(item, option.name)}); "
                    f"give ${option.name} of {item.path} once, or the same in both")
            options[option.name] = theirs
        merged[item.path] = replace(earlier, **options, expand=earlier.expand + item.expand,
                                    texts=_merged_texts(earlier, item))
    return list(merged.values())


def _merged_texts(first: ExpandItem, second: ExpandItem) -> tuple[tuple[str, str], ...]:
    """The option texts of two merged expand items, for the nextLink of the merged collection: each option
    as the item that gave it wrote it, and their $expand lists joined."""
    texts = dict(_texts_of(first))
    for key, value in _texts_of(second):
        if key == "$expand" and key in texts:
            texts[key] = f"{texts[key]},{value}"
        else:
            texts.setdefault(key, value)
    return tuple(texts.items())


def _texts_of(item: ExpandItem) -> tuple[tuple[str, str], ...]:
    """The option texts of `item`, with its $expand written out when it has none of its own: a path item
    (`Observations/FeatureOfInterest($select=feature)`) nests without having written `$expand=`."""
    if not item.expand or any(key == "$expand" for key, _ in item.texts):
        return item.texts
    return (*item.texts, ("$expand", ",".join(_expand_text(nested) for nested in item.expand)))


def _expand_text(item: ExpandItem) -> str:
    """One $expand entry written out: `FeatureOfInterest($select=feature;$top=5)`."""
    options = [f"{key}={value}" for key, value in _texts_of(item)]
    if item.top is not None:
        options.append(f"$top={item.top}")
    if item.skip:
        options.append(f"$skip={item.skip}")
    if item.count:
        options.append("$count=true")
    return f"{item.path}({';'.join(options)})" if options else item.path


def _option_text(item: ExpandItem, name: str) -> str:
    """An option's value for an error message: as written when the text is kept, shortened."""
    text = dict(item.texts).get(f"${name}", str(getattr(item, name)).lower())
    return repr(text if len(text) <= 60 else text[:57] + "…")


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
    """The query of the nextLink of an expanded collection, as FROST writes it: its own options, `$top` only
    when the item gave one (`top`, clamped), and `$skip` = the rows delivered so far. (Masterportal drops a
    link whose `$top` is not above its `$skip`, so a default page size must not appear as a `$top`.)"""
    options = [*item.texts, *([("$top", str(top))] if item.top is not None else []), ("$skip", str(item.skip + top))]
    if item.count:
        options.append(("$count", "true"))
    return urlencode(options, safe="$(),'/:").replace("+", "%20")


def ref_json(entity: Entity, alias: sql.Identifier, b: SqlBuilder) -> sql.Composable:
    return sql.SQL("json_build_object('@iot.selfLink', {})").format(self_link(entity, alias, b))
