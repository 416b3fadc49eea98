"""The canonical functions of `$filter` and `$orderby` (OData's string, date/time and math functions,
`now()`, `mindatetime`/`maxdatetime`, and the STA geospatial functions) as SQL templates with typed
arguments. Apart from expressions.py so that adding a function is one line in one table."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from psycopg import sql

from sensorthings.model.errors import BadRequest
from sensorthings.model.operand import Operand
from sensorthings.query import odata

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


class ValueCompiler(Protocol):
    """What a function call needs of the expression compiler: its arguments as typed values."""

    option: str

    def value(self, expr: odata.Expr) -> Operand: ...

    def as_kind(self, operand: Operand, kind: str, expr: odata.Expr | None = None) -> sql.Composable: ...


def call_function(compiler: ValueCompiler, call: odata.Function) -> Operand:
    """A canonical function call (`contains(name, 'x')`, `year(resultTime)`, `st_within(...)`) as a typed value;
    unknown functions, wrong arities and argument kinds are 400s."""
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
