"""Value kinds of entity properties: how each one is stored, validated, rendered to JSON in SQL and ordered.

The entity model (model.py) says *which* properties an entity has; a kind says *how* one kind of value
behaves. Everything that touches a property (parser, SQL compiler, writer) asks its kind, so a new property
is one line in the model and a new kind of value is one class here.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import orjson
import shapely.errors
import shapely.geometry
from psycopg import sql

from sensorthings.errors import BadRequest
from sensorthings.operand import Operand, json_operand

EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def is_ascii_digits(text: str) -> bool:
    """True for 0-9 only (str.isdigit also accepts '²', which int() rejects)."""
    return text.isascii() and text.isdigit()


def parse_time(value: Any, where: str) -> datetime:
    """Parse an ISO 8601 instant; a time without offset is taken as UTC."""
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be an ISO 8601 time string such as '2024-05-01T12:00:00Z'", field=where)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            f"{where}: {value!r} is not an ISO 8601 time; use e.g. '2024-05-01T12:00:00Z'", field=where
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise BadRequest(f"{where}: {value!r} lies outside the years 0001-9999 (UTC)", field=where)
    return utc


def parse_interval(value: Any, where: str, *, instant_allowed: bool) -> tuple[datetime, datetime | None]:
    """Parse 'start/end' (and, where allowed, a single instant). Returns (start, end or None)."""
    if isinstance(value, str) and "/" in value:
        start_text, _, end_text = value.partition("/")
        start, end = parse_time(start_text, where), parse_time(end_text, where)
        if end < start:
            raise BadRequest(f"{where}: the interval {value!r} ends before it starts", field=where)
        return start, end
    if instant_allowed:
        return parse_time(value, where), None
    raise BadRequest(
        f"{where} must be an ISO 8601 interval 'start/end', e.g. '2024-05-01T00:00:00Z/2024-05-02T00:00:00Z'",
        field=where,
    )


class JsonNumber(Decimal):
    """A JSON number that remembers the exact text it was written as (e.g. `21.50`, `6.02e23`), so that a
    stored result reads back exactly as it was sent."""

    text: str

    def __new__(cls, text: str) -> JsonNumber:
        number = super().__new__(cls, text)
        number.text = text
        return number


def dumps_exact(value: Any) -> bytes:
    """JSON bytes of parsed request JSON, numbers written back as the text they were sent as (JsonNumber).
    Integers beyond 64 bits, which orjson does not write, are written as their digits."""
    try:
        return orjson.dumps(value, default=_exact_number)
    except orjson.JSONEncodeError:
        return orjson.dumps(_big_integers_as_text(value), default=_exact_number)


def _big_integers_as_text(value: Any) -> Any:
    if type(value) is int and not -(2**63) <= value < 2**64:
        return orjson.Fragment(str(value))
    if isinstance(value, dict):
        return {k: _big_integers_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_big_integers_as_text(v) for v in value]
    return value


def _exact_number(value: Any) -> orjson.Fragment:
    if isinstance(value, JsonNumber):
        return orjson.Fragment(value.text)
    raise TypeError(f"{type(value).__name__} is not JSON")


_RESULT_NUMBER = re.compile(rb'"result"\s*:\s*(-?[0-9][0-9.eE+-]*)')


def parse_observation_json(raw: bytes) -> Any:
    """An Observation create body (MQTT payload or POST) as `parse_request_json` would parse it, in a
    fraction of the time: orjson, with the exact text of a top-level numeric result recovered from the
    payload (so that `21.50` stays `21.50`). Anything unusual (escapes, which may hide NUL or lone
    surrogates; a float anywhere else, e.g. in `parameters`; a result number that cannot be matched
    unambiguously; any orjson error, such as bytes that are not UTF-8 or nesting beyond orjson's own limit)
    takes the general parser and its error messages."""
    if b"\\u" in raw:
        return parse_request_json(raw)
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return parse_request_json(raw)
    if not isinstance(document, dict) or _has_other_floats(document):
        return parse_request_json(raw)
    _check_depth(document, raw)
    if isinstance(document.get("result"), float):
        numbers = _RESULT_NUMBER.findall(raw)
        if len(numbers) != 1:
            return parse_request_json(raw)
        text = numbers[0].decode()
        if repr(document["result"]) == text:
            return document  # the float prints as sent (21.57): no need to carry the text
        try:
            exact = JsonNumber(text)
        except ArithmeticError:
            return parse_request_json(raw)
        if float(exact) != document["result"]:
            return parse_request_json(raw)
        document["result"] = exact
    return document


def _has_other_floats(document: dict[str, Any]) -> bool:
    """A float anywhere but as the top-level result (e.g. in `parameters`): orjson has lost its text.
    (Plain loops and an explicit stack: generator expressions and recursion made this 12% of the bridge.)"""
    for key, value in document.items():
        kind = type(value)
        if kind is float:
            if key != "result":
                return True
        elif (kind is dict or kind is list) and _contains_float(value):
            return True
    return False


def _contains_float(value: dict[str, Any] | list[Any]) -> bool:
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float:
            return True
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
    return False


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not a JSON number; send a finite number or null")


MAX_JSON_DEPTH = 100
"""Deepest nesting of objects and arrays accepted in a request body or MQTT payload. A deep insert with a
MultiPolygon is about a dozen levels; the bound keeps every later step (validation, serialisation, the
database) far from any recursion limit."""


def parse_request_json(raw: bytes | str) -> Any:
    """Parse request JSON keeping number text (JsonNumber) and rejecting what cannot be stored: NaN and
    Infinity, NUL characters and lone surrogates, bytes that are not UTF-8 (JSON is UTF-8, RFC 8259; a
    lenient decode would let encoded surrogates through to fail deep inside a write), and nesting deeper
    than MAX_JSON_DEPTH."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the request body is not UTF-8 text (invalid bytes at position {exc.start}); "
                         "send JSON encoded as UTF-8") from None
    try:
        document = json.loads(text, parse_float=JsonNumber, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError:  # an integer with more digits than Python converts (4,300)
        raise BadRequest("malformed JSON: a number has too many digits") from None
    except ArithmeticError:  # decimal.InvalidOperation: an exponent beyond what a decimal holds (1e99999999999)
        raise BadRequest("malformed JSON: a number is out of range; numbers must fit a double") from None
    _check_depth(document, text)
    if "\\u" in text and _unstorable_text(document):
        raise BadRequest("text with the NUL character (\\u0000) or an unpaired surrogate (\\ud800-\\udfff) "
                         "cannot be stored; remove it")
    return document


def parse_stored_json(text: str) -> Any:
    """JSON that PostgreSQL rendered from stored data (a page to flatten, an entity to patch), numbers kept
    as their text: the database's own output, so none of a request's checks (or its depth limit, which
    data stored before the limit may exceed) apply."""
    return json.loads(text, parse_float=JsonNumber)


def _too_deep() -> BadRequest:
    return BadRequest(f"the JSON document is nested more than {MAX_JSON_DEPTH} levels deep; flatten it")


def _check_depth(document: Any, raw: bytes | str) -> None:
    """Reject documents nested deeper than MAX_JSON_DEPTH. Counting brackets in the text settles almost every
    document at C speed (fewer brackets than the limit cannot nest deeper); only documents with many
    brackets are walked."""
    if isinstance(raw, str):
        brackets = raw.count("{") + raw.count("[")
    else:
        brackets = raw.count(b"{") + raw.count(b"[")
    if brackets > MAX_JSON_DEPTH and nested_deeper_than(document, MAX_JSON_DEPTH):
        raise _too_deep()


def nested_deeper_than(document: Any, limit: int) -> bool:
    """True when objects and arrays nest more than `limit` levels deep (walked iteratively, containers
    only)."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind is not dict and kind is not list:
            continue
        if depth > limit:
            return True
        for child in (value.values() if kind is dict else value):
            child_kind = type(child)
            if child_kind is dict or child_kind is list:
                stack.append((child, depth + 1))
    return False


def _unstorable_text(value: Any) -> bool:
    """True when some string holds NUL or a lone surrogate (PostgreSQL text cannot store either)."""
    if isinstance(value, str):
        if "\x00" in value:
            return True
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_unstorable_text(k) or _unstorable_text(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unstorable_text(v) for v in value)
    return False


def to_jsonb_text(value: Any, where: str = "the body") -> str:
    """Serialise parsed request JSON for a jsonb column (numbers arrive as Decimal to keep their digits)."""
    try:
        return json.dumps(value, default=_decimal_to_number, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise BadRequest(f"{where} holds a number too large to store; numbers must be finite", field=where) from None


def _exact_json_text(value: Any) -> str:
    """An object or array result for jsonb with its numbers as sent (`[21.50, 3]`: jsonb keeps `21.50`),
    as a numeric result keeps its text, in one orjson pass. What orjson cannot write exactly goes to
    `to_jsonb_text`, which rejects numbers beyond a double (`1e400`, a 400 as anywhere else) and keeps
    integers beyond 64 bits by value."""
    try:
        return orjson.dumps(value, default=_finite_exact_number).decode()
    except orjson.JSONEncodeError:
        return to_jsonb_text(value, "result")


def _finite_exact_number(value: Any) -> orjson.Fragment:
    if isinstance(value, JsonNumber) and math.isfinite(value):
        return orjson.Fragment(value.text)
    raise TypeError(f"{value!r} is not a finite JSON number")


def _decimal_to_number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


Param = Callable[[Any], sql.Composable]


@dataclass(frozen=True)
class Field:
    """One JSON property of an entity. Subclasses define the kind of value."""

    name: str
    column: str
    required: bool = False
    defaults_to_now: bool = False  # absent on create: the server's time (Observation.phenomenonTime)
    server_maintained: bool = False  # kept up to date from Observations; a PUT that omits it keeps it
    null_is_a_value: ClassVar[bool] = False  # JSON null is a legitimate value even where required

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def col(self, alias: sql.Identifier, column: str | None = None) -> sql.Composable:
        return sql.SQL("{}.{}").format(alias, sql.Identifier(column or self.column))

    def json_sql(self, alias: sql.Identifier) -> sql.Composable:
        """SQL expression rendering this property as its JSON value."""
        return self.col(alias)

    def parse(self, value: Any, where: str) -> dict[str, Any]:
        """Validate a JSON value from a request; return column -> Python value (None clears)."""
        raise NotImplementedError

    def column_sql(self, column: str, placeholder: sql.Composable) -> sql.Composable:
        """How a bound value becomes the stored column value (geometry columns convert GeoJSON)."""
        return placeholder

    def null_columns(self) -> dict[str, Any]:
        return dict.fromkeys(self.columns)

    expression_kind = "string"

    def operand(self, alias: sql.Identifier, subpath: tuple[str, ...], param: Param) -> Operand:
        """This property as a typed value in $filter/$orderby; `subpath` descends into JSON values."""
        if subpath:
            raise BadRequest(f"{self.name} is not a JSON property; {self.name}/{'/'.join(subpath)} has no meaning")
        return Operand(self.expression_kind, self.col(alias))

    @property
    def is_object_value(self) -> bool:
        """True when `$value` of this property is a JSON document rather than plain text."""
        return False

    def json_schema(self, *, reading: bool = False) -> dict[str, Any]:
        """JSON Schema (OpenAPI 3.0's dialect) of this kind's values as a request may send them, or
        (`reading`) as responses render them; for the OpenAPI document (sensorthings/openapi.py). Whether
        null is allowed follows from the model's flags (required, null_is_a_value), not from the kind.
        Here: any JSON value."""
        return {}


@dataclass(frozen=True)
class Text(Field):
    one_of: tuple[str, ...] = ()
    """The only values allowed, when the standard fixes them (a MultiDatastream's observationType)."""

    def parse(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, str):
            raise BadRequest(f"{where} must be a string", field=where)
        if self.one_of and value not in self.one_of:
            raise BadRequest(f"{where} must be {' or '.join(self.one_of)}", field=where)
        return {self.column: value}

    def json_schema(self, *, reading: bool = False) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.one_of)} if self.one_of else {"type": "string"}


@dataclass(frozen=True)
class Json(Field):
    """Free JSON stored as jsonb. `object_only` for properties/parameters/unitOfMeasurement."""

    object_only: bool = True

    def json_sql(self, alias: sql.Identifier) -> sql.Composable:
        return sql.SQL("{}::json").format(self.col(alias))

    def parse(self, value: Any, where: str) -> dict[str, Any]:
        if self.object_only and value is not None and not isinstance(value, dict):
            raise BadRequest(f"{where} must be a JSON object", field=where)
        return {self.column: None if value is None else to_jsonb_text(value, where)}

    def column_sql(self, column: str, placeholder: sql.Composable) -> sql.Composable:
        return sql.SQL("{}::jsonb").format(placeholder)

    def operand(self, alias: sql.Identifier, subpath: tuple[str, ...], param: Param) -> Operand:
        return json_operand(_json_path(self.col(alias), subpath, param))

    @property
    def is_object_value(self) -> bool:
        return True

    def json_schema(self, *, reading: bool = False) -> dict[str, Any]:
        return {"type": "object"} if self.object_only else {}


_JSON_TYPE_NAMES: dict[type, str] = {str: "strings", dict: "JSON objects"}
_JSON_SCHEMA_TYPES: dict[type, str] = {str: "string", dict: "object"}


@dataclass(frozen=True)
class JsonList(Json):
    """A non-empty JSON array whose items are all of one JSON type: MultiDatastream's
    multiObservationDataTypes (strings) and unitOfMeasurements (objects), one item per component."""

    object_only: bool = False
    item_type: type = dict

    def parse(self, value: Any, where: str) -> dict[str, Any]:
        if value is not None and not (isinstance(value, list) and value
                                      and all(isinstance(item, self.item_type) for item in value)):
            raise BadRequest(f"{where} must be a non-empty JSON array of {_JSON_TYPE_NAMES[self.item_type]}, "
                             f"one per component", field=where)
        return super().parse(value, where)

    def json_schema(self, *, reading: bool = False) -> dict[str, Any]:
        return {"type": "array", "minItems": 1, "items": {"type": _JSON_SCHEMA_TYPES[self.item_type]}}


def _json_path(value: sql.Composable, subpath: tuple[str, ...], param: Param) -> sql.Composable:
    return sql.SQL("({} #> {}::text[])").format(value, param(list(subpath))) if subpath else value


@dataclass(frozen=True)
class Instant(Field):
    expression_kind = "datetime"

    def json_sql(self, alias: sql.Identifier) -> sql.Composable:
        return sql.SQL("sta_time({})").format(self.col(alias))

    def parse(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {self.column: None}
        return {self.column: parse_time(value, where)}

    def json_schema(self, *, reading: bool = False) -> dict[str, Any]:
        return {"type": "string", "format": "date-time"}


_SCHEMA_INSTANT = (r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
                   r"(\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])")
"""An RFC 3339 instant as a pattern: the JSON Schema of an interval is a pattern of two of them."""


@dataclass(frozen=True)
class Interval(Field):
    """A time interval in two columns `<column>_start` / `<column>_end`; `instant_allowed` for
    Observation.phenomenonTime, which may be an instant (end stays NULL)."""

    instant_allowed: bool = False

    @functools.cached_property
    def columns(self) -> tuple[str, ...]:
        return (f"{self.column}_start", f"{self.column}_end")

    def json_sql(self, alias: sql.Identifier) -> sql.Composable:
        start, end = self.columns
        return sql.SQL("sta_interval({}, {})").format(self.col(alias, start), self.col(alias, end))

    def operand(self, alias: sql.Identifier, subpath: tuple[str, ...], param: Param) -> Operand:
        super().operand(alias, subpath, param)
        start, end = (self.col(alias, c) for c in self.columns)
        return Operand("interval", start, end=sql.SQL("coalesce({}, {})").format(end, start))

    def parse(self, value: Any, where: str) -> dict[str, Any]:
        start_col, end_col = self.columns
        if value is None:
            return {start_col: None, end_col: None}
        start, end = parse_interval(value, where, instant_allowed=self.instant_allowed)
        return {start_col: start, end_col: end}

    def json_schema(self, *, reading: bool = False) -> dict[str, Any]:
        """'start/end' (or an instant where allowed); read back, a zero-length interval is an instant."""
        if reading:
            return {"type": "string", "pattern": "^[^/]+(/[^/]+)?$"}
        optional_end = "?" if self.instant_allowed else ""
        return {"type": "string", "pattern": f"^{_SCHEMA_INSTANT}(/{_SCHEMA_INSTANT}){optional_end}$"}


GEOJSON_ENCODINGS = ("application/geo+json", "application/vnd.geo+json")


MAX_GEOMETRY_DEPTH = 16


def geometry_problem(exc: Exception) -> str:
    """What shapely found wrong with a GeoJSON geometry, in words for a client: shapely's own messages say
    it well ("A linearring requires at least 4 coordinates"), GEOS's speak of its internals."""
    if isinstance(exc, shapely.errors.GEOSException):
        return "its coordinates do not make a geometry of its type"
    if isinstance(exc, KeyError):
        return f"it has no {exc.args[0]!r} member" if exc.args else "a member is missing"
    return str(exc) or type(exc).__name__


def parse_geojson(value: Any, where: str) -> dict[str, Any]:
    """Validate GeoJSON (a geometry or a Feature) with shapely; return its geometry as GeoJSON text."""
    if not isinstance(value, dict) or "type" not in value:
        raise BadRequest(f"{where} must be a GeoJSON object with a 'type'", field=where)
    geometry = value.get("geometry") if value.get("type") == "Feature" else value
    if not isinstance(geometry, dict):
        raise BadRequest(f"{where}: the GeoJSON Feature has no geometry object", field=where)
    if nested_deeper_than(geometry, MAX_GEOMETRY_DEPTH):  # PostGIS's GeoJSON reader stops at 32 levels
        raise BadRequest(f"{where} is nested more than {MAX_GEOMETRY_DEPTH} levels deep; GeoJSON geometries "
                         "need at most 5 (a MultiPolygon), GeometryCollections should not nest", field=where)
    plain = json.loads(to_jsonb_text(geometry, where))
    try:
        shape = shapely.geometry.shape(plain)
    except Exception as exc:  # shapely raises several types for malformed input
        raise BadRequest(f"{where} is not valid GeoJSON: {geometry_problem(exc)}", field=where) from None
    if shape.is_empty and geometry.get("type") != "GeometryCollection":
        raise BadRequest(f"{where} is not valid GeoJSON: empty coordinates", field=where)
    return plain


def _geometry_schema(kind: str, coordinates: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["type", "coordinates"],
            "properties": {"type": {"type": "string", "enum": [kind]}, "coordinates": coordinates}}


def _positions(item: dict[str, Any], least: int) -> dict[str, Any]:
    return {"type": "array", "minItems": least, "items": item}


_POSITION = {"type": "array", "minItems": 2, "maxItems": 3, "items": {"type": "number"}}
_POLYGON = _positions(_positions(_POSITION, 4), 1)
GEOMETRY_SCHEMA: dict[str, Any] = {"anyOf": [
    _geometry_schema("Point", _POSITION), _geometry_schema("MultiPoint", _positions(_POSITION, 1)),
    _geometry_schema("LineString", _positions(_POSITION, 2)),
    _geometry_schema("MultiLineString", _positions(_positions(_POSITION, 2), 1)),
    _geometry_schema("Polygon", _POLYGON), _geometry_schema("MultiPolygon", _positions(_POLYGON, 1)),
]}
"""The GeoJSON geometries a request may send (parse_geojson also takes a GeometryCollection)."""
GEOJSON_SCHEMA: dict[str, Any] = {"anyOf": [*GEOMETRY_SCHEMA["anyOf"], {
    "type": "object", "required": ["type", "geometry"],
    "properties": {"type": {"type": "string", "enum": ["Feature"]}, "geometry": GEOMETRY_SCHEMA,
                   "properties": {"type": "object", "nullable": True}}}]}
"""A GeoJSON geometry or a Feature with one, as parse_geojson accepts them."""
_READ_GEOJSON_SCHEMA: dict[str, Any] = {"type": "object", "required": ["type"],
                                        "properties": {"type": {"type": "string"}}}


@dataclass(frozen=True)
class GeoJson(Field):
    """GeoJSON kept as sent (jsonb, what STA returns) beside a PostGIS geometry (SRID 4326, GiST-indexed)."""

    geometry_column: str = ""

    @functools.cached_property
    def columns(self) -> tuple[str, ...]:
        return (self.column, self.geometry_column)

    def json_sql(self, alias: sql.Identifier) -> sql.Composable:
        return sql.SQL("{}::json").format(self.col(alias))

    def parse(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return self.null_columns()
        geometry = parse_geojson(value, where)
        return {self.column: to_jsonb_text(value, where), self.geometry_column: json.dumps(geometry)}

    def operand(self, alias: sql.Identifier, subpath: tuple[str, ...], param: Param) -> Operand:
        if subpath:
            return json_operand(_json_path(self.col(alias), subpath, param))
        return Operand("geometry", self.col(alias, self.geometry_column))

    def column_sql(self, column: str, placeholder: sql.Composable) -> sql.Composable:
        if column == self.geometry_column:
            return sql.SQL("ST_SetSRID(ST_GeomFromGeoJSON({}::text), 4326)").format(placeholder)
        return sql.SQL("{}::jsonb").format(placeholder)

    @property
    def is_object_value(self) -> bool:
        return True

    def json_schema(self, *, reading: bool = False) -> dict[str, Any]:
        return _READ_GEOJSON_SCHEMA if reading else GEOJSON_SCHEMA  # read back as sent


@dataclass(frozen=True)
class Geometry(Field):
    """A geometry kept only as PostGIS geometry and rendered as GeoJSON (Datastream.observedArea)."""

    expression_kind = "geometry"

    def json_sql(self, alias: sql.Identifier) -> sql.Composable:
        return sql.SQL("ST_AsGeoJSON({})::json").format(self.col(alias))

    def parse(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {self.column: None}
        return {self.column: json.dumps(parse_geojson(value, where))}

    def column_sql(self, column: str, placeholder: sql.Composable) -> sql.Composable:
        return sql.SQL("ST_SetSRID(ST_GeomFromGeoJSON({}::text), 4326)").format(placeholder)

    @property
    def is_object_value(self) -> bool:
        return True

    def json_schema(self, *, reading: bool = False) -> dict[str, Any]:
        return _READ_GEOJSON_SCHEMA if reading else GEOJSON_SCHEMA  # read back as PostGIS renders it


# Result type codes stored in observations.result_type.
RESULT_NULL, RESULT_NUMBER, RESULT_STRING, RESULT_BOOLEAN, RESULT_JSON = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Result(Field):
    """Observation.result keeping its JSON type. Numbers keep their exact text in `result_string`
    (rendered back verbatim) and a double in `result_number` for comparisons and ordering."""

    null_is_a_value = True

    @functools.cached_property
    def columns(self) -> tuple[str, ...]:
        return ("result_type", "result_number", "result_string", "result_boolean", "result_json")

    def json_sql(self, alias: sql.Identifier) -> sql.Composable:
        return sql.SQL(
            "CASE {t} WHEN 1 THEN {s}::json WHEN 2 THEN to_json({s}) WHEN 3 THEN to_json({b}) "
            "WHEN 4 THEN {j}::json ELSE 'null'::json END"
        ).format(
            t=self.col(alias, "result_type"),
            s=self.col(alias, "result_string"),
            b=self.col(alias, "result_boolean"),
            j=self.col(alias, "result_json"),
        )

    def operand(self, alias: sql.Identifier, subpath: tuple[str, ...], param: Param) -> Operand:
        if subpath:
            return json_operand(_json_path(self.col(alias, "result_json"), subpath, param))
        string = sql.SQL("CASE WHEN {} = 2 THEN {} END").format(
            self.col(alias, "result_type"), self.col(alias, "result_string"))
        return Operand("result", self.col(alias, "result_type"), {
            "number": self.col(alias, "result_number"),
            "string": string,
            "boolean": self.col(alias, "result_boolean"),
            "json": self.col(alias, "result_json"),
        })

    def parse(self, value: Any, where: str) -> dict[str, Any]:
        return result_columns(value)

    def column_sql(self, column: str, placeholder: sql.Composable) -> sql.Composable:
        if column == "result_json":
            return sql.SQL("{}::jsonb").format(placeholder)
        return placeholder

    @property
    def is_object_value(self) -> bool:
        return True


_NUMBER_TYPES = (int, float, Decimal)  # a tuple: `int | float | Decimal` would build a Union on every call


def result_columns(value: Any) -> dict[str, Any]:
    """Split a JSON result into the typed result columns (numbers first: the common sensor reading)."""
    if isinstance(value, _NUMBER_TYPES) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = float("inf")
        if not math.isfinite(number):
            raise BadRequest("result must be a finite number", field="result")
        text = value.text if isinstance(value, JsonNumber) else str(value)
        return {"result_type": RESULT_NUMBER, "result_number": number, "result_string": text,
                "result_boolean": None, "result_json": None}
    row: dict[str, Any] = {
        "result_type": RESULT_NULL,
        "result_number": None,
        "result_string": None,
        "result_boolean": None,
        "result_json": None,
    }
    if value is None:
        return row
    if isinstance(value, bool):
        row.update(result_type=RESULT_BOOLEAN, result_boolean=value)
    elif isinstance(value, str):
        row.update(result_type=RESULT_STRING, result_string=value)
    else:
        row.update(result_type=RESULT_JSON, result_json=_exact_json_text(value))
    return row
