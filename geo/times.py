"""RFC 3339 instants as `datetime` and CQL2 read them: one parser for both."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta


def parse_instant(text: str, *, end_of_day: bool = False) -> datetime:
    """A date-time (UTC when it has no offset) or a date: its first microsecond, or its last for
    `end_of_day`. ValueError when it is neither."""
    if "T" not in text.upper():
        day = date.fromisoformat(text)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return start + timedelta(days=1, microseconds=-1) if end_of_day else start
    parsed = datetime.fromisoformat(text.upper())
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
