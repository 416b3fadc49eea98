"""ORDER BY keys of `$orderby` (ending with the id, for stable paging) and keyset paging on them: which
orders can continue after a row's key values (`$skiptoken`), and the condition for the rows after it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql

from sensorthings.model.entities import Entity
from sensorthings.model.errors import BadRequest
from sensorthings.query.expressions import ExpressionCompiler
from sensorthings.query.odata import OrderItem, Path
from sensorthings.query.sql import SqlBuilder, qualified, relation_join


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


def keyset_after(keys: list[KeysetKey], values: list[Any], b: SqlBuilder) -> sql.Composable:
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
