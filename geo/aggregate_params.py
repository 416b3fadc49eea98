"""Query parameters of the `aggregates` collection (geo/aggregates.py), parsed and bounded before any SQL.

Every parameter has a bound a client can read in the 400 it gets: the grid's cell size, the length of
the time window (in buckets of the width asked for), the page size, the names. Absent ones take the
documented defaults (DEFAULT_CELL, the latest MAX_BUCKETS buckets, every width, function and zone).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from starlette.datastructures import QueryParams

from geo.crs import CRS84, Crs, parse_crs
from geo.params import MAX_OFFSET, Bbox, check_parameters, intersect_datetimes, parse_bbox, parse_limit
from sensorthings.model.errors import BadRequest
from sensorthings.model.rollups import CALENDAR_WIDTHS, FUNCTIONS, SUB_DAY_WIDTHS, WIDTHS, RollupSpec

AGGREGATES_PARAMETERS = frozenset({
    "f", "limit", "offset", "next", "bbox", "bbox-crs", "datetime", "crs",
    "observedProperty", "width", "function", "timeZone", "cell", "groupBy",
})
ITEM_PARAMETERS = frozenset({"f", "crs"})
DEFAULT_CELL = 1000
"""Without `cell` or `groupBy`: the 1 km cells of the European statistical grid (geo/aggregates.py)."""
MIN_CELL, MAX_CELL = 100, 100_000
"""Cell sizes in metres: from a street block to a region."""
MAX_BUCKETS = 10_000
"""The time window of one request spans at most this many buckets of its width (PT1H: 416 days)."""
MAX_NAME = 200
"""The longest ObservedProperty name, time zone or `groupBy` a request may hold."""
GROUP_BY = re.compile(r"[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,4}")
"""A Thing property (`district`) or a path into one (`address.district`): up to five names."""
NOMINAL: dict[str, timedelta] = {**SUB_DAY_WIDTHS, "P1D": timedelta(days=1), "P1W": timedelta(days=7),
                                 "P1M": timedelta(days=31)}
"""A width's longest plain length (a local day can be 25 hours; the bound is on the nominal one)."""
FINEST = min(NOMINAL.values())


@dataclass(frozen=True)
class Grouping:
    """How rollup Datastreams form spatial groups: by the grid cell their Thing is in, or by a Thing
    property."""

    cell: int | None = None
    path: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The feature's `groupBy`: `cell`, or the property (`district`)."""
        return "cell" if self.cell is not None else ".".join(self.path)

    @property
    def token(self) -> str:
        """What a feature id and a next token record of the grouping (`cell:1000`, `by:district`)."""
        return f"cell:{self.cell}" if self.cell is not None else "by:" + ".".join(self.path)

    @classmethod
    def from_token(cls, token: str) -> Grouping:
        """The grouping a token names; ValueError if it names none `parse_grouping` would accept."""
        kind, _, rest = token.partition(":")
        if kind == "cell" and rest.isascii() and rest.isdigit() and MIN_CELL <= int(rest) <= MAX_CELL:
            return cls(cell=int(rest))
        if kind == "by" and GROUP_BY.fullmatch(rest):
            return cls(path=tuple(rest.split(".")))
        raise ValueError(token)


@dataclass(frozen=True)
class Position:
    """A feature's place in the collection's one order (bucket, then ObservedProperty definition, unit,
    width, function, time zone, group): what a next token and a feature id carry."""

    bucket_start: datetime
    definition: str
    unit: str
    width: str
    function: str
    time_zone: str
    group: str

    def to_json(self) -> list[Any]:
        return [self.bucket_start.isoformat(), self.definition, self.unit, self.width, self.function,
                self.time_zone, self.group]

    @classmethod
    def from_json(cls, values: Any) -> Position:
        """ValueError (or TypeError, KeyError) for anything `to_json` did not write."""
        if not isinstance(values, list) or len(values) != 7:
            raise ValueError(values)
        start, *texts = values
        if not all(isinstance(t, str) for t in values):
            raise ValueError(values)
        moment = datetime.fromisoformat(start)
        if moment.tzinfo is None:
            raise ValueError(start)
        definition, unit, width, function, zone, group = texts
        if width not in WIDTHS or function not in FUNCTIONS:
            raise ValueError(values)
        return cls(moment, definition, unit, width, function, zone, group)


