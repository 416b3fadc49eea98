"""Duration literals and time arithmetic in `$filter`/`$orderby` against the real server (issue 15, point 2).

Masterportal's sample configurations filter with `resultTime gt now() sub duration'PT24H'`; FROST-Server
serves OData arithmetic on DateTimeOffset and Duration. The Observations below sit at known times, some
relative to now (hours apart, so the test's own run time never matters) and some fixed. Intervals follow
the documented semantics: shifted by a duration they keep their length, compared they compare by their
bounds, and a difference with an interval is the span of durations between its bounds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import empty_database
from tests.sta_helpers import (
    HTTP,
    assert_error,
    create,
    create_datastream,
    create_observation,
    location_body,
    thing_body,
)


@dataclass
class Times:
    sta: str
    observations: dict[str, int] = field(default_factory=dict)
    datastreams: dict[str, int] = field(default_factory=dict)
    things: dict[str, int] = field(default_factory=dict)

    def label(self, entity_id: int) -> str:
        return next(name for name, i in self.observations.items() if i == entity_id)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def times(server_url: str, database_url: str) -> Iterator[Times]:
    """Datastream A: recent, yesterday, span, old, fixed, fixedspan, month; Datastream B: other.
    resultTime - phenomenonTime: recent 1 h, yesterday 10 min, span 1 h..7 h, fixed 3 h, fixedspan
    30 min..6 h 30 min, other 45 min; old and month have no resultTime."""
    empty_database(database_url)
    sta = f"{server_url}/v1.1"
    t = Times(sta)
    now = datetime.now(UTC).replace(microsecond=0)
    t.things["located"] = create(sta, "Things", thing_body("located", Locations=[location_body("here")]))
    a = t.datastreams["A"] = create_datastream(sta, t.things["located"], "A")
    b = t.datastreams["B"] = create_datastream(sta, t.things["located"], "B")
    rows: list[tuple[str, int, str, str | None]] = [
        ("recent", a, iso(now - timedelta(hours=2)), iso(now - timedelta(hours=1))),
        ("yesterday", a, iso(now - timedelta(hours=30)), iso(now - timedelta(hours=29, minutes=50))),
        ("span", a, f"{iso(now - timedelta(hours=26))}/{iso(now - timedelta(hours=20))}",
         iso(now - timedelta(hours=19))),
        ("old", a, iso(now - timedelta(days=10)), None),
        ("fixed", a, "2024-05-01T00:00:00Z", "2024-05-01T03:00:00Z"),
        ("fixedspan", a, "2024-05-01T00:00:00Z/2024-05-01T06:00:00Z", "2024-05-01T06:30:00Z"),
        ("month", a, "2024-01-31T12:00:00Z", None),
        ("other", b, iso(now - timedelta(hours=1)), iso(now - timedelta(minutes=15))),
    ]
    for label, datastream, phenomenon_time, result_time in rows:
        extra = {"resultTime": result_time} if result_time else {}
        t.observations[label] = create_observation(sta, datastream, 1, phenomenon_time, **extra)
    yield t


ALL = {"recent", "yesterday", "span", "old", "fixed", "fixedspan", "month", "other"}
WITH_RESULT_TIME = ALL - {"old", "month"}


def fetch(sta: str, path: str, **options: str) -> httpx.Response:
    query = "&".join(f"${k}={quote(v, safe='')}" for k, v in options.items())
    return HTTP.get(f"{sta}/{path}?{query}")


def page(sta: str, path: str, **options: str) -> dict[str, Any]:
    response = fetch(sta, path, **options)
    assert response.status_code == 200, f"GET {response.request.url} -> {response.status_code} {response.text}"
    body: dict[str, Any] = response.json()
    return body


def observations(t: Times, expression: str, path: str = "Observations") -> set[str]:
    return {t.label(e["@iot.id"]) for e in page(t.sta, path, filter=expression, top="1000")["value"]}


# ============================================================================ Masterportal's filters

def test_result_time_within_the_last_24_hours(times: Times) -> None:
    assert observations(times, "resultTime gt now() sub duration'PT24H'") == {"recent", "span", "other"}


def test_phenomenon_time_after_one_day_ago_means_the_interval_starts_after_it(times: Times) -> None:
    # span runs from 26 h to 20 h ago: it does not lie after one day ago
    assert observations(times, "phenomenonTime gt now() sub duration'P1D'") == {"recent", "other"}


def test_phenomenon_time_before_one_day_ago_means_the_interval_ends_before_it(times: Times) -> None:
    assert observations(times, "phenomenonTime lt now() sub duration'P1D'") == {
        "yesterday", "old", "fixed", "fixedspan", "month"}


def test_the_masterportal_filters_on_a_datastreams_observations(times: Times) -> None:
    path = f"Datastreams({times.datastreams['A']})/Observations"
    assert observations(times, "resultTime gt now() sub duration'PT24H'", path) == {"recent", "span"}
    assert observations(times, "phenomenonTime gt now() sub duration'P1D'", path) == {"recent"}


def test_the_masterportal_filter_inside_expand(times: Times) -> None:
    body = page(times.sta, f"Datastreams({times.datastreams['A']})",
                expand="Observations($filter=resultTime gt now() sub duration'PT24H';$orderby=id)")
    assert [times.label(o["@iot.id"]) for o in body["Observations"]] == ["recent", "span"]


def test_the_same_filter_by_other_spellings(times: Times) -> None:
    expected = {"recent", "span", "other"}
    assert observations(times, "resultTime gt now() sub duration'P1D'") == expected
    assert observations(times, "resultTime gt now() add duration'-PT1440M'") == expected
    assert observations(times, "resultTime add duration'PT86400S' gt now()") == expected
    assert observations(times, "now() sub resultTime lt duration'P1D'") == expected


# ============================================================================ differences of times

@pytest.mark.parametrize(("expression", "expected"), [
    # span's durations run from 1 h to 7 h, fixedspan's from 30 min to 6 h 30 min
    ("resultTime sub phenomenonTime gt duration'PT1H'", {"fixed"}),
    ("resultTime sub phenomenonTime ge duration'PT1H'", {"recent", "span", "fixed"}),
    ("resultTime sub phenomenonTime lt duration'PT1H'", {"yesterday", "other"}),
    ("resultTime sub phenomenonTime le duration'PT7H'", WITH_RESULT_TIME),
    ("resultTime sub phenomenonTime lt duration'PT7H'", WITH_RESULT_TIME - {"span"}),
    ("resultTime sub phenomenonTime eq duration'PT3H'", {"fixed"}),
    ("resultTime sub phenomenonTime ne duration'PT3H'", ALL - {"fixed"}),
    ("resultTime sub phenomenonTime eq duration'PT45M'", {"other"}),
    ("resultTime sub phenomenonTime in (duration'PT10M', duration'PT45M')", {"yesterday", "other"}),
    ("2024-05-01T06:00:00Z sub phenomenonTime eq duration'PT6H'", {"fixed"}),
    ("phenomenonTime sub 2024-05-01 eq duration'PT0S'", {"fixed"}),
])
def test_differences_of_times_are_durations(times: Times, expression: str, expected: set[str]) -> None:
    assert observations(times, expression) == expected


def test_differences_on_a_datastreams_observations(times: Times) -> None:
    path = f"Datastreams({times.datastreams['B']})/Observations"
    assert observations(times, "resultTime sub phenomenonTime lt duration'PT1H'", path) == {"other"}


def test_a_history_of_locations_since_an_hour_ago(times: Times) -> None:
    path = f"Things({times.things['located']})/HistoricalLocations"
    assert len(page(times.sta, path, filter="time gt now() sub duration'PT1H'")["value"]) == 1
    assert page(times.sta, path, filter="time lt now() sub duration'PT1H'")["value"] == []


# ============================================================================ shifted times and intervals

@pytest.mark.parametrize(("expression", "expected"), [
    ("phenomenonTime add duration'PT1H' eq 2024-05-01T01:00:00Z", {"fixed"}),
    ("phenomenonTime sub duration'PT1H' eq 2024-04-30T23:00:00Z", {"fixed"}),
    # fixedspan shifted runs from 01:00 to 07:00: after 00:30, but not before 06:30
    ("phenomenonTime add duration'PT1H' gt 2024-05-01T00:30:00Z and phenomenonTime lt 2024-06-01",
     {"fixed", "fixedspan"}),
    ("phenomenonTime add duration'PT1H' lt 2024-05-01T06:30:00Z and phenomenonTime gt 2024-04-01",
     {"fixed"}),
    ("phenomenonTime add duration'PT1H' le 2024-05-01T07:00:00Z and phenomenonTime gt 2024-04-01",
     {"fixed", "fixedspan"}),
    ("phenomenonTime add duration'PT3H' eq resultTime", {"fixed"}),  # eq: the shifted interval is that instant
    ("maxdatetime(phenomenonTime add duration'PT30M') eq resultTime", {"fixedspan"}),
    ("resultTime sub duration'PT3H' eq phenomenonTime", {"fixed"}),
    ("mindatetime(phenomenonTime add duration'PT1H') eq 2024-05-01T01:00:00Z", {"fixed", "fixedspan"}),
    ("maxdatetime(phenomenonTime sub duration'PT1H') eq 2024-05-01T05:00:00Z", {"fixedspan"}),
    ("year(phenomenonTime add duration'P300D') eq 2025 and phenomenonTime lt 2024-06-01", {"fixed", "fixedspan"}),
])
def test_shifted_times_compare_with_times(times: Times, expression: str, expected: set[str]) -> None:
    assert observations(times, expression) == expected


@pytest.mark.parametrize(("expression", "expected"), [
    ("resultTime sub phenomenonTime eq duration'PT2H' add duration'PT1H'", {"fixed"}),
    ("resultTime sub phenomenonTime eq duration'PT4H' sub duration'PT1H'", {"fixed"}),
    ("(resultTime sub phenomenonTime) div 3 eq duration'PT1H'", {"fixed"}),
    ("duration'PT30M' mul 6 eq resultTime sub phenomenonTime", {"fixed"}),
    ("duration'PT5400S' mul 2 eq resultTime sub phenomenonTime", {"fixed"}),
    ("-(resultTime sub phenomenonTime) eq duration'-PT3H'", {"fixed"}),
    ("(resultTime sub phenomenonTime) mul 2 le duration'PT2H'", {"recent", "yesterday", "other"}),
    ("duration'PT1H' div 0 eq null and resultTime sub phenomenonTime eq duration'PT3H'", {"fixed"}),
])
def test_durations_add_subtract_and_scale(times: Times, expression: str, expected: set[str]) -> None:
    assert observations(times, expression) == expected


def test_years_and_months_count_by_the_calendar(times: Times) -> None:
    assert observations(times, "phenomenonTime add duration'P1M' eq 2024-02-29T12:00:00Z") == {"month"}
    assert observations(times, "phenomenonTime add duration'P1Y1M' eq 2025-02-28T12:00:00Z") == {"month"}
    assert observations(times, "phenomenonTime sub duration'-P1M1D' eq 2024-03-01T12:00:00Z") == {"month"}
    assert observations(times, "phenomenonTime gt now() sub duration'P1M'") == {
        "recent", "yesterday", "span", "old", "other"}


# ============================================================================ Datastreams' intervals

def test_datastream_phenomenon_time_intervals_with_durations(times: Times) -> None:
    def names(expression: str) -> set[str]:
        body = page(times.sta, "Datastreams", filter=expression)
        return {next(k for k, v in times.datastreams.items() if v == d["@iot.id"]) for d in body["value"]}
    # A runs from 2024-01-31 to 2 h ago, B is the instant 1 h ago
    assert names("phenomenonTime gt now() sub duration'PT3H'") == {"B"}
    assert names("now() sub phenomenonTime lt duration'PT3H'") == {"B"}
    assert names("phenomenonTime add duration'PT90M' lt now()") == {"A"}
    assert names("phenomenonTime sub phenomenonTime gt duration'P100D'") == set()  # gt: all of [-len, len]
    assert names("phenomenonTime sub phenomenonTime ge duration'P100D'") == set()
    assert names("phenomenonTime sub phenomenonTime le duration'PT0S'") == {"B"}  # le: its length is 0
    assert names("Observations/resultTime sub Observations/phenomenonTime eq duration'PT45M'") == {"B"}


# ============================================================================ $orderby

def test_orderby_a_difference_of_times(times: Times) -> None:
    body = page(times.sta, "Observations", filter="resultTime ne null", orderby="resultTime sub phenomenonTime desc")
    # ordered by the shortest duration of a span, as an interval orders by its start; ties by id
    assert [times.label(o["@iot.id"]) for o in body["value"]] == [
        "fixed", "recent", "span", "other", "fixedspan", "yesterday"]


def test_orderby_a_shifted_time_pages_on(times: Times) -> None:
    first = page(times.sta, "Observations", orderby="phenomenonTime add duration'PT1H' desc", top="3")
    assert [times.label(o["@iot.id"]) for o in first["value"]] == ["other", "recent", "span"]
    following = HTTP.get(first["@iot.nextLink"])
    assert following.status_code == 200, following.text
    assert [times.label(o["@iot.id"]) for o in following.json()["value"]][:2] == ["yesterday", "old"]


# ============================================================================ errors

@pytest.mark.parametrize(("path", "options", "fragments"), [
    ("Things", {"filter": "name add duration'P1D' eq now()"}, ("cannot add name", "a string value", "duration")),
    ("Observations", {"filter": "duration'P1D' gt 5"}, ("cannot compare a number value with a duration",)),
    ("Observations", {"filter": "resultTime gt duration'P1D'"}, ("datetime", "duration")),
    ("Observations", {"filter": "now() add 5 gt resultTime"}, ("cannot add now(", "add takes")),
    ("Observations", {"filter": "resultTime gt now() sub duration'1 day'"}, ("not an ISO 8601 duration",)),
    ("Observations", {"filter": "resultTime gt now() sub duration'P1.5D'"}, ("not an ISO 8601 duration",)),
    ("Observations", {"filter": "resultTime gt now() sub duration'P99999999D'"}, ("10,000 years",)),
    ("Observations", {"filter": "resultTime gt now() sub duration'P" + "9" * 120 + "D'"}, ("100 characters",)),
    ("Observations", {"filter": "now() sub phenomenonTime gt duration'P1M'"}, ("years or months",)),
    ("Observations", {"filter": "duration'P1D'"}, ("not a condition",)),
    ("Observations", {"filter": "(resultTime sub phenomenonTime) mul result gt duration'PT1H'"},
     ("number literal",)),
    ("Observations", {"orderby": "now() sub phenomenonTime add duration'P1Y'"}, ("$orderby", "years or months")),
    ("Datastreams", {"expand": "Observations($filter=resultTime gt now() sub duration'1 day')"},
     ("$expand", "not an ISO 8601 duration")),
    ("Datastreams", {"expand": "Observations($filter=name add duration'P1D' eq now())"}, ("name",)),
])
def test_type_errors_and_malformed_durations_are_400s(times: Times, path: str, options: dict[str, str],
                                                        fragments: tuple[str, ...]) -> None:
    assert_error(fetch(times.sta, path, **options), 400, *fragments)


@pytest.mark.parametrize("expression", [
    "phenomenonTime sub duration'P3652425D' lt now()",  # before 4713 BC: beyond PostgreSQL's timestamps
    "phenomenonTime add duration'P3652425D' mul 100 gt now()",  # after 294276 AD
    "duration'P3652425D' mul 1000000000 gt duration'P1D'",  # beyond PostgreSQL's intervals
])
def test_results_beyond_postgresql_ranges_are_400s(times: Times, expression: str) -> None:
    assert_error(fetch(times.sta, "Observations", filter=expression), 400, "cannot be used")
