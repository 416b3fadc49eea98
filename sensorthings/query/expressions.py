"""Compile `$filter` and `$orderby` expressions (odata AST) to parameterised SQL.

Every value is typed (operand.Operand). Literals become bind parameters; properties come from the entity
model through their field kinds; paths across relations become EXISTS semi-joins around the smallest
boolean term that uses them (so `Thing/Locations/name eq 'x'` means "any Location"), or scalar subqueries
over to-one relations when a single value is needed ($orderby).

Semantics follow OData as STA uses it: a comparison involving a missing value is false (also under
`not`), `ne` is true when exactly one side is missing, interval properties compare by their bounds, and a
result compared with a string literal matches string results by text and numeric results by number when
the literal is numeric (`result gt '3'`), and two JSON values compare for (in)equality as JSON.
Times take durations (`now() sub duration'P1D'`, `resultTime sub phenomenonTime gt duration'PT1H'`) with
interval arithmetic: an interval shifted by a duration keeps its length, and an interval in a difference
gives a span of durations, compared by its bounds as intervals are (`_time_arithmetic`).
Work is bounded: option text is capped (odata.MAX_EXPRESSION_CHARS), `in` takes a value on its left (so
no SQL is copied exponentially), and too-deep nesting is a 400.
"""

from __future__ import annotations

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
from sensorthings.query.functions import call_function

