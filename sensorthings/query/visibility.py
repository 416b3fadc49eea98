"""Restricted data, hidden in the SQL of every read: a principal without read on a restricted Project or
stream gets statements whose every table reference (the collection, each path step, every `$expand`, every
`$filter` across relations, the counts, the OGC API's collections) is the table's *visible* rows only.

Which entities can be hidden, the model says: an entity with a `visibility` field (Project, Datastream,
MultiDatastream: model.entities.VISIBILITIES) by its own row; an entity that belongs to exactly one of them
(an Observation: Entity.exactly_one_of) by its stream. A stream's effective visibility (its own, else its
Project's) is kept in its `restricted` column (migration 0009). The principal's rights enter only as bind
parameters (`params`), so one compiled statement serves every such principal, and a statement compiled for
hiding fails (a missing parameter) rather than shows everything if someone forgets them.

Principals with read everywhere (and admin) get the plain tables: nothing to hide, nothing to pay.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from sensorthings.model.access import Principal, Role
from sensorthings.model.entities import ENTITIES, Entity

READ_PROJECTS = "sta_read_projects"
"""The bind parameter with the ids of the Projects the principal may read (bigint[])."""
AUTH_ID = "sta_auth_id"
"""The bind parameter with the principal's auth id (text or NULL): a Party whose authId it is owns data."""
_PARTY = ENTITIES["Party"]


def hides(principal: Principal) -> bool:
    """Whether reads of `principal` must hide restricted data: unless it may read everywhere."""
    return not principal.has(Role.READ)


def may_see_restricted(principal: Principal) -> bool:
    """Whether `principal` may see some restricted data: read everywhere or for a Project, or (any verified
    principal) as the owner of a restricted stream. Its reads are audited while restricted data exists."""
    return principal.kind not in ("anonymous", "unverified")


def params(principal: Principal) -> dict[str, Any]:
    """The bind parameters of a hiding statement for `principal`."""
    return {READ_PROJECTS: list(principal.projects_with(Role.READ)), AUTH_ID: principal.auth_id}


def own_visibility(entity: Entity) -> bool:
    """Whether rows of `entity` are public or restricted themselves (they have a `visibility` field)."""
    return entity.field("visibility") is not None


def restricting_relations(entity: Entity) -> tuple[str, ...]:
    """The to-one relations through which rows of `entity` inherit their stream's visibility."""
    return tuple(name for name in entity.exactly_one_of if own_visibility(entity.relation(name).target_entity))


def restrictable(entity: Entity) -> bool:
    return own_visibility(entity) or bool(restricting_relations(entity))


def _readable_project(column: sql.Composable) -> sql.Composable:
    return sql.SQL("coalesce({} = ANY({}::bigint[]), false)").format(column, sql.Placeholder(READ_PROJECTS))


def _owned(party_column: sql.Composable) -> sql.Composable:
    return sql.SQL("coalesce({} = (SELECT o.id FROM {} o WHERE o.{} = {}::text), false)").format(
        party_column, sql.Identifier(_PARTY.table), sql.Identifier(_PARTY.fields_by_name["authId"].column),
        sql.Placeholder(AUTH_ID))


def _column(alias: sql.Identifier, column: str) -> sql.Composable:
    return sql.SQL("{}.{}").format(alias, sql.Identifier(column))


def _restricted(entity: Entity, alias: sql.Identifier) -> sql.Composable:
    """The condition that row `alias` of `entity` (own visibility) is restricted: a stream's effective
    visibility (its `restricted` column, migration 0009), a Project's own."""
    if entity.link_to("Project") is not None:
        return _column(alias, "restricted")
    return sql.SQL("({} IS NOT DISTINCT FROM 'restricted')").format(
        _column(alias, entity.fields_by_name["visibility"].column))


def visible_row(entity: Entity, alias: sql.Identifier) -> sql.Composable:
    """The condition that row `alias` of `entity` (own visibility) is visible to the bound principal: not
    restricted, or of a Project it may read (a Project: itself), or owned by its Party."""
    project, party = entity.link_to("Project"), entity.link_to("Party")
    readable = _readable_project(_column(alias, project.column if project is not None else "id"))
    parts = [sql.SQL("NOT {}").format(_restricted(entity, alias)), readable]
    if party is not None:
        parts.append(_owned(_column(alias, party.column)))
    return sql.SQL("({})").format(sql.SQL(" OR ").join(parts))


def _hidden_ids(stream: Entity) -> sql.Composable:
    """The ids of `stream`'s rows that the bound principal may not see (an InitPlan: computed once per
    statement, from the partial index on restricted rows; usually empty)."""
    h = sql.Identifier("h")
    return sql.SQL("ARRAY(SELECT h.id FROM {} h WHERE {} AND NOT {})").format(
        sql.Identifier(stream.table), _restricted(stream, h), visible_row(stream, h))


def visible_condition(entity: Entity, alias: sql.Identifier) -> sql.Composable:
    """The condition that row `alias` of a restrictable `entity` is visible to the bound principal."""
    if own_visibility(entity):
        return visible_row(entity, alias)
    parts = []
    for name in restricting_relations(entity):
        relation = entity.relation(name)
        parts.append(sql.SQL("coalesce({} <> ALL({}), true)").format(
            _column(alias, relation.column), _hidden_ids(relation.target_entity)))
    return sql.SQL(" AND ").join(parts)


def source(entity: Entity, hiding: bool) -> sql.Composable:
    """What a statement selects `entity`'s rows from: its table, or, when `hiding`, its visible rows (a
    subquery PostgreSQL flattens into the statement, so plans keep their indexes)."""
    table = sql.Identifier(entity.table)
    if not hiding or not restrictable(entity):
        return table
    v = sql.Identifier("v")
    return sql.SQL("(SELECT * FROM {} v WHERE {})").format(table, visible_condition(entity, v))


def any_restricted_sql() -> sql.Composable:
    """One row, one boolean: whether any restricted row exists (a Project or stream; cheap: partial indexes
    on streams, and Projects are few)."""
    t = sql.Identifier("t")
    return sql.SQL("SELECT {}").format(sql.SQL(" OR ").join(
        sql.SQL("EXISTS (SELECT 1 FROM {} t WHERE {})").format(sql.Identifier(e.table), _restricted(e, t))
        for e in ENTITIES.values() if own_visibility(e)))
