"""`$filter` and `$expand` (with `$select`, in any combination) on collection subscription topics, as
FROST-Server has them since 2.3: a changed entity is published on such a topic only if it passes the filter,
rendered exactly as GET of the collection with the same options renders that element, on the topic exactly
as subscribed. A topic whose options do not parse or compile publishes nothing and stops nothing else.

Most tests drive a Notifier directly (tests/notify_helpers.py: real PostgreSQL, the real app without MQTT
to make the data, no broker); one goes end to end through the session's broker and app with an anonymous
paho subscriber."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from citystream.embedded import EmbeddedMosquitto
from mqtt_bridge.topics import split_query
from sensorthings.model.entities import ENTITIES
from sensorthings.write.ports import Change
from tests.conftest import empty_database
from tests.mqtt_helpers import Subscriber, wait_for, wait_until_learned
from tests.notify_helpers import Run, app_without_mqtt, notify
from tests.sta_helpers import (
    create,
    create_datastream,
    create_thing_with_location,
    datastream_body,
    feature_body,
    observed_property_body,
    ref,
    sensor_body,
)

OBSERVATION, DATASTREAM = ENTITIES["Observation"], ENTITIES["Datastream"]


@dataclass
class World:
    sta: str
    database_url: str
    thing: int
    datastream: int
    other: int  # a second Datastream of the Thing
    features: list[int]
    observations: dict[Any, int]  # result -> id


@pytest.fixture(scope="module")
def world(database_url: str) -> Iterator[World]:
    empty_database(database_url)
    with app_without_mqtt(database_url) as sta:
        thing = create_thing_with_location(sta, "station")
        parts = {"Sensor": sensor_body(), "ObservedProperty": observed_property_body()}
        datastream = create(sta, f"Things({thing})/Datastreams", datastream_body("river level", **parts))
        other = create(sta, f"Things({thing})/Datastreams", datastream_body("air", **parts))
        features = [create(sta, "FeaturesOfInterest", feature_body(name)) for name in ("bank", "bridge")]
        observations = {}
        for n, result in enumerate((5, 40, 35.5, "high")):
            observations[result] = create(sta, f"Datastreams({datastream})/Observations", {
                "result": result, "phenomenonTime": f"2024-05-01T0{n}:00:00Z",
                "FeatureOfInterest": ref(features[n % 2])})
        observations[31] = create(sta, f"Datastreams({other})/Observations",
                                  {"result": 31, "phenomenonTime": "2024-05-01T09:00:00Z"})
        try:
            yield World(sta, database_url, thing, datastream, other, features, observations)
        finally:
            empty_database(database_url)


def observation_changes(world: World) -> list[Change]:
    return [Change(OBSERVATION, i, created=True) for i in world.observations.values()]


def as_get(world: World, topic: str, changed: set[int] | None = None) -> dict[int, Any]:
    """The elements of GET of the collection a query topic names, with its options, as anonymous, by id:
    of those in `changed` (default: the world's Observations)."""
    base, query = split_query(topic)
    assert query is not None
    params = {name: value for name, value in (("$select", ",".join(query.select) or None),
                                               ("$filter", query.filter), ("$expand", query.expand)) if value}
    if query.select and "id" not in query.select:
        params["$select"] += ",id"  # to find the element (then dropped from it)
    response = httpx.get(f"{world.sta.removesuffix('/v1.1')}/{base}", params={**params, "$top": 1000}, timeout=30)
    assert response.status_code == 200, response.text
    found = {}
    changed = set(world.observations.values()) if changed is None else changed
    for element in response.json()["value"]:
        entity_id = element["@iot.id"]
        if entity_id not in changed:
            continue  # made by another test (the end-to-end one)
        if query.select and "id" not in query.select:
            del element["@iot.id"]
        found[entity_id] = element
    return found


def published_by_id(run: Run, world: World, topic: str, entity_ids: dict[Any, int]) -> dict[int, Any]:
    """What `run` published on `topic`, by the id of the entity each message is about (read off the
    payload, or, for a `$select` without the id, off the result)."""
    found: dict[int, Any] = {}
    for message in run.published.on(topic):
        payload = message.json()
        assert message.audience is None
        found[payload["@iot.id"] if "@iot.id" in payload else entity_ids[payload["result"]]] = payload
    return found


QUERY_TOPICS = [
    "v1.1/Datastreams({d})/Observations?$filter=result gt 30&$expand=FeatureOfInterest($select=name)",
    "v1.1/Observations?$select=result&$filter=result lt 10",
    "v1.1/Observations?$expand=Datastream($expand=Thing($select=name);$select=name),FeatureOfInterest"
    "&$select=id,result",
    "v1.1/FeaturesOfInterest({f0})/Observations?$filter=Datastream/name eq 'river level'",
    "v1.1/Observations?$filter=result eq 'high' or result ge 40&$select=result,phenomenonTime",
    "v1.1/Observations?$filter=result gt 30&$expand=Datastream($select=name)&$select=result",
    "v1.1/+/Observations?$filter=result lt 36",
    "v1.1/Observations?$filter=phenomenonTime ge 2024-05-01T02:00:00%2B00:00",
]


def topic_of(world: World, template: str) -> str:
    return template.format(d=world.datastream, f0=world.features[0])


@pytest.mark.parametrize("template", QUERY_TOPICS)
def test_each_query_topic_gets_what_get_of_its_collection_has(world: World, template: str) -> None:
    topic = topic_of(world, template)
    run = notify(world.database_url, world.sta, [topic], observation_changes(world))
    if "+" in topic:  # a wildcard subscription: the concrete collections, with the query as written
        published: dict[int, Any] = {}
        for collection in (f"v1.1/Datastreams({world.datastream})/Observations",
                           f"v1.1/Datastreams({world.other})/Observations",
                           *(f"v1.1/FeaturesOfInterest({f})/Observations" for f in world.features)):
            concrete = collection + topic[topic.index("?"):]
            got = published_by_id(run, world, concrete, world.observations)
            assert got == as_get(world, concrete), concrete
            published.update(got)
        assert set(published) == {i for r, i in world.observations.items() if isinstance(r, int | float) and r < 36}
        return
    expected = as_get(world, topic)
    assert expected, "the world should give every topic something to publish"
    assert published_by_id(run, world, topic, world.observations) == expected
    assert {m.topic for m in run.published.messages} == {topic}


def test_an_expand_on_an_entity_set_of_datastreams(world: World) -> None:
    """Dashboards' latest value: each changed Datastream with its newest Observation."""
    topic = f"v1.1/Things({world.thing})/Datastreams?$expand=Observations($orderby=phenomenonTime desc;$top=1)"
    run = notify(world.database_url, world.sta, [topic],
                 [Change(DATASTREAM, i, created=False, properties=("name",)) for i in (world.datastream, world.other)])
    assert published_by_id(run, world, topic, {}) == as_get(world, topic, {world.datastream, world.other})
    assert len(run.published.messages) == 2


BAD_TOPICS = [
    "v1.1/Observations?$filter=nosuch gt 1",  # parses, does not compile (no such property)
    "v1.1/Observations?$expand=Datastream/Thing/Datastreams/Thing/Datastreams/Thing/Datastreams",  # too deep
    "v1.1/Observations?$filter=result gt",  # does not parse: never learned
    "v1.1/Observations?$filter=Datastream/unitOfMeasurement/symbol div 0 gt 1",  # fails in the database
    "v1.1/Observations?$orderby=result",  # not an option subscriptions take
]


def test_bad_query_topics_publish_nothing_and_stop_nothing(world: World) -> None:
    good = f"v1.1/Datastreams({world.datastream})/Observations?$filter=result gt 30"
    run = notify(world.database_url, world.sta, ["v1.1/Observations", *BAD_TOPICS, good], observation_changes(world))
    assert {m.topic for m in run.published.messages} == {"v1.1/Observations", good}
    assert len(run.published.on("v1.1/Observations")) == len(world.observations)
    assert published_by_id(run, world, good, {}) == as_get(world, good)


def test_a_query_is_run_once_for_all_its_topics(world: World) -> None:
    """The same options on several collections (and written in another order) share one statement."""
    topics = [f"v1.1/Datastreams({world.datastream})/Observations?$filter=result gt 30&$select=result",
              f"v1.1/FeaturesOfInterest({world.features[1]})/Observations?$select=result&$filter=result gt 30",
              "v1.1/Observations?$filter=result gt 30&$select=result"]
    run = notify(world.database_url, world.sta, topics, observation_changes(world))
    assert run.statements == 2  # the entities' own (for the topics without options), and the query's
    assert {m.topic for m in run.published.messages} == set(topics)


def test_query_topics_of_v10_render_as_v10(world: World) -> None:
    topic = "v1.0/Observations?$filter=result gt 30&$expand=Datastream($select=name)"
    run = notify(world.database_url, world.sta, [topic], observation_changes(world))
    published = published_by_id(run, world, topic, {})
    assert published == as_get(world, topic)
    assert all("/v1.0/" in p["@iot.selfLink"] for p in published.values())


# ---------------------------------------------------------------------------------------------- end to end


def test_an_mqtt_subscriber_gets_filtered_expanded_notifications(world: World, server_url: str,
                                                                 mosquitto_server: EmbeddedMosquitto) -> None:
    """Through the session's broker and app: an anonymous client, the options written as in the STA URL.
    (In the world's database, which it does not empty: the Datastream is its own.)"""
    sta = f"{server_url}/v1.1"
    datastream = create_datastream(sta)
    expanded = (f"v1.1/Datastreams({datastream})/Observations"
                "?$filter=result gt 30&$expand=FeatureOfInterest($select=name)")
    selected = "v1.1/Observations?$select=result&$filter=result lt 10"
    with Subscriber(mosquitto_server, [expanded, selected]) as subscriber:
        wait_until_learned(server_url, expanded, selected)
        ids = {result: create(sta, f"Datastreams({datastream})/Observations",
                              {"result": result, "phenomenonTime": f"2024-05-01T0{n}:00:00Z"})
               for n, result in enumerate((5, 40, 20))}
        big = wait_for(lambda: subscriber.on(expanded), what="the notification on the $filter/$expand topic")
        small = wait_for(lambda: subscriber.on(selected), what="the notification on the $select/$filter topic")
        assert [m.json()["@iot.id"] for m in big] == [ids[40]]
        element = httpx.get(f"{sta}/Datastreams({datastream})/Observations", timeout=30, params={
            "$filter": "result gt 30", "$expand": "FeatureOfInterest($select=name)"}).json()["value"]
        assert big[0].json() == element[0] and set(element[0]["FeatureOfInterest"]) == {"name"}
        assert [m.json() for m in small] == [{"result": 5}]
