"""Datastream rollups (issue 18): the reference semantics in sensorthings.model.rollups, without any service.

Checked here: every instant falls into exactly one bucket and buckets tile time across DST changes (whole-hour,
half-hour and 30-minute-DST zones, and zones whose change falls on midnight), how many buckets a DST day has,
that sub-day buckets are UTC-aligned in whole-hour zones and follow local midnight in half-hour ones, that
adding and merging bucket states commute and associate (sums exact, ties of first/last decided by id), and
that `RollupSpec.parse` refuses what a client can get wrong with a message that says what to use instead.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensorthings.model.errors import BadRequest
from sensorthings.model.rollups import (
    FUNCTIONS,
    SUB_DAY_WIDTHS,
    WIDTHS,
    BucketState,
    RollupSpec,
    bucket_end,
    bucket_start,
    reference_rollup,
)
from sensorthings.model.times import EARLIEST, LATEST

ZONES = ("Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "America/Havana", "UTC")
MICRO = timedelta(microseconds=1)

# ------------------------------------------------------------------------------------------ helpers


def spec(width: str, zone: str = "UTC", function: str = "mean") -> RollupSpec:
    return RollupSpec(width, function, zone)


def local_day(zone: str, day: date) -> tuple[datetime, datetime]:
    """The P1D bucket of a local date, found from noon of that day."""
    s = spec("P1D", zone)
    start = bucket_start(datetime.combine(day, time(12), tzinfo=ZoneInfo(zone)), s)
    return start, bucket_end(start, s)


def buckets(s: RollupSpec, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The buckets from the one holding `start` up to `end`, checking that each ends where the next starts."""
    out = []
    current = bucket_start(start, s)
    while current < end:
        following = bucket_end(current, s)
        assert following > current
        assert bucket_start(current, s) == current
        assert bucket_start(following - MICRO, s) == current  # no gap before the next bucket
        out.append((current, following))
        current = following
    return out


instants = st.datetimes(min_value=datetime(1890, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))

# ------------------------------------------------------------------------------------------ tiling


@settings(max_examples=300, deadline=None)
@given(t=instants, zone=st.sampled_from(ZONES), width=st.sampled_from(WIDTHS))
def test_every_instant_lies_in_exactly_one_bucket(t: datetime, zone: str, width: str) -> None:
    s = spec(width, zone)
    start = bucket_start(t, s)
    end = bucket_end(start, s)
    assert start.tzinfo is UTC and end.tzinfo is UTC
    assert start <= t < end
    assert bucket_end(t, s) == end
    assert bucket_start(end, s) == end  # the next bucket starts where this one ends ...
    assert bucket_start(end - MICRO, s) == start  # ... and this one lasts up to it
    if start > EARLIEST:
        assert bucket_end(start - MICRO, s) == start  # ... and the previous one ends where this one starts
    if width in SUB_DAY_WIDTHS:
        assert end - start <= SUB_DAY_WIDTHS[width]


@settings(max_examples=100, deadline=None)
@given(t=st.datetimes(timezones=st.just(UTC)), zone=st.sampled_from(ZONES), width=st.sampled_from(WIDTHS))
def test_buckets_at_the_ends_of_time_are_clipped_to_the_sta_span(t: datetime, zone: str, width: str) -> None:
    s = spec(width, zone)
    start, end = bucket_start(t, s), bucket_end(t, s)
    assert EARLIEST <= start <= t <= end <= LATEST
    assert t < end or end == LATEST  # only the bucket that reaches past year 9999 includes its end


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("width", ["PT1H", "PT2H", "PT45M", "P1D", "P1W", "P1M"])
def test_buckets_tile_a_whole_year_across_its_dst_changes(zone: str, width: str) -> None:
    s = spec(width, zone)
    first, last = local_day(zone, date(2024, 1, 1))[0], local_day(zone, date(2024, 12, 31))[1]
    tiles = buckets(s, first, last)
    assert tiles[0][0] == first and tiles[-1][1] >= last
    if width == "P1D":
        assert len(tiles) == 366
    if width == "P1M":
        assert len(tiles) == 12
        assert all(start.astimezone(ZoneInfo(zone)).day == 1 for start, _ in tiles)
    if width == "P1W":
        assert all(start.astimezone(ZoneInfo(zone)).weekday() == 0 for start, _ in tiles)


