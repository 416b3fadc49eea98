"""Query parameters of OGC API – Features, parsed and checked before any SQL is built.

Every unknown or malformed parameter is a 400 that says what to fix (never ignored, never FastAPI's 422).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import orjson
import shapely
from starlette.datastructures import QueryParams

from geo.collections import Collection
from geo.crs import CRS84, Crs, parse_crs
from geo.queryables import Queryable
from geo.times import parse_instant
from sensorthings.model.errors import BadRequest

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
FORMATS_METADATA = ("json", "html")
FORMATS_ITEMS = ("json", "geojson", "html", "csv")
FILTER_LANGS = ("cql2-text", "cql2-json")
COMMON = frozenset({"f"})
ITEM_PARAMETERS = frozenset({"f", "crs", "properties"})
ITEMS_PARAMETERS = frozenset({
    "f", "limit", "offset", "next", "bbox", "bbox-crs", "datetime", "properties", "sortby", "crs",
    "filter", "filter-lang", "filter-crs",
})


@dataclass(frozen=True)
class Bbox:
    """A bbox as one or two (across the antimeridian) envelopes in the CRS it was given in; one given in a
    projected CRS also as its CRS84 geometry (Crs.envelope_in_crs84), as WKB."""

    envelopes: tuple[tuple[float, float, float, float], ...]
    crs: Crs
    crs84: bytes | None = None


@dataclass(frozen=True)
class SortKey:
    queryable: Queryable
    descending: bool


@dataclass
class ItemsRequest:
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    after: list[Any] | None = None  # keyset position from a `next` token: sort key values, then the id
    bbox: Bbox | None = None
    interval: tuple[datetime | None, datetime | None] | None = None
    properties: list[str] | None = None
    sortby: list[SortKey] = field(default_factory=list)
    crs: Crs = CRS84
    filter: str | None = None
    filter_lang: str = "cql2-text"
    filter_tree: Any = None
    """The filter parsed (CQL2 JSON), set before any SQL is built: geo.api parses CQL2 text in a worker
    process (geo/cql2_text.py)."""
    equals: list[tuple[Queryable, Any]] = field(default_factory=list)

    @property
    def sort_signature(self) -> str:
        return ",".join(("-" if k.descending else "+") + k.queryable.name for k in self.sortby)


def _single(params: QueryParams, name: str) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        raise BadRequest(f"{name} is given {len(values)} times; give it once", field=name)
    return values[0] if values else None


REPEATABLE = frozenset({"datetime"})
"""Parameters a client may repeat: GDAL 3.6 sends `phenomenonTime >= A AND phenomenonTime <= B` after another
condition as two `datetime` parameters (`A/..` and `../B`), meaning both; they are intersected."""


def check_parameters(params: QueryParams, allowed: frozenset[str] | set[str], where: str) -> None:
    unknown = sorted(set(params.keys()) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown query parameter(s) {', '.join(unknown)} for {where}; "
                         f"allowed are: {', '.join(sorted(allowed))}", field=unknown[0])
    for name in params.keys():
        if name not in REPEATABLE:
            _single(params, name)


def parse_format(params: QueryParams, accept: str, formats: tuple[str, ...]) -> str:
    """`f=` wins; otherwise a browser's Accept (text/html) gets HTML, text/csv CSV, everything else JSON."""
    requested = _single(params, "f")
    if requested is not None:
        if requested not in formats:
            raise BadRequest(f"f: unsupported format {requested!r}; use one of {', '.join(formats)}", field="f")
        return "json" if requested == "geojson" else requested
    accept = accept.lower()
    if "text/html" in accept and "html" in formats:
        return "html"
    if "text/csv" in accept and "csv" in formats and "json" not in accept:
        return "csv"
    return "json"


MAX_OFFSET = 2**62
"""Keeps offset + limit inside PostgreSQL's bigint."""


def _integer(value: str, name: str, minimum: int, maximum: int | None = None) -> int:
    try:
        number = int(value[:30])
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {value[:30]!r}", field=name) from None
    if number < minimum:
        raise BadRequest(f"{name} must be at least {minimum}, not {number}", field=name)
    if maximum is not None and (number > maximum or len(value) > 30):
        raise BadRequest(f"{name} must be at most {maximum}, not {value[:30]!r}", field=name)
    return number


def parse_limit(value: str | None) -> int:
    """Default 100; above the maximum it is clamped, not rejected (OGC API – Features /req/core/fc-limit)."""
    return DEFAULT_LIMIT if value is None else min(_integer(value, "limit", 1), MAX_LIMIT)


