"""The real clients against `citystream up --demo`, as a new user tries them: the Masterportal walker's request
patterns, pygeoapi's SensorThings provider with its default settings, and MQTT.js at `/mqtt` on the HTTP port,
over the demo city (30 Things in Hamburg, 54 Datastreams of counts, measurements and categories, 18 of them
rollups the platform computes: each bike counter's sums per hour, day and week; live Observations
published over MQTT by the simulator while the tests run).

The city keeps changing while it is read, so answers are compared where they cannot move: Things,
Datastreams, Locations, HistoricalLocations and ObservedProperties do not change after the city is built;
Observations are compared within one instant-time Datastream and a window already in the past; the latest
Observation a walk finds is at least as new as the one read before it. The demo clock runs at 600× (a
simulated hour in 6 s) so that hours of history exist within seconds; the city and its requests are the same.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from tests.clients.node_mqtt import NODE, NodeClients
from tests.clients.pygeoapi_server import COLLECTIONS, Pygeoapi, running_pygeoapi, sta_all
from tests.clients.up import Up, running_up
from tests.clients.walker import MasterportalWalker, once
from tests.mqtt_helpers import wait_for, wait_until_learned

DEMO = "properties/demo eq 'citystream'"
LATEST = "Observations($orderby=phenomenonTime desc;$top=1)"
CENTRE = "POLYGON((9.93 53.53, 10.03 53.53, 10.03 53.57, 9.93 53.57, 9.93 53.53))"  # Altona to St. Georg
MIN_OBSERVATIONS = 1000


@dataclass(frozen=True)
class Demo:
    up: Up
    sta: str
    things: dict[int, set[int]]  # Thing -> its Datastreams
    centre: set[int]  # Things inside CENTRE
    fast: list[int]  # the bike-share Datastreams: an instant-time count every 5 simulated minutes


def truth(url: str, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(url, params={"$top": "10000", **params}, timeout=60)
    assert response.status_code == 200, response.text
    assert "@iot.nextLink" not in response.json()
    value: list[dict[str, Any]] = response.json()["value"]
    return value


def newest(sta: str) -> dict[int, str]:
    """Datastream -> the phenomenonTime of its newest Observation, now."""
    return {d["@iot.id"]: d["Observations"][0]["phenomenonTime"] for d in truth(
        f"{sta}/Datastreams", **{"$select": "id", "$expand": f"{LATEST[:-1]};$select=phenomenonTime)"})
        if d["Observations"]}


def start_of(time: str) -> datetime:
    return datetime.fromisoformat(time.split("/")[0].replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    with running_up("--demo", "--demo-speed", "600") as up:
        sta = f"{up.base}/v1.1"

        def city_with_data() -> bool:
            things = httpx.get(f"{sta}/Things", params={"$filter": DEMO, "$count": "true", "$top": "0"}, timeout=10)
            observations = httpx.get(f"{sta}/Observations", params={"$count": "true", "$top": "0"}, timeout=10)
            return (things.json().get("@iot.count") == 30
                    and observations.json().get("@iot.count", 0) >= MIN_OBSERVATIONS)
        wait_for(city_with_data, timeout=180, what=f"the demo city with {MIN_OBSERVATIONS} Observations")
        things = {t["@iot.id"]: {d["@iot.id"] for d in t["Datastreams"]} for t in truth(
            f"{sta}/Things", **{"$select": "id", "$expand": "Datastreams($select=id;$top=1000)"})}
        centre = {t["@iot.id"] for t in truth(
            f"{sta}/Things", **{"$select": "id", "$filter": f"st_within(Locations/location, geography'{CENTRE}')"})}
        fast = [d["@iot.id"] for d in truth(f"{sta}/Datastreams", **{
            "$select": "id", "$filter": "properties/kind eq 'bike-share'", "$orderby": "id"})]
        assert len(things) == 30 and sum(map(len, things.values())) == 54 and 0 < len(centre) < 30 and fast
        yield Demo(up, sta, things, centre, fast)


# ------------------------------------------------------------------ Masterportal's request patterns


@pytest.mark.parametrize("count", [False, True])
def test_things_with_locations_and_latest_observations(demo: Demo, count: bool) -> None:
    before = newest(demo.sta)
    params = {"$filter": DEMO, "$expand": f"Locations,Datastreams/{LATEST}"}
    if count:
        params["$count"] = "true"
    things = MasterportalWalker().collection(f"{demo.sta}/Things", params)
    assert once([t["@iot.id"] for t in things]) == set(demo.things)
    for thing in things:
        assert len(thing["Locations"]) == 1 and thing["Locations"][0]["location"]["type"] == "Point"
        assert once([d["@iot.id"] for d in thing["Datastreams"]]) == demo.things[thing["@iot.id"]]
        for datastream in thing["Datastreams"]:
            (latest,) = datastream["Observations"] or [None]
            if datastream["@iot.id"] in before:
                assert latest is not None and start_of(latest["phenomenonTime"]) >= start_of(
                    before[datastream["@iot.id"]]), datastream["@iot.id"]


@pytest.mark.parametrize("function", ["st_within", "st_intersects"])
def test_things_and_datastreams_in_a_polygon(demo: Demo, function: str) -> None:
    walker = MasterportalWalker()
    things = walker.collection(f"{demo.sta}/Things", {
        "$filter": f"{function}(Locations/location, geography'{CENTRE}')",
        "$expand": f"Locations,Datastreams($expand={LATEST})"})
    assert once([t["@iot.id"] for t in things]) == demo.centre
    datastreams = walker.collection(f"{demo.sta}/Datastreams", {
        "$filter": f"{function}(Thing/Locations/location, geography'{CENTRE}')",
        "$expand": f"Thing($expand=Locations),{LATEST}"})
    assert once([d["@iot.id"] for d in datastreams]) == {d for t in demo.centre for d in demo.things[t]}


@pytest.mark.parametrize("expand", ["Thing/Locations", "Thing/Locations/location"])
def test_root_datastreams_with_their_locations(demo: Demo, expand: str) -> None:
    datastreams = MasterportalWalker().collection(f"{demo.sta}/Datastreams", {"$expand": expand})
    assert once([d["@iot.id"] for d in datastreams]) == {d for ds in demo.things.values() for d in ds}
    assert all(d["Thing"]["Locations"][0]["location"]["type"] == "Point" for d in datastreams)


def test_history_chart(demo: Demo) -> None:
    """Two Datastreams' Observations since a time, newest first: nothing twice, nothing older than asked,
    and everything that existed before the walk (Observations arriving meanwhile may come too)."""
    a, b = demo.fast[:2]
    since = start_of(newest(demo.sta)[a]) - timedelta(hours=3)
    expand = (f"Observations($select=result,phenomenonTime;$orderby=phenomenonTime desc;"
              f"$filter=phenomenonTime gt {since.isoformat().replace('+00:00', 'Z')})")
    before = {d["@iot.id"]: {o["phenomenonTime"] for o in d["Observations"]} for d in truth(
        f"{demo.sta}/Datastreams", **{"$select": "id", "$filter": f"id eq {a} or id eq {b}",
                                      "$expand": expand.replace("Observations(", "Observations($top=10000;")})}
    walked = MasterportalWalker().collection(f"{demo.sta}/Datastreams", {
        "$select": "@iot.id", "$expand": expand, "$filter": f"@iot.id eq {a} or @iot.id eq {b}"})
    assert once([d["@iot.id"] for d in walked]) == {a, b}
    for datastream in walked:
        times = [o["phenomenonTime"] for o in datastream["Observations"]]
        assert len(times) == len(set(times)) and times == sorted(times, reverse=True)
        assert all(start_of(t) > since for t in times) and before[datastream["@iot.id"]] <= set(times)
        assert len(times) >= 12  # three simulated hours of a 5-minute stream


def test_bike_counters_are_one_datastream_with_three_rollups(demo: Demo) -> None:
    """Hamburg's four Datastreams per bike counter, here one of counts per 15 minutes and its rollups (sums
    per hour, day and week in Berlin time), found as any Datastream is; an hour already past is the sum of
    its four quarter hours. `Datastreams?$expand=Rollups` is how a client tells the two apart."""
    streams = truth(f"{demo.sta}/Datastreams", **{"$filter": "properties/kind eq 'bike-counter'",
                                                   "$expand": "Rollups($select=id,rollup),Thing($select=id)"})
    raw = [d for d in streams if d["properties"]["key"].endswith("/15min")]
    assert len(streams) == 24 and len(raw) == 6
    thing_of = {d["@iot.id"]: d["Thing"]["@iot.id"] for d in streams}
    for source in raw:
        assert sorted(r["rollup"]["width"] for r in source["Rollups"]) == ["P1D", "P1W", "PT1H"]
        assert {r["rollup"]["function"] for r in source["Rollups"]} == {"sum"}
        assert {thing_of[r["@iot.id"]] for r in source["Rollups"]} == {thing_of[source["@iot.id"]]}
        assert set(demo.things[thing_of[source["@iot.id"]]]) == {source["@iot.id"], *(
            r["@iot.id"] for r in source["Rollups"])}
    source = raw[0]
    hourly = next(r["@iot.id"] for r in source["Rollups"] if r["rollup"]["width"] == "PT1H")
    settled = start_of(newest(demo.sta)[source["@iot.id"]]) - timedelta(hours=1)  # 6 s ago at 600x
    quarters: dict[datetime, list[int]] = defaultdict(list)
    for o in truth(f"{demo.sta}/Datastreams({source['@iot.id']})/Observations"):
        start = start_of(o["phenomenonTime"])
        quarters[start.replace(minute=0)].append(o["result"])  # Berlin's hours are UTC's
    sums = {start_of(o["phenomenonTime"]): (o["result"], o["parameters"]["rollup"]["count"])
            for o in truth(f"{demo.sta}/Datastreams({hourly})/Observations")}
    past = [h for h in sums if h + timedelta(hours=1) <= settled and len(quarters[h]) == 4]
    assert len(past) >= 2  # the fixture waits for a few simulated hours of history
    assert all(sums[h] == (sum(quarters[h]), 4) for h in past)


def test_historical_locations(demo: Demo) -> None:
    walked = MasterportalWalker().collection(f"{demo.sta}/HistoricalLocations",
                                             {"$orderby": "time desc", "$expand": "Locations"})
    expected = {h["@iot.id"] for h in truth(f"{demo.sta}/HistoricalLocations")}
    assert once([h["@iot.id"] for h in walked]) == expected and len(expected) == 30
    assert all(len(h["Locations"]) == 1 for h in walked)


# ------------------------------------------------------------------ pygeoapi's SensorThings provider


@pytest.fixture(scope="module")
def pygeoapi(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pygeoapi]:
    with running_pygeoapi(demo.sta, tmp_path_factory.mktemp("pygeoapi-demo")) as server:
        yield server


def ids_of(features: list[dict[str, Any]]) -> list[str]:
    return [str(f["id"]) for f in features]


def sta_ids(entities: list[dict[str, Any]]) -> list[str]:
    return [str(e["@iot.id"]) for e in entities]


def test_pygeoapi_serves_every_collection_of_the_demo(pygeoapi: Pygeoapi) -> None:
    """pygeoapi reads each collection's fields from the demo's real entities; a collection that failed
    would be missing from the OpenAPI document."""
    assert {c["id"] for c in pygeoapi.get("collections")["collections"]} == set(COLLECTIONS)
    paths = pygeoapi.get("openapi")["paths"]
    assert {f"/collections/{c.lower()}/items" for c in COLLECTIONS} <= {p.lower() for p in paths}, \
        pygeoapi.openapi_log


@pytest.mark.parametrize("collection", ["Things", "Datastreams", "Locations", "ObservedProperties"])
def test_pygeoapi_items_equal_sta(pygeoapi: Pygeoapi, demo: Demo, collection: str) -> None:
    features = pygeoapi.all_items(collection)
    assert ids_of(features) == sta_ids(sta_all(demo.sta, collection))
    single = pygeoapi.get(f"collections/{collection}/items/{features[0]['id']}")
    assert single["id"] == features[0]["id"] and single["properties"]["name"] == features[0]["properties"]["name"]


def test_pygeoapi_bbox_sortby_and_property_filters(pygeoapi: Pygeoapi, demo: Demo) -> None:
    inside = ids_of(pygeoapi.all_items("Things", bbox="9.93,53.53,10.03,53.57"))
    assert set(inside) == {str(t) for t in demo.centre}
    by_name = pygeoapi.all_items("Things", sortby="-name")
    assert ids_of(by_name) == sta_ids(sta_all(demo.sta, "Things", **{"$orderby": "name desc"}))
    thing = next(iter(demo.things))
    assert set(ids_of(pygeoapi.all_items("Datastreams", Thing=str(thing)))) == {str(d) for d in demo.things[thing]}


def test_pygeoapi_observations_of_a_datastream_in_a_past_window(pygeoapi: Pygeoapi, demo: Demo) -> None:
    datastream = demo.fast[0]
    end = start_of(newest(demo.sta)[datastream]) - timedelta(minutes=10)
    window = f"../{end.isoformat().replace('+00:00', 'Z')}"
    got = ids_of(pygeoapi.all_items("Observations", Datastream=str(datastream), datetime=window))
    expected = sta_ids(sta_all(demo.sta, f"Datastreams({datastream})/Observations", **{
        "$filter": f"phenomenonTime le {window[3:]}"}))
    assert sorted(got, key=int) == sorted(expected, key=int) and len(got) >= 2


# ------------------------------------------------------------------ MQTT.js at /mqtt


@pytest.mark.skipif(NODE is None, reason="needs node and MQTT.js: `npm ci` in tests/clients/js")
def test_mqtt_js_receives_the_simulators_observations_as_entities(demo: Demo) -> None:
    """Anonymous MQTT.js clients where Masterportal looks by default (ws://<STA host>/mqtt), MQTT 3.1.1 and 5,
    on v1.1 and v1.0 topics: the Observations the simulator publishes arrive as the GET of their selfLink."""
    datastream = demo.fast[0]
    topics = {"v1.1": "v1.1/Observations", "v1.0": f"v1.0/Datastreams({datastream})/Observations"}
    url = f"ws://127.0.0.1:{demo.up.http_port}/mqtt"
    clients: list[dict[str, Any]] = [
        {"name": f"{version}-mqtt{protocol}", "url": url, "protocolVersion": protocol,
         "clientId": f"js-demo-{version}-{protocol}", "subscribe": {topic: 1}}
        for version, topic in topics.items() for protocol in (4, 5)]
    node = NodeClients(clients)
    try:
        for spec in clients:
            node.wait("subscribe", spec["name"])
        wait_until_learned(demo.up.base, *topics.values(), admin=demo.up.admin)

        def notifications(name: str) -> list[dict[str, Any]]:
            # The simulator publishes on v1.1/Datastreams(n)/Observations: these topics carry notifications only.
            return [orjson.loads(m["payload"]) for m in node.of("message", name)]

        for spec in clients:
            got = wait_for(lambda name=spec["name"]: len(notifications(name)) >= 2 and notifications(name),
                           timeout=60, what=f"two notifications at {spec['name']}")
            version = spec["name"].split("-")[0]
            for body in got[:5]:
                assert "@iot.id" in body and body["@iot.selfLink"].startswith(f"{demo.up.base}/{version}/Observations(")
                assert body == httpx.get(body["@iot.selfLink"], timeout=10).json()
    finally:
        node.close()
