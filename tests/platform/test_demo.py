"""The demo city (citystream/demo.py): created through the real STA REST API, published over a real Mosquitto.

Each bike counter is one published Datastream (counts per 15 minutes) and three rollups of it that the
platform computes (sums per hour, local day and ISO week in Europe/Berlin), where Hamburg keeps four
Datastreams; the rollups are checked against the simulator's own counts once its history is stored.

What the demo publishes is checked where the broker puts it: its plugin moves every device create to
citystream/ingest/<topic> (stamped with the publisher), which only the platform account reads, so that is
who the paho subscriber connects as; no subscriber gets the demo's raw publishes any more. An external
`mosquitto_sub` sees the demo's observations as the public does: the platform's notifications of the stored
Observations (the session app's bridge stores them).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from citystream.demo import (
    CHARGING_STATES,
    HAMBURG,
    OM_CATEGORY,
    OM_COUNT,
    OM_MEASUREMENT,
    CountGenerator,
    DemoCity,
    create_city,
    floor_time,
    publish_forever,
    run_demo,
)
from mqtt_bridge.address import BrokerAddress
from mqtt_bridge.bridge import PRINCIPAL_PROPERTY
from mqtt_bridge.topics import INGEST_PREFIX
from sensorthings.model.rollups import RollupSpec, reference_rollup
from tests.mqtt_helpers import wait_for, wait_until_learned
from tests.sta_helpers import ADMIN, ADMIN_TOKEN, HTTP

DEMO_FILTER = "properties/demo eq 'citystream'"
EXPECTED_DATASTREAMS = {"bike-counter": 6, "e-charging": 8, "bike-share": 6, "air-quality": 9, "noise": 3,
                        "traffic": 4}
"""The Datastreams the simulator publishes to, per kind; beside them, each bike counter's three rollups."""
ROLLUP_WIDTHS = {"hourly": "PT1H", "daily": "P1D", "weekly": "P1W"}
OBSERVATION_TYPES = {"bike-counter": OM_COUNT, "e-charging": OM_CATEGORY, "bike-share": OM_COUNT,
                     "air-quality": OM_MEASUREMENT, "noise": OM_MEASUREMENT, "traffic": OM_COUNT}
UNIT_SYMBOLS = {"bike-counter": "bicycles", "e-charging": None, "bike-share": "bicycles", "air-quality": "µg/m³",
                "noise": "dB(A)", "traffic": "vehicles"}
TOPIC = re.compile(r"^v1\.1/Datastreams\((\d+)\)/Observations$")
INGEST_TOPIC = re.compile("^" + re.escape(INGEST_PREFIX) + r"v1\.1/Datastreams\((\d+)\)/Observations$")


# ------------------------------------------------------------------------------------------ helpers


def build_city(sta: str, seed: int = 1) -> DemoCity:
    async def go() -> DemoCity:
        async with httpx.AsyncClient(timeout=30, headers=ADMIN) as client:
            return await create_city(client, sta, seed=seed)

    return asyncio.run(go())


def get_all(url: str, **params: str) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    next_url: str | None = url
    query: dict[str, str] | None = params
    while next_url:
        response = HTTP.get(next_url, params=query)
        assert response.status_code == 200, response.text
        entities += response.json()["value"]
        next_url, query = response.json().get("@iot.nextLink"), None
    return entities


def count(sta: str, set_name: str) -> int:
    return len(get_all(f"{sta}/{set_name}", **{"$select": "id"}))


def counts(sta: str) -> dict[str, int]:
    return {name: count(sta, name) for name in ("Things", "Locations", "Datastreams", "Sensors",
                                                 "ObservedProperties")}


def credentials(broker: Any) -> tuple[str | None, str | None]:
    """The sensor account of the test broker, once the broker has one (anonymous otherwise)."""
    return getattr(broker, "sensor_username", None), getattr(broker, "sensor_password", None)


