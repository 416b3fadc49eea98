"""Value kinds of entity properties: how each one is stored, validated, rendered to JSON in SQL and ordered.

The entity model (entities.py) says *which* properties an entity has; a kind says *how* one kind of value
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
from decimal import Decimal
from typing import Any, ClassVar

import shapely.errors
import shapely.geometry
from psycopg import sql

from sensorthings.model import privacy
from sensorthings.model.errors import BadRequest
from sensorthings.model.json_values import JsonNumber, exact_json_text, nested_deeper_than, to_jsonb_text
from sensorthings.model.operand import Operand, json_operand
from sensorthings.model.rollups import DEFAULT_FINAL_AFTER, FUNCTIONS, WIDTHS, RollupSpec
from sensorthings.model.times import parse_duration, parse_interval, parse_time

Param = Callable[[Any], sql.Composable]


@dataclass(frozen=True)
class Field:
    """One JSON property of an entity. Subclasses define the kind of value."""

    name: str
    column: str
    required: bool = False
    defaults_to_now: bool = False  # absent on create: the server's time (Observation.phenomenonTime)
    server_maintained: bool = False  # kept up to date from Observations; a PUT that omits it keeps it
    since: str = "v1.0"
    """The STA version that added the property (model.VERSIONS): older versions neither show nor take it."""
    admin_only: bool = False
    """Only an admin may set it (a STAplus Party's authId: whose identity the Party is)."""
    set_on_create: bool = False
    """Given when the entity is created and never changed (a rollup's definition): a PUT that omits it
    keeps it, an update that sends another value is refused (the writer's check)."""
    null_is_a_value: ClassVar[bool] = False  # JSON null is a legitimate value even where required
    column_types: ClassVar[tuple[str, ...]] = ("text",)
    """PostgreSQL type of each of `columns`, in order (what a binary COPY declares)."""

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def col(self, alias: sql.Identifier, column: str | None = None) -> sql.Composable:
        return sql.SQL("{}.{}").format(alias, sql.Identifier(column or self.column))

    def json_sql(self, alias: sql.Identifier) -> sql.Composable:
        """SQL expression rendering this property as its JSON value."""
        return self.col(alias)

    def json_text_sql(self, alias: sql.Identifier) -> sql.Composable:
        """SQL whose text output is this property's JSON text (a json, jsonb or text value), NULL where the
        property has no value: what the entity's JSON text is spliced from (query/entity_json.py), so that
        an absent optional property is left out. Here: the value of `json_sql` as a JSON string."""
        return sql.SQL("to_json({})").format(self.json_sql(alias))

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
    column_types = ("jsonb",)
    """Free JSON stored as jsonb. `object_only` for properties/parameters/unitOfMeasurement."""

    object_only: bool = True

    def json_sql(self, alias: sql.Identifier) -> sql.Composable:
        return sql.SQL("{}::json").format(self.col(alias))

    def json_text_sql(self, alias: sql.Identifier) -> sql.Composable:
        """The jsonb itself (its text is the JSON; no cast to json, which would parse it again). A stored
        JSON `null` of an optional property counts as no value (the API stores SQL NULL for null; data
        loaded by other means might not)."""
        return self.col(alias) if self.required else sql.SQL("NULLIF({}, 'null'::jsonb)").format(self.col(alias))

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


@dataclass(frozen=True)
class Rollup(Json):
    """What a rollup Datastream computes (sensorthings/model/rollups.py: width, function, time zone, lateness), given
    with its RollupOf when it is created. The shape is checked here; whether `sum` fits the source, and
    that it never changes afterwards, the writer checks (sensorthings/write/rollups.py)."""

    def parse(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {self.column: None}
        spec = RollupSpec.parse(value, summable=True, where=where)
        return {self.column: to_jsonb_text(spec.to_json(), where)}

    def json_schema(self, *, reading: bool = False) -> dict[str, Any]:
        return {"type": "object", "required": ["width", "function"], "additionalProperties": False,
                "properties": {"width": {"type": "string", "enum": list(WIDTHS)},
                               "function": {"type": "string", "enum": list(FUNCTIONS)},
                               "timeZone": {"type": "string", "description": "an IANA time zone (default UTC)"},
                               "finalAfter": {"type": "string", "description": (
                                   "an ISO 8601 duration up to P31D: how long after its end a bucket stays "
                                   f"provisional (default {DEFAULT_FINAL_AFTER})")}}}


@dataclass(frozen=True)
class Privacy(Json):
    """A privacy class (sensorthings/model/privacy.py: publication delay, minimum public aggregation,
    minimum count), or null: what the public may see of a stream's Observations."""

    def parse(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {self.column: None}
        return {self.column: to_jsonb_text(privacy.parse_privacy(value, where), where)}

    def json_schema(self, *, reading: bool = False) -> dict[str, Any]:
        return privacy.json_schema()


@dataclass(frozen=True)
class EffectivePrivacy(Json):
    """A stream's effective privacy class with where it comes from, kept by the database (migration 0014)
    and read-only: a body that carries it (a GET-modify-PUT round trip) has it ignored, and null does not
    clear it (no column a request writes: `columns` is empty, `column` is what is read)."""

    @property
    def columns(self) -> tuple[str, ...]:
        return ()

    def parse(self, value: Any, where: str) -> dict[str, Any]:
        return {}

    def json_schema(self, *, reading: bool = False) -> dict[str, Any]:
        return privacy.effective_json_schema()


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


def _quoted_time(text: sql.Composable) -> sql.Composable:
    """sta_time/sta_interval text as a JSON string: quoted, not to_json() (which costs ~3 µs a call, a
    third of rendering a year of hourly Observations); their ISO 8601 text holds nothing to escape."""
    return sql.SQL("('\"' || {} || '\"')").format(text)


@dataclass(frozen=True)
class Instant(Field):
    expression_kind = "datetime"
    column_types = ("timestamptz",)

    def json_sql(self, alias: sql.Identifier) -> sql.Composable:
        return sql.SQL("sta_time({})").format(self.col(alias))

    def json_text_sql(self, alias: sql.Identifier) -> sql.Composable:
        return _quoted_time(self.json_sql(alias))

    def parse(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {self.column: None}
        return {self.column: parse_time(value, where)}

    def json_schema(self, *, reading: bool = False) -> dict[str, Any]:
        return {"type": "string", "format": "date-time"}


@dataclass(frozen=True)
class PlatformInstant(Instant):
    """An instant only the platform sets (a stream's retainedFrom: how far retention has deleted), read,
    filtered and ordered like any Instant. A request never writes it: a body that carries it has it ignored,
    as @iot.selfLink is (a GET-modify-PUT round trip sends it back), and null does not clear it, because
    it has no column a request writes (`columns` is empty; `column` is what is read)."""

    @property
    def columns(self) -> tuple[str, ...]:
        return ()

    def parse(self, value: Any, where: str) -> dict[str, Any]:
        return {}

    def json_schema(self, *, reading: bool = False) -> dict[str, Any]:
        return {**super().json_schema(reading=reading), "readOnly": True}


MAX_RETENTION_YEARS = 1000
_RETENTION = re.compile(r"P(?:(?P<years>[0-9]+)Y)?(?:(?P<months>[0-9]+)M)?(?:(?P<weeks>[0-9]+)W)?"
                        r"(?:(?P<days>[0-9]+)D)?")
_RETENTION_EXAMPLE = "e.g. 'P90D', 'P1W', 'P6M' or 'P2Y'"


def parse_retention(value: Any, where: str) -> str:
    """A retention period as a client gives it: an ISO 8601 duration of whole years, months, weeks and days
    (the calendar units a city's data rules speak in), at least a day and at most MAX_RETENTION_YEARS. No
    time part: retention is enforced by a pass that runs every hour or so, and sub-day periods would promise
    a precision it does not have."""
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be an ISO 8601 duration string, {_RETENTION_EXAMPLE}, or null to keep "
                         f"Observations forever", field=where)
    shown = repr(value[:40]) + ("…" if len(value) > 40 else "")
    match = _RETENTION.fullmatch(value) if len(value) <= 32 else None
    if match is None or value == "P":
        raise BadRequest(f"{where}: {shown} {_retention_hint(value, where)}", field=where)
    years, months, weeks, days = (int(match.group(g) or 0) for g in ("years", "months", "weeks", "days"))
    if not (years or months or weeks or days):
        raise BadRequest(f"{where}: {shown} keeps nothing; a retention is at least a day ('P1D'), or null to keep "
                         f"Observations forever", field=where)
    if (years * 12 + months) * 30.436875 + weeks * 7 + days > MAX_RETENTION_YEARS * 365.2425:
        raise BadRequest(f"{where}: {shown} is longer than {MAX_RETENTION_YEARS} years; to keep Observations "
                         f"forever leave retention out or set it to null", field=where)
    return value


def _retention_hint(value: str, where: str) -> str:
    """Why a string is not a retention, and what to write instead where that is clear (PT5M, PT48H, p90d)."""
    whole = f"retention is whole days, weeks, months or years ({_RETENTION_EXAMPLE})"
    if value.upper() != value and _RETENTION.fullmatch(value.upper()):
        return f"must be written in upper case ({value.upper()!r})"
    try:
        months, exact = parse_duration(value, where)
    except BadRequest:
        return f"is not an ISO 8601 duration; {whole}"
    if months < 0 or exact.total_seconds() < 0:
        return f"is negative; {whole}"
    if months == 0 and exact.total_seconds() < 86_400:
        return f"is shorter than a day; {whole}"
    if not exact.total_seconds() % 86_400:
        spelled = "P" + (f"{months}M" if months else "") + (f"{exact.days}D" if exact.days else "")
        return f"has a time part; write it in whole days: {spelled!r}"
    return f"has a time part; {whole}"


@dataclass(frozen=True)
class RetentionPeriod(Field):
    """How long a stream keeps its raw Observations (CityStream's retention: citystream/retention.py deletes
    older ones), as `parse_retention` reads it; null keeps them forever."""

    def parse(self, value: Any, where: str) -> dict[str, Any]:
        return {self.column: None if value is None else parse_retention(value, where)}

    def json_schema(self, *, reading: bool = False) -> dict[str, Any]:
        return {"type": "string", "pattern": "^P([0-9]+Y)?([0-9]+M)?([0-9]+W)?([0-9]+D)?$",
                "description": f"how long raw Observations are kept: whole years, months, weeks and days, at least "
                               f"P1D, at most {MAX_RETENTION_YEARS} years ({_RETENTION_EXAMPLE}); null: forever"}


_SCHEMA_INSTANT = (r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
                   r"(\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])")
"""An RFC 3339 instant as a pattern: the JSON Schema of an interval is a pattern of two of them."""


@dataclass(frozen=True)
class Interval(Field):
    """A time interval in two columns `<column>_start` / `<column>_end`; `instant_allowed` for
    Observation.phenomenonTime, which may be an instant (end stays NULL)."""

    instant_allowed: bool = False
    column_types = ("timestamptz", "timestamptz")

    @functools.cached_property
    def columns(self) -> tuple[str, ...]:
        return (f"{self.column}_start", f"{self.column}_end")

    def json_sql(self, alias: sql.Identifier) -> sql.Composable:
        start, end = self.columns
        return sql.SQL("sta_interval({}, {})").format(self.col(alias, start), self.col(alias, end))

    def json_text_sql(self, alias: sql.Identifier) -> sql.Composable:
        return _quoted_time(self.json_sql(alias))

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
    plain: dict[str, Any] = json.loads(to_jsonb_text(geometry, where))
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
    column_types = ("jsonb", "geometry")

    @functools.cached_property
    def columns(self) -> tuple[str, ...]:
        return (self.column, self.geometry_column)

    def json_sql(self, alias: sql.Identifier) -> sql.Composable:
        return sql.SQL("{}::json").format(self.col(alias))

    def json_text_sql(self, alias: sql.Identifier) -> sql.Composable:
        return self.col(alias)

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
    column_types = ("geometry",)

    def json_sql(self, alias: sql.Identifier) -> sql.Composable:
        return sql.SQL("ST_AsGeoJSON({})::json").format(self.col(alias))

    def json_text_sql(self, alias: sql.Identifier) -> sql.Composable:
        return sql.SQL("ST_AsGeoJSON({})").format(self.col(alias))  # GeoJSON text, not parsed as json here

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
    column_types = ("int2", "float8", "text", "bool", "jsonb")

    @functools.cached_property
    def columns(self) -> tuple[str, ...]:
        return ("result_type", "result_number", "result_string", "result_boolean", "result_json")

    json_column: ClassVar[str] = "result_json"
    """Where a JSON object or array result is kept (as the text it was sent as)."""

    def number_sql(self, alias: sql.Identifier) -> sql.Composable:
        """The result as a double where it is a number, else NULL (for filters on numeric results)."""
        return sql.SQL("CASE WHEN {} = {} THEN {} END").format(
            self.col(alias, "result_type"), sql.Literal(RESULT_NUMBER), self.col(alias, "result_number"))

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

    def json_text_sql(self, alias: sql.Identifier) -> sql.Composable:
        """As `json_sql`, as text (a number's exact text is its JSON); never NULL: a null result is `null`."""
        return sql.SQL(
            "CASE {t} WHEN 1 THEN {s} WHEN 2 THEN to_json({s})::text WHEN 3 THEN {b}::text "
            "WHEN 4 THEN {j}::text ELSE 'null' END"
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
        row.update(result_type=RESULT_JSON, result_json=exact_json_text(value))
    return row