@settings(max_examples=200, deadline=None)
@given(t=instants, zone=st.sampled_from(ZONES), width=st.sampled_from(["P1D", "P1W", "P1M"]))
def test_calendar_buckets_start_at_the_first_instant_of_a_local_day(t: datetime, zone: str, width: str) -> None:
    start = bucket_start(t, spec(width, zone))
    local = start.astimezone(ZoneInfo(zone))
    assert (start - MICRO).astimezone(ZoneInfo(zone)).date() < local.date()
    assert local.time() <= time(1)  # midnight, or 01:00 where midnight was skipped
    if width == "P1W":
        assert local.weekday() == 0
    if width == "P1M":
        assert local.day == 1


# ------------------------------------------------------------------------------------------ DST days

DST_DAYS = [
    # zone, local date, hours of the day, PT1H buckets, local time the day starts
    ("Europe/Berlin", date(2024, 3, 31), 23, 23, time(0)),
    ("Europe/Berlin", date(2024, 10, 27), 25, 25, time(0)),
    ("Europe/Berlin", date(2024, 6, 1), 24, 24, time(0)),
    ("America/New_York", date(2024, 3, 10), 23, 23, time(0)),
    ("America/New_York", date(2024, 11, 3), 25, 25, time(0)),
    ("Asia/Kolkata", date(2024, 3, 31), 24, 24, time(0)),
    ("Australia/Lord_Howe", date(2024, 4, 7), 24.5, 25, time(0)),  # back 30 minutes
    ("Australia/Lord_Howe", date(2024, 10, 6), 23.5, 24, time(0)),  # forward 30 minutes
    ("America/Havana", date(2024, 3, 10), 23, 23, time(1)),  # 00:00 is skipped: the day starts at 01:00
    ("America/Havana", date(2024, 11, 3), 25, 25, time(0)),  # 00:00-01:00 repeats: the day starts at the first
    ("America/Santiago", date(2024, 9, 8), 23, 23, time(1)),  # 00:00 is skipped
    ("Asia/Beirut", date(2010, 3, 28), 23, 23, time(1)),  # 00:00 was skipped
    ("UTC", date(2024, 3, 31), 24, 24, time(0)),
]


@pytest.mark.parametrize(("zone", "day", "hours", "hourly", "starts"), DST_DAYS)
def test_a_dst_day_has_as_many_hourly_buckets_as_it_has_hours_begun(
        zone: str, day: date, hours: float, hourly: int, starts: time) -> None:
    start, end = local_day(zone, day)
    local = start.astimezone(ZoneInfo(zone))
    assert (local.date(), local.time()) == (day, starts)
    assert end.astimezone(ZoneInfo(zone)).date() == day + timedelta(days=1)
    assert end - start == timedelta(hours=hours)
    tiles = buckets(spec("PT1H", zone), start, end)
    assert len(tiles) == hourly
    assert tiles[0][0] == start and tiles[-1][1] == end  # the last bucket is clipped at the next day
    assert tiles[-1][1] - tiles[-1][0] == timedelta(hours=hours - (hourly - 1))
    assert len(buckets(spec("PT15M", zone), start, end)) == hours * 4


def test_pt2h_on_a_25_hour_day_ends_with_a_one_hour_bucket() -> None:
    start, end = local_day("Europe/Berlin", date(2024, 10, 27))
    tiles = buckets(spec("PT2H", "Europe/Berlin"), start, end)
    assert len(tiles) == 13
    assert [b - a for a, b in tiles] == [timedelta(hours=2)] * 12 + [timedelta(hours=1)]


@settings(max_examples=200, deadline=None)
@given(t=instants, zone=st.sampled_from(["Europe/Berlin", "America/New_York", "UTC"]),
       width=st.sampled_from([w for w, d in SUB_DAY_WIDTHS.items() if timedelta(hours=1) % d == timedelta(0)]))
def test_sub_hour_buckets_of_whole_hour_zones_are_utc_aligned(t: datetime, zone: str, width: str) -> None:
    if t.year < 1900:  # before standard time the zones keep local mean time (Berlin +0:53:28)
        return
    step = SUB_DAY_WIDTHS[width]
    assert bucket_start(t, spec(width, zone)) == EARLIEST + (t - EARLIEST) // step * step


