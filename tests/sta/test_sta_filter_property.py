"""Property-based tests of `$filter` on Observations (issue 3, "Bad input").

A fixed small dataset is created through the API. Hypothesis generates random valid `$filter` expressions
together with a plain-Python evaluation of each; the server must return exactly the Observations the
evaluation selects. A second strategy generates invalid expressions (token soup, hostile strings,
unbalanced parentheses); the server must answer 400, never 500.

The evaluator implements the semantics the server documents (sensorthings/expressions.py):
- a comparison involving a missing value (SQL NULL: absent property, JSON value of another type, null
  resultTime, division by zero …) is false, also under `not` (so `not` of it is true);
- `ne` is true when exactly one side is missing, false when both are;
- `eq null` / `ne null` test for absence (for `result`: the JSON null result);
- `result` and JSON paths are read as the type of what they are compared with (`result gt 3` reads number
  results only); `result <op> 'text'` compares string results as text and number results as numbers when
  the text is numeric;
- interval `phenomenonTime` compares by its bounds: gt → starts after, lt → ends before, eq → is that
  instant; a date literal is UTC midnight;
- a path through a to-one relation reads the related entity; string order is code point order (the
  database runs with the C collation).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sta_helpers import (
    HTTP,
    create,
    datastream_body,
    location_body,
    observed_property_body,
    sensor_body,
    thing_body,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ------------------------------------------------------------------------------------------ dataset

THINGS = {
    "Alpha": {"district": "Altona", "floors": 3},
    "Beta": {"district": "Eimsbüttel", "floors": 7},
    "Gamma": {"floors": "many"},
}
DATASTREAMS = {"A NO2": "Alpha", "b-temp": "Beta", "Gamma rain": "Gamma"}
T0 = datetime(2024, 5, 1, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


# (datastream, result, phenomenonTime start, end or None, resultTime or None, parameters or None)
OBSERVATIONS: list[tuple[str, Any, datetime, datetime | None, datetime | None, Any]] = [
    ("A NO2", 0, at(0), None, at(0.5), {"x": 1, "mode": "auto"}),
    ("A NO2", 1, at(1), None, None, {"x": 2.5}),
    ("A NO2", 4.5, at(2.25), None, at(2.25), {"x": "two", "mode": "manual"}),
    ("A NO2", 10, at(5), at(6), None, None),
    ("A NO2", -2, at(24), None, at(25), {"x": None}),
    ("A NO2", "12", at(26.5), None, None, {"mode": "Auto"}),
    ("A NO2", True, at(30), at(48), at(48), None),
    ("A NO2", {"value": 7}, at(48), None, None, {"x": 0}),
    ("b-temp", 3, at(48), at(49), None, None),
    ("b-temp", "abc", at(49), None, at(49), {"x": -1.5}),
    ("b-temp", "3", at(50), None, None, None),
    ("b-temp", None, at(50), None, at(51), {"mode": "auto"}),
    ("b-temp", 12, at(72), None, None, {"x": 12}),
    ("b-temp", False, at(73.75), None, None, None),
    ("b-temp", " 7 ", at(74), at(75.5), None, None),
    ("Gamma rain", {"value": "x"}, at(96), None, at(96), None),
    ("Gamma rain", 0.25, at(97), None, None, {"x": "1"}),
    ("Gamma rain", "", at(98), None, None, None),
    ("Gamma rain", "O'Brien", at(99.5), None, None, {"mode": ""}),
    ("Gamma rain", [1, 2], at(100), None, None, None),
    ("Gamma rain", 100, at(120), at(144), at(150), {"x": 4.5, "mode": "auto"}),
    ("Gamma rain", "Abc", at(121), None, None, None),
]


@dataclass(frozen=True)
class Row:
    index: int  # position in OBSERVATIONS
    id: int
    datastream: str
    thing: str
    result: Any
    start: datetime
    end: datetime  # == start for an instant
    result_time: datetime | None
    parameters: Any


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@pytest.fixture
def rows(sta: str) -> list[Row]:
    thing_ids = {name: create(sta, "Things", thing_body(name, properties=props, Locations=[location_body(name)]))
                 for name, props in THINGS.items()}
    datastream_ids = {
        name: create(sta, f"Things({thing_ids[thing]})/Datastreams", datastream_body(
            name, Sensor=sensor_body(), ObservedProperty=observed_property_body()))
        for name, thing in DATASTREAMS.items()}
    created = []
    for ds, result, start, end, result_time, parameters in OBSERVATIONS:
        body: dict[str, Any] = {"result": result, "phenomenonTime": iso(start) if end is None
                                else f"{iso(start)}/{iso(end)}"}
        if result_time is not None:
            body["resultTime"] = iso(result_time)
        if parameters is not None:
            body["parameters"] = parameters
        created.append(Row(len(created), create(sta, f"Datastreams({datastream_ids[ds]})/Observations", body), ds,
                           DATASTREAMS[ds], result, start, end or start, result_time, parameters))
    return created


# ------------------------------------------------------------------------------------------ evaluator

Fn = Callable[[Row], Any]


@dataclass(frozen=True)
class Node:
    text: str
    fn: Fn  # boolean nodes: True when selected; value nodes: the value or None when missing
    raw: Fn | None = None  # JSON-path atoms: the JSON value itself (MISSING when absent)


MISSING = object()  # a JSON path that does not exist (distinct from JSON null)


def json_at(value: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


def as_number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def as_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def as_boolean(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


_NUMERIC_TEXT = re.compile(r"[ \t\n\r\f\v]*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?[ \t\n\r\f\v]*")


def text_number(text: str) -> float | None:
    """The number a string literal denotes, for `result <op> 'text'` (None when it is not numeric)."""
    return float(text) if _NUMERIC_TEXT.fullmatch(text) else None


def compare(op: str, a: Any, b: Any) -> bool:
    if op == "ne":
        if a is None or b is None:
            return (a is None) != (b is None)
        return bool(a != b)
    if a is None or b is None:
        return False
    return {"eq": a == b, "gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b}[op]


MIRROR = {"eq": "eq", "ne": "ne", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}
OPS = ("eq", "ne", "gt", "ge", "lt", "le")


def compare_interval(op: str, start: datetime, end: datetime, other: datetime | None) -> bool:
    if op == "ne":
        return not (other is not None and start == other and end == other)
    if other is None:
        return False
    return {"gt": start > other, "ge": start >= other, "lt": end < other, "le": end <= other,
            "eq": start == other and end == other}[op]


def result_vs_text(op: str, result: Any, text: str) -> bool:
    string, number, literal_number = as_text(result), as_number(result), text_number(text)
    if op == "ne":
        return compare("ne", string, text) and compare("ne", number, literal_number) if literal_number is not None \
            else compare("ne", string, text)
    return compare(op, string, text) or compare(op, number, literal_number)


# ------------------------------------------------------------------------------------------ literals

def string_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def number_literal(value: int | float) -> str:
    return str(value)


_PLAIN_DATA_STRINGS = ({r[1] for r in OBSERVATIONS if isinstance(r[1], str)} | set(DATASTREAMS) | set(THINGS)
                       | {"Altona", "Eimsbüttel", "auto", "manual", "Auto", "two", "many", ""})
DATA_STRINGS = sorted(_PLAIN_DATA_STRINGS | {s.upper() for s in _PLAIN_DATA_STRINGS}
                      | {s.lower() for s in _PLAIN_DATA_STRINGS})
STRING_VALUES = st.one_of(
    st.sampled_from(DATA_STRINGS + ["3", "12", "10", "4.5", "1e2", "+3", "-2", ".25", "ABC", "NO2", "a", "A",
                                    "no", "b", " ", "'", "''", "--", ";", "x'; DROP TABLE observations; --",
                                    "\u00e9", "\U0001f600", "%", "_", "\\"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6),
)
NUMBER_VALUES = st.sampled_from([0, 1, 2, 3, 7, 10, 12, 100, -2, -1.5, 0.25, 2.5, 4.5, 1.5])
TIMES = sorted({t for r in OBSERVATIONS for t in (r[2], r[3], r[4]) if t is not None})


@st.composite
def time_literals(draw: st.DrawFn) -> tuple[str, datetime]:
    """A datetime or date literal (text, the instant it denotes), near the data's times."""
    kind = draw(st.sampled_from(["data", "offset", "shifted", "date"]))
    base = draw(st.sampled_from(TIMES))
    if kind == "date":
        day = base.date() + timedelta(days=draw(st.integers(-1, 1)))
        return day.isoformat(), datetime(day.year, day.month, day.day, tzinfo=UTC)
    if kind == "shifted":
        base += timedelta(minutes=draw(st.sampled_from([-61, -1, 1, 30, 90])))
    if kind == "offset":
        hours = draw(st.sampled_from([-5, -1, 1, 2, 9]))
        local = base.astimezone(UTC) + timedelta(hours=hours)
        sign = "+" if hours >= 0 else "-"
        return f"{local.replace(tzinfo=None).isoformat()}{sign}{abs(hours):02d}:00", base
    return iso(base), base