def parse_bbox(value: str, crs: Crs) -> Bbox:
    parts = value.split(",")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise BadRequest(f"bbox must be 4 or 6 comma-separated numbers, not {value!r}", field="bbox") from None
    if len(numbers) not in (4, 6) or not all(math.isfinite(n) for n in numbers):
        raise BadRequest(f"bbox must be 4 or 6 comma-separated finite numbers, not {value!r}", field="bbox")
    half = len(numbers) // 2
    x1, y1, x2, y2 = numbers[0], numbers[1], numbers[half], numbers[half + 1]
    if crs.swap_axes:  # EPSG:4326 gives latitude first
        x1, y1, x2, y2 = y1, x1, y2, x2
    geographic = crs.srid == 4326
    if y1 > y2:
        raise BadRequest(f"bbox: the lower corner's {'latitude' if geographic else 'y'} ({y1}) is above the upper "
                         f"corner's ({y2})", field="bbox")
    if geographic and not (-90 <= y1 <= 90 and -90 <= y2 <= 90 and -180 <= x1 <= 180 and -180 <= x2 <= 180):
        raise BadRequest("bbox: longitudes must be within -180..180 and latitudes within -90..90", field="bbox")
    if x1 <= x2:
        if geographic:
            return Bbox(((x1, y1, x2, y2),), crs)
        return Bbox(((x1, y1, x2, y2),), crs, shapely.to_wkb(crs.envelope_in_crs84(x1, y1, x2, y2, "bbox")))
    if not geographic:
        raise BadRequest(f"bbox: the lower corner's x ({x1}) is greater than the upper corner's ({x2})", field="bbox")
    return Bbox(((x1, y1, 180.0, y2), (-180.0, y1, x2, y2)), crs)  # across the antimeridian


def _instant(text: str, *, end: bool) -> datetime:
    """An RFC 3339 date-time (UTC when no offset is given) or a date (its start, or its end for `end`)."""
    try:
        return parse_instant(text, end_of_day=end)
    except ValueError:
        raise BadRequest(f"datetime: {text!r} is not an RFC 3339 date-time (e.g. 2025-01-20T10:00:00Z) or date",
                         field="datetime") from None


def parse_datetime(value: str) -> tuple[datetime | None, datetime | None]:
    """An instant, a closed interval `a/b` or a half-open one (`../b`, `a/..`, `/b`, `a/`)."""
    if "/" not in value:
        return _instant(value, end=False), _instant(value, end=True)
    if value.count("/") != 1:
        raise BadRequest(f"datetime: {value!r} has more than one '/'", field="datetime")
    start_text, end_text = value.split("/")
    start = None if start_text in ("", "..") else _instant(start_text, end=False)
    end = None if end_text in ("", "..") else _instant(end_text, end=True)
    if start is not None and end is not None and start > end:
        raise BadRequest(f"datetime: the interval {value!r} ends before it starts", field="datetime")
    return start, end


def intersect_datetimes(values: list[str]) -> tuple[datetime | None, datetime | None]:
    """Where all the `datetime` values (REPEATABLE) overlap (possibly nowhere: then the start is after the
    end, and nothing matches)."""
    intervals = [parse_datetime(v) for v in values]
    starts = [s for s, _ in intervals if s is not None]
    ends = [e for _, e in intervals if e is not None]
    return (max(starts) if starts else None), (min(ends) if ends else None)


def parse_properties(value: str, collection: Collection) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if collection.property(n) is None]
    if unknown:
        raise BadRequest(f"properties: {', '.join(unknown)} not in collection {collection.id}; it has "
                         f"{', '.join(p.name for p in collection.properties)}", field="properties")
    return names


def parse_sortby(value: str, collection: Collection) -> list[SortKey]:
    keys: list[SortKey] = []
    for raw in value.split(","):
        item = raw.strip()
        descending = item.startswith("-")
        name = item.lstrip("+-").strip()  # a '+' may arrive as a space when not percent-encoded
        queryable = collection.sortables.get(name)
        if queryable is None:
            raise BadRequest(f"sortby: cannot sort {collection.id} by {name!r}; sortables are "
                             f"{', '.join(collection.sortables)}", field="sortby")
        keys.append(SortKey(queryable, descending))
    return keys