def test_half_hour_zones_follow_local_midnight() -> None:
    s = spec("PT1H", "Asia/Kolkata")
    assert bucket_start(datetime(2024, 5, 1, 12, 10, tzinfo=UTC), s) == datetime(2024, 5, 1, 11, 30, tzinfo=UTC)
    assert bucket_start(datetime(2024, 5, 1, 18, 29, tzinfo=UTC), s) == datetime(2024, 5, 1, 17, 30, tzinfo=UTC)
    day = spec("P1D", "Asia/Kolkata")
    assert bucket_start(datetime(2024, 5, 1, 18, 30, tzinfo=UTC), day) == datetime(2024, 5, 1, 18, 30, tzinfo=UTC)


def test_a_skipped_day_has_no_bucket() -> None:
    """Samoa skipped 2011-12-30: the 29th ends at local midnight of the 31st, after 24 hours."""
    start, end = local_day("Pacific/Apia", date(2011, 12, 29))
    assert end - start == timedelta(hours=24)
    assert end.astimezone(ZoneInfo("Pacific/Apia")).date() == date(2011, 12, 31)


def test_aware_instants_in_any_zone_give_utc_buckets_and_naive_ones_are_refused() -> None:
    s = spec("P1D", "Europe/Berlin")
    t = datetime(2024, 5, 2, 6, 30, tzinfo=ZoneInfo("Asia/Tokyo"))  # 23:30 on May 1 in Berlin
    assert bucket_start(t, s) == datetime(2024, 4, 30, 22, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="aware"):
        bucket_start(datetime(2024, 5, 1), s)


# ------------------------------------------------------------------------------------------ states

values = st.one_of(st.integers(-10, 10), st.integers(-(2**70), 2**70),
                   st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.0, -0.0, 1.0, 1]))
observations = st.lists(st.tuples(
    st.sampled_from([datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=n) for n in range(4)]),
    values, st.integers(0, 3)), max_size=30)


def state_of(rows: list[tuple[datetime, Any, int]]) -> BucketState:
    state = BucketState()
    for t, value, observation_id in rows:
        state.add(t, value, observation_id)
    return state


def results(state: BucketState) -> list[tuple[Any, type]]:
    """The values of count, min, max, first and last with their types (1 == 1.0, so equality alone would not
    tell). Sum and mean follow from the exact `state.sum`, which the states' equality compares."""
    return [(state.value(f), type(state.value(f))) for f in FUNCTIONS if f not in ("sum", "mean")]


@settings(max_examples=300, deadline=None)
@given(rows=observations, data=st.data())
def test_merging_batches_in_any_order_gives_the_state_of_adding_all(
        rows: list[tuple[datetime, Any, int]], data: st.DataObject) -> None:
    whole = state_of(rows)
    shuffled = data.draw(st.permutations(rows))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(rows)), max_size=5)))
    batches = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True)]
    merged = BucketState()
    for batch in data.draw(st.permutations(batches)):
        merged.merge(state_of(batch))
    assert merged == whole
    assert results(merged) == results(whole)
    if len(batches) >= 3:  # associativity: (a + b) + c == a + (b + c)
        a, b, c = (state_of(batch) for batch in batches[:3])
        left, right = state_of(batches[0]), state_of(batches[1])
        left.merge(b)
        left.merge(c)
        right.merge(c)
        a.merge(right)
        assert left == a


@settings(max_examples=200, deadline=None)
@given(numbers=st.lists(st.floats(-1e300, 1e300), min_size=1, max_size=40))
def test_sum_and_mean_are_exact_over_the_numbers_as_written(numbers: list[float]) -> None:
    state = state_of([(datetime(2024, 1, 1, tzinfo=UTC), x, i) for i, x in enumerate(numbers)])
    written = [Fraction(Decimal(repr(x))) for x in numbers]  # what a client sent and the platform stores
    assert state.value("sum") == float(sum(written))
    assert state.value("mean") == float(sum(written) / len(numbers))


