"""CQL2 filters (OGC API – Features Part 3) compiled to SQL with bind parameters.

CQL2 text is parsed by `cql2` (developmentseed's cql2-rs, which follows the CQL2 standard's grammar) into
CQL2 JSON, after the bounds below; the API runs that parser in a worker process (geo/cql2_text.py), tests
and benchmarks in theirs (`parse_filter`). CQL2 JSON is read as sent. This module walks the JSON tree and
turns every literal into a bind
parameter (`param`); nothing from the filter is written into the SQL text. Types are checked against the
collection's queryables before anything runs: a string property compared with a number is a 400, not a
database error.

pygeofilter was the first choice but its 0.4 CQL2 text grammar rejects the standard's function syntax for
temporal predicates (`T_INTERSECTS(datetime, INTERVAL(…))`), `..` interval ends and doubled quotes, and its
JSON reader folds T_OVERLAPS into T_INTERSECTS.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import cql2
import numpy
import orjson
import shapely
import shapely.geometry
from psycopg import sql

from geo.queryables import SQL_TYPES, Kind, Queryable
from geo.times import parse_instant
from sensorthings.model.errors import BadRequest
from sensorthings.model.kinds import geometry_problem

Param = Callable[[Any], sql.Composable]
Operand = tuple[sql.Composable, Kind]
Period = tuple[sql.Composable, sql.Composable]

_COMPARISONS = {"=": "=", "<>": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_ARITHMETIC = {"+": "+", "-": "-", "*": "*", "/": "/"}
_SPATIAL = {
    "s_intersects": "ST_Intersects", "s_disjoint": "ST_Disjoint", "s_contains": "ST_Contains",
    "s_within": "ST_Within", "s_touches": "ST_Touches", "s_crosses": "ST_Crosses", "s_overlaps": "ST_Overlaps",
    "s_equals": "ST_Equals",
}
# Allen's relations between periods A = [a0, a1] and B = [b0, b1] (CQL2 temporal functions), over the bounds.
_TEMPORAL = {
    "t_intersects": "{a0} <= {b1} AND {a1} >= {b0}",
    "t_disjoint": "NOT ({a0} <= {b1} AND {a1} >= {b0})",
    "t_before": "{a1} < {b0}",
    "t_after": "{a0} > {b1}",
    "t_meets": "{a1} = {b0}",
    "t_metby": "{a0} = {b1}",
    "t_overlaps": "{a0} < {b0} AND {b0} < {a1} AND {a1} < {b1}",
    "t_overlappedby": "{b0} < {a0} AND {a0} < {b1} AND {b1} < {a1}",
    "t_starts": "{a0} = {b0} AND {a1} < {b1}",
    "t_startedby": "{a0} = {b0} AND {a1} > {b1}",
    "t_during": "{a0} > {b0} AND {a1} < {b1}",
    "t_contains": "{a0} < {b0} AND {a1} > {b1}",
    "t_finishes": "{a1} = {b1} AND {a0} > {b0}",
    "t_finishedby": "{a1} = {b1} AND {a0} < {b0}",
    "t_equals": "{a0} = {b0} AND {a1} = {b1}",
}
_NUMERIC = frozenset({"integer", "number"})


MAX_FILTER_CHARS = 8192
"""Longest CQL2 text read (CQL2 JSON is parsed by orjson, which bounds its own nesting)."""
MAX_NESTING = 32
"""Deepest bracket nesting in CQL2 text."""
MAX_TREE_DEPTH = 2 * MAX_NESTING + 16
"""Deepest parsed filter (CQL2 JSON, or text once parsed), counting objects and arrays: each operator is an
object holding an `args` array, so this admits about MAX_NESTING nested operators."""
MAX_PREFIX_RUN = 16
"""Most prefix operators (NOT, unary minus or plus) in a row."""
# cql2-rs parses recursively on the native stack, by backtracking. Measured with cql2 0.6 on an 8 MiB stack:
# ~2,000 nested brackets, ~1,200 nested arithmetic brackets and ~4,000 NOTs or minus signs in a row crash it
# (issue 13: a segfault of the whole process); a text that fails to parse costs time exponential in its
# nesting (2x to 4x per bracket, so 20 brackets can take seconds); flat chains (a + b + c …) parse into
# trees as deep as they are long. So the text is bounded before any parser sees it, the tree after, and the
# API parses in a worker process with a time limit (geo/cql2_text.py).
_LITERAL = re.compile(r"'(?:[^']|'')*'|\"[^\"]*\"")
_PREFIX_RUN = re.compile(r"(?:(?<![\w.])(?:NOT\b|[-+])\s*){" + str(MAX_PREFIX_RUN + 1) + ",}", re.IGNORECASE)


def check_filter_text(text: str) -> None:
    """Length, bracket nesting and runs of prefix operators within the limits, and no NUL, before any
    parser sees the text. Literals are skipped as they are read, left to right ('…' strings, "…" quoted
    identifiers), so that a quote inside the other kind cannot hide brackets from the count."""
    if len(text) > MAX_FILTER_CHARS:
        raise _fail(f"the filter is {len(text)} characters long; at most {MAX_FILTER_CHARS} are served")
    if "\x00" in text:
        raise _fail("the filter contains the NUL character; remove it")
    code = _LITERAL.sub("''", text)
    depth = deepest = 0
    for char in code:
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    if deepest > MAX_NESTING:
        raise _fail(f"the filter nests brackets {deepest} deep; at most {MAX_NESTING} are served")
    if _PREFIX_RUN.search(code):
        raise _fail(f"the filter has more than {MAX_PREFIX_RUN} NOT or sign operators in a row; simplify it")


def parse_filter(text: str, lang: str) -> Any:
    """The CQL2 JSON tree of a filter, parsed in this process (the API parses CQL2 text in a worker
    process instead: geo/cql2_text.py)."""
    if lang == "cql2-json":
        return parse_json_filter(text)
    check_filter_text(text)
    try:
        return cql2.parse_text(text).to_json()
    except (ValueError, cql2.ParseError) as exc:
        raise BadRequest(f"filter: not valid cql2-text: {' '.join(str(exc).split()) or type(exc).__name__}",
                         field="filter") from None


def parse_json_filter(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"filter: not valid cql2-json: {' '.join(str(exc).split())}", field="filter") from None


def compile_filter(text: str, lang: str, queryables: Mapping[str, Queryable], param: Param) -> sql.Composable:
    """A boolean SQL expression for a CQL2 filter; 400 for anything malformed, unknown or mistyped."""
    return compile_tree(parse_filter(text, lang), queryables, param)


def compile_tree(tree: Any, queryables: Mapping[str, Queryable], param: Param) -> sql.Composable:
    """A boolean SQL expression for a parsed filter (CQL2 JSON); every literal a bind parameter."""
    _check_tree(tree)
    return _Compiler(queryables, param).condition(tree)


def _check_tree(tree: Any) -> None:
    """Depth within MAX_TREE_DEPTH (the compiler below recurses), walked iteratively; no NUL in any string
    (PostgreSQL text cannot hold it: psycopg would refuse the parameter)."""
    stack: list[tuple[Any, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_TREE_DEPTH:
            raise _fail(f"the filter nests operators more than {MAX_NESTING} deep; simplify it")
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
        elif isinstance(node, str) and "\x00" in node:
            raise _fail("the filter contains the NUL character; remove it")


def _fail(message: str) -> BadRequest:
    return BadRequest(f"filter: {message}", field="filter")


def _args(node: dict[str, Any], count: int | None = None) -> list[Any]:
    args = node.get("args")
    if not isinstance(args, list) or (count is not None and len(args) != count):
        raise _fail(f"{node.get('op')!r} takes {count} arguments" if count else f"{node.get('op')!r} needs args")
    return args


class _Compiler:
    def __init__(self, queryables: Mapping[str, Queryable], param: Param) -> None:
        self.queryables = queryables
        self.param = param

    # ----------------------------------------------------------------------------------------- conditions

    def condition(self, node: Any) -> sql.Composable:
        if isinstance(node, bool):
            return sql.SQL("true" if node else "false")
        if isinstance(node, dict) and "property" in node:
            value, kind = self.operand(node)
            if kind != "boolean":
                raise _fail(f"{node['property']} is not a boolean; compare it with a value")
            return value
        if not isinstance(node, dict) or not isinstance(node.get("op"), str):
            raise _fail(f"expected a condition, not {orjson.dumps(node).decode()}")
        op = node["op"].lower()
        if op in ("and", "or"):
            parts = [self.condition(a) for a in _args(node)]
            if len(parts) < 2:
                raise _fail(f"{op} needs at least two conditions")
            return sql.SQL("({})").format(sql.SQL(f" {op.upper()} ").join(parts))
        if op == "not":
            return sql.SQL("(NOT {})").format(self.condition(_args(node, 1)[0]))
        if op in _COMPARISONS:
            lhs, rhs = self._pair(*_args(node, 2))
            return sql.SQL("({} {} {})").format(lhs, sql.SQL(_COMPARISONS[op]), rhs)
        if op == "between":
            subject, low, high = _args(node, 3)
            value, low_sql = self._pair(subject, low)
            return sql.SQL("({} BETWEEN {} AND {})").format(value, low_sql, self._pair(subject, high)[1])
        if op == "like":
            subject, pattern = _args(node, 2)
            value, kind = self.operand(subject)
            if kind != "string" or not isinstance(pattern, str | dict):
                raise _fail("LIKE compares a string property with a string pattern")
            pattern_sql, pattern_kind = self.operand(pattern)
            if pattern_kind != "string":
                raise _fail("LIKE needs a string pattern")
            # CQL2's wildcards (% and _) and escape (\) are SQL's, so the pattern is bound as it is.
            return sql.SQL("({} LIKE {} ESCAPE '\\')").format(value, pattern_sql)
        if op == "in":
            subject, items = _args(node, 2)
            if not isinstance(items, list) or not items:
                raise _fail("IN needs a list of values")
            left = self.operand(subject)
            return sql.SQL("({} IN ({}))").format(
                left[0], sql.SQL(", ").join(self._comparable(left, item)[0] for item in items))
        if op == "isnull":
            return sql.SQL("({} IS NULL)").format(self.operand(_args(node, 1)[0])[0])
        if op in _SPATIAL:
            lhs, rhs = (self.geometry(a) for a in _args(node, 2))
            return sql.SQL("{}({}, {})").format(sql.SQL(_SPATIAL[op]), lhs, rhs)
        if op in _TEMPORAL:
            (a0, a1), (b0, b1) = (self.period(a) for a in _args(node, 2))
            return sql.SQL("(" + _TEMPORAL[op] + ")").format(a0=a0, a1=a1, b0=b0, b1=b1)
        raise _unsupported(op)

    # ----------------------------------------------------------------------------------------- operands

    def _queryable(self, name: Any) -> Queryable:
        found = self.queryables.get(name) if isinstance(name, str) else None
        if found is None:
            raise _fail(f"unknown property {name!r}; queryables are {', '.join(self.queryables)}")
        return found

    def operand(self, node: Any) -> Operand:
        """A scalar expression and its kind."""
        if isinstance(node, dict):
            if "property" in node:
                queryable = self._queryable(node["property"])
                return queryable.expression, queryable.kind
            if "timestamp" in node or "date" in node:
                return self._time(node), "datetime"
            op = str(node.get("op", "")).lower()
            if op in _ARITHMETIC:
                lhs, rhs = (self.operand(a) for a in _args(node, 2))
                if lhs[1] not in _NUMERIC or rhs[1] not in _NUMERIC:
                    raise _fail(f"{op} needs numbers")
                return sql.SQL("({} {} {})").format(lhs[0], sql.SQL(_ARITHMETIC[op]), rhs[0]), "number"
            if op == "casei":
                value, kind = self.operand(_args(node, 1)[0])
                if kind != "string":
                    raise _fail("CASEI takes a string")
                return sql.SQL("lower({})").format(value), "string"
            if "type" in node or "bbox" in node:
                return self.geometry(node), "geometry"
            raise _unsupported(op or orjson.dumps(node).decode())
        return self._literal(node)

    def _literal(self, value: Any) -> Operand:
        kind: Kind
        if isinstance(value, bool):
            kind = "boolean"
        elif isinstance(value, int | float):
            if not math.isfinite(value):
                raise _fail("numbers must be finite")
            kind, value = "number", float(value)
        elif isinstance(value, str):
            kind = "string"
        else:
            raise _fail(f"unsupported value {orjson.dumps(value).decode()}")
        return sql.SQL("CAST({} AS {})").format(self.param(value), sql.SQL(SQL_TYPES[kind])), kind

    def _pair(self, lhs: Any, rhs: Any) -> tuple[sql.Composable, sql.Composable]:
        left = self.operand(lhs)
        return left[0], self._comparable(left, rhs)[0]

    def _comparable(self, left: Operand, rhs: Any) -> Operand:
        """The right-hand side, once its kind is known to compare with the left's."""
        right = self.operand(rhs)
        if left[1] == "geometry" or right[1] == "geometry":
            raise _fail("compare geometries with the spatial functions (S_INTERSECTS, …)")
        if left[1] != right[1] and not {left[1], right[1]} <= _NUMERIC:
            raise _fail(f"cannot compare a {left[1]} with a {right[1]} ({orjson.dumps(rhs).decode()})")
        return right

    def _instant(self, text: Any, *, end_of_day: bool = False) -> datetime:
        if not isinstance(text, str):
            raise _fail(f"expected a date or timestamp string, not {text!r}")
        try:
            return parse_instant(text, end_of_day=end_of_day)
        except ValueError:
            raise _fail(f"{text!r} is not an RFC 3339 date or timestamp") from None

    def _time(self, node: dict[str, Any], *, end_of_day: bool = False) -> sql.Composable:
        text = node.get("timestamp", node.get("date"))
        return sql.SQL("CAST({} AS timestamptz)").format(self.param(self._instant(text, end_of_day=end_of_day)))

    def geometry(self, node: Any) -> sql.Composable:
        if isinstance(node, dict) and "property" in node:
            queryable = self._queryable(node["property"])
            if queryable.kind != "geometry":
                raise _fail(f"{node['property']} is not a geometry")
            return queryable.expression
        if isinstance(node, dict) and "bbox" in node:
            numbers = node["bbox"]
            if not isinstance(numbers, list) or len(numbers) not in (4, 6) or not all(
                    isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n) for n in numbers):
                raise _fail("BBOX takes 4 or 6 finite numbers")
            half = len(numbers) // 2
            corners = (numbers[0], numbers[1], numbers[half], numbers[half + 1])
            return sql.SQL("ST_MakeEnvelope({}, 4326)").format(sql.SQL(", ").join(
                sql.SQL("CAST({} AS double precision)").format(self.param(float(n))) for n in corners))
        if isinstance(node, dict) and isinstance(node.get("type"), str):
            return sql.SQL("ST_SetSRID(ST_GeomFromWKB({}), 4326)").format(self.param(_geometry_literal(node)))
        raise _fail(f"expected a geometry property or literal, not {orjson.dumps(node).decode()}")

    def period(self, node: Any) -> Period:
        """Start and end of a time operand: an instant's are equal, an open interval end is ±infinity."""
        if isinstance(node, dict) and "property" in node:
            queryable = self._queryable(node["property"])
            if queryable.kind != "datetime":
                raise _fail(f"{node['property']} is not a time")
            start, end = queryable.expression, queryable.end_expression
            return start, (start if end is None else sql.SQL("coalesce({}, {})").format(end, start))
        if isinstance(node, dict) and "interval" in node:
            bounds = node["interval"]
            if not isinstance(bounds, list) or len(bounds) != 2:
                raise _fail("an INTERVAL has a start and an end")
            return self._bound(bounds[0], "-infinity", end=False), self._bound(bounds[1], "infinity", end=True)
        if isinstance(node, dict) and "timestamp" in node:
            instant = self._time(node)
            return instant, instant
        if isinstance(node, dict) and "date" in node:
            return self._time(node), self._time(node, end_of_day=True)
        raise _fail(f"expected a time property, TIMESTAMP, DATE or INTERVAL, not {orjson.dumps(node).decode()}")

    def _bound(self, value: Any, open_end: str, *, end: bool) -> sql.Composable:
        if value == "..":
            return sql.SQL("CAST({} AS timestamptz)").format(sql.Literal(open_end))
        if isinstance(value, dict):
            if "property" in value:
                return self.period(value)[1 if end else 0]
            return self._time(value, end_of_day=end)
        return sql.SQL("CAST({} AS timestamptz)").format(self.param(self._instant(value, end_of_day=end)))