def parse_value(queryable: Queryable, text: str, where: str) -> Any:
    """A literal for a comparison with `queryable`, converted by its kind."""
    try:
        if queryable.kind == "integer":
            return int(text)
        if queryable.kind == "number":
            number = float(text)
            if not math.isfinite(number):
                raise ValueError
            return number
        if queryable.kind == "boolean":
            return {"true": True, "false": False}[text.lower()]
    except (ValueError, KeyError):
        raise BadRequest(f"{where}: {text!r} is not a valid {queryable.kind}", field=where) from None
    if queryable.kind == "datetime":
        return _instant(text, end=False)
    if queryable.kind == "geometry":
        raise BadRequest(f"{where}: filter on the geometry with bbox or a CQL2 filter", field=where)
    return text


def encode_next(values: list[Any], signature: str) -> str:
    payload = orjson.dumps({"k": [v.isoformat() if isinstance(v, datetime) else v for v in values], "s": signature})
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_next(token: str, request: ItemsRequest) -> list[Any]:
    """The keyset position a `next` token carries; 400 when it is damaged or from another sort order."""
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        values, signature = payload["k"], payload["s"]
    except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise BadRequest("next: not a token this server gave out; follow the `next` link as it is",
                         field="next") from None
    if signature != request.sort_signature:
        raise BadRequest("next: the token belongs to another sortby; keep the other parameters of the next link",
                         field="next")
    try:
        if not isinstance(values, list) or len(values) != len(request.sortby) + 1:
            raise ValueError
        keys = [k.queryable for k in request.sortby]
        decoded = [None if v is None else _token_value(q, v) for q, v in zip(keys, values[:-1], strict=True)]
        if type(values[-1]) is not int:
            raise ValueError
        decoded.append(values[-1])
    except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError, BadRequest):
        raise BadRequest("next: not a token this server gave out; follow the `next` link as it is",
                         field="next") from None
    return decoded


_TOKEN_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float),
                                             "boolean": (bool,)}


def _token_value(queryable: Queryable, value: Any) -> Any:
    """A sort key from a `next` token, of its queryable's type (ValueError otherwise: a tampered token)."""
    if queryable.kind == "datetime":
        return _instant(value, end=False)
    if not isinstance(value, _TOKEN_TYPES[queryable.kind]) or (isinstance(value, bool) and queryable.kind != "boolean"):
        raise ValueError
    return value


def parse_items(params: QueryParams, collection: Collection) -> ItemsRequest:
    """Everything an items request asks for; property names of the collection filter by equality."""
    check_parameters(params, ITEMS_PARAMETERS | collection.queryables.keys() - {"geometry"},
                     f"/collections/{collection.id}/items")
    get = params.get
    request = ItemsRequest(limit=parse_limit(get("limit")))
    if get("offset") is not None:
        request.offset = _integer(params["offset"], "offset", 0, MAX_OFFSET)
    if get("crs") is not None:
        request.crs = parse_crs(params["crs"], "crs")
    if get("bbox") is not None:
        bbox_crs = parse_crs(params["bbox-crs"], "bbox-crs") if get("bbox-crs") is not None else CRS84
        request.bbox = parse_bbox(params["bbox"], bbox_crs)
    elif get("bbox-crs") is not None:
        raise BadRequest("bbox-crs is given without bbox", field="bbox-crs")
    if get("datetime") is not None:
        request.interval = intersect_datetimes(params.getlist("datetime"))
    if get("properties") is not None:
        request.properties = parse_properties(params["properties"], collection)
    if get("sortby") is not None:
        request.sortby = parse_sortby(params["sortby"], collection)
    if get("filter-crs") is not None and parse_crs(params["filter-crs"], "filter-crs") != CRS84:
        raise BadRequest("filter-crs: filters are read in CRS84 only", field="filter-crs")
    if get("filter") is not None:
        request.filter = params["filter"]
        request.filter_lang = get("filter-lang") or "cql2-text"
        if request.filter_lang not in FILTER_LANGS:
            raise BadRequest(f"filter-lang must be one of {', '.join(FILTER_LANGS)}", field="filter-lang")
    elif get("filter-lang") is not None:
        raise BadRequest("filter-lang is given without filter", field="filter-lang")
    for name, queryable in collection.queryables.items():
        if name in params and name not in ITEMS_PARAMETERS:  # `datetime` is the parameter, not equality
            request.equals.append((queryable, parse_value(queryable, params[name], name)))
    if get("next") is not None:
        if request.offset:
            raise BadRequest("give either offset or next, not both", field="next")
        request.after = decode_next(params["next"], request)
    return request


def query_string(params: Sequence[tuple[str, str]], **changes: str | None) -> str:
    """The request's parameters (repeated ones kept) with some replaced (None drops one): for self,
    alternate and next links."""
    kept = [(k, v) for k, v in params if k not in changes]
    return urlencode(kept + [(k, v) for k, v in changes.items() if v is not None])