def test_values_of_a_bucket() -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    state = state_of([(t0 + timedelta(minutes=2), 5, 1), (t0, 3, 7), (t0, 4, 2), (t0 + timedelta(minutes=2), 9, 3)])
    assert [state.value(f) for f in FUNCTIONS] == [4, 21, 5.25, 3, 9, 4, 9]  # ties: smaller id first, larger last
    assert type(state.value("sum")) is int and type(state.value("mean")) is float
    assert state_of([(t0, 0.1, n) for n in range(10)]).value("sum") == 1.0  # not 0.9999999999999999
    assert state_of([(t0, 0.1, 1), (t0, 0.2, 2)]).value("sum") == 0.3  # the numbers written, not their doubles
    mixed = state_of([(t0, 3, 1), (t0, 3.0, 2), (t0, 0.5, 3)])
    assert (mixed.value("sum"), type(mixed.value("max"))) == (6.5, int)  # equal values: the int is kept
    empty = BucketState()
    assert [empty.value(f) for f in FUNCTIONS] == [0, None, None, None, None, None, None]
    with pytest.raises(ValueError, match="unknown rollup function"):
        state.value("median")


@pytest.mark.parametrize(("value", "error"), [
    (True, TypeError), ("1", TypeError), (None, TypeError), (Fraction(1, 2), TypeError),
    (math.nan, ValueError), (math.inf, ValueError), (-math.inf, ValueError)])
def test_only_finite_numbers_are_aggregated(value: Any, error: type[Exception]) -> None:
    state = BucketState()
    with pytest.raises(error):
        state.add(datetime(2024, 1, 1, tzinfo=UTC), value)
    assert state == BucketState()
    with pytest.raises(ValueError, match="aware"):
        state.add(datetime(2024, 1, 1), 1.0)


def test_reference_rollup_of_a_dst_week() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    rows = [(datetime(2024, 10, 26, 23, 30, tzinfo=berlin), 1.0, 1),  # Saturday
            (datetime(2024, 10, 27, 0, 30, tzinfo=berlin), 2.0, 2),  # Sunday, the 25-hour day
            (datetime(2024, 10, 27, 2, 30, tzinfo=berlin, fold=1), 4.0, 3),
            (datetime(2024, 10, 27, 23, 59, tzinfo=berlin), 6.0, 4),
            (datetime(2024, 10, 28, 0, 0, tzinfo=berlin), 8.0, 5)]  # Monday: a new day and week
    assert reference_rollup(rows, spec("P1D", "Europe/Berlin")) == {
        datetime(2024, 10, 25, 22, tzinfo=UTC): (1.0, 1),
        datetime(2024, 10, 26, 22, tzinfo=UTC): (4.0, 3),
        datetime(2024, 10, 27, 23, tzinfo=UTC): (8.0, 1)}
    assert reference_rollup(rows, spec("P1W", "Europe/Berlin", "last")) == {
        datetime(2024, 10, 20, 22, tzinfo=UTC): (6.0, 4), datetime(2024, 10, 27, 23, tzinfo=UTC): (8.0, 1)}
    assert list(reference_rollup(reversed(rows), spec("PT1H", "UTC", "count"))) == sorted(
        {r[0].astimezone(UTC).replace(minute=0) for r in rows})


# ------------------------------------------------------------------------------------------ parsing


def test_parse_reads_and_writes_the_camel_case_object() -> None:
    data = {"width": "PT1H", "function": "mean", "timeZone": "Europe/Berlin", "finalAfter": "PT10M"}
    parsed = RollupSpec.parse(data, summable=False)
    assert parsed == RollupSpec("PT1H", "mean", "Europe/Berlin", "PT10M")
    assert parsed.to_json() == data
    assert parsed.final_delay == timedelta(minutes=10)
    assert RollupSpec.parse({"width": "P1M", "function": "sum"}, summable=True).to_json() == {
        "width": "P1M", "function": "sum", "timeZone": "UTC", "finalAfter": "PT1H"}
    assert all(RollupSpec.parse({"width": w, "function": "max"}, summable=False).width == w for w in WIDTHS)
    assert {"PT1M", "PT5M", "PT10M", "PT15M", "PT30M", "PT1H", "PT2H", "PT3H", "PT4H", "PT6H", "PT12H",
            "PT20M", "PT8H", "PT1H30M", "P1D", "P1W", "P1M"} <= set(WIDTHS)
    assert "PT24H" not in WIDTHS and "PT7M" not in WIDTHS