def _geometry_literal(node: dict[str, Any]) -> bytes:
    """A geometry literal (from CQL2 JSON, or WKT that cql2 turned into GeoJSON), checked here: PostGIS
    and GEOS report malformed or invalid geometries (an unclosed ring, a self-intersecting polygon) as
    internal errors, mid-query, in words meant for their developers."""
    try:
        shape = shapely.geometry.shape(node)
    except Exception as exc:  # shapely raises several types for malformed input
        raise _fail(f"not a valid geometry {orjson.dumps(node).decode()[:200]}: {geometry_problem(exc)}") from None
    if shape.is_empty:
        raise _fail("the geometry is empty")
    if not bool(numpy.isfinite(shapely.get_coordinates(shape, include_z=shape.has_z)).all()):
        raise _fail("geometry coordinates must be finite numbers")
    if not shape.is_valid:
        raise _fail(f"the geometry is not valid ({shapely.is_valid_reason(shape)}); "
                    "polygons need closed rings that do not cross themselves")
    return bytes(shapely.to_wkb(shape))


def _unsupported(op: str) -> BadRequest:
    return _fail(f"{op!r} is not supported; use and/or/not, comparisons, LIKE, IN, BETWEEN, IS NULL, CASEI, "
                 "arithmetic, the S_* spatial and the T_* temporal functions")
