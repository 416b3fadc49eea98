"""The `aggregates` collection: rollup buckets summed over districts or grid cells, for analysts.

Each feature is one bucket of one spatial group: the rollup Datastreams (sensorthings/model/rollups.py)
of one observed property, unit, width, function and time zone whose Things fall into the group, combined
bucket by bucket from their running state (count, exact sum, extremes, first/last): mean = Σsum / Σcount
(weighted by count, not a mean of means), sum = Σsum, count = Σcount, min/max of the minima/maxima,
first/last by time. An observed property is an ObservedProperty `definition` (its URI, what STA says
identifies the phenomenon): cities' operators each create their own "NO2" entity, and a district's NO2
is all of them. Groups are

- grid cells (`cell=<metres>`, default 1000): squares of the European statistical grid's CRS,
  ETRS89-LAEA (EPSG:3035). It is equal-area, so every cell covers the same ground (Web Mercator's 1 km
  "squares" cover 0.35 km² at Hamburg's latitude), and its 1 km cells are those of Eurostat's GEOSTAT
  population grid (ids in the INSPIRE form, CRS3035RES1000mN3380000E4321000), so the values join census
  data. A Datastream is in the cell of its Thing's current Location (its centroid);
- or the values of a Thing property (`groupBy=district`), each shaped as the convex hull of the Locations
  of all Things with that value (a point or line where there are fewer than three).

What a principal may read is decided in the SQL (geo/aggregate_sql.py), by query.visibility.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import orjson
from psycopg import sql

from geo.aggregate_params import (
    DEFAULT_CELL,
    MAX_BUCKETS,
    MAX_CELL,
    MIN_CELL,
    AggregatesRequest,
    Grouping,
    Position,
    encode_next,
    feature_id,
)
from geo.queryables import Kind, Queryable
from sensorthings.model.rollups import FUNCTIONS
from sensorthings.write.rollups import picked_number

ID = "aggregates"
TITLE = "Aggregates of rollups"
DESCRIPTION = (
    f"One feature per bucket and district or grid cell: the rollup Datastreams of one ObservedProperty, unit, "
    f"width, function and time zone, combined over the group (mean weighted by count). Group with "
    f"cell=<metres> ({MIN_CELL} to {MAX_CELL}, default {DEFAULT_CELL}: the EPSG:3035 statistical grid) or "
    f"groupBy=<Thing property>; select with observedProperty, width, function, timeZone, datetime (at most "
    f"{MAX_BUCKETS} buckets of the width; without it the latest) and bbox.")

PROPERTIES: tuple[tuple[str, Kind, str], ...] = (
    ("observedProperty", "string", "name of the ObservedProperty"),
    ("observedPropertyId", "integer", "@iot.id of the ObservedProperty (the first with its definition)"),
    ("observedPropertyDefinition", "string", "definition (URI) of the ObservedProperty: what the group shares"),
    ("unit", "string", "unit of measurement of the rollups (symbol)"),
    ("width", "string", "bucket width (ISO 8601 duration, e.g. PT1H, P1D)"),
    ("function", "string", "the rollups' function: " + ", ".join(FUNCTIONS)),
    ("timeZone", "string", "time zone of the bucket boundaries"),
    ("bucketStart", "datetime", "start of the bucket"),
    ("bucketEnd", "datetime", "end of the bucket (exclusive)"),
    ("value", "number", "the function over the group's rollup buckets"),
    ("count", "integer", "number of Observations aggregated"),
    ("datastreams", "integer", "number of rollup Datastreams that contributed"),
    ("final", "boolean", "whether every contributing bucket is final (its rollup's finalAfter has passed)"),
    ("groupBy", "string", "how the group is formed: cell, or the Thing property"),
    ("group", "string", "the group: the grid cell's id, or the Thing property's value"),
)
"""Every feature's properties, in their order (the queryables, the OpenAPI document and CSV read them)."""
SELECTING = {"observedProperty": "the ObservedProperty's name or @iot.id", "width": "bucket width",
             "function": "the rollups' function", "timeZone": "time zone of the bucket boundaries"}
"""Properties a request selects by as query parameters (OGC API – Features Part 3 queryables-query-parameters)."""
QUERYABLES: dict[str, Queryable] = {
    **{name: Queryable(name, "string", sql.SQL("NULL"), description) for name, description in SELECTING.items()},
    "datetime": Queryable("datetime", "datetime", sql.SQL("NULL"), "the bucket (buckets that intersect the interval)"),
    "geometry": Queryable("geometry", "geometry", sql.SQL("NULL"), "the group's shape (bbox)", sortable=False),
}
"""What /queryables lists: the selection parameters (the SQL expressions are unused: there is no `filter`)."""


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def value_of(function: str, n: int, total: Decimal, integral: bool, low: Decimal | None, high: Decimal | None,
             first: Decimal | None, last: Decimal | None) -> int | float | None:
    """The function over the summed state, by rollups.BucketState's rules: a sum is an integer where every
    input was one; min, max, first and last keep the form of the value they pick; a mean is a double, of
    the exact sum."""
    if function == "count":
        return n
    if function == "mean":
        return float(Fraction(total) / n) if n else None
    if function == "sum":
        return int(total) if integral else float(total)
    picked = {"min": low, "max": high, "first": first, "last": last}[function]
    return None if picked is None else picked_number(picked)


GEOMETRY = 19
"""The column of a row of aggregate_sql.items_sql that holds the geometry (the properties come before it)."""


class Page:
    """A page of rows from aggregate_sql.items_sql, as features."""

    def __init__(self, rows: Sequence[tuple[Any, ...]], request: AggregatesRequest) -> None:
        self.more = len(rows) > request.limit
        self.rows = list(rows[:request.limit])
        self.grouping: Grouping = request.grouping

    @staticmethod
    def position(row: tuple[Any, ...]) -> Position:
        return Position(*row[:7])

    def properties(self, row: tuple[Any, ...]) -> dict[str, Any]:
        bs, definition, unit, width, function, zone, key, be, op_name, op_id, n, total, integral, low, high, first, \
            last, streams, final = row[:GEOMETRY]
        return {
            "observedProperty": op_name, "observedPropertyId": op_id, "observedPropertyDefinition": definition,
            "unit": unit, "width": width,
            "function": function, "timeZone": zone, "bucketStart": _time(bs), "bucketEnd": _time(be),
            "value": value_of(function, int(n), total, integral, low, high, first, last), "count": int(n),
            "datastreams": int(streams), "final": bool(final), "groupBy": self.grouping.name, "group": key,
        }

    def feature_bytes(self, row: tuple[Any, ...]) -> bytes:
        """One GeoJSON Feature (its geometry rendered by PostGIS, in the request's CRS)."""
        head = orjson.dumps({"type": "Feature", "id": feature_id(self.position(row), self.grouping),
                             "properties": self.properties(row)})
        return head[:-1] + b',"geometry":' + (row[GEOMETRY] or "null").encode() + b"}"

    def features(self) -> bytes:
        return b",".join(self.feature_bytes(r) for r in self.rows)

    def next_token(self) -> str | None:
        return encode_next(self.position(self.rows[-1]), self.grouping) if self.more and self.rows else None

    def csv(self) -> bytes:
        """id, the properties, the geometry as WKT."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["id", *(name for name, _, _ in PROPERTIES), "geometry"])
        for row in self.rows:
            properties = self.properties(row)
            writer.writerow([feature_id(self.position(row), self.grouping),
                             *("" if properties[name] is None else properties[name] for name, _, _ in PROPERTIES),
                             row[GEOMETRY] or ""])
        return out.getvalue().encode()
