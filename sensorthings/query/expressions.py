"""Compile `$filter` and `$orderby` expressions (odata AST) to parameterised SQL.

Every value is typed (operand.Operand). Literals become bind parameters; properties come from the entity
model through their field kinds; paths across relations become EXISTS semi-joins around the smallest
boolean term that uses them (so `Thing/Locations/name eq 'x'` means "any Location"), or scalar subqueries
over to-one relations when a single value is needed ($orderby).

Semantics follow OData as STA uses it: a comparison involving a missing value is false (also under
`not`), `ne` is true when exactly one side is missing, interval properties compare by their bounds, and a
result compared with a string literal matches string results by text and numeric results by number when
the literal is numeric (`result gt '3'`), and two JSON values compare for (in)equality as JSON.
Work is bounded: option text is capped (odata.MAX_EXPRESSION_CHARS), `in` takes a value on its left (so
no SQL is copied exponentially), and too-deep nesting is a 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import numpy
import shapely
import shapely.wkt
from psycopg import sql

from sensorthings.model.entities import Entity, Relation
from sensorthings.model.errors import BadRequest
from sensorthings.model.operand import Operand
from sensorthings.query import odata

POLYMORPHIC = ("json", "result")
SQL_OPS = {"eq": "=", "ne": "IS DISTINCT FROM", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
MIRROR = {"eq": "eq", "ne": "ne", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}
ARITHMETIC = {"add": "+", "sub": "-", "mul": "*"}
ORDERABLE = ("number", "string", "boolean", "datetime", "date", "time")


class Builder(Protocol):
    """What the expression compiler needs from the statement builder (compiler.SqlBuilder)."""

    def param(self, value: Any) -> sql.Composable: ...

    def alias(self) -> sql.Identifier: ...


JoinFn = Callable[[Relation, sql.Identifier, sql.Identifier], sql.Composable]


@dataclass
class _Join:
    relation: Relation
    source: sql.Identifier
    target: sql.Identifier


def _utc(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


class ExpressionCompiler:
    """Compiles expressions evaluated against rows `alias` of `entity`."""

    def __init__(self, b: Builder, entity: Entity, alias: sql.Identifier, join: JoinFn,
                 option: str = "$filter") -> None:
        self.option = option  # named in error messages
        self.b = b
        self.entity = entity
        self.alias = alias
        self.join = join
        self._joins: list[_Join] | None = None  # collecting relation steps of the current boolean term

    # ------------------------------------------------------------------ entry points

    def predicate(self, expr: odata.Expr) -> sql.Composable:
        """A boolean SQL condition; never NULL where it matters (under `not`)."""
        if isinstance(expr, odata.Logical):
            joiner = sql.SQL(" AND " if expr.op == "and" else " OR ")
            return sql.SQL("({})").format(joiner.join(self.predicate(e) for e in expr.operands))
        if isinstance(expr, odata.Not):
            return sql.SQL("(NOT coalesce({}, false))").format(self.predicate(expr.operand))
        outer, self._joins = self._joins, []
        try:
            condition = self._term(expr)
            joins = self._joins
        finally:
            self._joins = outer
        return self._exists(joins, condition) if joins else condition

    def order_values(self, expr: odata.Expr) -> list[sql.Composable]:
        """Sort keys for one $orderby expression (relations must be single-valued)."""
        if isinstance(expr, odata.Literal):
            raise BadRequest(f"{self.option}: ordering by the constant {expr.value!r} has no effect; name a property")
        operand = self.value(expr)
        if operand.kind == "interval":
            return [operand.value]
        if operand.kind == "result":
            return [operand.views["number"], operand.views["string"]]
        if operand.kind == "json":
            return [operand.value]
        if operand.kind not in ORDERABLE:
            raise BadRequest(f"{self.option}: cannot order by {_describe(expr)}, a {operand.kind} value")
        return [operand.value]

    # ------------------------------------------------------------------ boolean terms

    def _term(self, expr: odata.Expr) -> sql.Composable:
        if isinstance(expr, odata.Compare):
            return self._compare(expr.op, self.value(expr.left), self.value(expr.right))
        if isinstance(expr, odata.In):
            if not isinstance(expr.left, odata.Path | odata.Function | odata.Literal | odata.Arithmetic):
                raise BadRequest(f"{self.option}: 'in' needs a value on its left, e.g. name in ('a', 'b')")
            left = self.value(expr.left)
            options = [self._compare("eq", left, self.value(option)) for option in expr.options]
            return sql.SQL("({})").format(sql.SQL(" OR ").join(options))
        if isinstance(expr, odata.Logical | odata.Not):
            return self.predicate(expr)
        operand = self.value(expr)
        if operand.kind == "boolean":
            return sql.SQL("({} IS TRUE)").format(operand.value)
        if operand.kind in POLYMORPHIC:
            return sql.SQL("({} IS TRUE)").format(operand.views["boolean"])
        raise BadRequest(f"{self.option}: {_describe(expr)} is a {operand.kind} value, not a condition; "
                         f"compare it, e.g. with eq")

    def _exists(self, joins: list[_Join], condition: sql.Composable) -> sql.Composable:
        tables = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(j.relation.target_entity.table), j.target) for j in joins)
        links = [self.join(j.relation, j.source, j.target) for j in joins]
        return sql.SQL("EXISTS (SELECT 1 FROM {} WHERE {} AND {})").format(
            tables, sql.SQL(" AND ").join(links), condition)

    # ------------------------------------------------------------------ values

    def value(self, expr: odata.Expr) -> Operand:
        if isinstance(expr, odata.Literal):
            return self._literal(expr.value)
        if isinstance(expr, odata.Path):
            return self._path(expr)
        if isinstance(expr, odata.Function):
            return _call(self, expr)
        if isinstance(expr, odata.Arithmetic):
            left, right = self._number(expr.left), self._number(expr.right)
            if expr.op == "div":
                return Operand("number", sql.SQL("({}::double precision / NULLIF({}, 0))").format(left, right))
            if expr.op == "mod":
                return Operand("number", sql.SQL("mod({}::numeric, NULLIF({}, 0)::numeric)::double precision")
                               .format(left, right))
            return Operand("number", sql.SQL("({} {} {})").format(left, sql.SQL(ARITHMETIC[expr.op]), right))
        if isinstance(expr, odata.Negate):
            return Operand("number", sql.SQL("(-{})").format(self._number(expr.operand)))
        return Operand("boolean", self._term(expr))

    def _number(self, expr: odata.Expr) -> sql.Composable:
        return self.as_kind(self.value(expr), "number", expr)

    def as_kind(self, operand: Operand, kind: str, expr: odata.Expr | None = None) -> sql.Composable:
        """The operand read as `kind` (a JSON value or result of another type reads as NULL)."""
        if operand.kind == kind:
            return operand.value
        if operand.kind in POLYMORPHIC and kind in operand.views:
            return operand.views[kind]
        if operand.kind == "interval" and kind == "datetime":
            return operand.value
        if operand.kind == "null":
            return sql.SQL("NULL")
        what = _describe(expr) if expr is not None else "a value"
        raise BadRequest(f"{self.option}: {what} is a {operand.kind} value where a {kind} is expected")

    def _literal(self, value: object) -> Operand:
        if value is None:
            return Operand("null", sql.SQL("NULL"))
        if isinstance(value, bool):
            return Operand("boolean", sql.SQL("{}::boolean").format(self.b.param(value)))
        if isinstance(value, int):
            cast = "bigint" if -(2**63) <= value < 2**63 else "numeric"
            return Operand("number", sql.SQL("{}::{}").format(self.b.param(value), sql.SQL(cast)))
        if isinstance(value, Decimal):
            try:
                number = float(value)
            except (OverflowError, InvalidOperation):
                number = float("inf")
            if number in (float("inf"), float("-inf")):
                raise BadRequest(f"{self.option}: the number {value} is too large")
            return Operand("number", sql.SQL("{}::double precision").format(self.b.param(number)))
        if isinstance(value, str):
            return Operand("string", sql.SQL("{}::text").format(self.b.param(value)))
        if isinstance(value, datetime):
            return Operand("datetime", sql.SQL("{}::timestamptz").format(self.b.param(value)))
        if isinstance(value, date):
            return Operand("date", sql.SQL("{}::date").format(self.b.param(value)))
        if isinstance(value, time):
            return Operand("time", sql.SQL("{}::time").format(self.b.param(value)))
        if isinstance(value, odata.Geo):
            try:
                with numpy.errstate(all="ignore"):  # overflowing coordinates are rejected just below
                    shape = shapely.wkt.loads(value.wkt)
                finite = bool(numpy.isfinite(shapely.get_coordinates(shape)).all())
            except Exception:  # shapely raises several types for malformed WKT
                finite = False
            if not finite:
                raise BadRequest(f"{self.option}: {value.wkt!r} is not valid WKT with finite coordinates, "
                                 f"e.g. POINT(10 53.5)")
            return Operand("geometry", sql.SQL("ST_GeomFromText({}, 4326)").format(self.b.param(shape.wkt)))
        raise BadRequest(f"{self.option}: {value!r} literals are not supported")

    def _path(self, path: odata.Path) -> Operand:
        entity, alias = self.entity, self.alias
        chain: list[_Join] = []
        for index, segment in enumerate(path.segments):
            relation = entity.relations.get(segment)
            if relation is not None:
                target = self.b.alias()
                step = _Join(relation, alias, target)
                if self._joins is not None:
                    self._joins.append(step)
                elif relation.to_many:
                    raise BadRequest(f"{self.option}: {path} passes the collection {segment}; order by a "
                                     f"property reached through single-valued relations only")
                else:
                    chain.append(step)
                entity, alias = relation.target_entity, target
                continue
            rest = path.segments[index + 1:]
            if segment in ("id", "@iot.id") and not rest:
                operand = Operand("number", sql.SQL("{}.id").format(alias))
            else:
                field = entity.field(segment)
                if field is None:
                    raise BadRequest(
                        f"{self.option}: {path}: {entity.name} has no property or relation {segment!r}; properties: "
                        f"{', '.join(['id', *entity.property_names])}; relations: {', '.join(entity.relations)}")
                operand = field.operand(alias, rest, self.b.param)
            return self._through(chain, operand) if chain else operand
        raise BadRequest(f"{self.option}: {path} ends at a relation; name one of its properties, e.g. {path}/id")

    def _through(self, chain: list[_Join], operand: Operand) -> Operand:
        """Read an operand of a row reached through single-valued relations as scalar subqueries."""
        def scalar(value: sql.Composable) -> sql.Composable:
            return sql.SQL("(SELECT {} FROM {} WHERE {})").format(
                value,
                sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(j.relation.target_entity.table), j.target)
                                   for j in chain),
                sql.SQL(" AND ").join(self.join(j.relation, j.source, j.target) for j in chain))
        return Operand(operand.kind, scalar(operand.value), {k: scalar(v) for k, v in operand.views.items()},
                       None if operand.end is None else scalar(operand.end))

    # ------------------------------------------------------------------ comparison

    def _compare(self, op: str, left: Operand, right: Operand) -> sql.Composable:
        if right.kind == "null" or left.kind == "null":
            other = left if right.kind == "null" else right
            if op not in ("eq", "ne"):
                return sql.SQL("false")
            test = _is_null(other)
            return test if op == "eq" else sql.SQL("(NOT {})").format(test)
        if left.kind == "interval" or right.kind == "interval":
            return self._compare_interval(op, left, right)
        if {left.kind, right.kind} == {"date", "datetime"}:
            left, right = (self._lift_date(left), self._lift_date(right))
        if left.kind == "result" and right.kind == "string":
            return self._result_vs_string(op, left, right)
        if right.kind == "result" and left.kind == "string":
            return self._result_vs_string(MIRROR[op], right, left)
        if left.kind == right.kind == "json" and op in ("eq", "ne"):
            return sql.SQL("({} {} {})").format(left.value, sql.SQL(SQL_OPS[op]), right.value)
        kind = self._common_kind(left, right)
        if kind == "geometry":
            if op not in ("eq", "ne"):
                raise BadRequest(f"{self.option}: geometries only compare with eq/ne; use st_* or geo.* functions")
            equal = sql.SQL("ST_Equals({}, {})").format(left.value, right.value)
            return equal if op == "eq" else sql.SQL("(NOT coalesce({}, false))").format(equal)
        return sql.SQL("({} {} {})").format(self.as_kind(left, kind), sql.SQL(SQL_OPS[op]),
                                            self.as_kind(right, kind))

    def _common_kind(self, left: Operand, right: Operand) -> str:
        if left.kind in POLYMORPHIC and right.kind in POLYMORPHIC:
            return "number"
        if left.kind in POLYMORPHIC:
            return right.kind
        if right.kind in POLYMORPHIC:
            return left.kind
        if left.kind != right.kind:
            raise BadRequest(f"{self.option}: cannot compare a {left.kind} value with a {right.kind} value")
        return left.kind

    def _lift_date(self, operand: Operand) -> Operand:
        if operand.kind != "date":
            return operand
        return Operand("datetime", sql.SQL("({} AT TIME ZONE 'UTC')").format(
            sql.SQL("{}::timestamp").format(operand.value)))

    def _result_vs_string(self, op: str, result: Operand, text: Operand) -> sql.Composable:
        """STA: a string literal matches string results by text, numeric results by number."""
        sql_op = sql.SQL(SQL_OPS[op])
        as_text = sql.SQL("({} {} {})").format(result.views["string"], sql_op, text.value)
        as_number = sql.SQL("({} {} sta_text_number({}))").format(result.views["number"], sql_op, text.value)
        if op == "ne":
            return sql.SQL("(({} IS NULL OR {}) AND ({} IS NULL OR {}))").format(
                result.views["string"], as_text, result.views["number"], as_number)
        return sql.SQL("({} OR {})").format(as_text, as_number)

    def _compare_interval(self, op: str, left: Operand, right: Operand) -> sql.Composable:
        """Intervals compare by their bounds, as FROST does: `phenomenonTime gt t` means it starts after t,
        `lt t` that it ends before t, `eq t` that it is the instant t."""
        if left.kind != "interval":
            return self._compare_interval(MIRROR[op], right, left)
        other = self._lift_date(right)
        if other.kind == "interval":
            other_start, other_end = other.value, other.end or other.value
        else:
            other_start = other_end = self.as_kind(other, "datetime")
        start, end = left.value, left.end or left.value
        if op in ("gt", "ge"):
            return sql.SQL("({} {} {})").format(start, sql.SQL(SQL_OPS[op]), other_end)
        if op in ("lt", "le"):
            return sql.SQL("({} {} {})").format(end, sql.SQL(SQL_OPS[op]), other_start)
        equal = sql.SQL("({} = {} AND {} = {})").format(start, other_start, end, other_end)
        return equal if op == "eq" else sql.SQL("(NOT coalesce({}, false))").format(equal)


def _is_null(operand: Operand) -> sql.Composable:
    if operand.kind == "result":
        return sql.SQL("({} = 0)").format(operand.value)
    if operand.kind == "json":
        return sql.SQL("({0} IS NULL OR jsonb_typeof({0}) = 'null')").format(operand.value)
    return sql.SQL("({} IS NULL)").format(operand.value)


def _describe(expr: odata.Expr) -> str:
    if isinstance(expr, odata.Path):
        return str(expr)
    if isinstance(expr, odata.Function):
        return f"{expr.name}(…)"
    if isinstance(expr, odata.Literal):
        return repr(expr.value)
    return "the expression"


# ---------------------------------------------------------------------------------------- functions

Render = Callable[..., sql.Composable]


@dataclass(frozen=True)
class FunctionSpec:
    args: tuple[str, ...]  # kinds of the arguments
    result: str
    render: Render


def _f(template: str) -> Render:
    return lambda *args: sql.SQL(template).format(*args)


def _utc_part(part: str) -> Render:
    return lambda x: sql.SQL("extract({} FROM ({} AT TIME ZONE 'UTC'))::double precision").format(sql.SQL(part), x)


_GEO_PREDICATES = {
    "geo.intersects": "ST_Intersects", "st_equals": "ST_Equals", "st_disjoint": "ST_Disjoint",
    "st_touches": "ST_Touches", "st_within": "ST_Within", "st_overlaps": "ST_Overlaps", "st_crosses": "ST_Crosses",
    "st_intersects": "ST_Intersects", "st_contains": "ST_Contains",
}

FUNCTIONS: dict[str, list[FunctionSpec]] = {
    "substringof": [FunctionSpec(("string", "string"), "boolean", _f("(strpos({1}, {0}) > 0)"))],
    "contains": [FunctionSpec(("string", "string"), "boolean", _f("(strpos({0}, {1}) > 0)"))],
    "startswith": [FunctionSpec(("string", "string"), "boolean", _f("starts_with({0}, {1})"))],
    "endswith": [FunctionSpec(("string", "string"), "boolean", _f("(right({0}, char_length({1})) = {1})"))],
    "length": [FunctionSpec(("string",), "number", _f("char_length({0})::double precision"))],
    "indexof": [FunctionSpec(("string", "string"), "number", _f("(strpos({0}, {1}) - 1)::double precision"))],
    "substring": [
        FunctionSpec(("string", "number"), "string", _f("substr({0}, greatest(({1})::int, 0) + 1)")),
        FunctionSpec(("string", "number", "number"), "string",
                     _f("substr({0}, greatest(({1})::int, 0) + 1, greatest(({2})::int, 0))")),
    ],
    # Case mapping by ICU's root collation covers every script, whatever the database's collation is; the
    # result goes back to the default collation so that comparing it orders as everything else does.
    "tolower": [FunctionSpec(("string",), "string", _f('(lower({0} COLLATE "und-x-icu") COLLATE "default")'))],
    "toupper": [FunctionSpec(("string",), "string", _f('(upper({0} COLLATE "und-x-icu") COLLATE "default")'))],
    "trim": [FunctionSpec(("string",), "string", _f("btrim({0})"))],
    "concat": [FunctionSpec(("string", "string"), "string", _f("({0} || {1})"))],
    "year": [FunctionSpec(("datetime",), "number", _utc_part("year"))],
    "month": [FunctionSpec(("datetime",), "number", _utc_part("month"))],
    "day": [FunctionSpec(("datetime",), "number", _utc_part("day"))],
    "hour": [FunctionSpec(("datetime",), "number", _utc_part("hour"))],
    "minute": [FunctionSpec(("datetime",), "number", _utc_part("minute"))],
    "second": [FunctionSpec(("datetime",), "number",
                            _f("floor(extract(second FROM ({0} AT TIME ZONE 'UTC')))::double precision"))],
    "fractionalseconds": [FunctionSpec(("datetime",), "number",
                                       _f("(mod(extract(microseconds FROM {0})::bigint, 1000000) / 1e6)"
                                          "::double precision"))],
    "date": [FunctionSpec(("datetime",), "date", _f("({0} AT TIME ZONE 'UTC')::date"))],
    "time": [FunctionSpec(("datetime",), "time", _f("({0} AT TIME ZONE 'UTC')::time"))],
    "totaloffsetminutes": [FunctionSpec(("datetime",), "number", _f("(0 * extract(epoch FROM {0}))"))],
    "now": [FunctionSpec((), "datetime", _f("now()"))],
    "mindatetime": [FunctionSpec((), "datetime", _f("'-infinity'::timestamptz")),
                    FunctionSpec(("interval",), "datetime", _f("{0}"))],
    "maxdatetime": [FunctionSpec((), "datetime", _f("'infinity'::timestamptz")),
                    FunctionSpec(("interval_end",), "datetime", _f("{0}"))],
    "round": [FunctionSpec(("number",), "number", _f("round(({0})::numeric)::double precision"))],
    "floor": [FunctionSpec(("number",), "number", _f("floor({0})::double precision"))],
    "ceiling": [FunctionSpec(("number",), "number", _f("ceil({0})::double precision"))],
    "geo.distance": [FunctionSpec(("geometry", "geometry"), "number", _f("ST_Distance({0}, {1})"))],
    "geo.length": [FunctionSpec(("geometry",), "number", _f("ST_Length({0})"))],
    "st_relate": [FunctionSpec(("geometry", "geometry", "string"), "boolean", _f("ST_Relate({0}, {1}, {2})"))],
    **{name: [FunctionSpec(("geometry", "geometry"), "boolean", _f(f"{function}({{0}}, {{1}})"))]
       for name, function in _GEO_PREDICATES.items()},
}


def _call(compiler: ExpressionCompiler, call: odata.Function) -> Operand:
    specs = FUNCTIONS.get(call.name)
    if specs is None:
        raise BadRequest(f"{compiler.option}: unknown function {call.name}(); known: {', '.join(sorted(FUNCTIONS))}")
    spec = next((s for s in specs if len(s.args) == len(call.args)), None)
    if call.name == "st_relate" and spec is not None:
        pattern = call.args[2]
        if not (isinstance(pattern, odata.Literal) and isinstance(pattern.value, str)
                and re.fullmatch(r"[TF*012]{9}", pattern.value)):
            raise BadRequest(f"{compiler.option}: st_relate() takes a DE-9IM pattern literal of 9 characters "
                             f"from T F * 0 1 2, e.g. 'T*T***T**'")
    if spec is None:
        arities = " or ".join(str(len(s.args)) for s in specs)
        raise BadRequest(f"{compiler.option}: {call.name}() takes {arities} argument(s), got {len(call.args)}")
    args = []
    for kind, expr in zip(spec.args, call.args, strict=True):
        operand = compiler.value(expr)
        if kind == "interval_end":
            if operand.kind != "interval":
                raise BadRequest(f"{compiler.option}: {call.name}() takes a time interval such as phenomenonTime")
            args.append(operand.end or operand.value)
        elif kind == "interval":
            if operand.kind != "interval":
                raise BadRequest(f"{compiler.option}: {call.name}() takes a time interval such as phenomenonTime")
            args.append(operand.value)
        else:
            args.append(compiler.as_kind(operand, kind, expr))
    return Operand(spec.result, spec.render(*args))
