"""Privacy classes (issue 18, section 3; sensorthings/model/privacy.py, sensorthings/query/visibility.py,
migration 0014): a Datastream, MultiDatastream or Project declares a publication delay, a minimum public
aggregation and a minimum count per rollup bucket; the public (whoever could not read the stream were it
restricted) sees only what the class lets through, on every surface where it reads; members of the
stream's Project (and read everywhere, and the operator) see everything.

One module world, read by four principals: anonymous and an outsider (read for an unrelated Project) are
the public; a member (read for both Projects) and the operator see everything. Streams:

- `delayed` (Project A, P7D): an old Observation is public, a fresh one and an interval that ends fresh
  are not; its PT1H rollup `delayed_1h` inherits the delay;
- `aggregated` (Project A, minimum aggregation PT1H, minimum count 3): no raw value is public; of its
  rollups `agg_15m` (narrower) shows nothing, `agg_1h` only its buckets of at least 3 Observations;
- `inherited` (Project B, whose class is P2D, none of its own) and its rollup `inherited_1h`;
- `opted_out` (Project B, its own class `{}` overriding B's), `plain` (Project A, no class) and a
  MultiDatastream `multi` (Project A, P7D).

Most checks compare a principal's answer with what the world says it must see: the ids of the visible
Observations on each surface, and no withheld result (markers) anywhere in the text.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from citystream.auth import credentials
from citystream.embedded import EmbeddedMosquitto
from sensorthings.model import privacy
from sensorthings.model.access import Role
from sensorthings.model.entities import ENTITIES
from sensorthings.model.rollups import WIDTHS
from sensorthings.model.times import parse_duration
from sensorthings.query import visibility
from tests.auth.helpers import ANON, bearer, connection
from tests.conftest import empty_database
from tests.mqtt.test_mqtt_access import Mqtt, wait_for_the_plugins_heartbeat
from tests.mqtt_helpers import wait_for, wait_until_learned
from tests.sta.test_sta_multi_datastream import multi_body
from tests.sta_helpers import (
    ADMIN,
    HTTP,
    assert_error,
    create,
    datastream_body,
    feature_body,
    location_body,
    observed_property_body,
    ref,
    sensor_body,
    thing_body,
    values,
)

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
WHO = ("anonymous", "outsider", "member", "admin")
PUBLIC = ("anonymous", "outsider")
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
OLD = (NOW - timedelta(days=30)).replace(minute=0)
"""An hour a month ago: older than every delay of the world."""
FRESH = NOW - timedelta(hours=1)
"""An hour ago: younger than every delay of the world."""


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


RAW: dict[str, list[tuple[Any, Any]]] = {
    # stream key: (phenomenonTime, result); a result >= 7000 is withheld from the public (a marker)
    "delayed": [(OLD, 11.5), (OLD + timedelta(minutes=10), 12.5), (FRESH, 7001.5),
                ((NOW - timedelta(days=8), NOW - timedelta(days=1)), 7002.5)],  # ends within the delay
    "aggregated": [(OLD + timedelta(minutes=m), 7100.5 + m) for m in (5, 20, 35, 50, 70)],  # 4 in an hour, 1
    "inherited": [(OLD, 21.5), (FRESH, 7201.5)],
    "opted_out": [(OLD, 31.5), (FRESH, 32.5)],
    "plain": [(OLD, 41.5), (FRESH, 42.5)],
}
MULTI_RAW = [(OLD, [51.5]), (FRESH, [7301.5])]
STREAM_PROJECT = {"delayed": "A", "aggregated": "A", "inherited": "B", "opted_out": "B", "plain": "A"}
OWN_PRIVACY: dict[str, Any] = {
    "delayed": {"publicationDelay": "P7D"},
    "aggregated": {"minimumPublicAggregation": "PT1H", "minimumCount": 3},
    "opted_out": {},
}
PROJECT_PRIVACY = {"A": None, "B": {"publicationDelay": "P2D"}}
ROLLUPS = {"delayed_1h": ("delayed", "PT1H", "mean"), "agg_15m": ("aggregated", "PT15M", "mean"),
           "agg_1h": ("aggregated", "PT1H", "mean"), "inherited_1h": ("inherited", "PT1H", "max")}
DELAYS = {"delayed": timedelta(days=7), "inherited": timedelta(days=2), "multi": timedelta(days=7)}


@dataclass
class Obs:
    id: int
    stream: str
    result: Any
    start: datetime
    end: datetime | None
    count: int | None = None  # a rollup bucket's

    @property
    def public(self) -> bool:
        """What the class of its stream lets the public see (the rules, written out once more)."""
        source = ROLLUPS[self.stream][0] if self.stream in ROLLUPS else self.stream
        delay = DELAYS.get(source)
        if delay is not None and (self.end or self.start) > datetime.now(UTC) - delay:
            return False
        if source == "aggregated":
            return self.stream == "agg_1h" and (self.count or 0) >= 3
        return True


@dataclass
class World:
    sta: str
    root: str
    ids: dict[str, int]
    obs: list[Obs]
    headers: dict[str, dict[str, str]]
    tokens: dict[str, str] = field(default_factory=dict)

    def get(self, who: str, path: str, **params: Any) -> httpx.Response:
        target = self.root + path if path.startswith("/") else f"{self.sta}/{path}"
        return ANON.get(target, params=params or None, headers=self.headers[who])

    def ok(self, who: str, path: str, **params: Any) -> Any:
        answer = self.get(who, path, **params)
        assert answer.status_code == 200, f"{who}: {path} -> {answer.status_code} {answer.text[:500]}"
        return answer.json() if answer.headers["content-type"].startswith(("application/json",
                                                                             "application/geo+json")) else answer

    def visible(self, who: str, stream: str | None = None) -> set[int]:
        """The Observations `who` must see (of `stream`)."""
        return {o.id for o in self.obs if (stream is None or o.stream == stream)
                and (who not in PUBLIC or o.public)}

    def withheld(self, who: str) -> set[int]:
        return {o.id for o in self.obs} - self.visible(who)

    def markers(self, who: str) -> list[str]:
        """Results that must not appear in any answer to `who`: those of withheld Observations that no
        visible one has too (a rollup bucket of one Observation has its value; docs/privacy.md says when a
        public bucket holds a withheld raw value: an interval bucketed by its start)."""
        if who not in PUBLIC:
            return []
        shown = {r for o in self.obs if o.public for r in _results(o.result)}
        return sorted({json.dumps(r) for o in self.obs if not o.public for r in _results(o.result)
                       if r >= 7000 and r not in shown})

    def assert_no_leak(self, who: str, text: str) -> None:
        for marker in self.markers(who):
            assert marker not in text, f"{who} got the withheld result {marker}: {text[:1500]}"

    def stream_of(self, observation: int) -> str:
        return next(o.stream for o in self.obs if o.id == observation)


def _results(result: Any) -> list[Any]:
    return result if isinstance(result, list) else [result]


def ids_of(body: dict[str, Any]) -> set[int]:
    return {e["@iot.id"] for e in body["value"]}


@pytest.fixture(scope="module")
def world(server_url: str, database_url: str) -> Iterator[World]:
    empty_database(database_url)
    sta = f"{server_url}/v1.1"
    ids: dict[str, int] = {}
    for name in ("A", "B", "C"):
        body: dict[str, Any] = {"name": f"project {name}", "termsOfUse": "https://example.org/terms"}
        if PROJECT_PRIVACY.get(name) is not None:
            body["privacy"] = PROJECT_PRIVACY[name]
        ids[name] = create(sta, "Projects", body)
    ids["thing"] = create(sta, "Things", thing_body("counter", Locations=[location_body("kerb", 10.0, 53.5)]))
    ids["sensor"] = create(sta, "Sensors", sensor_body())
    ids["prop"] = create(sta, "ObservedProperties", observed_property_body("occupancy"))
    ids["foi"] = create(sta, "FeaturesOfInterest", feature_body("bay", 10.1, 53.6))
    links = {"Thing": ref(ids["thing"]), "Sensor": ref(ids["sensor"]), "ObservedProperty": ref(ids["prop"])}
    obs: list[Obs] = []
    for key, raw in RAW.items():
        extra: dict[str, Any] = {"Project": ref(ids[STREAM_PROJECT[key]])}
        if key in OWN_PRIVACY:
            extra["privacy"] = OWN_PRIVACY[key]
        ids[key] = create(sta, "Datastreams", datastream_body(key, observationType=OM + "OM_Measurement",
                                                              **links, **extra))
        for when, result in raw:
            start, end = when if isinstance(when, tuple) else (when, None)
            phenomenon = f"{iso(start)}/{iso(end)}" if end else iso(start)
            made = create(sta, f"Datastreams({ids[key]})/Observations",
                          {"result": result, "phenomenonTime": phenomenon, "FeatureOfInterest": ref(ids["foi"])})
            obs.append(Obs(made, key, result, start, end))
    ids["multi"] = create(sta, "MultiDatastreams", multi_body(
        "multi", Thing=ref(ids["thing"]), Sensor=ref(ids["sensor"]), Project=ref(ids["A"]),
        privacy={"publicationDelay": "P7D"},
        ObservedProperties=[ref(ids["prop"])], multiObservationDataTypes=[OM + "OM_Measurement"],
        unitOfMeasurements=[{"name": "count", "symbol": "", "definition": "x"}]))
    for when, result in MULTI_RAW:
        obs.append(Obs(create(sta, f"MultiDatastreams({ids['multi']})/Observations",
                              {"result": result, "phenomenonTime": iso(when), "FeatureOfInterest": ref(ids["foi"])}),
                       "multi", result, when, None))
    for key, (source, width, function) in ROLLUPS.items():
        ids[key] = create(sta, "Datastreams", {"RollupOf": ref(ids[source]),
                                               "rollup": {"width": width, "function": function, "timeZone": "UTC"}})
        for o in values(sta, f"Datastreams({ids[key]})/Observations", **{"$top": 1000}):
            start, _, end = o["phenomenonTime"].partition("/")
            obs.append(Obs(o["@iot.id"], key, o["result"], parse(start), parse(end) if end else None,
                           o["parameters"]["rollup"]["count"]))
    with connection(database_url) as conn:
        tokens = {
            "outsider": credentials.create_key(conn, "read for C", frozenset({Role.READ}), projects=[ids["C"]]).token,
            "member": credentials.create_key(conn, "read for A and B", frozenset({Role.READ}),
                                             projects=[ids["A"], ids["B"]]).token,
            "creator": credentials.create_key(conn, "create for A", frozenset({Role.CREATE}),
                                              projects=[ids["A"]]).token,
        }
        conn.execute("ANALYZE")
    headers = {"anonymous": {}, "admin": dict(ADMIN), **{w: bearer(t) for w, t in tokens.items()}}
    yield World(sta, server_url, ids, obs, headers, tokens)
    empty_database(database_url)


# ---------------------------------------------------------------------------------------------- the world


def test_the_world_is_as_the_tests_assume(world: World) -> None:
    by_stream = {key: [o for o in world.obs if o.stream == key] for key in ROLLUPS}
    assert sorted(o.count or 0 for o in by_stream["agg_1h"]) == [1, 4]  # one bucket public, one below 3
    assert len(by_stream["agg_15m"]) == 5
    assert {o.public for o in by_stream["delayed_1h"]} == {True, False}
    assert {o.public for o in by_stream["inherited_1h"]} == {True, False}
    assert world.withheld("anonymous") and not world.withheld("member")


# ---------------------------------------------------------------------------------------------- the class


def test_each_stream_states_its_effective_class_and_where_it_comes_from(world: World) -> None:
    expected = {
        "delayed": {"publicationDelay": "P7D", "from": "itself"},
        "aggregated": {"minimumPublicAggregation": "PT1H", "minimumCount": 3, "from": "itself"},
        "inherited": {"publicationDelay": "P2D", "from": "Project"},
        "delayed_1h": {"publicationDelay": "P7D", "from": "RollupOf"},
        "agg_15m": {"minimumPublicAggregation": "PT1H", "minimumCount": 3, "from": "RollupOf"},
        "inherited_1h": {"publicationDelay": "P2D", "from": "RollupOf/Project"},
        "opted_out": None, "plain": None,
    }
    for who in WHO:
        for key, effective in expected.items():
            document = world.ok(who, f"Datastreams({world.ids[key]})")
            assert document.get("effectivePrivacy") == effective, (who, key, document)
            assert document.get("privacy") == OWN_PRIVACY.get(key), (who, key, document)
        multi = world.ok(who, f"MultiDatastreams({world.ids['multi']})")
        assert multi["effectivePrivacy"] == {"publicationDelay": "P7D", "from": "itself"}
        assert world.ok(who, f"Projects({world.ids['B']})")["privacy"] == {"publicationDelay": "P2D"}
    named = world.ok("anonymous", "Datastreams", **{"$filter": "effectivePrivacy/from eq 'RollupOf'",
                                                   "$select": "id"})
    assert ids_of(named) == {world.ids["delayed_1h"], world.ids["agg_15m"], world.ids["agg_1h"]}
    assert world.get("anonymous", f"/v1.0/Datastreams({world.ids['delayed']})").json().get("privacy") is None


@pytest.mark.parametrize(("value", "fragments"), [
    ("P7D", ("must be a JSON object",)),
    ({"delay": "P7D"}, ("unknown member 'delay'", "publicationDelay")),
    ({"publicationDelay": "P1M"}, ("months", "P30D")),
    ({"publicationDelay": "-P1D"}, ("positive",)),
    ({"publicationDelay": "PT0S"}, ("no delay",)),
    ({"publicationDelay": "a week"}, ("not an ISO 8601 duration",)),
    ({"publicationDelay": 7}, ("ISO 8601 duration",)),
    ({"minimumPublicAggregation": "PT60M"}, ("not a rollup width", "'PT1H'")),
    ({"minimumPublicAggregation": "P7D"}, ("'P1W'",)),
    ({"minimumPublicAggregation": "pt1h"}, ("'PT1H'",)),
    ({"minimumPublicAggregation": "PT7M"}, ("not a rollup width",)),
    ({"minimumCount": 0}, ("between 1 and",)),
    ({"minimumCount": True}, ("whole number",)),
    ({"minimumCount": 2.5}, ("whole number",)),
])
def test_a_bad_class_is_a_400_that_says_what_to_write(world: World, value: Any, fragments: tuple[str, ...]) -> None:
    for path in ("Datastreams", f"Projects({world.ids['C']})"):
        if path == "Datastreams":
            answer = HTTP.post(f"{world.sta}/Datastreams", json=datastream_body(
                "bad", Thing=ref(world.ids["thing"]), Sensor=ref(world.ids["sensor"]),
                ObservedProperty=ref(world.ids["prop"]), privacy=value))
        else:
            answer = HTTP.patch(f"{world.sta}/{path}", json={"privacy": value})
        body = assert_error(answer, 400, *fragments)
        assert body["field"].endswith("privacy") or "privacy/" in body["field"], body


def test_a_class_is_normalised_and_null_members_are_left_out(world: World) -> None:
    stream = create(world.sta, "Datastreams", datastream_body(
        "normalised", Thing=ref(world.ids["thing"]), Sensor=ref(world.ids["sensor"]),
        ObservedProperty=ref(world.ids["prop"]), privacy={"publicationDelay": "pt36h", "minimumCount": None}))
    try:
        document = world.ok("admin", f"Datastreams({stream})")
        assert document["privacy"] == {"publicationDelay": "PT36H"}
        assert document["effectivePrivacy"] == {"publicationDelay": "PT36H", "from": "itself"}
    finally:
        HTTP.delete(f"{world.sta}/Datastreams({stream})")


def test_a_rollup_takes_its_sources_class_and_refuses_its_own(world: World) -> None:
    answer = HTTP.post(f"{world.sta}/Datastreams", json={
        "RollupOf": ref(world.ids["plain"]), "rollup": {"width": "P1D", "function": "max"},
        "privacy": {"publicationDelay": "P1D"}})
    assert_error(answer, 400, "its source's", f"Datastream {world.ids['plain']}")
    answer = HTTP.patch(f"{world.sta}/Datastreams({world.ids['agg_1h']})", json={"privacy": {}})
    assert_error(answer, 400, "its source's")


def test_the_effective_class_is_read_only(world: World) -> None:
    stream = world.ids["delayed"]
    before = world.ok("admin", f"Datastreams({stream})")
    for sent in ({"effectivePrivacy": None}, {"effectivePrivacy": {"from": "nowhere"}}):
        answer = HTTP.patch(f"{world.sta}/Datastreams({stream})", json=sent)
        assert answer.status_code == 200, answer.text
        assert answer.json()["effectivePrivacy"] == before["effectivePrivacy"]
    round_trip = {k: v for k, v in before.items() if not k.startswith("@") and "@" not in k
                  and k not in ("phenomenonTime", "resultTime", "observedArea", "retainedFrom")}
    answer = HTTP.put(f"{world.sta}/Datastreams({stream})", json=round_trip)
    assert answer.status_code == 200, answer.text
    assert world.ok("admin", f"Datastreams({stream})")["effectivePrivacy"] == before["effectivePrivacy"]


def test_changing_a_class_takes_effect_at_once_for_streams_and_their_rollups(world: World) -> None:
    """A Project's class reaches the streams that inherit it and their rollups; a stream's own overrides
    it; null inherits again (migration 0014's triggers), and reads follow in the next request."""
    sta, project, stream, rollup = world.sta, world.ids["B"], world.ids["inherited"], world.ids["inherited_1h"]
    fresh = next(o.id for o in world.obs if o.stream == "inherited" and o.result == 7201.5)

    def effective(key: int) -> Any:
        return world.ok("admin", f"Datastreams({key})").get("effectivePrivacy")

    def public_sees_fresh() -> bool:
        return world.get("anonymous", f"Observations({fresh})").status_code == 200

    try:
        assert not public_sees_fresh()
        assert HTTP.patch(f"{sta}/Projects({project})", json={"privacy": {"publicationDelay": "PT30M"}}
                          ).status_code == 200
        assert effective(stream) == {"publicationDelay": "PT30M", "from": "Project"}
        assert effective(rollup) == {"publicationDelay": "PT30M", "from": "RollupOf/Project"}
        assert effective(world.ids["opted_out"]) is None
        assert public_sees_fresh()  # an hour old: older than 30 minutes
        assert HTTP.patch(f"{sta}/Datastreams({stream})", json={"privacy": {"publicationDelay": "P1D"}}
                          ).status_code == 200
        assert effective(rollup) == {"publicationDelay": "P1D", "from": "RollupOf"}
        assert not public_sees_fresh()
        assert HTTP.patch(f"{sta}/Projects({project})", json={"privacy": None}).status_code == 200
        assert HTTP.patch(f"{sta}/Datastreams({stream})", json={"privacy": None}).status_code == 200
        assert effective(stream) is None and effective(rollup) is None
        assert public_sees_fresh()
        assert HTTP.patch(f"{sta}/Datastreams({stream})", json={"Project": None}).status_code == 200
        assert HTTP.patch(f"{sta}/Projects({project})", json={"privacy": PROJECT_PRIVACY["B"]}).status_code == 200
        assert effective(stream) is None and public_sees_fresh()  # no longer in B
    finally:
        HTTP.patch(f"{sta}/Projects({project})", json={"privacy": PROJECT_PRIVACY["B"]})
        HTTP.patch(f"{sta}/Datastreams({stream})", json={"privacy": None, "Project": ref(project)})
    assert effective(stream) == {"publicationDelay": "P2D", "from": "Project"}
    assert effective(rollup) == {"publicationDelay": "P2D", "from": "RollupOf/Project"}
    assert not public_sees_fresh()


# ---------------------------------------------------------------------------------------------- STA reads


@pytest.mark.parametrize("who", WHO)
def test_collections_and_counts_hold_exactly_the_visible_observations(world: World, who: str) -> None:
    body = world.ok(who, "Observations", **{"$top": 1000, "$count": "true"})
    assert ids_of(body) == world.visible(who)
    assert body["@iot.count"] == len(world.visible(who))
    world.assert_no_leak(who, json.dumps(body))
    for key in [*RAW, *ROLLUPS]:
        body = world.ok(who, f"Datastreams({world.ids[key]})/Observations", **{"$count": "true"})
        assert ids_of(body) == world.visible(who, key), (who, key)
        assert body["@iot.count"] == len(world.visible(who, key)), (who, key)
    body = world.ok(who, f"MultiDatastreams({world.ids['multi']})/Observations")
    assert ids_of(body) == world.visible(who, "multi")
    assert ids_of(world.ok(who, "/v1.0/Observations", **{"$top": 1000})) == world.visible(who)
    feature = world.ok(who, f"FeaturesOfInterest({world.ids['foi']})/Observations", **{"$top": 1000})
    assert ids_of(feature) == world.visible(who)  # every Observation is of the one FeatureOfInterest


@pytest.mark.parametrize("who", WHO)
def test_a_withheld_observation_is_not_found(world: World, who: str) -> None:
    missing = world.get(who, "Observations(987654321)")
    for o in world.obs:
        answer = world.get(who, f"Observations({o.id})")
        assert answer.status_code == (200 if o.id in world.visible(who) else 404), (who, o)
        if answer.status_code == 404:
            assert answer.json()["message"].replace(str(o.id), "N") == missing.json()["message"].replace(
                "987654321", "N")
            base = "MultiDatastreams" if o.stream == "multi" else "Datastreams"
            for path in (f"{base}({world.ids[o.stream]})/Observations({o.id})", f"Observations({o.id})/result",
                         f"Observations({o.id})/FeatureOfInterest"):
                assert world.get(who, path).status_code == 404, (who, path)
    batch = ANON.post(f"{world.sta}/$batch", headers=world.headers[who], json={"requests": [
        {"id": str(n), "method": "get", "url": f"Observations({o.id})"} for n, o in enumerate(world.obs)]})
    assert batch.status_code == 200, batch.text
    statuses = {int(r["id"]): r["status"] for r in batch.json()["responses"]}
    assert statuses == {n: 200 if o.id in world.visible(who) else 404 for n, o in enumerate(world.obs)}


@pytest.mark.parametrize("who", WHO)
def test_expanded_observations_are_the_visible_ones(world: World, who: str) -> None:
    body = world.ok(who, "Datastreams", **{"$expand": "Observations($top=1000;$count=true)", "$top": 100})
    for stream in body["value"]:
        key = next(k for k, v in world.ids.items() if v == stream["@iot.id"] and k in (*RAW, *ROLLUPS))
        assert ids_of({"value": stream["Observations"]}) == world.visible(who, key), (who, key)
        assert stream["Observations@iot.count"] == len(world.visible(who, key)), (who, key)
    world.assert_no_leak(who, json.dumps(body))
    things = world.ok(who, "Things", **{"$expand": "Datastreams($expand=Observations($top=1000)),"
                                                    "MultiDatastreams($expand=Observations)"})
    (thing,) = things["value"]
    found = {o["@iot.id"] for s in thing["Datastreams"] + thing["MultiDatastreams"] for o in s["Observations"]}
    assert found == world.visible(who)
    world.assert_no_leak(who, json.dumps(things))
    feature = world.ok(who, "FeaturesOfInterest", **{"$expand": "Observations($top=1000;$count=true)"})
    assert {o["@iot.id"] for o in feature["value"][0]["Observations"]} == world.visible(who)
    assert feature["value"][0]["Observations@iot.count"] == len(world.visible(who))
    world.assert_no_leak(who, json.dumps(feature))


@pytest.mark.parametrize("who", WHO)
def test_filters_across_relations_do_not_reveal_withheld_values(world: World, who: str) -> None:
    members = who not in PUBLIC
    for marker in (7001.5, 7100.5 + 20, 7201.5):
        matching = {o.stream for o in world.obs if o.result == marker and o.id in world.visible(who)}
        assert bool(matching) == members  # the raw one, and a rollup's bucket holding only it
        found = world.ok(who, "Datastreams", **{"$filter": f"Observations/result eq {marker}", "$select": "id"})
        assert ids_of(found) == {world.ids[k] for k in matching}, (who, marker)
        for path in ("Things?$filter=Datastreams/Observations/result eq {}",
                     "FeaturesOfInterest?$filter=Observations/result eq {}",
                     "ObservedProperties?$filter=Datastreams/Observations/result eq {}",
                     "Sensors?$filter=Datastreams/Observations/result eq {}"):
            base, _, text = path.format(marker).partition("?$filter=")
            assert len(world.ok(who, base, **{"$filter": text})["value"]) == (1 if members else 0), (who, path)
        expanded = world.ok(who, "Things", **{"$expand": f"Datastreams($filter=Observations/result eq {marker})"})
        assert {d["@iot.id"] for t in expanded["value"] for d in t["Datastreams"]} == {
            world.ids[k] for k in matching}
    recent = f"{iso(NOW - timedelta(days=1))}"
    multi = world.ok(who, "Things", **{"$filter": f"MultiDatastreams/Observations/phenomenonTime gt {recent}"})
    assert len(multi["value"]) == (1 if members else 0)
    low = next(o for o in world.obs if o.stream == "agg_1h" and o.count == 1)
    counted = world.ok(who, f"Datastreams({world.ids['agg_1h']})/Observations",
                       **{"$filter": "parameters/rollup/count lt 3"})
    assert ids_of(counted) == ({low.id} if members else set())
    for text in (f"phenomenonTime gt {recent}", f"not (phenomenonTime lt {recent})", "result ge 7000",
                 "Datastream/name eq 'delayed'", "Datastream/Project/name eq 'project B'"):
        mine = world.ok(who, "Observations", **{"$filter": text, "$top": 1000})
        admins = world.ok("admin", "Observations", **{"$filter": text, "$top": 1000})
        assert ids_of(mine) == ids_of(admins) & world.visible(who), (who, text)
        world.assert_no_leak(who, json.dumps(mine))


@pytest.mark.parametrize("who", WHO)
def test_result_formats_hold_only_visible_observations(world: World, who: str) -> None:
    body = world.ok(who, "Observations", **{"$resultFormat": "dataArray", "$top": 1000, "$count": "true"})
    rows = {row[0] for group in body["value"] for row in group["dataArray"]}
    assert rows == world.visible(who)
    world.assert_no_leak(who, json.dumps(body))
    delayed = world.ok(who, f"Datastreams({world.ids['delayed']})/Observations", **{"$resultFormat": "dataArray"})
    assert {row[0] for g in delayed["value"] for row in g["dataArray"]} == world.visible(who, "delayed")
    answer = world.get(who, "Observations", **{"$resultFormat": "CSV", "$top": 1000})
    assert answer.status_code == 200
    assert {int(r["@iot.id"]) for r in csv.DictReader(io.StringIO(answer.text))} == world.visible(who)
    world.assert_no_leak(who, answer.text)
    answer = world.get(who, "Observations", **{"$resultFormat": "GeoJSON", "$top": 1000})
    assert answer.status_code == 200
    assert {f["properties"]["@iot.id"] for f in answer.json()["features"]} == world.visible(who)
    world.assert_no_leak(who, answer.text)
    nested = world.get(who, "Things", **{"$resultFormat": "CSV", "$expand": "Datastreams($expand=Observations)"})
    world.assert_no_leak(who, nested.text)


# ---------------------------------------------------------------------------------------------- summaries


def _extent(observations: list[Obs]) -> str | None:
    if not observations:
        return None
    start = min(o.start for o in observations)
    end = max(o.end or o.start for o in observations)
    return iso(start) if start == end else f"{iso(start)}/{iso(end)}"


WITHHOLDING = ("delayed", "aggregated", "inherited", *ROLLUPS)
"""The Datastreams whose class withholds something from the public (agg_1h: its small buckets)."""


@pytest.mark.parametrize("who", WHO)
def test_summaries_tell_the_public_nothing_of_withheld_data(world: World, who: str) -> None:
    """A withholding stream's phenomenonTime, resultTime and observedArea span every Observation, so its
    public gets none of them (they would tell that fresh data exists); members get them as stored, and a
    class-free stream's are everyone's."""
    body = world.ok(who, "Datastreams", **{"$top": 100})
    admins = {s["@iot.id"]: s for s in world.ok("admin", "Datastreams", **{"$top": 100})["value"]}
    for stream in body["value"]:
        key = next(k for k in (*RAW, *ROLLUPS) if world.ids[k] == stream["@iot.id"])
        if who in PUBLIC and key in WITHHOLDING:
            assert not {"phenomenonTime", "resultTime", "observedArea"} & set(stream), (who, key, stream)
        else:
            everything = [o for o in world.obs if o.stream == key]
            assert stream["phenomenonTime"] == _extent(everything), (who, key, stream)
            assert stream == admins[stream["@iot.id"]], (who, key)
    world.assert_no_leak(who, json.dumps(body))
    for key in WITHHOLDING:
        single = world.ok(who, f"Datastreams({world.ids[key]})")
        assert ("phenomenonTime" in single) == (who not in PUBLIC), (who, key)
        assert world.get(who, f"Datastreams({world.ids[key]})/phenomenonTime").status_code == (
            204 if who in PUBLIC else 200), (who, key)
    multi = world.ok(who, f"MultiDatastreams({world.ids['multi']})")
    assert ("phenomenonTime" in multi) == (who not in PUBLIC)
    after = world.ok(who, "Datastreams", **{"$filter": f"phenomenonTime gt {iso(OLD - timedelta(days=1))}",
                                            "$select": "id"})
    assert ids_of(after) == {world.ids[k] for k in (*RAW, *ROLLUPS)
                             if who not in PUBLIC or k not in WITHHOLDING}, who
    ordered = world.ok(who, "Datastreams", **{"$orderby": "phenomenonTime desc,id", "$select": "id"})
    assert len(ordered["value"]) == len(RAW) + len(ROLLUPS)


# ---------------------------------------------------------------------------------------------- OGC API


def ogc(world: World, who: str, path: str, **params: Any) -> httpx.Response:
    return ANON.get(f"{world.root}/ogcapi{path}", params=params or None, headers=world.headers[who])


@pytest.mark.parametrize("who", WHO)
def test_ogc_observations_and_latest_values_are_the_visible_ones(world: World, who: str) -> None:
    items = ogc(world, who, "/collections/observations/items", limit=1000)
    assert items.status_code == 200, items.text
    raw_and_rollups = {o.id for o in world.obs if o.stream != "multi"}
    assert {f["id"] for f in items.json()["features"]} == world.visible(who) & raw_and_rollups
    world.assert_no_leak(who, items.text)
    for fmt in ("csv", "html"):
        world.assert_no_leak(who, ogc(world, who, "/collections/observations/items", limit=1000, f=fmt).text)
    for o in world.obs:
        if o.stream == "multi":
            continue
        answer = ogc(world, who, f"/collections/observations/items/{o.id}")
        assert answer.status_code == (200 if o.id in world.visible(who) else 404), (who, o)
    latest = {f["id"]: f["properties"] for f in ogc(world, who, "/collections/latest/items", limit=100
                                                     ).json()["features"]}
    for key in (*RAW, *ROLLUPS):
        mine = [o for o in world.obs if o.stream == key and o.id in world.visible(who)]
        if not mine:
            assert world.ids[key] not in latest, (who, key)
            continue
        newest = max(mine, key=lambda o: o.start)
        assert latest[world.ids[key]]["observation"] == newest.id, (who, key)
    streams = {f["id"]: f["properties"] for f in ogc(world, who, "/collections/datastreams/items", limit=100
                                                      ).json()["features"]}
    for key in (*RAW, *ROLLUPS):
        mine = [o for o in world.obs if o.stream == key and o.id in world.visible(who)]
        got = streams[world.ids[key]]
        assert got.get("latestResult") == (max(mine, key=lambda o: o.start).result if mine else None), (who, key)
        summarised = [o for o in world.obs if o.stream == key] if who not in PUBLIC or key not in WITHHOLDING else []
        assert got.get("phenomenonTimeEnd") == (iso(max(o.end or o.start for o in summarised))
                                                if summarised else None), (who, key, got)
    collections = ogc(world, who, "/collections")
    assert collections.status_code == 200
    world.assert_no_leak(who, collections.text)
    by_id = {c["id"]: c for c in collections.json()["collections"]}
    (interval,) = by_id["observations"]["extent"]["temporal"]["interval"]  # from the streams' summaries
    summarised = [o for o in world.obs if o.stream not in ("multi", *(WITHHOLDING if who in PUBLIC else ()))]
    assert parse(interval[1]) == max(o.end or o.start for o in summarised), (who, interval)


# ---------------------------------------------------------------------------------------------- the guard


def test_reads_right_after_a_stream_gets_a_class_withhold_at_once(world: World) -> None:
    """While nothing is restricted or classed, the public's reads run the plain statement under the guard
    of migration 0010 (the app learns "nothing is restricted" every 2 s): the first reads after a stream
    gets a class must withhold all the same."""
    sta, stream = world.sta, world.ids["plain"]
    fresh = next(o for o in world.obs if o.stream == "plain" and o.start == FRESH)
    classed = {"Datastreams": [world.ids[k] for k in OWN_PRIVACY if k != "opted_out"]}
    saved = {"multi": {"publicationDelay": "P7D"}}
    try:
        for key in classed["Datastreams"]:
            assert HTTP.patch(f"{sta}/Datastreams({key})", json={"privacy": None}).status_code == 200
        assert HTTP.patch(f"{sta}/MultiDatastreams({world.ids['multi']})", json={"privacy": None}).status_code == 200
        assert HTTP.patch(f"{sta}/Projects({world.ids['B']})", json={"privacy": None}).status_code == 200
        for _ in range(3):
            time.sleep(2.3)  # the app learns that nothing is withheld
            assert world.get("anonymous", f"Observations({fresh.id})").status_code == 200
            assert HTTP.patch(f"{sta}/Datastreams({stream})", json={"privacy": {"publicationDelay": "P1D"}}
                              ).status_code == 200
            assert world.get("anonymous", f"Observations({fresh.id})").status_code == 404
            assert fresh.id not in ids_of(world.ok("anonymous", "Observations", **{"$top": 1000}))
            assert ogc(world, "anonymous", f"/collections/observations/items/{fresh.id}").status_code == 404
            assert HTTP.patch(f"{sta}/Datastreams({stream})", json={"privacy": None}).status_code == 200
    finally:
        HTTP.patch(f"{sta}/Datastreams({stream})", json={"privacy": None})
        for key, value in OWN_PRIVACY.items():
            HTTP.patch(f"{sta}/Datastreams({world.ids[key]})", json={"privacy": value})
        HTTP.patch(f"{sta}/MultiDatastreams({world.ids['multi']})", json={"privacy": saved["multi"]})
        HTTP.patch(f"{sta}/Projects({world.ids['B']})", json={"privacy": PROJECT_PRIVACY["B"]})
    assert world.get("anonymous", f"Observations({fresh.id})").status_code == 200


# ---------------------------------------------------------------------------------------------- writes


def test_members_write_as_before(world: World) -> None:
    """Writes are unchanged: a key with create for the Project adds a fresh Observation to a delayed stream;
    the public does not see it, a member does."""
    made = create(world.sta, f"Datastreams({world.ids['delayed']})/Observations",
                  {"result": 7003.5, "FeatureOfInterest": ref(world.ids["foi"])},
                  headers=bearer(world.tokens["creator"]))
    try:
        assert world.get("anonymous", f"Observations({made})").status_code == 404
        assert world.get("member", f"Observations({made})").status_code == 200
    finally:
        assert HTTP.delete(f"{world.sta}/Observations({made})").status_code == 200


# ---------------------------------------------------------------------------------------------- MQTT


def test_live_notifications_of_a_classed_stream_reach_only_its_members(
        world: World, server_url: str, mosquitto_server: EmbeddedMosquitto) -> None:
    """A fresh Observation of a delayed stream, the rollup bucket it changes, and a change of the stream
    carry a restricted audience (visibility.audience): the broker hands them to members, not to the public;
    a class-free stream's notifications reach everyone as before."""
    wait_for_the_plugins_heartbeat(server_url, mosquitto_server)
    delayed, rollup, plain = world.ids["delayed"], world.ids["delayed_1h"], world.ids["plain"]
    topics = ["v1.1/Observations", f"v1.1/Datastreams({delayed})/Observations",
              f"v1.1/Datastreams({rollup})/Observations", f"v1.1/Datastreams({plain})/Observations",
              f"v1.1/Datastreams({delayed})", "v1.1/Datastreams"]
    member_id, member_secret = credentials.split_key(world.tokens["member"]) or ("", "")
    anonymous = Mqtt(mosquitto_server, name="anonymous", topics=topics)
    member = Mqtt(mosquitto_server, member_id, member_secret, name="member", topics=topics)
    made: list[int] = []
    try:
        assert anonymous.connack_code == 0 and member.connack_code == 0
        wait_until_learned(server_url, *topics)
        made.append(create(world.sta, f"Datastreams({delayed})/Observations",
                           {"result": 7004.5, "FeatureOfInterest": ref(world.ids["foi"])}))
        assert HTTP.patch(f"{world.sta}/Datastreams({delayed})", json={"description": "changed quietly"}
                          ).status_code == 200
        made.append(create(world.sta, f"Datastreams({plain})/Observations",
                           {"result": 43.5, "FeatureOfInterest": ref(world.ids["foi"])}))

        def got(client: Mqtt, text: bytes, topic: str = "") -> bool:
            return any(text in m.payload for m in client.received(topic))

        wait_for(lambda: got(member, b"7004.5", f"v1.1/Datastreams({delayed})/Observations"), what="member's")
        wait_for(lambda: got(member, b"changed quietly", f"v1.1/Datastreams({delayed})"), what="the change")
        wait_for(lambda: got(member, b'"rollup"', f"v1.1/Datastreams({rollup})/Observations"), what="the bucket")
        wait_for(lambda: got(anonymous, b"43.5", f"v1.1/Datastreams({plain})/Observations"), what="the sentinel")
        wait_for(lambda: got(member, b"43.5", f"v1.1/Datastreams({plain})/Observations"), what="the sentinel")
        time.sleep(0.5)
        leaked = [(m.topic, m.payload[:200]) for m in anonymous.received()
                  if b"7004.5" in m.payload or b"changed quietly" in m.payload
                  or m.topic.startswith((f"v1.1/Datastreams({rollup})", f"v1.1/Datastreams({delayed})"))
                  or f"Datastreams({delayed})".encode() in m.payload]
        assert leaked == [], f"the public received notifications of a delayed stream: {leaked}"
    finally:
        anonymous.close()
        member.close()
        for observation in made:
            HTTP.delete(f"{world.sta}/Observations({observation})")
        HTTP.patch(f"{world.sta}/Datastreams({delayed})", json={"description": "delayed description"})


def test_public_release_says_when_an_observation_may_go_to_the_public(world: World, database_url: str) -> None:
    """visibility.public_release (for notifications to everyone once a bucket is old enough): its condition
    holds exactly for the Observations the anonymous public reads, and its delay is the stream's."""
    observation = ENTITIES["Observation"]
    o = sql.Identifier("o")
    release = visibility.public_release(observation, o)
    statement = sql.SQL("SELECT o.id, {}, {} FROM {} o").format(release.condition, release.delay,
                                                               sql.Identifier(observation.table))
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = {i: (shown, delay) for i, shown, delay in conn.execute(statement)}
    assert {i for i, (shown, _) in rows.items() if shown} == world.visible("anonymous")
    for o_ in world.obs:
        source = ROLLUPS[o_.stream][0] if o_.stream in ROLLUPS else o_.stream
        assert rows[o_.id][1] == DELAYS.get(source), o_


def test_the_sql_reads_delays_and_widths_as_the_model_does(database_url: str) -> None:
    """Migration 0014's sta_privacy_delay and sta_privacy_width_minutes agree with model/privacy.py: a
    delay is exact (a day is 24 hours, no day part left to the session's time zone), widths compare by
    their nominal length."""
    delays = ["PT24H", "P7D", "P1DT2H30M0.5S", "PT90M", "PT0.000001S", "P3650D", "pt36h", "PT1,5S"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for text in delays:
            normalised = privacy.parse_privacy({"publicationDelay": text}, "privacy")["publicationDelay"]
            got, shown = conn.execute("SELECT sta_privacy_delay(%s), sta_privacy_delay(%s)::text",
                                      (normalised, normalised)).fetchone() or (None, None)
            assert got == parse_duration(normalised, "delay")[1], text
            assert "day" not in str(shown), (text, shown)
        for width in WIDTHS:
            (minutes,) = conn.execute("SELECT sta_privacy_width_minutes(%s)", (width,)).fetchone() or (None,)
            assert minutes == privacy.nominal_length(width) / timedelta(minutes=1), width


def test_a_rollups_observed_area_covers_its_features(world: World) -> None:
    rollup = world.ok("admin", f"Datastreams({world.ids['agg_1h']})")
    source = world.ok("admin", f"Datastreams({world.ids['aggregated']})")
    assert "observedArea" in source
    assert rollup.get("observedArea") == source["observedArea"]
