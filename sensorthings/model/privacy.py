"""Privacy classes (issue 18, section 3): what the public may see of a stream's Observations.

City data strategies publish data that could reveal a person (parking bays, footfall) only delayed and
aggregated. A class is an object with optional members:

- `publicationDelay`: an ISO 8601 duration (`PT24H`, `P7D`); the public sees an Observation once its
  phenomenonTime (its end, for an interval) is older than that;
- `minimumPublicAggregation`: a rollup width (model/rollups.py WIDTHS); the public sees only rollups at
  least that wide (by nominal length: P1D is 24 h, P1W 7 days, a month at least as wide as any of them),
  never the raw values;
- `minimumCount`: a positive integer; a rollup bucket built from fewer Observations is withheld.

A Project, Datastream or MultiDatastream declares one (`privacy`); a stream's effective class is its own,
else its Project's, and a rollup's its source's (migration 0014 keeps it beside the stream). This module
only reads and checks a class; sensorthings/query/visibility.py applies it to every read.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

from sensorthings.model.errors import BadRequest
from sensorthings.model.rollups import SUB_DAY_WIDTHS, WIDTHS
from sensorthings.model.times import parse_duration

DELAY, AGGREGATION, COUNT = "publicationDelay", "minimumPublicAggregation", "minimumCount"
MEMBERS: Final = (DELAY, AGGREGATION, COUNT)
EXAMPLE: Final = '{"publicationDelay": "P7D", "minimumPublicAggregation": "PT1H", "minimumCount": 5}'
ORIGINS: Final = ("itself", "Project", "RollupOf", "RollupOf/Project")
"""Where a stream's effective class comes from (`effectivePrivacy.from`, set by migration 0014)."""
MAX_COUNT: Final = 1_000_000_000
_NOMINAL: Final[dict[str, timedelta]] = {**SUB_DAY_WIDTHS, "P1D": timedelta(days=1), "P1W": timedelta(days=7),
                                         "P1M": timedelta(days=28)}


def nominal_length(width: str) -> timedelta:
    """The length a width is compared by: a month counts as 28 days, wider than any day or week width
    (migration 0014's sta_privacy_width_minutes says the same in SQL)."""
    return _NOMINAL[width]


def parse_privacy(data: object, where: str) -> dict[str, Any]:
    """A client's class, checked and normalised: the members it gives (a member given as null is left
    out), the delay written in upper case. `{}` is a class that withholds nothing (a stream's `{}`
    overrides its Project's class)."""
    if not isinstance(data, dict):
        raise BadRequest(f"{where} must be a JSON object such as {EXAMPLE}, or null", field=where)
    unknown = [key for key in data if key not in MEMBERS]
    if unknown:
        names = ", ".join(repr(str(key)[:64]) for key in unknown[:3])
        raise BadRequest(f"{where}: unknown member {names}; a privacy class has {', '.join(MEMBERS)} (each "
                         f"optional), e.g. {EXAMPLE}", field=where)
    parsed: dict[str, Any] = {}
    if data.get(DELAY) is not None:
        parsed[DELAY] = _delay(data[DELAY], f"{where}/{DELAY}")
    if data.get(AGGREGATION) is not None:
        parsed[AGGREGATION] = _aggregation(data[AGGREGATION], f"{where}/{AGGREGATION}")
    if data.get(COUNT) is not None:
        parsed[COUNT] = _count(data[COUNT], f"{where}/{COUNT}")
    return parsed


def _delay(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be an ISO 8601 duration such as 'PT24H' or 'P7D'", field=where)
    text = value.strip().upper().replace(",", ".").removeprefix("+")
    try:
        months, exact = parse_duration(text, where)
    except BadRequest as exc:
        raise BadRequest(exc.message, field=where) from None
    if text.startswith("-"):
        raise BadRequest(f"{where}: {value!r} must be a positive duration such as 'PT24H'", field=where)
    if months:
        raise BadRequest(f"{where}: {value!r} counts months or years, which have no fixed length; write the "
                         f"delay in days, e.g. 'P30D' or 'P365D'", field=where)
    if exact <= timedelta(0):
        raise BadRequest(f"{where}: {value!r} is no delay; leave publicationDelay out instead", field=where)
    return text


def _aggregation(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a rollup width such as 'PT1H' or 'P1D'", field=where)
    if value in WIDTHS:
        return value
    hint = f" (write it as {value.upper()!r})" if value.upper() in WIDTHS else ""
    if not hint:
        try:
            months, exact = parse_duration(value.upper(), where)
        except BadRequest:
            months, exact = 0, timedelta(0)
        spelled = {length: width for width, length in _NOMINAL.items() if width != "P1M"}
        if months == 1 and not exact:
            hint = " (write it as 'P1M')"
        elif not months and exact in spelled:
            hint = f" (write it as {spelled[exact]!r})"
    raise BadRequest(f"{where}: {value[:64]!r} is not a rollup width{hint}; use a width rollups take: PTnM or "
                     f"PTnH dividing a day (PT15M, PT1H, ...), P1D, P1W or P1M (docs/rollups.md)", field=where)


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{where} must be a whole number of Observations, e.g. 5", field=where)
    if not 1 <= value <= MAX_COUNT:
        raise BadRequest(f"{where} must be between 1 and {MAX_COUNT:,}; a bucket built from fewer "
                         f"Observations is withheld from the public", field=where)
    return value


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a class (OpenAPI 3.0's dialect)."""
    return {"type": "object", "additionalProperties": False, "properties": {
        DELAY: {"type": "string", "description": "an ISO 8601 duration without months or years, e.g. PT24H"},
        AGGREGATION: {"type": "string", "enum": list(WIDTHS)},
        COUNT: {"type": "integer", "minimum": 1, "maximum": MAX_COUNT}}}


def effective_json_schema() -> dict[str, Any]:
    """The JSON Schema of a stream's effective class as it is read (`effectivePrivacy`)."""
    schema = json_schema()
    return {**schema, "readOnly": True, "properties": {
        **schema["properties"], "from": {"type": "string", "enum": list(ORIGINS)}},
        "description": "the class the stream's Observations are read under by the public (read-only): its own "
                       "privacy, else its Project's; a rollup's is its source's"}
