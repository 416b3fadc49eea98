"""The rows a request addresses, as SQL conditions: those of a collection path that pass its `$filter`,
and whether every entity the path names before its last step exists."""

from __future__ import annotations

from psycopg import sql

from sensorthings.query.expressions import ExpressionCompiler
from sensorthings.query.options import QueryOptions
from sensorthings.query.path import ResourcePath
from sensorthings.query.sql import SqlBuilder, relation_join, step_conditions


def matching_rows(path: ResourcePath, options: QueryOptions, alias: sql.Identifier, b: SqlBuilder) -> sql.Composable:
    """The rows of a collection request: those the path addresses that pass its $filter."""
    conditions = step_conditions(path.steps, alias, b)
    if options.filter is None:
        return conditions
    return sql.SQL("{} AND {}").format(
        conditions, ExpressionCompiler(b, path.entity, alias, relation_join).predicate(options.filter))


def parent_exists(path: ResourcePath, b: SqlBuilder) -> sql.Composable:
    """TRUE when every entity the path names before its last step exists (else the request is a 404)."""
    if len(path.steps) == 1:
        return sql.SQL("TRUE")
    parent_steps = path.steps[:-1]
    alias = b.alias()
    return sql.SQL("EXISTS (SELECT 1 FROM {} {} WHERE {})").format(
        b.source(parent_steps[-1].entity), alias, step_conditions(parent_steps, alias, b))