@dataclass
class AggregatesRequest:
    grouping: Grouping
    observed_property: int | str | None = None  # an @iot.id, or a name: selects the definitions they have
    width: str | None = None
    function: str | None = None
    time_zone: str | None = None
    start: datetime | None = None  # the time window; None: closed by `span` or by the newest bucket
    end: datetime | None = None
    span: timedelta = FINEST * MAX_BUCKETS
    bbox: Bbox | None = None
    crs: Crs = CRS84
    limit: int = 100
    offset: int = 0
    after: Position | None = None  # from a next token: the last feature of the previous page
    only: Position | None = None  # one feature (items/{featureId})


def _single(params: QueryParams, name: str) -> str | None:
    return params.get(name)  # check_parameters has refused repeats of everything but `datetime`


def _text(value: str, name: str) -> str:
    if not value or len(value) > MAX_NAME:
        raise BadRequest(f"{name} must be 1 to {MAX_NAME} characters, not {len(value)}", field=name)
    if "\x00" in value:
        raise BadRequest(f"{name} must not contain NUL characters", field=name)
    return value


def parse_width(value: str) -> str:
    if value not in WIDTHS:
        raise BadRequest(f"width: {value[:30]!r} is not a rollup width; use {', '.join(CALENDAR_WIDTHS)} or whole "
                         f"minutes that divide a day (PT15M, PT1H, PT6H; PT1H, not PT60M)", field="width")
    return value


def parse_function(value: str) -> str:
    if value not in FUNCTIONS:
        raise BadRequest(f"function: {value[:30]!r} is not a rollup function; use one of {', '.join(FUNCTIONS)}",
                         field="function")
    return value


def parse_time_zone(value: str) -> str:
    try:
        RollupSpec("PT1H", "mean", _text(value, "timeZone"))
    except ValueError:
        raise BadRequest(f"timeZone: {value[:40]!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)",
                         field="timeZone") from None
    return value


