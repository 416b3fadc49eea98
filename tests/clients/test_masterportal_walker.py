"""Masterportal's SensorThings layer walking our paging links (issue 15.5).

Masterportal (Hamburg's geoportal, FROST-era) follows every `@iot.nextLink`, the root one and each nested
`<Nav>@iot.nextLink`, merges the pages of a nested one into its parent entity, and drops a link whose `$top`
is not larger than its `$skip`: its rule for "the client asked for a fixed number". `MasterportalWalker`
(tests/clients/walker.py) is a small Python implementation of that rule, run over the request patterns of
the layer against a city whose counts need several pages at each level (default `$top` 100): 230 Things, one
of them with 230 Datastreams, four Datastreams with 250 Observations, 230 HistoricalLocations. Every entity
must arrive exactly once and every walk must end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.clients.walker import NEXT, MasterportalWalker, once
from tests.conftest import empty_database
from tests.sta_helpers import create, datastream_body, location_body, observed_property_body, sensor_body, thing_body

POLYGON = "POLYGON((9.895 53.495, 10.005 53.495, 10.005 53.555, 9.895 53.555, 9.895 53.495))"
LATEST = "Observations($orderby=phenomenonTime desc;$top=1)"
HISTORY_FROM = "2024-05-01T00:30:00Z"


@dataclass(frozen=True)
class City:
    sta: str
    things: dict[int, list[int]]  # Thing -> its Datastreams
    stations: set[int]  # Things whose properties/kind is 'station'
    inside: set[int]  # Things located inside POLYGON
    latest: dict[int, int | None]  # Datastream -> its newest Observation
    history: dict[int, list[str]]  # the four long Datastreams -> phenomenonTimes after HISTORY_FROM
    historical_locations: set[int]


def _observations(n: int) -> list[dict[str, Any]]:
    return [{"result": i, "phenomenonTime": f"2024-05-01T{i // 60:02d}:{i % 60:02d}:00Z"} for i in range(n)]


def _truth(sta: str, path: str, **params: str) -> list[dict[str, Any]]:
    """A collection read in one page (`$top=10000` at every level): what a walk must arrive at."""
    response = httpx.get(f"{sta}/{path}", params={"$top": "10000", **params}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert NEXT not in body
    value: list[dict[str, Any]] = body["value"]
    return value


@pytest.fixture(scope="module")
def city(server_url: str, database_url: str) -> Iterator[City]:
    empty_database(database_url)
    sta = f"{server_url}/v1.1"
    sensor = create(sta, "Sensors", sensor_body())
    no2 = create(sta, "ObservedProperties", observed_property_body("NO2"))

    def stream(name: str, n: int) -> dict[str, Any]:
        return datastream_body(name, Sensor={"@iot.id": sensor}, ObservedProperty={"@iot.id": no2},
                               Observations=_observations(n))

    for i in range(230):
        if i == 0:
            streams = [stream(f"big {k}", 2) for k in range(230)]
        elif i <= 4:
            streams = [stream(f"long {i}", 250), stream(f"short {i}", 3)]
        else:
            streams = [stream(f"station {i}", 2)]
        create(sta, "Things", thing_body(
            f"thing {i}", properties={"kind": "depot" if i % 23 == 22 else "station"},
            Locations=[location_body(f"place {i}", 9.90 + (i % 23) * 0.01, 53.50 + (i // 23) * 0.01)],
            Datastreams=streams))
    things = {t["@iot.id"]: [d["@iot.id"] for d in t["Datastreams"]] for t in _truth(
        sta, "Things", **{"$select": "id", "$expand": "Datastreams($top=10000;$select=id)"})}
    stations = {t["@iot.id"] for t in _truth(sta, "Things", **{"$filter": "properties/kind eq 'station'"})}
    inside = {t["@iot.id"] for t in _truth(
        sta, "Things", **{"$filter": f"st_within(Locations/location, geometry'{POLYGON}')"})}
    latest = {d["@iot.id"]: (d["Observations"][0]["@iot.id"] if d["Observations"] else None)
              for d in _truth(sta, "Datastreams", **{"$select": "id", "$expand": f"{LATEST[:-1]};$select=id)"})}
    history = {d["@iot.id"]: [o["phenomenonTime"] for o in d["Observations"]] for d in _truth(
        sta, "Datastreams", **{"$filter": "startswith(name, 'long')", "$select": "id", "$expand": (
            f"Observations($top=10000;$select=phenomenonTime;$filter=phenomenonTime gt {HISTORY_FROM})")})}
    historical = {h["@iot.id"] for h in _truth(sta, "HistoricalLocations")}
    assert len(things) == 230 and max(len(d) for d in things.values()) == 230 and len(historical) == 230
    assert len(stations) == 220 and len(inside) == 66
    assert all(len(times) == 219 for times in history.values()) and len(history) == 4
    yield City(sta, things, stations, inside, latest, history, historical)


def assert_things_with_latest_values(city: City, things: list[dict[str, Any]], expected: set[int]) -> None:
    assert once([t["@iot.id"] for t in things]) == expected
    for thing in things:
        assert len(thing["Locations"]) == 1
        assert once([d["@iot.id"] for d in thing["Datastreams"]]) == set(city.things[thing["@iot.id"]])
        for datastream in thing["Datastreams"]:
            latest = city.latest[datastream["@iot.id"]]
            assert [o["@iot.id"] for o in datastream["Observations"]] == ([] if latest is None else [latest])


@pytest.mark.parametrize("count", [False, True])
def test_things_with_locations_and_latest_observations(city: City, count: bool) -> None:
    walker = MasterportalWalker()
    params = {"$filter": "properties/kind eq 'station'", "$expand": f"Locations,Datastreams/{LATEST}"}
    if count:
        params["$count"] = "true"
    things = walker.collection(f"{city.sta}/Things", params)
    assert_things_with_latest_values(city, things, city.stations)
    # the 230 Datastreams of the big Thing came by its nested link; the $top=1 links were dropped
    assert any("/Datastreams?" in url for url in walker.requests)
    assert walker.dropped and all("$top=1&$skip=1" in link for link in walker.dropped)


@pytest.mark.parametrize("function", ["st_within", "st_intersects"])
def test_things_in_a_polygon(city: City, function: str) -> None:
    walker = MasterportalWalker()
    things = walker.collection(f"{city.sta}/Things", {
        "$filter": f"{function}(Locations/location, geography'{POLYGON}')",
        "$expand": f"Locations,Datastreams($expand={LATEST})"})
    assert_things_with_latest_values(city, things, city.inside)


@pytest.mark.parametrize("function", ["st_within", "st_intersects"])
def test_datastreams_of_things_in_a_polygon(city: City, function: str) -> None:
    walker = MasterportalWalker()
    datastreams = walker.collection(f"{city.sta}/Datastreams", {
        "$filter": f"{function}(Thing/Locations/location, geography'{POLYGON}')",
        "$expand": f"Thing($expand=Locations),{LATEST}"})
    expected = {d for thing in city.inside for d in city.things[thing]}
    assert once([d["@iot.id"] for d in datastreams]) == expected and len(expected) > 230
    for datastream in datastreams:
        assert datastream["Thing"]["@iot.id"] in city.inside and len(datastream["Thing"]["Locations"]) == 1
        assert [o["@iot.id"] for o in datastream["Observations"]] == [city.latest[datastream["@iot.id"]]]


@pytest.mark.parametrize("expand", [
    "Thing/Locations", "Thing/Locations($select=location)",
    "Thing/Locations/location",  # a property at the end of the path: read as Locations($select=location)
])
def test_datastreams_with_thing_locations(city: City, expand: str) -> None:
    walker = MasterportalWalker()
    datastreams = walker.collection(f"{city.sta}/Datastreams", {"$expand": expand})
    assert once([d["@iot.id"] for d in datastreams]) == {d for ds in city.things.values() for d in ds}
    assert all(len(d["Thing"]["Locations"]) == 1 for d in datastreams)
    assert all(d["Thing"]["Locations"][0]["location"]["type"] == "Point" for d in datastreams)
    assert len(walker.requests) == 5  # 230 + 8 + 225 = 463 Datastreams, pages of 100


def test_history_chart(city: City) -> None:
    walker = MasterportalWalker()
    first, second, *_ = sorted(city.history)
    datastreams = walker.collection(f"{city.sta}/Datastreams", {
        "$select": "@iot.id",
        "$expand": (f"Observations($select=result,phenomenonTime;$orderby=phenomenonTime desc;"
                    f"$filter=phenomenonTime gt {HISTORY_FROM})"),
        "$filter": f"@iot.id eq {first} or @iot.id eq {second}"})
    assert sorted(d["@iot.id"] for d in datastreams) == [first, second]
    for datastream in datastreams:
        times = [o["phenomenonTime"] for o in datastream["Observations"]]
        assert times == sorted(city.history[datastream["@iot.id"]], reverse=True)  # 219: pages of 100, 100, 19
    assert not walker.dropped


def test_historical_locations_newest_first(city: City) -> None:
    walker = MasterportalWalker()
    locations = walker.collection(f"{city.sta}/HistoricalLocations", {"$orderby": "time desc", "$expand": "Locations"})
    assert once([h["@iot.id"] for h in locations]) == city.historical_locations
    # As instants: the text drops trailing zeros of the fraction (…50.1Z), so it does not sort as time does.
    times = [datetime.fromisoformat(h["time"].replace("Z", "+00:00")) for h in locations]
    assert times == sorted(times, reverse=True) and all(len(h["Locations"]) == 1 for h in locations)
    assert len(walker.requests) == 3


def test_latest_value_fallback_stops_after_one_request(city: City) -> None:
    walker = MasterportalWalker()
    datastream = sorted(city.history)[0]
    observations = walker.collection(f"{city.sta}/Datastreams({datastream})/Observations",
                                     {"$orderby": "phenomenonTime desc", "$top": "1"})
    assert [o["@iot.id"] for o in observations] == [city.latest[datastream]]
    assert len(walker.requests) == 1 and len(walker.dropped) == 1
