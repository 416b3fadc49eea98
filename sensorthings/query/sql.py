"""SQL building blocks shared by the compiler, the writer, ingest and the OGC API: bind parameters
(`SqlBuilder.param`: user input is only ever a parameter), qualified columns, id predicates, relation
joins and self links, all from the entity model."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import orjson
from psycopg import sql

from sensorthings.model import LATEST, observation_ids
from sensorthings.model.entities import Entity, Relation, Storage
from sensorthings.query import visibility
from sensorthings.query.path import Step
from sensorthings.query.visibility import View


class SqlBuilder:
    """Collects bind parameters and hands out fresh table aliases for one statement, which renders and
    reads the entities as API `version` has them (model.VERSIONS), and as `view` has them: everything, or
    only what the principal bound at execution may see (`source`: query.visibility)."""

    def __init__(self, base_url: str, version: str = LATEST, *, view: View = View.ALL) -> None:
        self.version = version
        self.view = view
        self.reads_restrictable = False
        """Whether the statement so far reads a table that can hold restricted rows (`source`)."""
        self.params: dict[str, Any] = {}
        self._aliases = itertools.count()
        self.base = self.param(base_url)
        self._base_url = base_url
        self._base_json: sql.Composable | None = None

    @property
    def base_json(self) -> sql.Composable:
        """The base URL as the inside of a JSON string (escaped here, once, instead of to_json per link)."""
        if self._base_json is None:
            self._base_json = self.param(orjson.dumps(self._base_url).decode()[1:-1])
        return self._base_json

    def param(self, value: Any) -> sql.Composable:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return sql.Placeholder(name)

    def alias(self) -> sql.Identifier:
        return sql.Identifier(f"e{next(self._aliases)}")

    def source(self, entity: Entity) -> sql.Composable:
        """What the statement selects `entity`'s rows from (its table, or its visible rows)."""
        self.reads_restrictable = self.reads_restrictable or visibility.restrictable(entity)
        return visibility.source(entity, self.view)


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
    relocated = sql.SQL("(SELECT r.{} FROM {} r WHERE r.id = {})").format(
        sql.Identifier(observation_ids.RELOCATED_DAY_COLUMN), sql.Identifier(observation_ids.RELOCATIONS_TABLE),
        id_param)
    parts = [condition]
    # The bounds are always parameters (NULL at the clamped extremes), so that one compiled statement
    # serves every id (compile_entity_by_id).
    parts.append(sql.SQL("{} >= coalesce({}, {}::timestamptz, '-infinity'::timestamptz)").format(
        time_col, relocated, b.param(lower)))
    parts.append(sql.SQL("{} < coalesce({} + interval '1 day', {}::timestamptz, 'infinity'::timestamptz)").format(
        time_col, relocated, b.param(upper)))
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


def by_relation(alias: sql.Identifier, relations: list[Relation], value: Callable[[Relation], sql.Composable]
                ) -> sql.Composable:
    """`value(r)` for the one of `relations` (an `exactly_one_of` group) whose foreign key row `alias` has."""
    *firsts, last = relations
    return sql.SQL("CASE {} ELSE {} END").format(sql.SQL(" ").join(
        sql.SQL("WHEN {} IS NOT NULL THEN {}").format(qualified(alias, r.column), value(r)) for r in firsts),
        value(last)) if firsts else value(last)


def rank_of(relation: Relation, source_id: sql.Composable, target: sql.Identifier) -> sql.Composable:
    """The position of row `target` in the ordered relation (`rank_column`) of the source `source_id`."""
    return sql.SQL("(SELECT l.{} FROM {} l WHERE l.{} = {} AND l.{} = {})").format(
        sql.Identifier(relation.rank_column), sql.Identifier(relation.link_table),
        sql.Identifier(relation.link_source_column), source_id, sql.Identifier(relation.link_target_column),
        qualified(target, "id"))


def step_conditions(steps: tuple[Step, ...], alias: sql.Identifier, b: SqlBuilder) -> sql.Composable:
    """Constraints on `alias` (a row of steps[-1]) implied by the whole path before it."""
    last = steps[-1]
    parts: list[sql.Composable] = []
    if last.id is not None:
        parts.append(id_predicate(last.entity, alias, last.id, b))
    if len(steps) > 1 and last.relation is not None:
        parent = b.alias()
        parts.append(sql.SQL("EXISTS (SELECT 1 FROM {} {} WHERE {} AND {})").format(
            b.source(steps[-2].entity), parent,
            relation_join(last.relation, parent, alias),
            step_conditions(steps[:-1], parent, b),
        ))
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("TRUE")


def _entity_url(entity: Entity, alias: sql.Identifier, base: sql.Composable) -> sql.Composable:
    return sql.SQL("{}::text || {} || {} || ')'").format(base, sql.Literal(f"/{entity.set_name}("),
                                                        qualified(alias, "id"))


def self_link(entity: Entity, alias: sql.Identifier, b: SqlBuilder) -> sql.Composable:
    return _entity_url(entity, alias, b.base)


def self_link_json(entity: Entity, alias: sql.Identifier, b: SqlBuilder,
                   suffix: sql.Composable | None = None) -> sql.Composable:
    """`self_link` (followed by `suffix`, a navigation link's `/Name`) as JSON text: the same as to_json of
    it, without escaping per row (an id and the model's names need none)."""
    return sql.SQL("'\"' || {} || {} || '\"'").format(_entity_url(entity, alias, b.base_json),
                                                       suffix or sql.Literal(""))


