"""Rollup buckets in SQL (migration 0011) against their definition in sensorthings.model.rollups.

`sta_rollup_bucket_start/_end` must give the instants `bucket_start/bucket_end` give, for every zone and
width, including the days where a DST change falls on (America/Havana, America/Santiago) or near midnight
and 30-minute DST (Australia/Lord_Howe). Instants go to the database in batches (one round trip per batch)
so that the property test stays fast; random instants over 1900-2100 rarely land near a change, so the
strategy also draws instants close to one (found from Python's zoneinfo, the same tz files PostgreSQL
reads here).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from sensorthings.model.rollups import SUB_DAY_WIDTHS, WIDTHS, RollupSpec, bucket_end, bucket_start
from sensorthings.model.times import EARLIEST, LATEST

ZONES = ("Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "America/Havana",
         "America/Santiago", "UTC")
SAMPLE_WIDTHS = ("PT1M", "PT15M", "PT1H", "PT2H", "PT1H30M", "PT12H", "P1D", "P1W", "P1M")
LOW = datetime(1900, 1, 1, tzinfo=UTC)
HIGH = datetime(2100, 1, 1, tzinfo=UTC)
MICRO = timedelta(microseconds=1)

_QUERY = """
SELECT timezone('UTC', sta_rollup_bucket_start(t, %(w)s, %(z)s)),
       timezone('UTC', sta_rollup_bucket_end(t, %(w)s, %(z)s)),
       timezone('UTC', sta_rollup_bucket_end(sta_rollup_bucket_start(t, %(w)s, %(z)s), %(w)s, %(z)s))
FROM unnest(%(ts)s::timestamptz[]) WITH ORDINALITY AS u (t, n) ORDER BY n
"""


@pytest.fixture(scope="module")
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        # The session's zone must not matter. Results are read back as naive UTC: psycopg would give them in
        # the session's zone, where LATEST is in year 10000 and fold=1 values compare unequal (PEP 495).
        connection.execute("SET TIME ZONE 'Pacific/Chatham'")
        yield connection


def _transitions(zone_name: str, low: datetime, high: datetime) -> list[datetime]:
    """The instants (UTC) where the zone's offset changes between `low` and `high`, to the second."""
    zone = ZoneInfo(zone_name)
    found: list[datetime] = []
    step = timedelta(hours=6)
    t = low
    offset = t.astimezone(zone).utcoffset()
    while t < high:
        nxt = t + step
        nxt_offset = nxt.astimezone(zone).utcoffset()
        if nxt_offset != offset:
            a, b = 0, int(step.total_seconds())
            while b - a > 1:
                m = (a + b) // 2
                if (t + timedelta(seconds=m)).astimezone(zone).utcoffset() == offset:
                    a = m
                else:
                    b = m
            found.append(t + timedelta(seconds=b))
        t, offset = nxt, nxt_offset
    return found


_CHANGES = {zone: _transitions(zone, LOW, HIGH) for zone in ZONES}


def _check(conn: psycopg.Connection, instants: Sequence[datetime], width: str, zone: str) -> None:
    spec = RollupSpec(width, "count", zone)
    rows = conn.execute(_QUERY, {"w": width, "z": zone, "ts": list(instants)}).fetchall()
    mismatches = []
    for t, naive in zip(instants, rows, strict=True):
        start, end, end_of_start = (value.replace(tzinfo=UTC) for value in naive)  # read as UTC: see `conn`
        expected_start, expected_end = bucket_start(t, spec), bucket_end(t, spec)
        if (start, end, end_of_start) != (expected_start, expected_end, expected_end):
            mismatches.append((t.isoformat(), start, end, end_of_start, expected_start, expected_end))
    assert not mismatches, f"{width} {zone}: {len(mismatches)} of {len(instants)} differ, e.g. {mismatches[:3]}"


def _near_changes(zone: str, years: range) -> list[datetime]:
    """Instants at and around each change of the years, and around the local midnights near it."""
    local = ZoneInfo(zone)
    offsets = [timedelta(0), MICRO, -MICRO, timedelta(seconds=1), -timedelta(seconds=1), timedelta(minutes=30),
               -timedelta(minutes=30), timedelta(hours=1), -timedelta(hours=1), timedelta(hours=2),
               timedelta(hours=25), -timedelta(hours=25), timedelta(hours=49), -timedelta(hours=50),
               timedelta(hours=51)]
    out: list[datetime] = []
    for change in _CHANGES[zone]:
        if change.year not in years:
            continue
        out += [change + delta for delta in offsets]
        day = change.astimezone(local).date()
        for d in (day - timedelta(days=1), day, day + timedelta(days=1)):
            for fold in (0, 1):
                midnight = datetime.combine(d, time(), tzinfo=local).replace(fold=fold).astimezone(UTC)
                out += [midnight - MICRO, midnight, midnight + MICRO, midnight + timedelta(minutes=59)]
    return out


@pytest.mark.parametrize("zone", ZONES)
def test_dst_changes_of_2024_and_local_midnights(conn: psycopg.Connection, zone: str) -> None:
    local = ZoneInfo(zone)
    midnights = [datetime.combine(date(2024, 2, 26) + timedelta(days=k), time(), tzinfo=local).astimezone(UTC)
                 for k in range(0, 300, 7)]  # no change in 2024 (Asia/Kolkata, UTC): local midnights
    instants = _near_changes(zone, range(2024, 2025)) + [m + d for m in midnights for d in (-MICRO, 0 * MICRO, MICRO)]
    for width in SAMPLE_WIDTHS:
        _check(conn, instants, width, zone)