class Subscriber:
    """A paho MQTT 5 client of the platform account subscribed to citystream/ingest/v1.1/#, collecting the
    (topic, payload, publisher) of what devices publish (the publisher: the plugin's citystream-principal)."""

    def __init__(self, platform_url: str) -> None:
        target = BrokerAddress.from_url(platform_url)
        self.messages: list[tuple[str, bytes, list[str]]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(target.username, target.password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{INGEST_PREFIX}v1.1/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(target.host, target.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "test subscriber could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        properties = getattr(message.properties, "UserProperty", None) or []
        publishers = [value for name, value in properties if name == PRINCIPAL_PROPERTY]
        with self._lock:
            self.messages.append((message.topic, message.payload, publishers))

    def wait_for(self, n: int, timeout: float = 10) -> list[tuple[str, bytes, list[str]]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= n:
                    break
            time.sleep(0.02)
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_for(city: DemoCity, broker: Any, seconds: float, *, speed: float, backlog: timedelta,
                on_published: Callable[[int], None] | None = None) -> float:
    """Run publish_forever for `seconds`, then stop it; returns how long it took to stop."""
    username, password = credentials(broker)

    async def go() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(publish_forever(city, broker.url, username=username, password=password,
                                                   speed=speed, stop=stop, on_published=on_published,
                                                   backlog=backlog))
        await asyncio.sleep(seconds)
        assert not task.done(), task.exception() if task.done() else None
        stopped_at = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, timeout=15)
        return time.monotonic() - stopped_at

    return asyncio.run(go())


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def phenomenon_bounds(value: str) -> tuple[datetime, datetime]:
    start, _, end = value.partition("/")
    return parse_time(start), parse_time(end or start)


# ------------------------------------------------------------------------------------------ create_city


def test_create_city_creates_a_hamburg_like_city(sta: str) -> None:
    city = build_city(sta)
    assert len(city.thing_ids) == 30
    assert city.created_things == 30 and city.created_datastreams == 54  # 36 published, 18 rollups
    assert Counter(d.kind for d in city.datastreams) == EXPECTED_DATASTREAMS
    assert Counter(r.kind for r in city.rollups) == {"bike-counter": 18} and not city.stale
    assert counts(sta) == {"Things": 30, "Locations": 30, "Datastreams": 54, "Sensors": 7, "ObservedProperties": 8}

    things = get_all(f"{sta}/Things", **{"$filter": DEMO_FILTER,
                                         "$expand": "Locations,Datastreams($expand=Sensor,ObservedProperty)"})
    assert {t["@iot.id"] for t in things} == set(city.thing_ids)
    published: dict[int | str, Any] = {d.id: d for d in (*city.datastreams, *city.rollups)}
    sensors_by_kind: dict[str, set[int]] = defaultdict(set)
    for thing in things:
        kind = thing["properties"]["kind"]
        assert thing["properties"]["demo"] == "citystream"
        assert thing["properties"]["district"] and thing["description"]
        [location] = thing["Locations"]
        assert location["encodingType"] == "application/geo+json"
        lon, lat = location["location"]["coordinates"]
        assert location["location"]["type"] == "Point"
        assert 9.85 <= lon <= 10.15 and 53.50 <= lat <= 53.63, thing["name"]
        for datastream in thing["Datastreams"]:
            demo = published[datastream["@iot.id"]]
            assert demo.kind == kind and demo.thing_id == thing["@iot.id"]
            assert datastream["observationType"] == OBSERVATION_TYPES[kind]
            assert datastream["unitOfMeasurement"]["symbol"] == UNIT_SYMBOLS[kind]
            sensor = datastream["Sensor"]
            assert sensor["encodingType"] in ("application/pdf", "text/html")
            assert sensor["metadata"].startswith("https://")
            assert datastream["ObservedProperty"]["definition"].startswith("http")
            sensors_by_kind[kind].add(sensor["@iot.id"])
    assert all(len(ids) == 1 for kind, ids in sensors_by_kind.items() if kind != "air-quality")
    assert len(sensors_by_kind["air-quality"]) == 2  # NO2 analyser + PM monitor

    no2 = get_all(f"{sta}/Datastreams", **{"$filter": "ObservedProperty/name eq 'Nitrogen dioxide (NO2)'"})
    assert len(no2) == 3
    assert {json.dumps(d["unitOfMeasurement"], sort_keys=True) for d in no2} == {
        json.dumps({"name": "microgram per cubic metre", "symbol": "µg/m³", "definition": "ug/m3"}, sort_keys=True)}
    bike_counters = [d for d in city.datastreams if d.kind == "bike-counter"]
    assert [d.period for d in bike_counters] == [900] * 6 and all(d.key.endswith("/15min") for d in bike_counters)
    assert_rollups_are_linked(sta, city)


def assert_rollups_are_linked(sta: str, city: DemoCity) -> None:
    """Each bike counter's 15-minute Datastream has its three rollups (sums per hour, day, week in Berlin
    time), linked both ways, on its Thing, counting bicycles; no other Datastream has any."""
    for source in city.datastreams:
        listed = get_all(f"{sta}/Datastreams({source.id})/Rollups")
        mine = [r for r in city.rollups if r.source_id == source.id]
        assert {r["@iot.id"] for r in listed} == {r.id for r in mine}
        assert len(listed) == (3 if source.kind == "bike-counter" else 0), source.key
        for rollup in listed:
            suffix = rollup["properties"]["key"].rsplit("/", 1)[1]
            assert {k: rollup["rollup"][k] for k in ("width", "function", "timeZone")} == {
                "width": ROLLUP_WIDTHS[suffix], "function": "sum", "timeZone": "Europe/Berlin"}
            assert rollup["observationType"] == OM_COUNT and rollup["unitOfMeasurement"]["symbol"] == "bicycles"
            assert rollup["name"].startswith("Bicycles per ") and rollup["properties"]["demo"] == "citystream"
            back = HTTP.get(f"{sta}/Datastreams({rollup['@iot.id']})/RollupOf")
            assert back.status_code == 200 and back.json()["@iot.id"] == source.id
            thing = HTTP.get(f"{sta}/Datastreams({rollup['@iot.id']})/Thing").json()
            assert thing["@iot.id"] == source.thing_id


def test_create_city_twice_reuses_everything_and_repairs_what_was_deleted(sta: str) -> None:
    unrelated = HTTP.post(f"{sta}/Things", json={"name": "not demo", "description": "someone else's thing"})
    assert unrelated.status_code == 201
    first = build_city(sta)
    before = counts(sta)
    second = build_city(sta)
    assert second.created_things == 0 and second.created_datastreams == 0
    assert second.thing_ids == first.thing_ids
    assert [d.id for d in second.datastreams] == [d.id for d in first.datastreams]
    assert counts(sta) == before

    assert [r.id for r in second.rollups] == [r.id for r in first.rollups]

    # Delete one whole Thing (its Datastreams and rollups go with it), one Datastream and one rollup of
    # others; and give a third counter a Datastream of the older demo (its raw hourly counts, key `1h`).
    counter = next(d for d in first.datastreams if d.key == "bike-counter-01/15min")
    no2 = next(d for d in first.datastreams if d.key == "air-quality-01/no2")
    daily = next(r for r in first.rollups if r.key == "bike-counter-02/daily")
    older = next(d for d in first.datastreams if d.key == "bike-counter-03/15min")
    sensor, observed = (HTTP.get(f"{sta}/Datastreams({older.id})/{n}").json()["@iot.id"]
                        for n in ("Sensor", "ObservedProperty"))
    assert HTTP.post(f"{sta}/Datastreams", json={
        "name": "Bicycles per hour", "description": "older demo", "observationType": OM_COUNT,
        "unitOfMeasurement": {"name": "bicycles", "symbol": "bicycles", "definition": "{bicycles}"},
        "properties": {"demo": "citystream", "key": "bike-counter-03/1h"}, "Thing": {"@iot.id": older.thing_id},
        "Sensor": {"@iot.id": sensor}, "ObservedProperty": {"@iot.id": observed}}).status_code == 201
    assert HTTP.delete(f"{sta}/Things({counter.thing_id})").status_code == 200
    assert HTTP.delete(f"{sta}/Datastreams({no2.id})").status_code == 200
    assert HTTP.delete(f"{sta}/Datastreams({daily.id})").status_code == 200
    third = build_city(sta)
    assert third.created_things == 1 and third.created_datastreams == 6  # 1 + 3 rollups, NO2, the daily rollup
    assert third.stale == ("bike-counter-03/1h",)  # reported, not published, not deleted
    after = counts(sta)
    assert (after["Things"], after["Datastreams"]) == (before["Things"], before["Datastreams"] + 1)
    assert (after["Sensors"], after["ObservedProperties"]) == (7, 8)  # shared ones were reused
    assert len(third.datastreams) == 36 and len(third.rollups) == 18 and len(set(third.thing_ids)) == 30
    assert "bike-counter-03/1h" not in {d.key for d in third.datastreams}
    kept = {d.key: d.id for d in first.datastreams if d.thing_id != counter.thing_id and d.key != no2.key}
    assert {d.key: d.id for d in third.datastreams if d.key in kept} == kept
    kept = {r.key: r.id for r in first.rollups if r.thing_id != counter.thing_id and r.key != daily.key}
    assert {r.key: r.id for r in third.rollups if r.key in kept} == kept
    assert_rollups_are_linked(sta, third)


# ------------------------------------------------------------------------------------------ publishing


def test_publish_forever_publishes_valid_observations_to_the_datastream_topics(
    sta: str, mosquitto_server: Any
) -> None:
    city = build_city(sta)
    subscriber = Subscriber(mosquitto_server.platform_url)
    totals: list[int] = []
    started = datetime.now(UTC)
    try:
        # Two simulated hours of backlog at 7,200x take one real second, then the clock runs in real time.
        stop_delay = publish_for(city, mosquitto_server, 2.0, speed=7200, backlog=timedelta(hours=2),
                                 on_published=totals.append)
        assert totals and totals == sorted(totals) and len(set(totals)) == len(totals)
        messages = subscriber.wait_for(totals[-1])
    finally:
        subscriber.close()
    assert stop_delay < 6
    assert len(messages) >= totals[-1] > 100

    by_id = {d.id: d for d in city.datastreams}
    received: dict[int, list[dict[str, Any]]] = defaultdict(list)
    username, _password = credentials(mosquitto_server)
    for topic, payload, publishers in messages:
        match = INGEST_TOPIC.match(topic)
        assert match, topic
        assert [json.loads(p)["name"] for p in publishers] == [username], publishers  # stamped by the broker
        body = json.loads(payload)
        assert set(body) == {"phenomenonTime", "result"}
        received[int(match.group(1))].append(body)
    assert set(received) == set(by_id), "every Datastream publishes at least its immediate observation"
    assert not set(received) & {r.id for r in city.rollups}, "the platform computes the rollups"

    now = datetime.now(UTC)
    for ident, observations in received.items():
        ds = by_id[ident]
        for body in observations:
            start, end = phenomenon_bounds(body["phenomenonTime"])
            assert end <= now, f"{ds.key}: phenomenonTime in the future"
            assert end >= started - timedelta(hours=2) - timedelta(seconds=ds.period) or ds.period >= 86400
            assert ("/" in body["phenomenonTime"]) == ds.interval
            result = body["result"]
            if ds.kind == "e-charging":
                assert result in CHARGING_STATES
            elif ds.kind in ("bike-counter", "bike-share", "traffic"):
                assert isinstance(result, int) and result >= 0
            elif ds.kind == "noise":
                assert 30 <= result <= 100
            else:
                assert isinstance(result, float) and 0 < result < 200
    # A 15-minute counter catches up two hours: consecutive 15-minute intervals without gaps.
    quarter = next(d for d in city.datastreams if d.key == "bike-counter-01/15min")
    intervals = sorted(phenomenon_bounds(b["phenomenonTime"]) for b in received[quarter.id])
    assert len(intervals) >= 8
    assert all(end - start == timedelta(minutes=15) for start, end in intervals)
    assert all(a[1] == b[0] for a, b in zip(intervals, intervals[1:], strict=False))


def test_the_rollups_are_the_sums_of_the_published_counts(sta: str, mosquitto_server: Any) -> None:
    """Two simulated days of history, published over MQTT and stored by the session app's bridge: every bucket
    of every rollup is the sum (and count) of the 15-minute counts in it, and a whole hour or local day is
    what the older demo published as a Datastream of its own (the generator's count over that span)."""
    city = build_city(sta)
    totals: list[int] = []
    publish_for(city, mosquitto_server, 2.5, speed=172_800, backlog=timedelta(days=2), on_published=totals.append)
    assert totals

    def stored() -> int:
        return sum(HTTP.get(f"{sta}/Datastreams({d.id})/Observations", params={"$count": "true", "$top": "0"}
                            ).json()["@iot.count"] for d in city.datastreams)
    wait_for(lambda: stored() >= totals[-1], timeout=60, what=f"the {totals[-1]} published observations stored")

    whole = Counter[str]()
    for source in (d for d in city.datastreams if d.kind == "bike-counter"):
        assert isinstance(source.generator, CountGenerator)
        raw = [(phenomenon_bounds(o["phenomenonTime"])[0], o["result"], o["@iot.id"]) for o in get_all(
            f"{sta}/Datastreams({source.id})/Observations", **{"$select": "id,phenomenonTime,result"})]
        assert len(raw) >= 2 * 96
        for rollup in (r for r in city.rollups if r.source_id == source.id):
            expected = reference_rollup(raw, RollupSpec(rollup.width, rollup.function, rollup.time_zone))
            got = {phenomenon_bounds(o["phenomenonTime"]): (o["result"], o["parameters"]["rollup"]["count"])
                   for o in get_all(f"{sta}/Datastreams({rollup.id})/Observations")}
            assert {start: value for (start, _), value in got.items()} == expected, rollup.key
            for (start, end), (result, n) in got.items():
                if n == (end - start) // timedelta(minutes=15):  # every quarter hour of the bucket is there
                    assert result == source.generator(start, end), (rollup.key, start)
                    whole[rollup.width] += 1
                if rollup.width == "P1D":
                    assert start == floor_time(start, 86400, "day")  # Hamburg's local midnight
                    assert start.astimezone(HAMBURG).hour == 0
    assert whole["PT1H"] >= 6 * 40 and whole["P1D"] >= 6  # two days back: at least yesterday is whole


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto_sub (mosquitto-clients) not installed")
def test_an_external_mosquitto_sub_receives_the_demo_observations(sta: str, mosquitto_server: Any) -> None:
    """Old: an anonymous mosquitto_sub on v1.1/# got the demo's raw publishes. New: it gets the platform's
    notifications of the stored Observations (the entity as GET returns it), on the Datastreams' topics."""
    city = build_city(sta)
    target = BrokerAddress.from_url(mosquitto_server.url)
    topics = [f"v1.1/Datastreams({d.id})/Observations" for d in city.datastreams]
    sub = subprocess.Popen(
        ["mosquitto_sub", "-V", "mqttv5", "-h", target.host, "-p", str(target.port), "-v", "-q", "1",
         "-C", "40", "-W", "30", *(arg for topic in topics for arg in ("-t", topic))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_learned(sta.removesuffix("/v1.1"), *topics)  # notifications go to known subscriptions
        publish_for(city, mosquitto_server, 2.5, speed=3600, backlog=timedelta(hours=1))
        out, err = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    lines = out.splitlines()
    assert len(lines) == 40, err
    ids = {d.id for d in city.datastreams}
    for line in lines:
        topic, _, payload = line.partition(" ")
        match = TOPIC.match(topic)
        assert match and int(match.group(1)) in ids, line
        body = json.loads(payload)
        assert {"@iot.id", "phenomenonTime", "result"} <= set(body), body


def test_run_demo_reports_the_city_and_stops_on_request(sta: str, mosquitto_server: Any) -> None:
    lines: list[str] = []
    username, password = credentials(mosquitto_server)

    async def go() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(1.5, stop.set)
        await asyncio.wait_for(run_demo(sta, mosquitto_server.url, username=username, password=password,
                                        speed=60, seed=3, stop=stop, report=lines.append,
                                        api_key=ADMIN_TOKEN), timeout=20)

    asyncio.run(go())
    assert lines and "30 Things (30 created, 0 reused) and 54 Datastreams" in lines[0]
