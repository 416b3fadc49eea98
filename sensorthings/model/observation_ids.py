"""Observation ids that say which time partition holds the row.

Observations are partitioned by phenomenon time (native range partitions or TimescaleDB chunks). A primary
key on a partitioned table must contain the partition key, so a lookup by id alone would probe every
partition. Instead each id carries the UTC day of the phenomenon time it was created with:

    id = sequence_value * 65536 + day_index        day_index = days since 1900-01-01, clamped to 0..65535

Ids stay unique (the sequence is), increase in insertion order, stay below 2**53 (safe for JavaScript
clients) for 137 billion observations, and `Observations(id)` prunes to the one partition of that day.
When an update moves an observation to another day, `observation_relocations` records its new day.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

DAY_BITS = 16
_DAYS = 1 << DAY_BITS
EPOCH = datetime(1900, 1, 1, tzinfo=UTC)
RELOCATIONS_TABLE = "observation_relocations"
"""Observations whose phenomenon time moved to another day than their id encodes: (id, day_start)."""
RELOCATED_DAY_COLUMN = "day_start"


def day_index(time: datetime) -> int:
    """Days since 1900-01-01 (UTC), clamped into the range the id can hold."""
    return min(max((time - EPOCH).days, 0), _DAYS - 1)


def observation_id(sequence_value: int, phenomenon_start: datetime) -> int:
    return sequence_value * _DAYS + day_index(phenomenon_start)


def day_bounds(observation_id_value: int) -> tuple[datetime | None, datetime | None]:
    """[lower, upper) of the day encoded in an id; None for an open end at the clamped extremes."""
    day = observation_id_value % _DAYS
    lower = EPOCH + timedelta(days=day)
    return (None if day == 0 else lower, None if day == _DAYS - 1 else lower + timedelta(days=1))


def day_start(time: datetime) -> datetime:
    """Midnight UTC of the day of `time` (not clamped: relocations record the true day)."""
    utc = time.astimezone(UTC)
    return datetime(utc.year, utc.month, utc.day, tzinfo=UTC)
