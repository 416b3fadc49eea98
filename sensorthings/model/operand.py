"""A typed SQL value inside a query expression ($filter, $orderby).

`kind` is one of: number, string, boolean, datetime, date, time, interval, duration, geometry, json, result,
null. `json` and `result` values have no single type; `views` says how to read them as each concrete kind
(NULL when the stored value has another type, so a comparison on it is false).

An `interval` has a start (`value`) and an `end`. A `duration` (a PostgreSQL interval) may be a span of
durations too: `value` is the shortest, `end` the longest (`resultTime sub phenomenonTime` on an interval
phenomenonTime), or None for one exact duration."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from psycopg import sql


@dataclass(frozen=True)
class Operand:
    kind: str
    value: sql.Composable  # the value (the start, for an interval)
    views: Mapping[str, sql.Composable] = field(default_factory=dict)
    end: sql.Composable | None = None  # the end of an interval (the longest of a span of durations)
    calendar: bool = False  # a duration counting years or months, which have no fixed length


def json_operand(value: sql.Composable) -> Operand:
    """A jsonb value of unknown type, readable as number, string, boolean or JSON."""
    return Operand("json", value, {
        "number": sql.SQL("sta_json_number({})").format(value),
        "string": sql.SQL("sta_json_text({})").format(value),
        "boolean": sql.SQL("sta_json_boolean({})").format(value),
        "json": value,
    })
