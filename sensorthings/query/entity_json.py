"""An entity row as STA JSON built in SQL: `$select`ed properties, self and navigation links, and the
`$expand`ed related entities nested inside (with their own paging, count and nextLink), within `Limits`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Any
from urllib.parse import urlencode

from psycopg import sql

from sensorthings.model import LATEST
from sensorthings.model.entities import Entity, Relation
from sensorthings.model.errors import BadRequest
from sensorthings.query.expressions import ExpressionCompiler
from sensorthings.query.odata import ExpandItem
from sensorthings.query.ordering import order_keys
from sensorthings.query.sql import (
    SqlBuilder,
    by_relation,
    qualified,
    rank_of,
    relation_join,
    self_link,
    self_link_json,
)


@dataclass(frozen=True)
class Limits:
    """Paging and nesting limits that also apply inside $expand."""

    default_top: int = 100
    max_top: int = 10_000
    max_expand_depth: int = 5
    exact_count_limit: int = 100_000


def selectable_names(entity: Entity, version: str = LATEST) -> tuple[str, ...]:
    """What `$select` takes for `entity` in `version`: the id and selfLink annotations, properties,
    navigation properties."""
    return ("id", "@iot.id", "@iot.selfLink", *entity.property_names_in(version), *entity.relations_in(version))


def _select_names(entity: Entity, select: tuple[str, ...], version: str) -> set[str]:
    allowed = set(selectable_names(entity, version))
    unknown = [name for name in select if name not in allowed]
    if unknown and (entity.newer_field(unknown[0], version) or entity.newer_relation(unknown[0], version)):
        raise entity.too_new(unknown[0], version, "$select")
    if unknown:
        raise BadRequest(f"$select: {entity.name} has no property {unknown[0]!r}; choose from "
                         f"{', '.join(['id', *entity.property_names_in(version), *entity.relations_in(version)])}")
    return set(select)


def _property_segments(entity: Entity, select: tuple[str, ...], expand: tuple[ExpandItem, ...],
                       version: str) -> tuple[tuple[str, ...], tuple[ExpandItem, ...]]:
    """`select` and `expand` with the `$expand` paths that end in a property rather than a relation read as
    selecting that property: `Datastreams?$expand=Thing/Locations/location` (Masterportal's pattern) is
    `Thing($expand=Locations($select=location))`. OData wants the last segment to be a navigation property;
    taking a property there costs nothing and serves clients written against servers that allowed it."""
    properties = [item for item in expand if item.path not in entity.relations
                  and item.path in entity.property_names_in(version)]
    if not properties:
        return select, expand
    for item in properties:
        if item != ExpandItem(item.path):
            raise BadRequest(f"$expand: {item.path} is a property of {entity.name}, not a relation, so it takes "
                             f"no options; write {entity.name}($select={item.path}) or drop the options")
    names = tuple(item.path for item in properties)
    return (*select, *(name for name in names if name not in select)) if select else names, \
        tuple(item for item in expand if item not in properties)


def entity_json(entity: Entity, alias: sql.Identifier, b: SqlBuilder, select: tuple[str, ...] = (),
                expand: tuple[ExpandItem, ...] = (), limits: Limits = Limits(), depth: int = 0,
                as_text: bool = False) -> sql.Composable:
    """The entity as STA JSON: @iot.id, @iot.selfLink, properties and navigation links (only those named
    in `select`, when given), with the `expand`ed related entities inline. An optional property without a
    value is left out (as FROST does; `null` broke pygeoapi), as is an expanded to-one entity that the row
    does not have (an Observation's Datastream when it belongs to a MultiDatastream). `as_text`: the
    object's JSON text, for a caller that only joins texts (a collection's page: no parse per row)."""
    select, expand = _property_segments(entity, select, expand, b.version)
    chosen = _select_names(entity, select, b.version)

    def wanted(name: str) -> bool:
        return not chosen or name in chosen

    link = self_link(entity, alias, b)

    def link_to(suffix: sql.Composable | None = None) -> tuple[sql.Composable, Callable[[], sql.Composable]]:
        """A link of the entity (`suffix`: a navigation link's `/Name`) as text, and as JSON text on demand."""
        url = link if suffix is None else sql.SQL("{} || {}").format(link, suffix)
        return url, partial(self_link_json, entity, alias, b, suffix)

    pairs: list[_Pair] = []
    if wanted("@iot.id") or "id" in chosen:
        pairs.append(_Pair.of("@iot.id", qualified(alias, "id")))
    if wanted("@iot.selfLink"):
        pairs.append(_Pair.link("@iot.selfLink", *link_to()))
    for f in entity.fields_in(b.version):
        if wanted(f.name):
            always = f.required or f.null_is_a_value or f.defaults_to_now  # NOT NULL columns
            pairs.append(_Pair(sql.Literal(f.name), json.dumps(f.name), partial(f.json_sql, alias),
                               partial(f.json_text_sql, alias), optional=not always))
    expanded = {item.path for item in expand}
    navigation: list[tuple[str, _Pair]] = [
        (name, _Pair.link(f"{name}@iot.navigationLink", *link_to(sql.Literal(f"/{name}"))))
        for name in entity.relations_in(b.version) if wanted(name) and name not in expanded]
    expanded_pairs: list[_Pair] = []
    extras: list[_Pair] = []
    for item in merge_expands(expand):
        relation = entity.relations_in(b.version).get(item.path)
        if relation is None and entity.newer_relation(item.path, b.version):
            raise entity.too_new(item.path, b.version, "$expand")
        if relation is None:
            raise BadRequest(f"$expand: {entity.name} has no relation {item.path!r}; "
                             f"relations: {', '.join(entity.relations_in(b.version))}")
        if depth + 1 > limits.max_expand_depth:
            raise BadRequest(f"$expand is nested deeper than the limit of {limits.max_expand_depth} levels")
        value, more = _expanded(relation, alias, link, item, b, limits, depth + 1)
        expanded_pairs.append(_Pair.of(relation.name, value, optional=not relation.to_many))
        extras += [_Pair.of(key, extra, optional=True) for key, extra in more]

    streams = [entity.relation(name) for name, _ in navigation if name in entity.exactly_one_of]
    if streams and len(streams) == len(entity.exactly_one_of):
        # An Observation links the stream it has (the database holds exactly one), not the other: one pair
        # whose key and link follow the row, in the place of the first. (A CASE over one object per stream
        # tripled the planning time of an Observation's JSON.)
        url, url_json = link_to(by_relation(alias, streams, lambda r: sql.Literal(f"/{r.name}")))
        switch = _Pair(by_relation(alias, streams, lambda r: sql.Literal(f"{r.name}@iot.navigationLink")),
                       by_relation(alias, streams, lambda r: sql.Literal(json.dumps(f"{r.name}@iot.navigationLink"))),
                       lambda: url, url_json)
        navigation = [(name, switch if name == streams[0].name else pair) for name, pair in navigation
                      if name == streams[0].name or name not in entity.exactly_one_of]
    else:  # $select names only some of them: each link where the row has that stream, left out elsewhere
        navigation = [(name, pair) for name, pair in navigation if name not in entity.exactly_one_of]
        extras += [_Pair.of(f"{r.name}@iot.navigationLink", value, optional=True) for r in streams
                   for value in [sql.SQL("CASE WHEN {} IS NOT NULL THEN {} END").format(
                       qualified(alias, r.column), link_to(sql.Literal(f"/{r.name}"))[1]())]]
    return _json_object([*pairs, *(pair for _, pair in navigation), *expanded_pairs, *extras], as_text)


_CONCAT_MAX_ARGS = 100
"""PostgreSQL's limit on the arguments of one function call (FUNC_MAX_ARGS)."""

_OPEN, _CLOSE, _CLOSE_AS_TEXT, _CAT = sql.SQL("("), sql.SQL(")"), sql.SQL(")::text"), sql.SQL(" || ")
_Chunk = str | sql.Composable
"""A piece of an entity's JSON text: literal text (str) or SQL whose text output is spliced in."""


@dataclass(frozen=True)
class _Pair:
    """One key of an entity's JSON: the key (SQL giving the name, and the name as JSON text), its value as
    json_build_object takes it (`value`), and SQL whose text output is the value's JSON text (`text`); an
    `optional` key is left out where that text is NULL. The two are built on demand: only one is used."""

    key: sql.Composable
    key_text: _Chunk
    value: Callable[[], sql.Composable]
    text: Callable[[], sql.Composable]
    optional: bool = False

    @staticmethod
    def of(name: str, value: sql.Composable, optional: bool = False) -> _Pair:
        """A key whose value is json (or a number), NULL where `optional` and absent."""
        return _Pair(sql.Literal(name), json.dumps(name), lambda: value, lambda: value, optional)

    @staticmethod
    def link(name: str, url: sql.Composable, url_json: Callable[[], sql.Composable]) -> _Pair:
        """A link: `url` as text, and (made on demand) as JSON text (sql.self_link_json)."""
        return _Pair(sql.Literal(name), json.dumps(name), lambda: url, url_json)


def _json_object(pairs: list[_Pair], as_text: bool = False) -> sql.Composable:
    """The JSON object of `pairs`, written as json_build_object writes it (`{"k" : v, …}`); its text where
    `as_text`.

    Without optional keys, json_build_object itself. With them, the object's text is spliced in one
    concat() call per row, which skips the NULL parts of absent keys, and cast to json once: one parse of
    the row's text, cheaper than json_build_object's per-argument work (and than one sta_json_with, a parse
    each, per optional key), and the keys keep their order. As text, not even that parse: every part is
    JSON text already (to_json, jsonb output, a number's validated text). (json_strip_nulls is no way out:
    it would also strip the nulls inside free JSON values such as properties, parameters and results.)"""
    if not any(p.optional for p in pairs):
        built = sql.SQL("json_build_object({})").format(sql.SQL(", ").join(
            part for p in pairs for part in (p.key, p.value())))
        return sql.SQL("{}::text").format(built) if as_text else built
    cast = sql.SQL("" if as_text else "::json")
    leading_comma = pairs[0].optional  # no key is sure to come first: each gets ", " and the first is cut off
    chunks: list[_Chunk] = [] if leading_comma else ["{"]
    for n, p in enumerate(pairs):
        head: list[_Chunk] = [", " if n or leading_comma else "", p.key_text, " : "]
        if p.optional:  # NULL as a whole where the value is NULL, so concat() leaves the key out
            value = sql.Composed([_OPEN, p.text(), _CLOSE_AS_TEXT])
            chunks.append(sql.Composed([_OPEN, _CAT.join(_composed([*head, value])), _CLOSE]))
        else:
            chunks += [*head, p.text()]
    if leading_comma:
        return sql.SQL("('{{' || substr({}, 3) || '}}'){}").format(_concat(_composed(chunks)), cast)
    return sql.SQL("{}{}").format(_concat(_composed([*chunks, "}"])), cast)


def _composed(chunks: list[_Chunk]) -> list[sql.Composable]:
    """`chunks` as SQL: adjacent literal texts joined into one literal, empty ones dropped."""
    out: list[sql.Composable] = []
    literal = ""
    for chunk in chunks:
        if isinstance(chunk, str):
            literal += chunk
            continue
        if literal:
            out.append(sql.Literal(literal))
            literal = ""
        out.append(chunk)
    if literal:
        out.append(sql.Literal(literal))
    return out


def _concat(parts: list[sql.Composable]) -> sql.Composable:
    """concat() of `parts` (NULLs skipped), nested when there are more than one call may take."""
    while len(parts) > _CONCAT_MAX_ARGS:
        parts = [sql.SQL("concat({})").format(sql.SQL(", ").join(parts[i:i + _CONCAT_MAX_ARGS]))
                 for i in range(0, len(parts), _CONCAT_MAX_ARGS)]
    return sql.SQL("concat({})").format(sql.SQL(", ").join(parts))


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
        return sql.SQL("(SELECT {} FROM {} {} WHERE {})").format(rendered, b.source(target), t, where), []
    top = min(item.top if item.top is not None else limits.default_top, limits.max_top)
    keys = (order_keys(target, t, item.orderby, b) if item.orderby or not relation.rank_column
            else [rank_of(relation, qualified(source, "id"), t), qualified(t, "id")])
    r = b.alias()
    value = sql.SQL(
        "(SELECT coalesce(json_agg({r}.j ORDER BY {r}.n), '[]'::json) FROM ("
        "SELECT {rendered} AS j, row_number() OVER (ORDER BY {keys}) AS n FROM {table} {t} WHERE {where} "
        "ORDER BY {keys} LIMIT {top} OFFSET {skip}) {r})"
    ).format(r=r, rendered=rendered, keys=sql.SQL(", ").join(keys), table=b.source(target), t=t,
             where=where, top=b.param(top), skip=b.param(item.skip))
    extras: list[tuple[str, sql.Composable]] = []
    if item.count:  # counted up to the exact-count limit + 1, never a scan of a whole large collection
        extras.append((f"{relation.name}@iot.count", sql.SQL(
            "to_json((SELECT count(*) FROM (SELECT 1 FROM {} {} WHERE {} LIMIT {}) AS counted))").format(
            b.source(target), t, where, b.param(limits.exact_count_limit + 1))))
    query = _expand_query(item, top)
    if top == 0:
        return value, extras
    extras.append((f"{relation.name}@iot.nextLink", sql.SQL(
        "CASE WHEN EXISTS (SELECT 1 FROM {} {} WHERE {} OFFSET {}) THEN to_json({} || {}) END").format(
        b.source(target), t, where, b.param(item.skip + top), source_link,
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