POLYMORPHIC = ("json", "result")
SQL_OPS = {"eq": "=", "ne": "IS DISTINCT FROM", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
MIRROR = {"eq": "eq", "ne": "ne", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}
ARITHMETIC = {"add": "+", "sub": "-", "mul": "*"}
ORDERABLE = ("number", "string", "boolean", "datetime", "date", "time")
TEMPORAL = ("datetime", "date", "interval", "duration")
TIMES = ("datetime", "interval")
ARITHMETIC_TAKES = {
    "add": "two numbers, a datetime (or interval) and a duration, or two durations",
    "sub": "two numbers, a datetime (or interval) and then a duration, two datetimes, or two durations",
    "mul": "two numbers, or a duration and a number",
    "div": "two numbers, or a duration and then a number",
    "mod": "two numbers",
}
CALENDAR = ("counts years or months, which have no fixed length, so it cannot be compared, ordered or scaled; "
            "compare the times instead, e.g. phenomenonTime lt now() sub duration'P1M'")


class Builder(Protocol):
    """What the expression compiler needs from the statement builder (compiler.SqlBuilder)."""

    def param(self, value: Any) -> sql.Composable: ...

    def alias(self) -> sql.Identifier: ...

    def source(self, entity: Entity) -> sql.Composable: ...

    @property
    def version(self) -> str: ...


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
        if operand.kind == "duration":  # a span of durations orders by its shortest, as an interval by its start
            if operand.calendar:
                raise BadRequest(f"{self.option}: {_describe(expr)} {CALENDAR}")
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
            sql.SQL("{} {}").format(self.b.source(j.relation.target_entity), j.target) for j in joins)
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
            return call_function(self, expr)
        if isinstance(expr, odata.Arithmetic):
            left_operand, right_operand = self.value(expr.left), self.value(expr.right)
            if left_operand.kind in TEMPORAL or right_operand.kind in TEMPORAL:
                return self._time_arithmetic(expr, left_operand, right_operand)
            left = self.as_kind(left_operand, "number", expr.left)
            right = self.as_kind(right_operand, "number", expr.right)
            if expr.op == "div":
                return Operand("number", sql.SQL("({}::double precision / NULLIF({}, 0))").format(left, right))
            if expr.op == "mod":
                return Operand("number", sql.SQL("mod({}::numeric, NULLIF({}, 0)::numeric)::double precision")
                               .format(left, right))
            return Operand("number", sql.SQL("({} {} {})").format(left, sql.SQL(ARITHMETIC[expr.op]), right))
        if isinstance(expr, odata.Negate):
            operand = self.value(expr.operand)
            if operand.kind == "duration":
                return _negated(operand)
            return Operand("number", sql.SQL("(-{})").format(self.as_kind(operand, "number", expr.operand)))
        return Operand("boolean", self._term(expr))

    # ------------------------------------------------------------------ time arithmetic

    def _time_arithmetic(self, expr: odata.Arithmetic, left: Operand, right: Operand) -> Operand:
        """OData arithmetic on DateTimeOffset and Duration, as interval arithmetic on the bounds.

        datetime ± duration is a datetime, reckoned in UTC whatever the session's time zone (a day is 24 hours,
        a month a calendar month); an interval ± duration is the interval shifted, both bounds; datetime -
        datetime is the exact duration between them. Where an interval takes part in a difference, the
        result is the span of durations its bounds give (`resultTime sub phenomenonTime`: from resultTime -
        end, the shortest, to resultTime - start), which compares by its bounds as an interval does: `gt d`
        means every one of them is longer than d, `lt d` every one shorter. Each bound's SQL is used once.
        """
        op = expr.op
        if "null" in (left.kind, right.kind):
            return Operand("null", sql.SQL("NULL"))
        left, right = self._lift_date(left), self._lift_date(right)
        if op in ("add", "sub") and left.kind in TIMES and right.kind == "duration":
            return _shifted(op, left, right)
        if op == "add" and left.kind == "duration" and right.kind in TIMES:
            return _shifted(op, right, left)
        if op in ("add", "sub") and left.kind == right.kind == "duration":
            lower, upper = _bounds(op, left, right, lambda a, b: sql.SQL("({} {} {})").format(
                a, sql.SQL(ARITHMETIC[op]), b))
            return Operand("duration", lower, end=upper, calendar=left.calendar or right.calendar)
        if op == "sub" and left.kind in TIMES and right.kind in TIMES:
            lower, upper = _bounds(op, left, right, lambda a, b: sql.SQL("({} - {})").format(a, b))
            return Operand("duration", lower, end=upper)
        if op in ("mul", "div") and left.kind == "duration" and right.kind not in TEMPORAL:
            return self._scaled(op, left, right, expr.right)
        if op == "mul" and right.kind == "duration" and left.kind not in TEMPORAL:
            return self._scaled(op, right, left, expr.left)
        raise BadRequest(f"{self.option}: cannot {op} {_describe(expr.left)} (a {left.kind} value) and "
                         f"{_describe(expr.right)} (a {right.kind} value); {op} takes {ARITHMETIC_TAKES[op]}")

    def _scaled(self, op: str, duration: Operand, number: Operand, number_expr: odata.Expr) -> Operand:
        if duration.calendar:
            raise BadRequest(f"{self.option}: a duration that {CALENDAR}")
        factor = sql.SQL("({})::double precision").format(self.as_kind(number, "number", number_expr))
        template = sql.SQL("({} * {})" if op == "mul" else "({} / NULLIF({}, 0))")
        if duration.end is None:
            return Operand("duration", template.format(duration.value, factor))
        # A span of durations: its bounds swap with a negative factor, which only a literal tells here (a
        # least()/greatest() of both would copy the SQL of the bounds twice on every level of nesting).
        if not (isinstance(number_expr, odata.Literal) and isinstance(number_expr.value, int | Decimal)
                and not isinstance(number_expr.value, bool)):
            raise BadRequest(f"{self.option}: a span of durations (from an interval such as phenomenonTime) can "
                             f"only be scaled by a number literal, e.g. {op} 2")
        lower, upper = template.format(duration.value, factor), template.format(duration.end, factor)
        if number_expr.value < 0:
            lower, upper = upper, lower
        return Operand("duration", lower, end=upper)

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
        if isinstance(value, odata.Duration):  # a bound timedelta, as a PostgreSQL interval
            if value.months:
                return Operand("duration", sql.SQL("(make_interval(months => {}::integer) + {}::interval)").format(
                    self.b.param(value.months), self.b.param(value.delta)), calendar=True)
            return Operand("duration", sql.SQL("{}::interval").format(self.b.param(value.delta)))
        raise BadRequest(f"{self.option}: {value!r} literals are not supported")

    def _path(self, path: odata.Path) -> Operand:
        entity, alias = self.entity, self.alias
        chain: list[_Join] = []
        for index, segment in enumerate(path.segments):
            relation = entity.relations_in(self.b.version).get(segment)
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
                field = entity.field_in(segment, self.b.version)
                if entity.newer_field(segment, self.b.version) or entity.newer_relation(segment, self.b.version):
                    raise entity.too_new(segment, self.b.version, f"{self.option}: {path}")
                if field is None:
                    raise BadRequest(
                        f"{self.option}: {path}: {entity.name} has no property or relation {segment!r}; properties: "
                        f"{', '.join(['id', *entity.property_names_in(self.b.version)])}; "
                        f"relations: {', '.join(entity.relations_in(self.b.version))}")
                operand = field.operand(alias, rest, self.b.param)
            return self._through(chain, operand) if chain else operand
        raise BadRequest(f"{self.option}: {path} ends at a relation; name one of its properties, e.g. {path}/id")

    def _through(self, chain: list[_Join], operand: Operand) -> Operand:
        """Read an operand of a row reached through single-valued relations as scalar subqueries."""
        def scalar(value: sql.Composable) -> sql.Composable:
            return sql.SQL("(SELECT {} FROM {} WHERE {})").format(
                value,
                sql.SQL(", ").join(sql.SQL("{} {}").format(self.b.source(j.relation.target_entity), j.target)
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
        if left.kind == "duration" or right.kind == "duration":
            return self._compare_duration(op, left, right)
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
        return _compare_bounds(op, left.value, left.end or left.value, other_start, other_end)

    def _compare_duration(self, op: str, left: Operand, right: Operand) -> sql.Composable:
        """Durations compare with durations; a span of durations by its bounds, as an interval does."""
        for operand in (left, right):
            if operand.kind != "duration":
                raise BadRequest(f"{self.option}: cannot compare a {operand.kind} value with a duration; a "
                                 f"duration compares with another duration, e.g. duration'PT1H'")
            if operand.calendar:
                raise BadRequest(f"{self.option}: a duration that {CALENDAR}")
        if left.end is None and right.end is None:
            return sql.SQL("({} {} {})").format(left.value, sql.SQL(SQL_OPS[op]), right.value)
        return _compare_bounds(op, left.value, left.end or left.value, right.value, right.end or right.value)


def _compare_bounds(op: str, start: sql.Composable, end: sql.Composable, other_start: sql.Composable,
                    other_end: sql.Composable) -> sql.Composable:
    """Compare [start, end] with [other_start, other_end]: gt means all after, lt all before, eq the same."""
    if op in ("gt", "ge"):
        return sql.SQL("({} {} {})").format(start, sql.SQL(SQL_OPS[op]), other_end)
    if op in ("lt", "le"):
        return sql.SQL("({} {} {})").format(end, sql.SQL(SQL_OPS[op]), other_start)
    equal = sql.SQL("({} = {} AND {} = {})").format(start, other_start, end, other_end)
    return equal if op == "eq" else sql.SQL("(NOT coalesce({}, false))").format(equal)


Bound = Callable[[sql.Composable, sql.Composable], sql.Composable]


def _bounds(op: str, left: Operand, right: Operand, combine: Bound) -> tuple[sql.Composable, sql.Composable | None]:
    """The lower and upper bound of `left op right` (add or sub) on operands that may be ranges (an interval,
    a span of durations: `end` set); the upper bound is None when both are exact. Each bound's SQL is used
    once (only an exact operand's is copied), so nesting grows the SQL linearly."""
    left_end = left.value if left.end is None else left.end
    right_end = right.value if right.end is None else right.end
    exact = left.end is None and right.end is None
    if op == "sub":  # [a, b] - [c, d] = [a - d, b - c]
        return combine(left.value, right_end), None if exact else combine(left_end, right.value)
    return combine(left.value, right.value), None if exact else combine(left_end, right_end)


def _shifted(op: str, instant: Operand, duration: Operand) -> Operand:
    """A datetime or interval plus/minus a duration, reckoned in UTC (so a day is 24 hours and a month a
    calendar month, whatever the session's time zone); an interval keeps both bounds."""
    lower, upper = _bounds(op, instant, duration, lambda t, d: sql.SQL(
        "(((({}) AT TIME ZONE 'UTC') {} {}) AT TIME ZONE 'UTC')").format(t, sql.SQL(ARITHMETIC[op]), d))
    return Operand("datetime", lower) if upper is None else Operand("interval", lower, end=upper)


def _negated(duration: Operand) -> Operand:
    if duration.end is None:
        return Operand("duration", sql.SQL("(-{})").format(duration.value), calendar=duration.calendar)
    return Operand("duration", sql.SQL("(-{})").format(duration.end), end=sql.SQL("(-{})").format(duration.value),
                   calendar=duration.calendar)


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
        return str(expr.value) if isinstance(expr.value, odata.Duration) else repr(expr.value)
    if isinstance(expr, odata.Arithmetic):
        text = f"({_describe(expr.left)} {expr.op} {_describe(expr.right)})"
        return text if len(text) <= 80 else "the expression"
    return "the expression"


# ---------------------------------------------------------------------------------------- functions