@pytest.mark.parametrize("final_after", ["P1M", "P1Y", "-PT1H", "P32D", "PT0,5S", "soon", ""])
def test_final_after_is_a_lateness_of_up_to_a_month_in_fixed_units(final_after: str) -> None:
    with pytest.raises(BadRequest) as info:
        RollupSpec.parse({"width": "PT1H", "function": "mean", "finalAfter": final_after}, summable=False)
    assert info.value.field == "rollup/finalAfter"
    assert RollupSpec.parse({"width": "PT1H", "function": "max", "finalAfter": "PT0S"}, summable=False
                            ).final_delay == timedelta(0)


def rejected(data: object, *fragments: str, summable: bool = False) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        RollupSpec.parse(data, summable=summable)
    for fragment in fragments:
        assert fragment in info.value.message
    assert info.value.status == 400
    return info.value


def test_parse_refuses_what_is_not_a_rollup_object() -> None:
    rejected(["PT1H", "mean"], "must be a JSON object", '"width": "PT1H"')
    rejected({"width": "PT1H", "function": "mean", "tz": "UTC"}, "unknown member 'tz'", "timeZone")
    rejected({"function": "mean"}, "'width' is missing")
    rejected({"width": "PT1H"}, "'function' is missing")
    rejected({"width": 60, "function": "mean"}, "rollup/width must be a string")
    rejected({"width": "PT1H", "function": True}, "rollup/function must be a string")
    rejected({"width": "PT1H", "function": "mean", "timeZone": None}, "rollup/timeZone must be a string")
    rejected({"width": "P" * 65, "function": "mean"}, "longer than 64 characters")


@pytest.mark.parametrize(("width", "hint"), [
    ("PT60M", "write it as 'PT1H'"), ("PT90M", "write it as 'PT1H30M'"), ("pt1h", "write it as 'PT1H'"),
    ("PT7M", "whole minutes that divide 24 hours"), ("PT30S", "whole minutes that divide 24 hours"),
    ("PT24H", "a day is 'P1D'"), ("P7D", "a week is 'P1W'"), ("p1m", "write a month as 'P1M'"),
    ("P1Y", ""), ("hourly", ""), ("", "")])
def test_parse_refuses_unknown_widths_naming_the_allowed_ones(width: str, hint: str) -> None:
    error = rejected({"width": width, "function": "mean"}, "is not a rollup width", hint,
                     "PT1M, PT2M", "PT12H, P1D, P1W, P1M", "PT1M is a minute, P1M a month")
    assert error.field == "rollup/width"


def test_parse_refuses_unknown_functions_and_sum_of_what_is_not_a_total() -> None:
    rejected({"width": "PT1H", "function": "median"}, "'median' is not a rollup function",
             "count, sum, mean, min, max, first, last")
    rejected({"width": "PT1H", "function": "Mean"}, "write it in lower case: 'mean'")
    error = rejected({"width": "PT1H", "function": "sum"}, "only for Datastreams whose results are counts or totals",
                     "use one of count, mean, min, max, first, last")
    assert error.field == "rollup/function"
    assert RollupSpec.parse({"width": "PT1H", "function": "sum"}, summable=True).function == "sum"


@pytest.mark.parametrize("zone", [
    "Europe/Berln", "../../etc/passwd", "/etc/passwd", "\x00", "Europe/Berlin\x00", "\ud800", "", ".", "..",
    "America", "zone.tab", "tzdata.zi", "localtime", "Factory", "posixrules", "right/Europe/Berlin",
    "posix/Europe/Berlin", "Europe//Berlin", "Europe/../Europe/Berlin", " UTC", "UTC\n", "a" * 64])
def test_parse_refuses_what_is_not_an_iana_zone(zone: str) -> None:
    error = rejected({"width": "P1D", "function": "mean", "timeZone": zone}, "is not an IANA time zone name",
                     "'Europe/Berlin'", "'UTC'")
    assert error.field == "rollup/timeZone"


def test_parse_suggests_the_zone_a_wrongly_cased_name_means() -> None:
    rejected({"width": "P1D", "function": "mean", "timeZone": "europe/berlin"}, "did you mean 'Europe/Berlin'?")


def test_direct_construction_refuses_bad_values() -> None:
    for args in [("PT7M", "mean", "UTC"), ("PT1H", "median", "UTC"), ("PT1H", "mean", "../../etc/passwd")]:
        with pytest.raises(ValueError):
            RollupSpec(*args)