# ------------------------------------------------------------------------------------------ value nodes



NUMBER_ATOMS = [
    Node("result", lambda r: as_number(r.result)),
    Node("result/value", lambda r: as_number(json_at(r.result, "value")), lambda r: json_at(r.result, "value")),
    Node("parameters/x", lambda r: as_number(json_at(r.parameters, "x")), lambda r: json_at(r.parameters, "x")),
    Node("Datastream/Thing/properties/floors", lambda r: as_number(THINGS[r.thing].get("floors")),
         lambda r: THINGS[r.thing].get("floors", MISSING)),
]
STRING_ATOMS = [
    Node("Datastream/name", lambda r: r.datastream),
    Node("Datastream/Thing/name", lambda r: r.thing),
    Node("Datastream/Thing/properties/district", lambda r: as_text(THINGS[r.thing].get("district"))),
    Node("parameters/mode", lambda r: as_text(json_at(r.parameters, "mode"))),
]


def _decimal(x: float) -> Decimal:
    return Decimal(format(x, ".15g"))


def arithmetic(op: str, a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    if b == 0:
        return None
    if op == "div":
        return a / b
    return float(_decimal(a) % _decimal(b))  # PostgreSQL mod: the sign of the dividend


def _round(x: Any) -> Any:
    return None if x is None else float(_decimal(x).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@st.composite
def string_values(draw: st.DrawFn) -> Node:
    atom = draw(st.sampled_from(STRING_ATOMS))
    choice = draw(st.integers(0, 6))
    if choice == 0:
        return atom
    if choice == 1:
        return Node(f"tolower({atom.text})", lambda r: None if atom.fn(r) is None else atom.fn(r).lower())
    if choice == 2:
        return Node(f"toupper({atom.text})", lambda r: None if atom.fn(r) is None else atom.fn(r).upper())
    if choice == 3:
        return Node(f"trim({atom.text})", lambda r: None if atom.fn(r) is None else atom.fn(r).strip(" "))
    if choice == 4:
        suffix = draw(STRING_VALUES)
        return Node(f"concat({atom.text}, {string_literal(suffix)})",
                    lambda r: None if atom.fn(r) is None else atom.fn(r) + suffix)
    start = draw(st.integers(-1, 5))
    if choice == 5:
        return Node(f"substring({atom.text}, {start})",
                    lambda r: None if atom.fn(r) is None else atom.fn(r)[max(start, 0):])
    length = draw(st.integers(-1, 4))
    return Node(f"substring({atom.text}, {start}, {length})",
                lambda r: None if atom.fn(r) is None else atom.fn(r)[max(start, 0):max(start, 0) + max(length, 0)])


TIME_PARTS = {
    "year": lambda t: t.year, "month": lambda t: t.month, "day": lambda t: t.day, "hour": lambda t: t.hour,
    "minute": lambda t: t.minute, "second": lambda t: t.second,
    # fractionalseconds() is left out: it answers 500 (psycopg placeholder '%' in its SQL), reported separately
}


@st.composite
def number_values(draw: st.DrawFn) -> Node:
    choice = draw(st.integers(0, 7))
    if choice <= 1:
        return draw(st.sampled_from(NUMBER_ATOMS))
    if choice == 2:
        s = draw(string_values())
        if draw(st.booleans()):
            return Node(f"length({s.text})", lambda r: None if s.fn(r) is None else len(s.fn(r)))
        needle = draw(STRING_VALUES)
        return Node(f"indexof({s.text}, {string_literal(needle)})",
                    lambda r: None if s.fn(r) is None else s.fn(r).find(needle))
    if choice == 3:
        part = draw(st.sampled_from(sorted(TIME_PARTS)))
        use_result_time = draw(st.booleans())
        source = "resultTime" if use_result_time else "phenomenonTime"
        extract = TIME_PARTS[part]
        return Node(f"{part}({source})", lambda r: (
            None if (r.result_time if use_result_time else r.start) is None
            else extract(r.result_time if use_result_time else r.start)))
    if choice == 4:
        atom = draw(st.sampled_from(NUMBER_ATOMS))
        name, fn = draw(st.sampled_from([("round", _round),
                                         ("floor", lambda x: None if x is None else float(math.floor(x))),
                                         ("ceiling", lambda x: None if x is None else float(math.ceil(x)))]))
        return Node(f"{name}({atom.text})", lambda r: fn(atom.fn(r)))
    if choice == 5:
        atom = draw(st.sampled_from(NUMBER_ATOMS))
        return Node(f"-{atom.text}", lambda r: None if atom.fn(r) is None else -atom.fn(r))
    atom = draw(st.sampled_from(NUMBER_ATOMS))
    op = draw(st.sampled_from(["add", "sub", "mul", "div", "mod"]))
    value = draw(NUMBER_VALUES)
    if draw(st.booleans()):
        return Node(f"({atom.text} {op} {number_literal(value)})", lambda r: arithmetic(op, atom.fn(r), value))
    return Node(f"({number_literal(value)} {op} {atom.text})", lambda r: arithmetic(op, value, atom.fn(r)))


# ------------------------------------------------------------------------------------------ boolean nodes

@st.composite
def number_comparisons(draw: st.DrawFn) -> Node:
    left, op = draw(number_values()), draw(st.sampled_from(OPS))
    if draw(st.integers(0, 3)) == 0:
        right = draw(number_values())
    else:
        value = draw(NUMBER_VALUES)
        right = Node(number_literal(value), lambda r: value)
    if left.raw is not None and right.raw is not None and op in ("eq", "ne"):
        # Two JSON values compare as JSON (any type); an absent one is SQL NULL: eq is false, ne is
        # IS DISTINCT FROM.
        raw_left, raw_right = left.raw, right.raw
        return Node(f"{left.text} {op} {right.text}", lambda r: json_equality(op, raw_left(r), raw_right(r)))
    return Node(f"{left.text} {op} {right.text}", lambda r: compare(op, left.fn(r), right.fn(r)))


def json_equality(op: str, a: Any, b: Any) -> bool:
    if a is MISSING or b is MISSING:
        return op == "ne" and (a is MISSING) != (b is MISSING)
    return same_json(a, b) == (op == "eq")


def same_json(a: Any, b: Any) -> bool:
    """jsonb equality: numbers by value (1 = 1.0), everything else by type and value."""
    def is_number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool)
    if is_number(a) and is_number(b):
        return bool(a == b)
    return type(a) is type(b) and a == b


@st.composite
def string_comparisons(draw: st.DrawFn) -> Node:
    left, op, value = draw(string_values()), draw(st.sampled_from(OPS)), draw(STRING_VALUES)
    if draw(st.booleans()):
        return Node(f"{left.text} {op} {string_literal(value)}", lambda r: compare(op, left.fn(r), value))
    return Node(f"{string_literal(value)} {op} {left.text}", lambda r: compare(MIRROR[op], left.fn(r), value))


@st.composite
def string_functions(draw: st.DrawFn) -> Node:
    s, value = draw(string_values()), draw(STRING_VALUES)
    lit = string_literal(value)
    name = draw(st.sampled_from(["contains", "startswith", "endswith", "substringof"]))
    test: Callable[[str], bool] = {
        "contains": lambda x: value in x, "substringof": lambda x: value in x,
        "startswith": lambda x: x.startswith(value), "endswith": lambda x: x.endswith(value)}[name]
    text = f"substringof({lit}, {s.text})" if name == "substringof" else f"{name}({s.text}, {lit})"
    if draw(st.booleans()):
        return Node(text, lambda r: s.fn(r) is not None and test(s.fn(r)))
    flag = draw(st.booleans())
    return Node(f"{text} eq {str(flag).lower()}", lambda r: s.fn(r) is not None and test(s.fn(r)) == flag)


@st.composite
def result_comparisons(draw: st.DrawFn) -> Node:
    op = draw(st.sampled_from(OPS))
    kind = draw(st.sampled_from(["number", "text", "text", "boolean", "null", "condition", "in"]))
    if kind == "number":
        value = draw(NUMBER_VALUES)
        return Node(f"result {op} {number_literal(value)}", lambda r: compare(op, as_number(r.result), value))
    if kind == "text":
        text = draw(STRING_VALUES)
        if draw(st.booleans()):
            return Node(f"result {op} {string_literal(text)}", lambda r: result_vs_text(op, r.result, text))
        return Node(f"{string_literal(text)} {op} result", lambda r: result_vs_text(MIRROR[op], r.result, text))
    if kind == "boolean":
        flag = draw(st.booleans())
        return Node(f"result {op} {str(flag).lower()}", lambda r: compare(op, as_boolean(r.result), flag))
    if kind == "null":
        eq = draw(st.booleans())
        return Node(f"result {'eq' if eq else 'ne'} null", lambda r: (r.result is None) == eq)
    if kind == "condition":
        return Node("result", lambda r: r.result is True)
    options = draw(st.lists(st.one_of(NUMBER_VALUES, STRING_VALUES), min_size=1, max_size=3))
    text = ", ".join(string_literal(o) if isinstance(o, str) else number_literal(o) for o in options)

    def member(r: Row) -> bool:
        return any(result_vs_text("eq", r.result, o) if isinstance(o, str) else compare("eq", as_number(r.result), o)
                   for o in options)
    return Node(f"result in ({text})", member)


@st.composite
def json_comparisons(draw: st.DrawFn) -> Node:
    key = draw(st.sampled_from(["x", "mode", "missing"]))
    path = f"parameters/{key}"
    kind = draw(st.sampled_from(["number", "text", "null"]))
    op = draw(st.sampled_from(OPS))
    if kind == "number":
        value = draw(NUMBER_VALUES)
        return Node(f"{path} {op} {number_literal(value)}",
                    lambda r: compare(op, as_number(json_at(r.parameters, key)), value))
    if kind == "text":
        text = draw(STRING_VALUES)
        return Node(f"{path} {op} {string_literal(text)}",
                    lambda r: compare(op, as_text(json_at(r.parameters, key)), text))
    eq = draw(st.booleans())
    return Node(f"{path} {'eq' if eq else 'ne'} null",
                lambda r: (json_at(r.parameters, key) in (MISSING, None)) == eq)


@st.composite
def time_comparisons(draw: st.DrawFn) -> Node:
    op = draw(st.sampled_from(OPS))
    kind = draw(st.sampled_from(["phenomenon", "phenomenon", "result", "result_null", "both"]))
    if kind == "both":
        return Node(f"phenomenonTime {op} resultTime",
                    lambda r: compare_interval(op, r.start, r.end, r.result_time))
    if kind == "result_null":
        eq = draw(st.booleans())
        return Node(f"resultTime {'eq' if eq else 'ne'} null", lambda r: (r.result_time is None) == eq)
    text, instant = draw(time_literals())
    flip = draw(st.booleans())
    if kind == "phenomenon":
        expression = f"{text} {MIRROR[op]} phenomenonTime" if flip else f"phenomenonTime {op} {text}"
        return Node(expression, lambda r: compare_interval(op, r.start, r.end, instant))
    expression = f"{text} {MIRROR[op]} resultTime" if flip else f"resultTime {op} {text}"
    return Node(expression, lambda r: compare(op, r.result_time, instant))


def id_ref(index: int) -> str:
    """Placeholder for the id of OBSERVATIONS[index], replaced by `with_ids` once the rows exist."""
    return f"«{index}»"


def with_ids(text: str, rows: list[Row]) -> str:
    return re.sub(r"«(\d+)»", lambda m: str(rows[int(m.group(1))].id), text)


@st.composite
def id_comparisons(draw: st.DrawFn) -> Node:
    indexes = st.integers(0, len(OBSERVATIONS) - 1)
    if draw(st.booleans()):
        op, index = draw(st.sampled_from(OPS)), draw(indexes)
        # ids grow in insertion order, so comparing ids compares indexes
        return Node(f"id {op} {id_ref(index)}", lambda r: compare(op, r.index, index))
    chosen = draw(st.lists(indexes, min_size=1, max_size=4))
    return Node(f"id in ({', '.join(map(id_ref, chosen))})", lambda r: r.index in chosen)


def filters() -> st.SearchStrategy[Node]:
    atoms = st.one_of(number_comparisons(), string_comparisons(), string_functions(), result_comparisons(),
                      json_comparisons(), time_comparisons(), id_comparisons())

    def combine(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
        def logical(op: str, nodes: list[Node]) -> Node:
            text = f"({f' {op} '.join(n.text for n in nodes)})"
            if op == "and":
                return Node(text, lambda r: all(n.fn(r) for n in nodes))
            return Node(text, lambda r: any(n.fn(r) for n in nodes))
        return st.one_of(
            children.map(lambda n: Node(f"not ({n.text})", lambda r: not n.fn(r))),
            st.lists(children, min_size=2, max_size=3).map(lambda ns: logical("and", ns)),
            st.lists(children, min_size=2, max_size=3).map(lambda ns: logical("or", ns)),
        )
    return st.recursive(atoms, combine, max_leaves=6)


# ------------------------------------------------------------------------------------------ requests

def filter_request(sta: str, expression: str) -> Any:
    return HTTP.get(f"{sta}/Observations?$top=1000&$select=id&$filter={quote(expression, safe='')}")


@SETTINGS
@given(node=filters())
def test_valid_filters_select_exactly_what_the_python_evaluation_selects(sta: str, rows: list[Row], node: Node
                                                                         ) -> None:
    expression = with_ids(node.text, rows)
    response = filter_request(sta, expression)
    assert response.status_code == 200, f"$filter={expression} -> {response.status_code} {response.text}"
    got = sorted(e["@iot.id"] for e in response.json()["value"])
    expected = sorted(r.id for r in rows if node.fn(r))
    by_id = {r.id: r for r in rows}
    assert got == expected, (
        f"$filter={expression}\n only server: {[by_id[i] for i in set(got) - set(expected)]}\n"
        f" only python: {[by_id[i] for i in set(expected) - set(got)]}")


# ------------------------------------------------------------------------------------------ invalid input

HOSTILE = ["'", "''", "'''", "--", ";", "/*", "*/", "\\", "\"", "%", "%27", "$", "@", "#", "\u00fc", "\U0001f600",
           "\u202e", "\x01", "\t", "\n", "DROP TABLE things", "1=1", "OR 1=1", "') OR ('1'='1", "::text", "$$",
           "E'\\x00'", "pg_sleep(10)", "<script>"]
TOKENS = ["result", "name", "id", "phenomenonTime", "Datastream/name", "parameters/x", "eq", "ne", "gt", "and",
          "or", "not", "add", "mod", "(", ")", ",", "'a'", "1", "4.5", "null", "true", "2024-05-01T00:00:00Z",
          "length(", "substring(", "geo.distance(", "st_within(", "geometry'POINT(1 2)'", "in", "/", "-", *HOSTILE]


@st.composite
def invalid_filters(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 8))
    soup = " ".join(draw(st.lists(st.sampled_from(TOKENS), min_size=0, max_size=8)))
    hostile = draw(st.one_of(st.sampled_from(HOSTILE), st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10)))
    if kind == 0:
        return f"{soup} and"  # nothing can end with a dangling operator
    if kind == 1:
        return f") {soup}"  # nor start with a closing parenthesis
    if kind == 2:
        return f"result eq '{hostile.replace(chr(39), chr(39) * 2)}"  # unterminated string
    if kind == 3:
        depth = draw(st.integers(1, 4))
        return "(" * depth + f"result eq {string_literal(hostile)}" + ")" * (depth - 1)  # unbalanced
    if kind == 4:
        return f"result eq {string_literal(hostile)})"  # one ')' too many
    if kind == 5:
        return f"frobnicate_{draw(st.integers(0, 99))}(result, {string_literal(hostile)}) eq 1"  # unknown function
    if kind == 6:
        name = draw(st.sampled_from(["colour", "Datastream/colour", "Thing/name", "parameters", "Observations"]))
        return f"{name} eq {string_literal(hostile)}" if name != "parameters" else f"{name} gt 1 and"
    if kind == 7:
        function = draw(st.sampled_from(["length", "tolower", "year", "round", "st_within", "substring", "concat"]))
        args = ", ".join(["result"] * draw(st.sampled_from([0, 4])))
        return f"{function}({args}) eq 1"  # wrong arity
    return f"{draw(st.sampled_from(['Datastream/name', 'phenomenonTime']))} gt 5 or {soup} ("


@SETTINGS
@given(expression=invalid_filters())
def test_invalid_filters_are_400_never_500(sta: str, rows: list[Row], expression: str) -> None:
    response = filter_request(sta, expression)
    assert response.status_code == 400, f"$filter={expression!r} -> {response.status_code} {response.text}"
    body = response.json()
    assert isinstance(body.get("message"), str) and body["message"], body
    assert len(HTTP.get(f"{sta}/Observations?$top=1000&$select=id").json()["value"]) == len(rows)
