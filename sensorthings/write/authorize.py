"""Which entities a principal may change: a role held everywhere covers every entity; a role held for a
Project (Principal.project_roles) covers the streams of that Project and their Observations; the owner (the
Party whose authId is the principal's) may update and delete what it owns and create Observations in its
streams. Where an entity belongs, the model says (its links to Project and Party, or its stream's:
Entity.exactly_one_of), so this module holds no entity knowledge.

Checked inside the write's transaction, one small statement, only for principals whose roles do not hold
everywhere (a global role costs nothing here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg import AsyncConnection, sql

from sensorthings.model.access import CURRENT, Forbidden, Principal, Role
from sensorthings.model.entities import ENTITIES, Entity
from sensorthings.query.sql import SqlBuilder, id_predicate
from sensorthings.write.bodies import link_id

_PARTY = ENTITIES["Party"]
_DOING = {Role.CREATE: "create Observations in", Role.UPDATE: "change", Role.DELETE: "delete"}


def _scope_columns(entity: Entity, alias: sql.Identifier) -> list[sql.Composable] | None:
    """(project id, owner's authId) of a row `alias` of `entity`, or None when `entity` belongs to no
    Project or Party (only a global role changes it)."""
    project, party = entity.link_to("Project"), entity.link_to("Party")
    if project is None and party is None:
        return None
    owner: sql.Composable = sql.SQL("NULL::text")
    if party is not None:
        owner = sql.SQL("(SELECT o.{} FROM {} o WHERE o.id = {}.{})").format(
            sql.Identifier(_PARTY.fields_by_name["authId"].column), sql.Identifier(_PARTY.table), alias,
            sql.Identifier(party.column))
    project_id = (sql.SQL("{}.{}").format(alias, sql.Identifier(project.column)) if project is not None
                  else sql.SQL("NULL::bigint"))
    return [project_id, owner]


def _scope_statement(entity: Entity, entity_id: int) -> tuple[sql.Composable, dict[str, Any]] | None:
    """A statement with one row per Project/owner the entity belongs to (an Observation: its stream's)."""
    b = SqlBuilder("")
    e = b.alias()
    own = _scope_columns(entity, e)
    if own is not None:
        return sql.SQL("SELECT {} FROM {} {} WHERE {}").format(
            sql.SQL(", ").join(own), sql.Identifier(entity.table), e, id_predicate(entity, e, entity_id, b)), b.params
    streams = [entity.relation(name) for name in entity.exactly_one_of]
    parts = []
    for relation in streams:
        s = b.alias()
        columns = _scope_columns(relation.target_entity, s)
        if columns is None:
            continue
        parts.append(sql.SQL("SELECT {} FROM {} {} JOIN {} {} ON {}.id = {}.{} WHERE {}").format(
            sql.SQL(", ").join(columns), sql.Identifier(entity.table), e, sql.Identifier(relation.target_entity.table),
            s, s, e, sql.Identifier(relation.column), id_predicate(entity, e, entity_id, b)))
        e = b.alias()
    if not parts:
        return None
    return sql.SQL(" UNION ALL ").join(parts), b.params


def _allowed(principal: Principal, role: Role, rows: list[tuple[int | None, str | None]]) -> bool:
    for project_id, owner in rows:
        if principal.has_in(role, project_id):
            return True
        if owner is not None and principal.auth_id is not None and owner == principal.auth_id and role is not Role.READ:
            return True
    return False


async def check(conn: AsyncConnection[Any], entity: Entity, entity_id: int, role: Role) -> None:
    """Forbidden unless the current principal may `role` (update, delete; create: of Observations in a
    stream) the entity `entity_id`: everywhere, for its Project, or as its owner."""
    principal = CURRENT.get()
    if principal.has(role):
        return
    statement = _scope_statement(entity, entity_id)
    rows: list[tuple[int | None, str | None]] = []
    if statement is not None:
        query, values = statement
        rows = await (await conn.execute(query.as_string(None), values)).fetchall()
    if not _allowed(principal, role, rows):
        held = ", ".join(f"{r} for Project {p}" for p in sorted(principal.project_roles)
                         for r in sorted(principal.project_roles[p])) or "no roles for it"
        raise Forbidden(f"{principal.kind} {principal.name!r} may not {_DOING.get(role, role.value)} "
                        f"{entity.name} {entity_id}: that needs the role {role.value!r} everywhere, for the "
                        f"Project it belongs to, or to own it (it has {held})")


def require_global(role: Role, what: str) -> None:
    """Forbidden unless the current principal holds `role` everywhere (creating Things, Sensors, …; a
    DELETE by $filter): a Project's roles cover only its streams' data."""
    principal = CURRENT.get()
    if not principal.has(role):
        projects = ", ".join(map(str, sorted(principal.project_roles))) or "none"
        raise Forbidden(f"{principal.kind} {principal.name!r} may not {what}: that needs the role {role.value!r} "
                        f"everywhere, not only for a Project (its Projects: {projects})")


async def check_create(conn: AsyncConnection[Any], entity: Entity, body: Any, parents: Mapping[str, int]) -> None:
    """Forbidden unless the current principal may create `body` as an `entity`: anything with create
    everywhere; with create for a Project (or as a stream's owner) only Observations in that Project's (its
    own) streams, named by the path (`parents`: Datastreams(1)/Observations) or linked in the body."""
    if CURRENT.get().has(Role.CREATE):
        return
    if not entity.exactly_one_of:
        require_global(Role.CREATE, f"create {entity.set_name}")
    for name in entity.exactly_one_of:
        stream_id = parents.get(name)
        if stream_id is None and isinstance(body, dict) and name in body:
            stream_id = link_id(body[name], name)
            if stream_id is None:
                require_global(Role.CREATE, f"create a {name} (given inline in the {entity.name})")
        if stream_id is not None:
            await check(conn, entity.relation(name).target_entity, stream_id, Role.CREATE)
            return
    require_global(Role.CREATE, f"create an {entity.name} without its stream")
