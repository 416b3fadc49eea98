"""STA times: ISO 8601 instants, intervals and durations as the API reads them, and their bounds."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sensorthings.model.errors import BadRequest

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


MAX_DURATION_CHARS = 100
MAX_DURATION_DAYS = 3_652_425
"""The largest day-time part of a duration: 10,000 Gregorian years, the whole span of STA times (0001-9999)."""
MAX_DURATION_MONTHS = 120_000
"""The largest year-month part of a duration: 10,000 years."""

_DURATION = re.compile(
    r"(?P<sign>[-+]?)P(?:(?P<years>[0-9]+)Y)?(?:(?P<months>[0-9]+)M)?(?:(?P<days>[0-9]+)D)?"
    r"(?:T(?=[0-9])(?:(?P<hours>[0-9]+)H)?(?:(?P<minutes>[0-9]+)M)?(?:(?P<seconds>[0-9]+(?:[.,][0-9]+)?)S)?)?",
    re.IGNORECASE)
_MICROSECONDS = {"days": 86_400_000_000, "hours": 3_600_000_000, "minutes": 60_000_000}


def parse_duration(text: str, where: str) -> tuple[int, timedelta]:
    """Parse an ISO 8601 duration as OData 4.01 writes it (`[-]PnDTnHnMn.nS`), plus years and months
    (`P1Y2M`). Returns (months, exact part): a year is 12 months, months keep their calendar meaning (they
    have no fixed length), a day is 24 hours; seconds are rounded to the microsecond."""
    example = "e.g. P1DT2H30M, PT24H, PT0.5S or -P7D (years and months: P1Y2M)"
    if len(text) > MAX_DURATION_CHARS:
        raise BadRequest(f"{where}: the duration {text[:30]!r}… is longer than {MAX_DURATION_CHARS} characters")
    match = _DURATION.fullmatch(text)
    if match is None or not any(match.group(part) for part in (
            "years", "months", "days", "hours", "minutes", "seconds")):
        raise BadRequest(f"{where}: {text!r} is not an ISO 8601 duration; {example}")
    sign = -1 if match.group("sign") == "-" else 1
    months = int(match.group("years") or 0) * 12 + int(match.group("months") or 0)
    micros = sum(int(match.group(part) or 0) * factor for part, factor in _MICROSECONDS.items())
    seconds = Decimal((match.group("seconds") or "0").replace(",", "."))
    limit = MAX_DURATION_DAYS * _MICROSECONDS["days"]
    if seconds * 1_000_000 <= limit:  # checked first: quantize() fails on more digits than the context has
        micros += int((seconds * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    if months > MAX_DURATION_MONTHS or micros > limit or seconds * 1_000_000 > limit:
        raise BadRequest(f"{where}: the duration {text!r} is longer than 10,000 years, the span of all times "
                         f"served (years 0001-9999)")
    return sign * months, timedelta(microseconds=sign * micros)
