"""Which entities a principal may change: a role held everywhere covers every entity; a role held for a
Project (Principal.project_roles) covers the streams of that Project and their Observations; the owner (the
Party whose authId is the principal's, which only admin can set) may update and delete what it owns and
create Observations in its streams, whatever roles it holds. An entity may be changed only where the
principal may change it before and after the change (nothing is moved into a Project it may not write), and
deleted only with everything its deletion takes along. Where an entity belongs, the model says (its links
to Project and Party, or its stream's: Entity.exactly_one_of), so this module holds no entity knowledge.

Checked inside the write's transaction, one small statement, only for principals whose roles do not hold
everywhere (a global role costs nothing here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg import AsyncConnection, sql

from sensorthings.model.access import CURRENT, Forbidden, Principal, Role
from sensorthings.model.entities import ENTITIES, Entity, Relation, Storage
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


def _dependents_statement(entity: Entity, entity_id: int) -> tuple[sql.Composable, dict[str, Any]] | None:
    """A statement with one row per Project/owner of the streams that hang on the entity (a Thing's
    Datastreams), which deleting it deletes with it; None when nothing scoped hangs on it."""
    b = SqlBuilder("")
    parts = []
    for relation in entity.relations.values():
        if relation.storage is not Storage.FK_ON_TARGET or not relation.to_many:
            continue
        t = b.alias()
        columns = _scope_columns(relation.target_entity, t)
        if columns is not None:
            parts.append(sql.SQL("SELECT {} FROM {} {} WHERE {}.{} = {}").format(
                sql.SQL(", ").join(columns), sql.Identifier(relation.target_entity.table), t, t,
                sql.Identifier(relation.column), b.param(entity_id)))
    return (sql.SQL(" UNION ALL ").join(parts), b.params) if parts else None


def covers(principal: Principal, role: Role, project_id: int | None, owner: str | None) -> bool:
    """Whether `principal` may `role` a row of Project `project_id` owned by `owner` (an authId)."""
    return principal.has_in(role, project_id) or (owner is not None and owner == principal.auth_id)


def stream_scopes_query(stream: Entity, ids: list[int]) -> tuple[str, dict[str, Any]]:
    """The statement reading (id, Project id, owner's authId) of each existing stream `ids` of `stream`
    (Datastream, MultiDatastream): for a batch of Observations whose publishers hold their roles only
    somewhere (MQTT). A statement, not a call, so that the batch sends it with its other reads."""
    b = SqlBuilder("")
    s = b.alias()
    columns = _scope_columns(stream, s)
    if columns is None:
        columns = [sql.SQL("NULL::bigint"), sql.SQL("NULL::text")]
    query = sql.SQL("SELECT {}.id, {} FROM {} {} WHERE {}.id = ANY({})").format(
        s, sql.SQL(", ").join(columns), sql.Identifier(stream.table), s, s, b.param(ids))
    return query.as_string(None), b.params


async def _rows(conn: AsyncConnection[Any], statement: tuple[sql.Composable, dict[str, Any]] | None
                ) -> list[tuple[int | None, str | None]]:
    if statement is None:
        return []
    query, values = statement
    rows: list[tuple[int | None, str | None]] = await (await conn.execute(query.as_string(None), values)).fetchall()
    return rows


async def check(conn: AsyncConnection[Any], entity: Entity, entity_id: int, role: Role) -> None:
    """Forbidden unless the current principal may `role` (update, delete; create: of Observations in a
    stream) the entity `entity_id` as it is now: everywhere, for its Project, or as its owner. A delete
    must also cover every stream that goes with the entity (a Thing's Datastreams). Called again after an
    update, so that nothing is moved where the principal may not write."""
    principal = CURRENT.get()
    if principal.has(role):
        return
    scopes = await _rows(conn, _scope_statement(entity, entity_id))
    allowed = any(covers(principal, role, project, owner) for project, owner in scopes)
    if allowed and role is Role.DELETE:
        allowed = all(covers(principal, role, project, owner)
                      for project, owner in await _rows(conn, _dependents_statement(entity, entity_id)))
    if not allowed:
        held = ", ".join(f"{r} for Project {p}" for p in sorted(principal.project_roles)
                         for r in sorted(principal.project_roles[p])) or "no roles for it"
        raise Forbidden(f"{principal.kind} {principal.name!r} may not {_DOING.get(role, role.value)} "
                        f"{entity.name} {entity_id} (and what goes with it): that needs the role {role.value!r} "
                        f"everywhere, for the Project it belongs to, or to own it (it has {held})")


def require_global(role: Role, what: str) -> None:
    """Forbidden unless the current principal holds `role` everywhere (creating Things, Sensors, …; a
    DELETE by $filter): a Project's roles cover only its streams' data."""
    principal = CURRENT.get()
    if not principal.has(role):
        projects = ", ".join(map(str, sorted(principal.project_roles))) or "none"
        raise Forbidden(f"{principal.kind} {principal.name!r} may not {what}: that needs the role {role.value!r} "
                        f"everywhere, not only for a Project (its Projects: {projects})")


async def check_link(conn: AsyncConnection[Any], relation: Relation, source: int, target: int) -> None:
    """Forbidden unless the current principal may change the link `relation` from `source` to `target`:
    update on the source, and on the target where the link is the target's row (a Datastream's Thing)."""
    await check(conn, relation.source_entity, source, Role.UPDATE)
    if relation.storage is Storage.FK_ON_TARGET:
        await check(conn, relation.target_entity, target, Role.UPDATE)


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