def parse_cell(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise BadRequest(f"cell: the cell size is a whole number of metres ({MIN_CELL} to {MAX_CELL}), not "
                         f"{value[:30]!r}", field="cell")
    size = int(value)
    if not MIN_CELL <= size <= MAX_CELL:
        raise BadRequest(f"cell must be {MIN_CELL} to {MAX_CELL} metres, not {size}", field="cell")
    return size


def parse_grouping(cell: str | None, group_by: str | None) -> Grouping:
    if cell is not None and group_by is not None:
        raise BadRequest("give either cell (a grid) or groupBy (a Thing property), not both", field="groupBy")
    if group_by is not None:
        if not GROUP_BY.fullmatch(group_by):
            raise BadRequest(f"groupBy: {group_by[:70]!r} is not a Thing property name; use letters, digits, _ and "
                             f"- (up to 64), or a path of up to five such names joined by '.'", field="groupBy")
        return Grouping(path=tuple(group_by.split(".")))
    return Grouping(cell=DEFAULT_CELL if cell is None else parse_cell(cell))


def parse_observed_property(value: str) -> int | str:
    """An @iot.id (digits) or a name."""
    if value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return _text(value, "observedProperty")


def _window(params: QueryParams, width: str | None, request: AggregatesRequest) -> None:
    """The time window and its longest span: MAX_BUCKETS buckets of `width` (of the finest width, PT1M,
    where none is given); a closed interval that is longer is a 400, an open end is closed at that span."""
    nominal = NOMINAL[width] if width is not None else FINEST
    request.span = nominal * MAX_BUCKETS
    if "datetime" not in params:
        return
    request.start, request.end = intersect_datetimes(params.getlist("datetime"))
    if request.start is not None and request.end is not None and request.end - request.start > request.span:
        which = f"{MAX_BUCKETS} buckets of {width}" if width is not None else \
            f"{MAX_BUCKETS} minutes without width (give width for longer windows)"
        raise BadRequest(f"datetime: the interval spans {request.end - request.start}; one request covers at most "
                         f"{which}, that is {request.span}: ask for consecutive windows", field="datetime")


def parse_aggregates(params: QueryParams) -> AggregatesRequest:
    """An items request of the aggregates collection."""
    check_parameters(params, AGGREGATES_PARAMETERS, "/collections/aggregates/items")
    request = AggregatesRequest(parse_grouping(_single(params, "cell"), _single(params, "groupBy")),
                                limit=parse_limit(_single(params, "limit")))
    if (value := _single(params, "observedProperty")) is not None:
        request.observed_property = parse_observed_property(value)
    if (value := _single(params, "width")) is not None:
        request.width = parse_width(value)
    if (value := _single(params, "function")) is not None:
        request.function = parse_function(value)
    if (value := _single(params, "timeZone")) is not None:
        request.time_zone = parse_time_zone(value)
    _window(params, request.width, request)
    if (value := _single(params, "offset")) is not None:
        if not (value.isascii() and value.isdigit()) or len(value) > 19 or int(value) > MAX_OFFSET:
            raise BadRequest(f"offset must be a whole number from 0 to {MAX_OFFSET}, not {value[:30]!r}",
                             field="offset")
        request.offset = int(value)
    request.crs = parse_crs(params["crs"], "crs") if "crs" in params else CRS84
    if (value := _single(params, "bbox")) is not None:
        request.bbox = parse_bbox(value, parse_crs(params["bbox-crs"], "bbox-crs") if "bbox-crs" in params else CRS84)
    elif "bbox-crs" in params:
        raise BadRequest("bbox-crs is given without bbox", field="bbox-crs")
    if (value := _single(params, "next")) is not None:
        if request.offset:
            raise BadRequest("give either offset or next, not both", field="next")
        request.after = decode_next(value, request.grouping)
    return request


# ------------------------------------------------------------------------------------------ tokens and ids

def _encode(payload: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


def _decode(text: str) -> Any:
    if len(text) > 2000 or not text.isascii():
        raise ValueError(text[:30])
    return orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def encode_next(position: Position, grouping: Grouping) -> str:
    return _encode({"k": position.to_json(), "g": grouping.token})


def decode_next(token: str, grouping: Grouping) -> Position:
    """The position a `next` token carries; 400 when it is damaged or from another grouping."""
    try:
        payload = _decode(token)
        position, token_grouping = Position.from_json(payload["k"]), payload["g"]
    except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise BadRequest("next: not a token this server gave out; follow the `next` link as it is",
                         field="next") from None
    if token_grouping != grouping.token:
        raise BadRequest("next: the token belongs to another cell or groupBy; keep the other parameters of the "
                         "next link", field="next")
    return position


def feature_id(position: Position, grouping: Grouping) -> str:
    """A feature's id: everything that makes it the feature it is (its grouping, group, ObservedProperty,
    unit, width, function, time zone and bucket), URL-safe, so that items/{featureId} needs no parameters."""
    return _encode([grouping.token, *position.to_json()])


def parse_feature_id(text: str) -> tuple[Grouping, Position] | None:
    """The feature an id names, None if it is not one `feature_id` wrote."""
    try:
        token, *position = _decode(text)
        return Grouping.from_token(token), Position.from_json(position)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, orjson.JSONDecodeError):
        return None


def item_request(grouping: Grouping, position: Position, params: QueryParams) -> AggregatesRequest:
    """The request of one feature: its selection, its bucket."""
    check_parameters(params, ITEM_PARAMETERS, "/collections/aggregates/items/{featureId}")
    return AggregatesRequest(
        grouping, width=position.width, function=position.function,
        time_zone=position.time_zone, start=position.bucket_start, end=position.bucket_start,
        crs=parse_crs(params["crs"], "crs") if "crs" in params else CRS84, limit=1, only=position)
