"""An ingest batch's rows grouped per stream and UTC minute in Python (sensorthings/write/rollup_minutes.py),
the input of the merge statement. The merge's results are checked against the reference in
tests/sta/test_rollups_property.py; these pin the grouping's own rules."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from sensorthings.write.rollup_minutes import ARRAYS, Merged, integral, minute_arrays

SQL_INTEGRAL = re.compile(r"^-?[0-9]+$")
T = datetime(2026, 3, 29, 0, 59, 30, 250_000, tzinfo=UTC)


@pytest.mark.parametrize("text", ["0", "-5", "12345678901234567890123", "1.0", "-0.5", "1e+20", "1E+2",
                                  "6.323534683751134e+16", "2.5E-7", str(10**30), str(1.5), str(-3)])
def test_integral_is_the_sql_rule(text: str) -> None:
    assert integral(text) == bool(SQL_INTEGRAL.match(text))


def by_minute(rows: list[Merged]) -> list[dict[str, object]]:
    arrays = minute_arrays(rows)
    assert set(arrays) == set(ARRAYS)
    return [dict(zip(ARRAYS, values, strict=True)) for values in zip(*arrays.values(), strict=True)]


def test_a_minute_of_one_stream_is_one_group_with_its_extremes_and_ends() -> None:
    rows = [Merged(1, 30, T, "4.5", 7), Merged(1, 10, T + timedelta(seconds=20), "3", 8),
            Merged(1, 20, T - timedelta(seconds=30), "10", 9), Merged(1, 5, T - timedelta(seconds=30), "-1", 6),
            Merged(2, 40, T, "1", 5), Merged(1, 50, T, None, 5)]  # no number: not aggregated
    one, two = by_minute(rows)
    assert one == {"streams": 1, "minutes": datetime(2026, 3, 29, 0, 59, tzinfo=UTC), "counts": 4,
                   "sums": "16.5", "integral": False, "lows": "-1", "highs": "10",
                   "first_times": T - timedelta(seconds=30), "first_ids": 5, "firsts": "-1",
                   "last_times": T + timedelta(seconds=20), "last_ids": 10, "lasts": "3", "last_features": 8}
    assert (two["streams"], two["counts"], two["integral"], two["sums"]) == (2, 1, True, "1")


def test_minutes_are_utc_minutes_whatever_the_offset_and_sums_are_exact() -> None:
    berlin = T.astimezone(timezone(timedelta(hours=1)))
    big = "123456789012345678901234567890"
    groups = by_minute([Merged(1, 1, berlin, big, None), Merged(1, 2, T + timedelta(seconds=29), "1", None),
                        Merged(1, 3, T + timedelta(seconds=30), "0.1", None)])
    assert [g["minutes"] for g in groups] == [datetime(2026, 3, 29, 0, 59, tzinfo=UTC),
                                             datetime(2026, 3, 29, 1, 0, tzinfo=UTC)]
    assert groups[0]["sums"] == "123456789012345678901234567891"  # beyond decimal's default 28 digits


def test_times_before_1980_are_not_grouped() -> None:
    old = datetime(1900, 1, 1, 12, 0, 5, tzinfo=UTC)
    groups = by_minute([Merged(1, 1, old, "1", None), Merged(1, 2, old + timedelta(seconds=10), "2", None)])
    assert [g["minutes"] for g in groups] == [old, old + timedelta(seconds=10)]