def test_midnight_changes_are_the_ones_meant() -> None:
    """The explicit cases above include the changes on midnight this is about."""
    havana = [c for c in _CHANGES["America/Havana"] if c.year == 2024]
    santiago = [c for c in _CHANGES["America/Santiago"] if c.year == 2024]
    assert datetime(2024, 3, 10, 5, tzinfo=UTC) in havana  # 00:00 CST -> 01:00 CDT: Sunday starts at 01:00
    assert datetime(2024, 9, 8, 4, tzinfo=UTC) in santiago  # 24:00 -04 -> 01:00 -03
    spec = RollupSpec("P1D", "count", "America/Havana")
    assert bucket_start(datetime(2024, 3, 10, 12, tzinfo=UTC), spec) == datetime(2024, 3, 10, 5, tzinfo=UTC)


def test_all_changes_1900_2100_daily_and_hourly(conn: psycopg.Connection) -> None:
    """Every change of the sample zones in 1900-2100 (war time, LMT ends, a new Lord Howe offset)."""
    for zone in ZONES:
        instants = [c + d for c in _CHANGES[zone] for d in (-MICRO, timedelta(0), timedelta(minutes=45))]
        if instants:
            for width in ("PT1H", "PT1H30M", "P1D", "P1M"):
                _check(conn, instants, width, zone)


def test_every_width_is_known_and_nothing_else(conn: psycopg.Connection) -> None:
    t = datetime(2024, 10, 27, 0, 59, 59, tzinfo=UTC)
    for width in WIDTHS:
        _check(conn, [t, t + timedelta(hours=13)], width, "Europe/Berlin")
    for width, step in SUB_DAY_WIDTHS.items():
        assert conn.execute("SELECT sta_rollup_step(%s)", (width,)).fetchone() == (step,)
    for width in ("PT60M", "PT1H0M", "pt1h", "PT7M", "P7D", "PT24H", "P1Y", "", "PT"):
        for fn in ("sta_rollup_bucket_start", "sta_rollup_bucket_end"):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown rollup width"):
                conn.execute(sql.SQL("SELECT {}(%s, %s, 'UTC')").format(sql.Identifier(fn)), (t, width))
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown rollup width"):  # per row
                conn.execute(sql.SQL("SELECT {}(%s, w, 'UTC') FROM (VALUES (%s)) v (w)").format(sql.Identifier(fn)),
                             (t, width))


def test_nulls_and_the_ends_of_time(conn: psycopg.Connection) -> None:
    for args in ((None, "PT1H", "UTC"), (datetime(2024, 1, 1, tzinfo=UTC), None, "UTC"),
                 (datetime(2024, 1, 1, tzinfo=UTC), "P1D", None)):
        row = conn.execute("SELECT sta_rollup_bucket_start(%s::timestamptz, %s::text, %s::text), "
                           "sta_rollup_bucket_end(%s::timestamptz, %s::text, %s::text)", args * 2).fetchone()
        assert row == (None, None)
    edges = [EARLIEST, EARLIEST + timedelta(hours=5), EARLIEST + timedelta(days=40), LATEST,
             LATEST - timedelta(hours=5), LATEST - timedelta(days=40)]
    for zone in ("Asia/Kolkata", "America/New_York", "Australia/Lord_Howe"):
        for width in ("PT12H", "P1D", "P1W", "P1M"):
            _check(conn, edges, width, zone)
    with pytest.raises(psycopg.errors.DatetimeFieldOverflow):
        conn.execute("SELECT sta_rollup_bucket_start('0001-01-01 00:00:00+00'::timestamptz - interval '1 hour',"
                     " 'P1D', 'UTC')")


def test_zone_names_that_are_also_abbreviations(conn: psycopg.Connection) -> None:
    """PostgreSQL would read CET as the fixed +01:00 abbreviation; the zone CET has summer time."""
    instants = [datetime(2024, 7, 1, 12, tzinfo=UTC), *_near_changes("Europe/Berlin", range(2024, 2025))[:20]]
    for zone in ("CET", "EET", "MET", "WET", "EST", "MST", "HST", "GMT", "UCT", "Zulu"):
        for width in ("PT1H", "P1D"):
            _check(conn, instants, width, zone)


_INSTANTS = st.lists(st.datetimes(min_value=LOW.replace(tzinfo=None), max_value=HIGH.replace(tzinfo=None),
                                  timezones=st.just(UTC)), min_size=1, max_size=150)


@st.composite
def _near(draw: st.DrawFn, zone: str) -> list[datetime]:
    changes = _CHANGES[zone]
    if not changes:
        return []
    picks = draw(st.lists(st.tuples(st.sampled_from(changes),
                                    st.integers(-3 * 86_400_000_000, 3 * 86_400_000_000)), max_size=50))
    return [change + timedelta(microseconds=us) for change, us in picks]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), zone=st.sampled_from(ZONES), width=st.sampled_from(SAMPLE_WIDTHS))
def test_random_instants_agree_with_python(conn: psycopg.Connection, data: st.DataObject, zone: str,
                                           width: str) -> None:
    instants = data.draw(_INSTANTS) + data.draw(_near(zone))
    _check(conn, instants, width, zone)


def test_weekday_of_p1w_is_monday(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT sta_rollup_bucket_start('2024-05-01 12:00+00', 'P1W', 'Asia/Kolkata')").fetchone()
    assert row is not None
    assert row[0].astimezone(ZoneInfo("Asia/Kolkata")).date() == date(2024, 4, 29)
