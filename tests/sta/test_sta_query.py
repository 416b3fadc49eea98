"""The STA query language (issue 3): $filter operators and functions, $expand/$select/$orderby/$count and
paging, and the 400s for bad expressions. One behaviour per test, against a small fixed city (`city`).

Requests are built with `query_url`, which percent-encodes every option value itself (so a `+` in a time
offset travels as %2B and never turns into a space).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from tests.sta_helpers import (
    HTTP,
    assert_error,
    create,
    create_observation,
    datastream_body,
    location_body,
    observed_property_body,
    ref,
    sensor_body,
    thing_body,
)

# POLYGON P: contains Harbour and Park, not Airport; Zone overlaps it, Road crosses it, Corner touches it.
P = "POLYGON((9.9 53.5, 10.0 53.5, 10.0 53.6, 9.9 53.6, 9.9 53.5))"
GEOMETRY_P = f"geometry'{P}'"


@dataclass
class City:
    things: dict[str, int] = field(default_factory=dict)
    locations: dict[str, int] = field(default_factory=dict)
    datastreams: dict[str, int] = field(default_factory=dict)
    observations: dict[str, int] = field(default_factory=dict)

    def label(self, kind: str, entity_id: int) -> str:
        table: dict[str, int] = getattr(self, kind)
        return next(name for name, i in table.items() if i == entity_id)


def query_url(sta: str, path: str, **options: str) -> str:
    """`sta/path?$key=value…` with every value percent-encoded (keys given without the `$`)."""
    if not options:
        return f"{sta}/{path}"
    query = "&".join(f"${k}={quote(v, safe='')}" for k, v in options.items())
    return f"{sta}/{path}?{query}"


def fetch(sta: str, path: str, **options: str) -> httpx.Response:
    return HTTP.get(query_url(sta, path, **options))


def body_of(sta: str, path: str, **options: str) -> dict[str, Any]:
    response = fetch(sta, path, **options)
    assert response.status_code == 200, f"GET {response.request.url} -> {response.status_code} {response.text}"
    result: dict[str, Any] = response.json()
    return result


def labels(sta: str, city: City, kind: str, path: str, expression: str) -> set[str]:
    """Labels (City keys) of the `kind` entities that `path?$filter=expression` returns."""
    body = body_of(sta, path, filter=expression, top="1000")
    return {city.label(kind, e["@iot.id"]) for e in body["value"]}


def observations(sta: str, city: City, expression: str) -> set[str]:
    return labels(sta, city, "observations", "Observations", expression)


def things(sta: str, city: City, expression: str) -> set[str]:
    return labels(sta, city, "things", "Things", expression)


def locations(sta: str, city: City, expression: str) -> set[str]:
    return labels(sta, city, "locations", "Locations", expression)


def datastreams(sta: str, city: City, expression: str) -> set[str]:
    return labels(sta, city, "datastreams", "Datastreams", expression)


ALL_OBSERVATIONS = {f"o{i}" for i in range(1, 12)}


@pytest.fixture
def city(sta: str) -> City:
    c = City()
    for name, lon, lat in (("Harbour", 9.95, 53.54), ("Park", 9.97, 53.57), ("Airport", 10.0, 53.63),
                           ("Corner", 9.9, 53.5)):
        c.locations[name] = create(sta, "Locations", location_body(name, lon, lat))
    c.locations["Zone"] = create(sta, "Locations", {
        **location_body("Zone"), "location": {"type": "Polygon", "coordinates": [
            [[9.85, 53.55], [9.95, 53.55], [9.95, 53.65], [9.85, 53.65], [9.85, 53.55]]]}})
    c.locations["Road"] = create(sta, "Locations", {
        **location_body("Road"), "location": {"type": "LineString", "coordinates": [[9.8, 53.52], [10.1, 53.52]]}})

    c.things["Alpha"] = create(sta, "Things", thing_body(
        "Alpha", properties={"district": "Altona", "floors": 3}, Locations=[ref(c.locations["Harbour"])]))
    c.things["Beta"] = create(sta, "Things", thing_body(
        "Beta", properties={"district": "Eimsbüttel", "floors": 7}, Locations=[ref(c.locations["Park"])]))
    c.things["Gamma"] = create(sta, "Things", {"name": "Gamma", "description": "  padded  ",
                                                "Locations": [ref(c.locations["Airport"])]})

    def datastream(name: str, thing: str, observed_property: str) -> int:
        return create(sta, f"Things({c.things[thing]})/Datastreams", datastream_body(
            name, Sensor=sensor_body(f"{name} sensor"), ObservedProperty=observed_property_body(observed_property)))

    c.datastreams["A-NO2"] = datastream("A-NO2", "Alpha", "NO2")
    c.datastreams["A-temp"] = datastream("A-temp", "Alpha", "temperature")
    c.datastreams["B-NO2"] = datastream("B-NO2", "Beta", "NO2")
    c.datastreams["C-temp"] = datastream("C-temp", "Gamma", "temperature")

    rows: list[tuple[str, str, Any, str, dict[str, Any]]] = [
        ("o1", "A-NO2", 1, "2024-05-01T10:00:00Z",
         {"parameters": {"x": 1, "mode": "auto"}, "resultTime": "2024-05-01T10:05:00Z"}),
        ("o2", "A-NO2", 4.5, "2024-05-01T11:30:00Z", {"parameters": {"x": 2}}),
        ("o3", "A-NO2", 10, "2024-05-02T08:15:30.250Z", {"parameters": {"x": "two"}}),
        ("o4", "A-temp", "12", "2024-05-03T00:00:00Z", {}),
        ("o5", "A-temp", "abc", "2024-05-03T12:00:00Z", {}),
        ("o6", "A-temp", {"value": 7, "unit": "ppm"}, "2024-05-04T00:00:00Z/2024-05-04T06:00:00Z", {}),
        ("o7", "A-temp", True, "2024-05-04T12:00:00Z", {}),
        ("o8", "B-NO2", None, "2024-05-05T00:00:00Z", {}),
        ("o9", "B-NO2", {"value": 3}, "2024-05-05T00:00:00Z/2024-05-06T00:00:00Z", {}),
        ("o10", "B-NO2", -2, "2024-05-06T23:59:59Z", {"resultTime": "2024-05-07T00:00:00Z"}),
        ("o11", "C-temp", 20, "2024-06-01T00:00:00Z", {}),
    ]
    for label, ds, result, time, extra in rows:
        c.observations[label] = create_observation(sta, c.datastreams[ds], result, time, **extra)
    return c


# ============================================================================ $filter: comparison

@pytest.mark.parametrize(("expression", "expected"), [
    ("result eq 10", {"o3"}),
    ("result ne 10", ALL_OBSERVATIONS - {"o3"}),
    ("result gt 4.5", {"o3", "o11"}),
    ("result ge 4.5", {"o2", "o3", "o11"}),
    ("result lt 1", {"o10"}),
    ("result le 1", {"o1", "o10"}),
])
def test_comparison_operators_on_numeric_results(sta: str, city: City, expression: str, expected: set[str]) -> None:
    assert observations(sta, city, expression) == expected


@pytest.mark.parametrize(("expression", "expected"), [
    ("name eq 'Beta'", {"Beta"}),
    ("name ne 'Beta'", {"Alpha", "Gamma"}),
    ("name gt 'Alpha'", {"Beta", "Gamma"}),
    ("name ge 'Beta'", {"Beta", "Gamma"}),
    ("name lt 'Beta'", {"Alpha"}),
    ("name le 'Beta'", {"Alpha", "Beta"}),
])
def test_comparison_operators_on_strings(sta: str, city: City, expression: str, expected: set[str]) -> None:
    assert things(sta, city, expression) == expected


def test_literal_on_the_left_compares_mirrored(sta: str, city: City) -> None:
    assert observations(sta, city, "4.5 lt result") == {"o3", "o11"}


def test_id_comparison(sta: str, city: City) -> None:
    assert things(sta, city, f"id eq {city.things['Beta']}") == {"Beta"}


def test_operators_are_case_insensitive(sta: str, city: City) -> None:
    assert observations(sta, city, "result GT 4.5 AND result LT 15") == {"o3"}


# ============================================================================ $filter: logical

def test_and(sta: str, city: City) -> None:
    assert observations(sta, city, "result gt 0 and result lt 5") == {"o1", "o2"}


def test_or(sta: str, city: City) -> None:
    assert observations(sta, city, "result eq 1 or result eq 20") == {"o1", "o11"}


def test_not(sta: str, city: City) -> None:
    assert things(sta, city, "not (name eq 'Beta')") == {"Alpha", "Gamma"}


def test_and_binds_tighter_than_or(sta: str, city: City) -> None:
    assert observations(sta, city, "result eq 1 or result gt 0 and result lt 5") == {"o1", "o2"}
    assert observations(sta, city, "result eq 20 or result gt 0 and result lt 5") == {"o1", "o2", "o11"}


def test_parentheses_override_precedence(sta: str, city: City) -> None:
    assert observations(sta, city, "(result eq 20 or result gt 0) and result lt 5") == {"o1", "o2"}


def test_not_of_a_comparison_on_a_missing_value_is_true(sta: str, city: City) -> None:
    # a comparison with a missing value is false, so its negation holds (expressions.py docstring)
    assert observations(sta, city, "not (resultTime gt 2024-01-01T00:00:00Z)") == ALL_OBSERVATIONS - {"o1", "o10"}


# ============================================================================ $filter: arithmetic

@pytest.mark.parametrize(("expression", "expected"), [
    ("result add 1 eq 11", {"o3"}),
    ("result sub 1 eq 0", {"o1"}),
    ("result mul 2 eq 9", {"o2"}),
    ("result div 2 eq 2.25", {"o2"}),
    ("result mod 3 eq 1", {"o1", "o3"}),
    ("-result eq 2", {"o10"}),
    ("result add 2 mul 3 eq 16", {"o3"}),  # mul before add
    ("(result add 2) mul 3 eq 36", {"o3"}),
])
def test_arithmetic_operators(sta: str, city: City, expression: str, expected: set[str]) -> None:
    assert observations(sta, city, expression) == expected


def test_integer_division_is_not_truncated(sta: str, city: City) -> None:
    assert things(sta, city, "7 div 2 eq 3.5") == {"Alpha", "Beta", "Gamma"}


def test_division_by_zero_matches_nothing_and_is_no_error(sta: str, city: City) -> None:
    assert observations(sta, city, "result div 0 gt 0") == set()


def test_mod_keeps_the_sign_of_the_dividend(sta: str, city: City) -> None:
    assert observations(sta, city, "result mod 3 eq -2") == {"o10"}


def test_arithmetic_overflow_is_a_client_error_not_a_500(sta: str, city: City) -> None:
    response = fetch(sta, "Things", filter="id mul 9223372036854775807 gt 0")
    assert response.status_code == 400, response.text


# ============================================================================ $filter: in and null

def test_in_on_strings(sta: str, city: City) -> None:
    assert things(sta, city, "name in ('Alpha', 'Gamma', 'Nobody')") == {"Alpha", "Gamma"}


def test_in_on_numbers(sta: str, city: City) -> None:
    assert observations(sta, city, "result in (1, 10, 99)") == {"o1", "o3"}


def test_eq_null_on_an_absent_time(sta: str, city: City) -> None:
    assert observations(sta, city, "resultTime eq null") == ALL_OBSERVATIONS - {"o1", "o10"}


def test_ne_null_on_a_present_time(sta: str, city: City) -> None:
    assert observations(sta, city, "resultTime ne null") == {"o1", "o10"}


def test_result_eq_null_is_the_json_null_result(sta: str, city: City) -> None:
    assert observations(sta, city, "result eq null") == {"o8"}


def test_missing_json_property_eq_null(sta: str, city: City) -> None:
    assert things(sta, city, "properties/district eq null") == {"Gamma"}


def test_ordering_comparison_with_null_matches_nothing(sta: str, city: City) -> None:
    assert observations(sta, city, "resultTime gt null") == set()


def test_ne_is_true_when_exactly_one_side_is_missing(sta: str, city: City) -> None:
    assert observations(sta, city, "resultTime ne 2024-05-01T10:05:00Z") == ALL_OBSERVATIONS - {"o1"}


# ============================================================================ $filter: string functions

@pytest.mark.parametrize(("expression", "expected"), [
    ("substringof('lph', name)", {"Alpha"}),
    ("contains(name, 'et')", {"Beta"}),
    ("startswith(name, 'Ga')", {"Gamma"}),
    ("endswith(name, 'ta')", {"Beta"}),
    ("length(name) eq 4", {"Beta"}),
    ("indexof(name, 'ta') eq 2", {"Beta"}),
    ("indexof(name, 'zz') eq -1", {"Alpha", "Beta", "Gamma"}),
    ("substring(name, 1) eq 'lpha'", {"Alpha"}),
    ("substring(name, 1, 2) eq 'et'", {"Beta"}),
    ("tolower(name) eq 'gamma'", {"Gamma"}),
    ("toupper(name) eq 'ALPHA'", {"Alpha"}),
    ("trim(description) eq 'padded'", {"Gamma"}),
    ("concat(name, '!') eq 'Beta!'", {"Beta"}),
    ("concat(concat(name, ' '), description) eq 'Alpha Alpha description'", {"Alpha"}),
])
def test_string_functions(sta: str, city: City, expression: str, expected: set[str]) -> None:
    assert things(sta, city, expression) == expected


def test_string_literal_with_an_escaped_quote(sta: str, city: City) -> None:
    create(sta, "Things", thing_body("O'Brien"))
    assert [t["name"] for t in body_of(sta, "Things", filter="name eq 'O''Brien'")["value"]] == ["O'Brien"]


def test_unicode_string_literal(sta: str, city: City) -> None:
    assert things(sta, city, "properties/district eq 'Eimsbüttel'") == {"Beta"}


# ============================================================================ $filter: date and time

@pytest.mark.parametrize(("expression", "expected"), [
    ("year(phenomenonTime) eq 2024 and month(phenomenonTime) eq 6", {"o11"}),
    ("day(phenomenonTime) eq 2", {"o3"}),
    ("hour(phenomenonTime) eq 11", {"o2"}),
    ("minute(phenomenonTime) eq 15", {"o3"}),
    ("second(phenomenonTime) eq 30", {"o3"}),
    ("fractionalseconds(phenomenonTime) eq 0.25", {"o3"}),
    ("date(phenomenonTime) eq 2024-05-02", {"o3"}),
    ("time(phenomenonTime) eq 11:30:00", {"o2"}),
    ("totaloffsetminutes(resultTime) eq 0", {"o1", "o10"}),
    ("phenomenonTime lt now()", ALL_OBSERVATIONS),
    ("phenomenonTime gt now()", set()),
    ("phenomenonTime gt mindatetime()", ALL_OBSERVATIONS),
    ("phenomenonTime lt maxdatetime()", ALL_OBSERVATIONS),
    ("mindatetime(phenomenonTime) eq 2024-05-04T00:00:00Z", {"o6"}),
    ("maxdatetime(phenomenonTime) eq 2024-05-04T06:00:00Z", {"o6"}),
])
def test_date_and_time_functions(sta: str, city: City, expression: str, expected: set[str]) -> None:
    assert observations(sta, city, expression) == expected


def test_date_functions_on_result_time(sta: str, city: City) -> None:
    assert observations(sta, city, "day(resultTime) eq 7") == {"o10"}


def test_time_literal_with_a_positive_offset(sta: str, city: City) -> None:
    assert observations(sta, city, "phenomenonTime eq 2024-05-01T12:00:00+02:00") == {"o1"}


def test_time_literal_with_a_plus_offset_sent_as_percent_2b(sta: str, city: City) -> None:
    response = HTTP.get(f"{sta}/Observations?$filter=phenomenonTime%20eq%202024-05-01T12:00:00%2B02:00")
    assert response.status_code == 200, response.text
    assert [e["@iot.id"] for e in response.json()["value"]] == [city.observations["o1"]]


def test_time_literal_with_a_negative_offset(sta: str, city: City) -> None:
    assert observations(sta, city, "phenomenonTime eq 2024-05-01T07:30:00-04:00") == {"o2"}


def test_time_literal_with_fractional_seconds(sta: str, city: City) -> None:
    assert observations(sta, city, "phenomenonTime eq 2024-05-02T08:15:30.25Z") == {"o3"}


def test_date_literal_compares_as_utc_midnight(sta: str, city: City) -> None:
    assert observations(sta, city, "phenomenonTime ge 2024-05-06 and phenomenonTime lt 2024-05-07") == {"o10"}


# interval o6 = 2024-05-04T00:00Z/06:00Z; o9 = 2024-05-05T00:00Z/2024-05-06T00:00Z; o8 is the instant 05-05T00:00Z

def test_interval_gt_means_starts_after(sta: str, city: City) -> None:
    assert observations(sta, city, "phenomenonTime gt 2024-05-03T23:00:00Z") == {"o6", "o7", "o8", "o9", "o10",
                                                                                 "o11"}
    assert observations(sta, city, "phenomenonTime gt 2024-05-04T03:00:00Z") == {"o7", "o8", "o9", "o10", "o11"}


def test_interval_lt_means_ends_before(sta: str, city: City) -> None:
    assert "o6" not in observations(sta, city, "phenomenonTime lt 2024-05-04T03:00:00Z")
    assert "o6" in observations(sta, city, "phenomenonTime lt 2024-05-04T07:00:00Z")


def test_interval_ge_and_le_include_the_bounds(sta: str, city: City) -> None:
    assert "o6" in observations(sta, city, "phenomenonTime ge 2024-05-04T00:00:00Z")
    assert "o6" in observations(sta, city, "phenomenonTime le 2024-05-04T06:00:00Z")
    assert "o6" not in observations(sta, city, "phenomenonTime le 2024-05-04T05:59:59Z")


def test_interval_eq_an_instant_only_when_it_is_that_instant(sta: str, city: City) -> None:
    assert observations(sta, city, "phenomenonTime eq 2024-05-05T00:00:00Z") == {"o8"}
    assert observations(sta, city, "phenomenonTime eq 2024-05-04T00:00:00Z") == set()


def test_interval_ne_an_instant(sta: str, city: City) -> None:
    assert "o9" in observations(sta, city, "phenomenonTime ne 2024-05-05T00:00:00Z")
    assert "o8" not in observations(sta, city, "phenomenonTime ne 2024-05-05T00:00:00Z")


def test_instant_on_the_left_of_an_interval_mirrors(sta: str, city: City) -> None:
    assert observations(sta, city, "2024-05-04T03:00:00Z lt phenomenonTime") == {"o7", "o8", "o9", "o10", "o11"}


def test_valid_time_interval_against_an_instant(sta: str, city: City) -> None:
    labelled = create_observation(sta, city.datastreams["C-temp"], 1, "2024-07-01T00:00:00Z",
                                  validTime="2024-07-01T00:00:00Z/2024-07-02T00:00:00Z")
    assert [e["@iot.id"] for e in body_of(sta, "Observations",
                                          filter="validTime gt 2024-06-30T00:00:00Z")["value"]] == [labelled]
    assert body_of(sta, "Observations", filter="validTime gt 2024-07-01T12:00:00Z")["value"] == []


# ============================================================================ $filter: math

def test_round(sta: str, city: City) -> None:
    assert observations(sta, city, "round(result) eq 5") == {"o2"}


def test_floor(sta: str, city: City) -> None:
    assert observations(sta, city, "floor(result) eq 4") == {"o2"}


def test_ceiling(sta: str, city: City) -> None:
    assert observations(sta, city, "ceiling(result) eq 5") == {"o2"}


# ============================================================================ $filter: geo

@pytest.mark.parametrize(("expression", "expected"), [
    (f"st_within(location, {GEOMETRY_P})", {"Harbour", "Park"}),
    (f"st_intersects(location, {GEOMETRY_P})", {"Harbour", "Park", "Zone", "Road", "Corner"}),
    (f"geo.intersects(location, {GEOMETRY_P})", {"Harbour", "Park", "Zone", "Road", "Corner"}),
    (f"st_disjoint(location, {GEOMETRY_P})", {"Airport"}),
    (f"st_contains({GEOMETRY_P}, location)", {"Harbour", "Park"}),
    ("st_contains(location, geometry'POINT(9.9 53.6)')", {"Zone"}),
    ("st_equals(location, geometry'POINT(9.95 53.54)')", {"Harbour"}),
    (f"st_touches(location, {GEOMETRY_P})", {"Corner"}),
    (f"st_overlaps(location, {GEOMETRY_P})", {"Zone"}),
    (f"st_crosses(location, {GEOMETRY_P})", {"Road"}),
    (f"st_relate(location, {GEOMETRY_P}, 'T*F**F***')", {"Harbour", "Park"}),
    ("geo.distance(location, geometry'POINT(9.97 53.57)') lt 0.01", {"Park"}),
    ("geo.distance(location, geometry'POINT(9.97 53.57)') lt 0.03", {"Park", "Zone"}),
    ("geo.distance(location, geometry'POINT(9.97 53.57)') lt 0.04", {"Park", "Zone", "Harbour"}),
    ("geo.length(location) gt 0.29", {"Road"}),
])
def test_geo_functions_on_location(sta: str, city: City, expression: str, expected: set[str]) -> None:
    assert locations(sta, city, expression) == expected


def test_geography_literal(sta: str, city: City) -> None:
    assert locations(sta, city, f"st_within(location, geography'{P}')") == {"Harbour", "Park"}


def test_geo_function_on_feature_of_interest_feature(sta: str, city: City) -> None:
    body = body_of(sta, "FeaturesOfInterest", filter=f"st_within(feature, {GEOMETRY_P})")
    assert sorted(tuple(f["feature"]["coordinates"]) for f in body["value"]) == [(9.95, 53.54), (9.97, 53.57)]


def test_geo_function_on_a_path_to_the_feature_of_interest(sta: str, city: City) -> None:
    assert observations(sta, city, f"st_within(FeatureOfInterest/feature, {GEOMETRY_P})") == (
        ALL_OBSERVATIONS - {"o11"})


def test_geo_function_on_datastream_observed_area(sta: str, city: City) -> None:
    assert datastreams(sta, city, f"st_intersects(observedArea, {GEOMETRY_P})") == {"A-NO2", "A-temp", "B-NO2"}


def test_geo_function_across_a_to_many_relation_means_any(sta: str, city: City) -> None:
    assert things(sta, city, f"st_within(Locations/location, {GEOMETRY_P})") == {"Alpha", "Beta"}


def test_invalid_wkt_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Locations", filter="st_within(location, geometry'POLYGON((1 2, 3')"), 400, "WKT")


# ============================================================================ $filter: paths

def test_path_across_two_to_one_relations(sta: str, city: City) -> None:
    assert observations(sta, city, "Datastream/ObservedProperty/name eq 'NO2'") == {"o1", "o2", "o3", "o8", "o9",
                                                                                   "o10"}


def test_path_through_a_to_many_relation_means_any(sta: str, city: City) -> None:
    assert datastreams(sta, city, "Thing/Locations/name eq 'Harbour'") == {"A-NO2", "A-temp"}


def test_path_through_two_to_many_relations_means_any(sta: str, city: City) -> None:
    assert things(sta, city, "Datastreams/Observations/result gt 15") == {"Gamma"}


def test_not_over_a_to_many_path_means_none(sta: str, city: City) -> None:
    assert things(sta, city, "not (Datastreams/Observations/result gt 5)") == {"Beta"}


def test_path_and_relation_filter_combined(sta: str, city: City) -> None:
    assert observations(sta, city, "Datastream/ObservedProperty/name eq 'NO2' and result gt 4") == {"o2", "o3"}


def test_json_property_path(sta: str, city: City) -> None:
    assert things(sta, city, "properties/district eq 'Altona'") == {"Alpha"}


def test_json_property_path_as_number(sta: str, city: City) -> None:
    assert things(sta, city, "properties/floors gt 5") == {"Beta"}


def test_json_path_into_an_object_result(sta: str, city: City) -> None:
    assert observations(sta, city, "result/value gt 5") == {"o6"}


def test_json_path_into_parameters_number(sta: str, city: City) -> None:
    assert observations(sta, city, "parameters/x eq 1") == {"o1"}


def test_json_path_into_parameters_string(sta: str, city: City) -> None:
    assert observations(sta, city, "parameters/x eq 'two'") == {"o3"}


def test_json_path_of_another_type_does_not_match(sta: str, city: City) -> None:
    assert observations(sta, city, "parameters/x gt 0") == {"o1", "o2"}


def test_json_path_across_a_relation(sta: str, city: City) -> None:
    assert observations(sta, city, "Datastream/Thing/properties/district eq 'Eimsbüttel'") == {"o8", "o9", "o10"}


def test_json_path_of_a_unit_of_measurement(sta: str, city: City) -> None:
    assert len(datastreams(sta, city, "unitOfMeasurement/symbol eq '°C'")) == 4


# ============================================================================ $filter: result typing

def test_result_gt_numeric_string_matches_numbers_by_number_and_strings_by_text(sta: str, city: City) -> None:
    # numbers > 3: o2 (4.5), o3 (10), o11 (20); strings > '3' as text: 'abc' (o5), not '12' (o4)
    assert observations(sta, city, "result gt '3'") == {"o2", "o3", "o5", "o11"}


def test_result_eq_numeric_string_matches_a_number(sta: str, city: City) -> None:
    assert observations(sta, city, "result eq '10'") == {"o3"}


def test_result_eq_string_matches_a_string_result(sta: str, city: City) -> None:
    assert observations(sta, city, "result eq '12'") == {"o4"}


def test_result_eq_non_numeric_string_matches_only_strings(sta: str, city: City) -> None:
    assert observations(sta, city, "result eq 'abc'") == {"o5"}


def test_result_gt_number_ignores_string_results(sta: str, city: City) -> None:
    assert observations(sta, city, "result gt 3") == {"o2", "o3", "o11"}


def test_result_eq_boolean(sta: str, city: City) -> None:
    assert observations(sta, city, "result eq true") == {"o7"}


def test_boolean_result_as_a_condition(sta: str, city: City) -> None:
    assert observations(sta, city, "result") == {"o7"}


def test_result_ne_non_numeric_string_is_true_for_numbers(sta: str, city: City) -> None:
    # `ne` is true when exactly one side is missing: a number result has no text reading of 'abc' to equal
    assert {"o1", "o2", "o3", "o10", "o11"} <= observations(sta, city, "result ne 'abc'")


def test_result_ne_number_is_true_for_strings(sta: str, city: City) -> None:
    assert {"o4", "o5"} <= observations(sta, city, "result ne 1")


# ============================================================================ $expand

def test_expand_to_depth_three(sta: str, city: City) -> None:
    body = body_of(sta, f"Things({city.things['Gamma']})",
                   expand="Datastreams($expand=Observations($expand=FeatureOfInterest))")
    observation = body["Datastreams"][0]["Observations"][0]
    assert observation["@iot.id"] == city.observations["o11"]
    assert observation["FeatureOfInterest"]["feature"]["coordinates"] == [10.0, 53.63]


def test_expand_slash_shorthand(sta: str, city: City) -> None:
    body = body_of(sta, f"Things({city.things['Gamma']})", expand="Datastreams/Observations")
    assert [o["@iot.id"] for o in body["Datastreams"][0]["Observations"]] == [city.observations["o11"]]


def test_expanded_relation_replaces_its_navigation_link(sta: str, city: City) -> None:
    body = body_of(sta, f"Things({city.things['Gamma']})", expand="Datastreams")
    assert "Datastreams@iot.navigationLink" not in body
    assert "Locations@iot.navigationLink" in body


def test_expand_to_one_relation_is_an_object(sta: str, city: City) -> None:
    body = body_of(sta, f"Observations({city.observations['o1']})", expand="Datastream($expand=ObservedProperty)")
    assert body["Datastream"]["name"] == "A-NO2"
    assert body["Datastream"]["ObservedProperty"]["name"] == "NO2"


def test_expand_with_select(sta: str, city: City) -> None:
    body = body_of(sta, f"Things({city.things['Alpha']})", expand="Datastreams($select=name)")
    assert sorted(d["name"] for d in body["Datastreams"]) == ["A-NO2", "A-temp"]
    assert all(set(d) == {"name"} for d in body["Datastreams"])


def test_expand_with_filter(sta: str, city: City) -> None:
    body = body_of(sta, f"Datastreams({city.datastreams['A-NO2']})", expand="Observations($filter=result gt 2)")
    assert {o["@iot.id"] for o in body["Observations"]} == {city.observations["o2"], city.observations["o3"]}


def test_expand_with_orderby(sta: str, city: City) -> None:
    body = body_of(sta, f"Datastreams({city.datastreams['A-NO2']})",
                   expand="Observations($orderby=result desc)")
    assert [o["result"] for o in body["Observations"]] == [10, 4.5, 1]


def test_expand_with_top_and_skip(sta: str, city: City) -> None:
    body = body_of(sta, f"Datastreams({city.datastreams['A-NO2']})",
                   expand="Observations($orderby=result;$skip=1;$top=1)")
    assert [o["result"] for o in body["Observations"]] == [4.5]


def test_expand_with_count(sta: str, city: City) -> None:
    body = body_of(sta, f"Datastreams({city.datastreams['A-NO2']})",
                   expand="Observations($count=true;$top=1;$filter=result gt 2)")
    assert body["Observations@iot.count"] == 2
    assert len(body["Observations"]) == 1


def test_expand_without_count_has_no_count(sta: str, city: City) -> None:
    body = body_of(sta, f"Datastreams({city.datastreams['A-NO2']})", expand="Observations")
    assert "Observations@iot.count" not in body


def test_expand_every_option_at_every_level(sta: str, city: City) -> None:
    body = body_of(sta, "Things", filter="name ne 'Gamma'", orderby="name desc", expand=(
        "Datastreams($select=name,Observations;$filter=Observations/result ne null;$orderby=name;$top=5;$skip=0;"
        "$count=true;$expand=Observations($select=result;$filter=result ge 1;$orderby=result desc;$top=2;"
        "$skip=0;$count=true;$expand=FeatureOfInterest($select=name)))"))
    beta, alpha = body["value"]
    assert alpha["name"] == "Alpha" and beta["name"] == "Beta"
    assert alpha["Datastreams@iot.count"] == 2
    no2 = alpha["Datastreams"][0]
    assert no2["name"] == "A-NO2"
    assert [o["result"] for o in no2["Observations"]] == [10, 4.5]
    assert no2["Observations@iot.count"] == 3
    assert set(no2["Observations"][0]) == {"result", "FeatureOfInterest"}
    assert set(no2["Observations"][0]["FeatureOfInterest"]) == {"name"}


def test_expanded_collection_cut_by_top_carries_a_next_link(sta: str, city: City) -> None:
    body = body_of(sta, f"Datastreams({city.datastreams['A-NO2']})", expand="Observations($top=2)")
    assert len(body["Observations"]) == 2
    assert "Observations@iot.nextLink" in body


def test_expanded_collection_not_cut_has_no_next_link(sta: str, city: City) -> None:
    body = body_of(sta, f"Datastreams({city.datastreams['A-NO2']})", expand="Observations($top=3)")
    assert "Observations@iot.nextLink" not in body


def test_expanded_next_link_continues_the_expanded_collection(sta: str, city: City) -> None:
    body = body_of(sta, f"Datastreams({city.datastreams['A-NO2']})", expand="Observations($top=2)")
    first = [o["@iot.id"] for o in body["Observations"]]
    rest = HTTP.get(body["Observations@iot.nextLink"]).json()["value"]
    expected = [city.observations[k] for k in ("o1", "o2", "o3")]
    assert sorted(first + [o["@iot.id"] for o in rest]) == sorted(expected)


def test_expanded_next_link_keeps_filter_orderby_select_and_expand(sta: str, city: City) -> None:
    body = body_of(sta, "Datastreams", filter="name eq 'A-NO2'", expand=(
        "Observations($filter=result ge 1;$orderby=result desc;$select=result;$expand=Datastream;$top=1)"))
    link = body["value"][0]["Observations@iot.nextLink"]
    page = HTTP.get(link)
    assert page.status_code == 200, page.text
    assert [o["result"] for o in page.json()["value"]] == [4.5], link
    assert set(page.json()["value"][0]) == {"result", "Datastream"}, link


def test_nested_expanded_collections_carry_their_own_next_links(sta: str, city: City) -> None:
    body = body_of(sta, f"Things({city.things['Alpha']})",
                   expand="Datastreams($orderby=name;$expand=Observations($orderby=phenomenonTime;$top=1))")
    for datastream in body["Datastreams"]:
        assert len(datastream["Observations"]) == 1
        assert "Observations@iot.nextLink" in datastream


def test_latest_value_per_thing(sta: str, city: City) -> None:
    body = body_of(sta, "Things",
                   expand="Datastreams($expand=Observations($orderby=phenomenonTime desc;$top=1))")
    latest = {d["name"]: [o["@iot.id"] for o in d["Observations"]]
              for t in body["value"] for d in t["Datastreams"]}
    assert latest == {"A-NO2": [city.observations["o3"]], "A-temp": [city.observations["o7"]],
                      "B-NO2": [city.observations["o10"]], "C-temp": [city.observations["o11"]]}


def test_expand_on_a_collection_and_on_a_navigation_collection(sta: str, city: City) -> None:
    body = body_of(sta, f"Things({city.things['Beta']})/Datastreams", expand="ObservedProperty($select=name)")
    assert [d["ObservedProperty"] for d in body["value"]] == [{"name": "NO2"}]


def test_expand_of_two_relations_side_by_side(sta: str, city: City) -> None:
    body = body_of(sta, f"Things({city.things['Gamma']})", expand="Locations($select=name),Datastreams($select=name)")
    assert body["Locations"] == [{"name": "Airport"}]
    assert body["Datastreams"] == [{"name": "C-temp"}]


# ============================================================================ $select

def test_select_properties(sta: str, city: City) -> None:
    body = body_of(sta, "Things", select="name,description", orderby="name")
    assert body["value"][0] == {"name": "Alpha", "description": "Alpha description"}


def test_select_id(sta: str, city: City) -> None:
    body = body_of(sta, "Things", select="id", orderby="id")
    assert body["value"][0] == {"@iot.id": city.things["Alpha"]}


def test_select_a_navigation_property_gives_only_its_link(sta: str, city: City) -> None:
    body = body_of(sta, f"Things({city.things['Alpha']})", select="name,Datastreams")
    assert set(body) == {"name", "Datastreams@iot.navigationLink"}
    assert body["Datastreams@iot.navigationLink"].endswith(f"/Things({city.things['Alpha']})/Datastreams")


def test_select_unknown_property_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", select="name,colour"), 400, "colour")


# ============================================================================ $orderby

def test_orderby_several_keys(sta: str, city: City) -> None:
    body = body_of(sta, "Observations", filter="result ge 0", orderby="Datastream/name desc,result desc")
    assert [city.label("observations", o["@iot.id"]) for o in body["value"]] == ["o11", "o3", "o2", "o1"]


def test_orderby_a_relation_path(sta: str, city: City) -> None:
    body = body_of(sta, "Observations", filter="result eq 1 or result eq 20 or result eq -2",
                   orderby="Datastream/name")
    assert [city.label("observations", o["@iot.id"]) for o in body["value"]] == ["o1", "o10", "o11"]


def test_orderby_a_path_of_two_relations(sta: str, city: City) -> None:
    body = body_of(sta, "Datastreams", orderby="Thing/name desc,name")
    assert [d["name"] for d in body["value"]] == ["C-temp", "B-NO2", "A-NO2", "A-temp"]


def test_orderby_ties_are_broken_by_id(sta: str, city: City) -> None:
    body = body_of(sta, "Observations", orderby="Datastream/Thing/name desc")
    ids_in_order = [o["@iot.id"] for o in body["value"]]
    alpha = [city.observations[f"o{i}"] for i in range(1, 8)]
    assert ids_in_order[-7:] == sorted(alpha)


def test_orderby_a_to_many_path_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", orderby="Datastreams/name"), 400, "Datastreams")


def test_orderby_a_function(sta: str, city: City) -> None:
    body = body_of(sta, "Things", orderby="length(name) desc,name")
    assert [t["name"] for t in body["value"]] == ["Alpha", "Gamma", "Beta"]


def test_orderby_respects_filter_skip_and_top(sta: str, city: City) -> None:
    body = body_of(sta, "Observations", filter="result ge 0", orderby="result desc", skip="1", top="2",
                   count="true")
    assert [o["result"] for o in body["value"]] == [10, 4.5]
    assert body["@iot.count"] == 4


# ============================================================================ $count and nextLink

def test_count_applies_the_filter(sta: str, city: City) -> None:
    body = body_of(sta, "Observations", filter="Datastream/ObservedProperty/name eq 'NO2'", count="true", top="1")
    assert body["@iot.count"] == 6
    assert len(body["value"]) == 1


def test_next_link_keeps_every_option(sta: str, city: City) -> None:
    options = {"filter": "result ge 0", "orderby": "result desc", "select": "result,id",
               "expand": "Datastream($select=name)", "count": "true"}
    body = body_of(sta, "Observations", top="2", **options)
    query = parse_qs(urlsplit(body["@iot.nextLink"]).query)
    for key, value in options.items():
        assert query[f"${key}"] == [value], (key, body["@iot.nextLink"])
    second = HTTP.get(body["@iot.nextLink"]).json()
    assert [o["result"] for o in second["value"]] == [4.5, 1]
    assert second["@iot.count"] == 4
    assert second["value"][0]["Datastream"] == {"name": "A-NO2"}
    assert "@iot.nextLink" not in second


def test_next_link_keeps_a_filter_with_a_plus_offset(sta: str, city: City) -> None:
    body = body_of(sta, "Observations", filter="phenomenonTime ge 2024-05-01T12:00:00+02:00", top="1",
                   orderby="phenomenonTime")
    second = HTTP.get(body["@iot.nextLink"])
    assert second.status_code == 200, second.text
    assert [city.label("observations", o["@iot.id"]) for o in second.json()["value"]] == ["o2"]


# ============================================================================ bad input → 400

def test_syntax_error_names_the_position_and_what_was_expected(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", filter="name eq 'a' 'b'"), 400, "position 13", "expected")


def test_incomplete_expression_says_what_was_expected_at_the_end(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", filter="name eq"), 400, "end", "expected")


def test_unknown_property_is_a_400_naming_it(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", filter="colour eq 'red'"), 400, "colour")


def test_unknown_property_behind_a_relation_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Observations", filter="Datastream/colour eq 'red'"), 400, "colour")


def test_wrong_type_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", filter="name gt 5"), 400, "string", "number")


def test_wrong_argument_type_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", filter="length(5) eq 1"), 400, "string")


def test_bad_arity_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", filter="length(name, 'x') eq 1"), 400, "length", "argument")


def test_unknown_function_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", filter="frobnicate(name) eq 1"), 400, "frobnicate")


def test_non_boolean_filter_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", filter="name"), 400, "name")


@pytest.mark.parametrize("expression", ["(name eq 'a'", "name eq 'a')", "((name eq 'a')", "length(name eq 1"])
def test_unbalanced_parentheses_are_a_400(sta: str, city: City, expression: str) -> None:
    assert_error(fetch(sta, "Things", filter=expression), 400, "syntax")


def test_unterminated_string_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", filter="name eq 'abc"), 400)


def test_unknown_relation_in_expand_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", expand="Sensors"), 400, "Sensors")


def test_unknown_nested_relation_in_expand_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", expand="Datastreams($expand=Things)"), 400, "Things")


def test_negative_top_inside_expand_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", expand="Datastreams($top=-1)"), 400)


def test_unknown_option_inside_expand_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", expand="Datastreams($frobnicate=1)"), 400)


def test_bad_filter_inside_expand_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", expand="Datastreams($filter=colour eq 1)"), 400, "colour")


def test_duplicate_option_inside_expand_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", expand="Datastreams($top=1;$top=2)"), 400, "twice")


def test_expand_five_levels_deep_is_allowed(sta: str, city: City) -> None:
    body = body_of(sta, f"Things({city.things['Gamma']})",
                   expand="Datastreams/Thing/Datastreams/Thing/Datastreams")
    assert body["Datastreams"][0]["Thing"]["Datastreams"][0]["Thing"]["Datastreams"][0]["name"] == "C-temp"


def test_expand_deeper_than_five_levels_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", expand="Datastreams/Thing/Datastreams/Thing/Datastreams/Thing"), 400, "5")


def test_orderby_unknown_property_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", orderby="colour"), 400, "colour")


def test_orderby_bad_direction_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", orderby="name sideways"), 400)


def test_geometry_ordering_comparison_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Locations", filter=f"location gt {GEOMETRY_P}"), 400)


def test_injection_attempt_is_only_a_value(sta: str, city: City) -> None:
    assert things(sta, city, "name eq 'x''; DROP TABLE things; --'") == set()
    assert len(body_of(sta, "Things")["value"]) == 3


def test_invalid_st_relate_pattern_is_a_400(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Locations", filter=f"st_relate(location, {GEOMETRY_P}, 'XYZ')"), 400)


def test_nul_character_in_a_string_literal_is_a_400_not_a_500(sta: str, city: City) -> None:
    assert_error(fetch(sta, "Things", filter="name eq 'a\x00b'"), 400)


def test_out_of_range_numeric_text_compared_with_result_is_not_a_500(sta: str, city: City) -> None:
    assert fetch(sta, "Observations", filter="result gt '1e400'").status_code in (200, 400)


def test_toupper_and_tolower_handle_non_ascii_letters(sta: str, city: City) -> None:
    assert things(sta, city, "toupper(properties/district) eq 'EIMSBÜTTEL'") == {"Beta"}
    assert things(sta, city, "tolower('ÄÖÜ') eq 'äöü'") == {"Alpha", "Beta", "Gamma"}
