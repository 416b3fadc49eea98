"""STA times: ISO 8601 instants and intervals as the API reads them, and their bounds."""

from __future__ import annotations

from datetime import UTC, datetime
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


