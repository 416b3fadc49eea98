"""An ingest batch's numeric Observations grouped per source Datastream and UTC minute, in Python.

Every rollup bucket boundary is a whole UTC minute (local midnight plus whole minutes, in zones whose
offsets have been whole minutes since 1972), so the Observations of one stream in one minute share their
bucket in every rollup of that stream. The merge statement (rollups.MERGE_SQL) then computes bucket
boundaries per minute, not per Observation: a batch of 5,000 live Observations of 100 streams is ~100
minutes. Grouping here rather than in SQL takes the per-row work (seven ordered aggregates per group)
off the database, which is what an ingest batch with rollups waited for most. Earlier times than 1980 are
not grouped (LMT offsets had seconds): each is a minute of its own.

Values stay the texts the client sent (the database reads them as numbers, rollups._value); only the sum
is computed here, exactly (decimal, with a precision no sum of JSON numbers reaches).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Context, Decimal, localcontext
from typing import Any, NamedTuple

GROUPED_FROM = datetime(1980, 1, 1, tzinfo=UTC)
"""From here on, a minute's Observations are grouped (see the module docstring)."""
_GROUPED_FROM_SECONDS = GROUPED_FROM.timestamp()
EXACT = Context(prec=100_000, Emax=999_999, Emin=-999_999)
"""Enough digits that adding results never rounds (their texts are bounded far below this)."""


class Merged(NamedTuple):
    """An Observation an ingest batch just stored in a Datastream with rollups."""

    stream_id: int
    id: int
    start: datetime
    number_text: str | None
    """Its result's text where the result is a number (RESULT_NUMBER), else None (not aggregated)."""
    feature_id: int | None


def integral(text: str) -> bool:
    """Whether a result's text is an integer: the SQL side's `~ '^-?[0-9]+$'` for the texts results have
    (JSON numbers, Python's str of an int, float or Decimal: a fraction or exponent shows as . e or E)."""
    return "." not in text and "e" not in text and "E" not in text


def _keeps_form(text: str, picked: str) -> bool:
    """Whether `text` replaces an equal `picked` value as min or max: an integer's form wins (3 rather than
    3.0, as the merge statement and sensorthings.model.rollups.BucketState decide)."""
    return integral(text) and not integral(picked)


@dataclass(slots=True)
class _Minute:
    count: int
    total: Decimal
    integral: bool
    low: Decimal
    low_text: str
    high: Decimal
    high_text: str
    first: Merged
    last: Merged


def minute_of(start: datetime) -> float | datetime:
    """The UTC minute an Observation is grouped in, as POSIX seconds (a float hashes in a fraction of an
    aware datetime's time, and this runs per row); before GROUPED_FROM the time itself, as every earlier
    Observation is a minute of its own."""
    seconds = start.timestamp()  # exact to the microsecond: flooring to the minute cannot round up
    return start if seconds < _GROUPED_FROM_SECONDS else seconds // 60 * 60


def minute_arrays(rows: Iterable[Merged]) -> dict[str, list[Any]]:
    """The minutes of `rows` (those with a number) as the merge statement's array parameters: per
    (stream, minute) the count, exact sum, whether every text was an integer, the texts of the least and
    greatest value, and the first and last Observation by (phenomenonTime, id), the last with its
    FeatureOfInterest."""
    minutes: dict[tuple[int, float | datetime], _Minute] = {}
    with localcontext(EXACT):
        for row in rows:
            text = row.number_text
            if text is None:
                continue
            value = Decimal(text)
            key = (row.stream_id, minute_of(row.start))
            minute = minutes.get(key)
            if minute is None:
                minutes[key] = _Minute(1, value, integral(text), value, text, value, text, row, row)
                continue
            minute.count += 1
            minute.total += value
            if minute.integral and not integral(text):
                minute.integral = False
            if value < minute.low or (value == minute.low and _keeps_form(text, minute.low_text)):
                minute.low, minute.low_text = value, text
            if value > minute.high or (value == minute.high and _keeps_form(text, minute.high_text)):
                minute.high, minute.high_text = value, text
            first, last = minute.first, minute.last
            if row.start < first.start or (row.start == first.start and row.id < first.id):
                minute.first = row
            if row.start > last.start or (row.start == last.start and row.id > last.id):
                minute.last = row
    columns = [(stream_id, start if isinstance(start, datetime) else datetime.fromtimestamp(start, UTC),
                m.count, str(m.total), m.integral, m.low_text, m.high_text, m.first.start, m.first.id,
                m.first.number_text, m.last.start, m.last.id, m.last.number_text, m.last.feature_id)
               for (stream_id, start), m in minutes.items()]
    return {name: [column[i] for column in columns] for i, name in enumerate(ARRAYS)}


ARRAYS = ("streams", "minutes", "counts", "sums", "integral", "lows", "highs", "first_times", "first_ids",
          "firsts", "last_times", "last_ids", "lasts", "last_features")
"""The names of `minute_arrays`' parameters, in the order of the merge statement's unnest."""
