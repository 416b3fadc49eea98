"""What a principal whose roles hold only for a STAplus Project (or only as an owner) may change, over HTTP
(sensorthings/write/authorize.py, its use in sensorthings/http/routes.py): Observations only in the streams
of a Project it holds create for or that it owns; a stream of such a Project (and its Observations) changed
or deleted with update / delete for it; a Thing it owns; everything else only with the role everywhere.

The matrix: principal × action. A key holding one role (or all of them) for Project P1; an owner (the
Party whose authId is its key id) holding its roles only for an unrelated Project P3, so that only the
ownership can allow it anything here; a key holding create everywhere; the operator. Every refusal is a
403 (never a 401: the caller did authenticate) with a JSON message naming the role, and leaves the data as
it was (the counts of every entity set and the entity itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from citystream.auth import credentials
from sensorthings.model.access import Role
from tests.auth.helpers import ANON, assert_refused, connection, key_id
from tests.conftest import empty_database
from tests.sta_helpers import (
    ADMIN,
    ENTITY_SETS,
    HTTP,
    count,
    create,
    create_thing_with_location,
    datastream_body,
    feature_body,
    location_body,
    observed_property_body,
    read,
    ref,
    sensor_body,
    thing_body,
    url,
)

PROJECT_KEYS: dict[str, tuple[str, ...]] = {
    "create@P1": ("create",),
    "update@P1": ("update",),
    "delete@P1": ("delete",),
    "all@P1": ("read", "create", "update", "delete"),
}
PRINCIPALS = (*PROJECT_KEYS, "owner", "create", "admin")
"""Who asks: keys scoped to P1, the owner (its roles only for P3), a key with create everywhere, the operator."""
SCOPES = ("P1", "P2", "none", "owned")
"""Where the target stream (or Thing) belongs: Project P1, Project P2, no Project, owned by the owner key."""

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
SETS = (*ENTITY_SETS, "Projects", "Parties")


def may(who: str, role: str, scope: str | None) -> bool:
    """Whether `who` may do what needs `role` to a target in `scope` (None: a target that belongs nowhere,
    e.g. a new Thing or Sensor, which only a role held everywhere covers)."""
    if who == "admin":
        return True
    if who == "create":
        return role == "create"
    if who == "owner":
        return scope == "owned"
    return scope == "P1" and role in PROJECT_KEYS[who]


@dataclass
class World:
    sta: str
    headers: dict[str, dict[str, str]]
    p1: int
    p2: int
    p3: int
    thing: int
    sensor: int
    other_sensor: int
    prop: int
    owner_party: int
    streams: dict[str, int]
    """A Datastream per scope (SCOPES), made once; tests that change or delete one make their own."""
    multis: dict[str, int]
    """A MultiDatastream of one component in P1 and in P2."""

    def send(self, who: str, method: str, path: str, body: Any = None) -> httpx.Response:
        return ANON.request(method, url(self.sta, path), json=body, headers=self.headers[who])

    def links(self, scope: str) -> dict[str, Any]:
        return {"P1": {"Project": ref(self.p1)}, "P2": {"Project": ref(self.p2)}, "none": {},
                "owned": {"Party": ref(self.owner_party)}}[scope]

    def new_stream(self, scope: str, name: str = "fresh") -> int:
        """A new Datastream in `scope`, made by the operator."""
        return create(self.sta, "Datastreams", datastream_body(
            name, Thing=ref(self.thing), Sensor=ref(self.sensor), ObservedProperty=ref(self.prop),
            **self.links(scope)))

    def new_observation(self, stream: int, result: Any = 1) -> int:
        return create(self.sta, f"Datastreams({stream})/Observations", {"result": result})

    def new_thing(self, owned: bool) -> int:
        extra = {"Party": ref(self.owner_party)} if owned else {}
        return create(self.sta, "Things", thing_body("owned" if owned else "foreign",
                                                     Locations=[location_body()], **extra))


def scoped_key(database_url: str, name: str, roles: tuple[str, ...], projects: list[int] | None) -> str:
    with connection(database_url) as conn:
        return credentials.create_key(conn, name, frozenset(Role(r) for r in roles), projects=projects).token


def multi_body(**links: Any) -> dict[str, Any]:
    return {"name": "multi", "description": "one component", "observationType": OM + "OM_ComplexObservation",
            "multiObservationDataTypes": [OM + "OM_Measurement"],
            "unitOfMeasurements": [{"name": "degree Celsius", "symbol": "°C",
                                    "definition": "http://unitsofmeasure.org/ucum.html#para-30"}], **links}


@pytest.fixture(scope="module")
def world(server_url: str, database_url: str) -> World:
    empty_database(database_url)
    sta = f"{server_url}/v1.1"
    p1, p2, p3 = (create(sta, "Projects", {"name": n, "termsOfUse": "CC-BY"}) for n in ("P1", "P2", "P3"))
    tokens = {who: scoped_key(database_url, who, roles, [p1]) for who, roles in PROJECT_KEYS.items()}
    tokens["owner"] = scoped_key(database_url, "owner", ("create", "update", "delete"), [p3])
    tokens["create"] = scoped_key(database_url, "global create", ("create",), None)
    owner_party = create(sta, "Parties", {"role": "individual", "authId": key_id(tokens["owner"])})
    headers = {who: {"Authorization": f"Bearer {token}"} for who, token in tokens.items()} | {"admin": ADMIN}
    thing = create_thing_with_location(sta, "base")
    sensor, other_sensor = (create(sta, "Sensors", sensor_body(n)) for n in ("sensor", "other sensor"))
    prop = create(sta, "ObservedProperties", observed_property_body())
    w = World(sta, headers, p1, p2, p3, thing, sensor, other_sensor, prop, owner_party, {}, {})
    w.streams = {scope: w.new_stream(scope, scope) for scope in SCOPES}
    for scope in ("P1", "P2"):
        w.multis[scope] = create(sta, "MultiDatastreams", multi_body(
            Thing=ref(thing), Sensor=ref(sensor), ObservedProperties=[ref(prop)], **w.links(scope)))
    for stream in w.streams.values():
        w.new_observation(stream, 0)
    return w


def snapshot(world: World, *paths: str) -> tuple[dict[str, int], list[Any]]:
    """The count of every entity set and the entities at `paths` (as the operator reads them)."""
    return {name: count(world.sta, name) for name in SETS}, [read(world.sta, p) for p in paths]


def answered(response: httpx.Response, who: str, role: str, scope: str | None, allowed: int,
             before: tuple[dict[str, int], list[Any]], world: World, *paths: str) -> bool:
    """Assert the status `who` gets (`allowed`, or a 403 naming `role` that changed nothing); True if allowed."""
    if may(who, role, scope):
        assert response.status_code == allowed, f"{who}: {response.status_code} {response.text}"
        return True
    assert_refused(response, 403, role)
    assert snapshot(world, *paths) == before, f"a refused {response.request.method} changed data"
    return False


def observations_in(world: World, stream: int, collection: str = "Datastreams") -> int:
    return count(world.sta, f"{collection}({stream})/Observations")


# ---------------------------------------------------------------------------------------------- creating


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("via", ["body link", "path"])
def test_post_observation(world: World, via: str, scope: str, who: str) -> None:
    stream = world.streams[scope]
    before = snapshot(world)
    in_stream = observations_in(world, stream)
    if via == "path":
        response = world.send(who, "POST", f"Datastreams({stream})/Observations", {"result": 21.5})
    else:
        response = world.send(who, "POST", "Observations", {"result": 21.5, "Datastream": ref(stream)})
    if answered(response, who, "create", scope, 201, before, world):
        assert observations_in(world, stream) == in_stream + 1
        assert response.json()["result"] == 21.5


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("scope", ["P1", "P2"])
def test_post_observation_to_a_multi_datastream(world: World, scope: str, who: str) -> None:
    multi = world.multis[scope]
    before = snapshot(world)
    in_stream = observations_in(world, multi, "MultiDatastreams")
    response = world.send(who, "POST", "Observations", {"result": [1.5], "MultiDatastream": ref(multi)})
    if answered(response, who, "create", scope, 201, before, world):
        assert observations_in(world, multi, "MultiDatastreams") == in_stream + 1
    before = snapshot(world)
    path = world.send(who, "POST", f"MultiDatastreams({multi})/Observations", {"result": [2.5]})
    answered(path, who, "create", scope, 201, before, world)


def data_array(stream: int, *results: Any) -> dict[str, Any]:
    return {"Datastream": ref(stream), "components": ["result"], "dataArray": [[r] for r in results]}


@pytest.mark.parametrize("who", PRINCIPALS)
def test_create_observations_mixing_projects_is_refused_whole(world: World, who: str) -> None:
    p1, p2 = world.streams["P1"], world.streams["P2"]
    before = snapshot(world)
    response = world.send(who, "POST", "CreateObservations", [data_array(p1, 1, 2), data_array(p2, 3)])
    # the request is allowed only where every stream in it is (P2's decides for the P1-scoped keys)
    if answered(response, who, "create", "P2", 201, before, world):
        assert len(response.json()) == 3 and all(not link.startswith("error") for link in response.json())
        assert count(world.sta, "Observations") == before[0]["Observations"] + 3


@pytest.mark.parametrize("who", PRINCIPALS)
def test_create_observations_into_p1_only(world: World, who: str) -> None:
    p1, multi = world.streams["P1"], world.multis["P1"]
    before = snapshot(world)
    response = world.send(who, "POST", "CreateObservations", [
        data_array(p1, 1, 2), {"MultiDatastream": ref(multi), "components": ["result"], "dataArray": [[[4.5]]]}])
    if answered(response, who, "create", "P1", 201, before, world):
        assert all(not link.startswith("error") for link in response.json()), response.json()
        assert count(world.sta, "Observations") == before[0]["Observations"] + 3


BATCH_WHO = ("create@P1", "all@P1", "update@P1", "owner", "create", "admin")


@pytest.mark.parametrize("who", BATCH_WHO)
def test_batch_requests_are_each_checked_against_the_project(world: World, who: str) -> None:
    p1, p2 = world.streams["P1"], world.streams["P2"]
    before = snapshot(world)
    response = world.send(who, "POST", "$batch", {"requests": [
        {"id": "p1", "method": "post", "url": f"Datastreams({p1})/Observations", "body": {"result": 1}},
        {"id": "p2", "method": "post", "url": "Observations", "body": {"result": 2, "Datastream": ref(p2)}}]})
    assert response.status_code == 200, response.text
    answers = {a["id"]: a for a in response.json()["responses"]}
    stored = 0
    for name, scope in (("p1", "P1"), ("p2", "P2")):
        if may(who, "create", scope):
            assert answers[name]["status"] == 201, answers[name]
            stored += 1
        else:
            assert answers[name]["status"] == 403, answers[name]
            assert "'create'" in answers[name]["body"]["message"], answers[name]
    assert snapshot(world)[0] == {**before[0], "Observations": before[0]["Observations"] + stored}


@pytest.mark.parametrize("who", BATCH_WHO)
def test_a_change_set_with_a_refused_request_is_rolled_back(world: World, who: str) -> None:
    p1, p2 = world.streams["P1"], world.streams["P2"]
    before = snapshot(world)
    response = world.send(who, "POST", "$batch", {"requests": [
        {"id": "p1", "atomicityGroup": "g", "method": "post", "url": f"Datastreams({p1})/Observations",
         "body": {"result": 1}},
        {"id": "p2", "atomicityGroup": "g", "method": "post", "url": "Observations",
         "body": {"result": 2, "Datastream": ref(p2)}}]})
    assert response.status_code == 200, response.text
    statuses = {a["id"]: a["status"] for a in response.json()["responses"]}
    if may(who, "create", "P2"):
        assert statuses == {"p1": 201, "p2": 201}
        assert count(world.sta, "Observations") == before[0]["Observations"] + 2
    elif may(who, "create", "P1"):
        assert statuses == {"p1": 424, "p2": 403}
        assert snapshot(world) == before
    else:
        assert statuses == {"p1": 403, "p2": 424}
        assert snapshot(world) == before


NEW_ENTITIES: dict[str, Callable[[World], dict[str, Any]]] = {
    "Things": lambda w: thing_body("new"),
    "Sensors": lambda w: sensor_body("new"),
    "Locations": lambda w: location_body("new"),
    "ObservedProperties": lambda w: observed_property_body("new"),
    "Datastreams": lambda w: datastream_body("new", Thing=ref(w.thing), Sensor=ref(w.sensor),
                                             ObservedProperty=ref(w.prop), Project=ref(w.p1)),
    "MultiDatastreams": lambda w: multi_body(Thing=ref(w.thing), Sensor=ref(w.sensor),
                                             ObservedProperties=[ref(w.prop)], Project=ref(w.p1)),
}


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("kind", NEW_ENTITIES)
def test_creating_anything_but_observations_needs_create_everywhere(world: World, kind: str, who: str) -> None:
    before = snapshot(world)
    response = world.send(who, "POST", kind, NEW_ENTITIES[kind](world))
    if answered(response, who, "create", None, 201, before, world):
        assert count(world.sta, kind) == before[0][kind] + 1


@pytest.mark.parametrize("who", PRINCIPALS)
def test_a_datastream_in_a_p1_things_path_needs_create_everywhere(world: World, who: str) -> None:
    before = snapshot(world)
    response = world.send(who, "POST", f"Things({world.thing})/Datastreams", datastream_body(
        "new", Sensor=ref(world.sensor), ObservedProperty=ref(world.prop), Project=ref(world.p1)))
    answered(response, who, "create", None, 201, before, world)


@pytest.mark.parametrize("who", PRINCIPALS)
def test_a_datastream_inline_in_an_observation_needs_create_everywhere(world: World, who: str) -> None:
    before = snapshot(world)
    response = world.send(who, "POST", "Observations", {"result": 1, "Datastream": datastream_body(
        "inline", Thing=ref(world.thing), Sensor=ref(world.sensor), ObservedProperty=ref(world.prop),
        Project=ref(world.p1))})
    if answered(response, who, "create", None, 201, before, world):
        assert count(world.sta, "Datastreams") == before[0]["Datastreams"] + 1


# ---------------------------------------------------------------------------------------------- changing


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("scope", SCOPES)
def test_patch_a_datastream(world: World, scope: str, who: str) -> None:
    stream = world.new_stream(scope)
    path = f"Datastreams({stream})"
    before = snapshot(world, path)
    response = world.send(who, "PATCH", path, {"description": f"patched by {who}"})
    if answered(response, who, "update", scope, 200, before, world, path):
        assert read(world.sta, path)["description"] == f"patched by {who}"


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("scope", SCOPES)
def test_delete_a_datastream(world: World, scope: str, who: str) -> None:
    stream = world.new_stream(scope)
    world.new_observation(stream)
    path = f"Datastreams({stream})"
    before = snapshot(world, path)
    if answered(world.send(who, "DELETE", path), who, "delete", scope, 200, before, world, path):
        assert HTTP.get(url(world.sta, path)).status_code == 404
        assert count(world.sta, "Observations") == before[0]["Observations"] - 1


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("scope", ["P1", "P2"])
def test_patch_and_delete_a_multi_datastream(world: World, scope: str, who: str) -> None:
    multi = create(world.sta, "MultiDatastreams", multi_body(
        Thing=ref(world.thing), Sensor=ref(world.sensor), ObservedProperties=[ref(world.prop)],
        **world.links(scope)))
    path = f"MultiDatastreams({multi})"
    before = snapshot(world, path)
    answered(world.send(who, "PATCH", path, {"description": "patched"}), who, "update", scope, 200, before,
             world, path)
    before = snapshot(world, path)
    answered(world.send(who, "DELETE", path), who, "delete", scope, 200, before, world, path)


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("scope", SCOPES)
def test_patch_an_observation(world: World, scope: str, who: str) -> None:
    observation = world.new_observation(world.streams[scope], 5)
    path = f"Observations({observation})"
    before = snapshot(world, path)
    response = world.send(who, "PATCH", path, {"result": 4243})
    if answered(response, who, "update", scope, 200, before, world, path):
        assert read(world.sta, path)["result"] == 4243


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("scope", SCOPES)
def test_delete_an_observation(world: World, scope: str, who: str) -> None:
    observation = world.new_observation(world.streams[scope], 6)
    path = f"Observations({observation})"
    before = snapshot(world, path)
    if answered(world.send(who, "DELETE", path), who, "delete", scope, 200, before, world, path):
        assert HTTP.get(url(world.sta, path)).status_code == 404


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("owned", [True, False], ids=["owned thing", "foreign thing"])
def test_patch_and_delete_a_thing(world: World, owned: bool, who: str) -> None:
    thing = world.new_thing(owned)
    path = f"Things({thing})"
    scope = "owned" if owned else None
    before = snapshot(world, path)
    if answered(world.send(who, "PATCH", path, {"description": "patched"}), who, "update", scope, 200, before,
                world, path):
        assert read(world.sta, path)["description"] == "patched"
    before = snapshot(world, path)
    if answered(world.send(who, "DELETE", path), who, "delete", scope, 200, before, world, path):
        assert HTTP.get(url(world.sta, path)).status_code == 404


@pytest.mark.parametrize("who", PRINCIPALS)
def test_a_sensor_is_changed_only_with_update_everywhere(world: World, who: str) -> None:
    sensor = create(world.sta, "Sensors", sensor_body("to change"))
    path = f"Sensors({sensor})"
    before = snapshot(world, path)
    answered(world.send(who, "PATCH", path, {"description": "patched"}), who, "update", None, 200, before,
             world, path)
    before = snapshot(world, path)
    answered(world.send(who, "DELETE", path), who, "delete", None, 200, before, world, path)


@pytest.mark.parametrize("who", PRINCIPALS)
def test_delete_observations_by_filter_needs_delete_everywhere(world: World, who: str) -> None:
    marker = 777.5 + PRINCIPALS.index(who)
    world.new_observation(world.streams["P1"], marker)
    # a principal refused must be refused even for $filter=true; the operator deletes only this case's one
    filter_ = f"result eq {marker}" if who == "admin" else "true"
    before = snapshot(world)
    response = world.send(who, "DELETE", f"Observations?$filter={filter_}")
    if answered(response, who, "delete", None, 200, before, world):
        assert response.json() == {"deleted": 1}


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("scope", ["P1", "P2"])
def test_ref_on_a_datastream_needs_update_for_its_project(world: World, scope: str, who: str) -> None:
    stream = world.new_stream(scope)
    path = f"Datastreams({stream})/Sensor"
    before = snapshot(world, path)
    response = world.send(who, "PUT", f"{path}/$ref", ref(world.other_sensor))
    if answered(response, who, "update", scope, 204, before, world, path):
        assert read(world.sta, path)["@iot.id"] == world.other_sensor


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("owned", [True, False], ids=["owned thing", "foreign thing"])
def test_ref_on_a_thing_needs_update_as_its_owner(world: World, owned: bool, who: str) -> None:
    thing = world.new_thing(owned)
    location = create(world.sta, "Locations", location_body("extra"))
    scope = "owned" if owned else None
    links = f"Things({thing})/Locations"
    before = snapshot(world, links)
    answered(world.send(who, "POST", f"{links}/$ref", ref(location)), who, "update", scope, 204, before,
             world, links)
    if not may(who, "update", scope):
        assert HTTP.post(url(world.sta, f"{links}/$ref"), json=ref(location)).status_code == 204
    before = snapshot(world, links)
    answered(world.send(who, "DELETE", f"{links}({location})/$ref"), who, "update", scope, 204, before,
             world, links)


# ---------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("who", "method", "path", "body", "role"), [
    ("update@P1", "POST", "Observations", "P1 observation", "create"),  # no create anywhere: require()
    ("create@P1", "POST", "Observations", "P2 observation", "create"),  # create, not for P2: authorize.check
    ("create@P1", "POST", "Things", "thing", "create"),  # only everywhere: authorize.require_global
    ("create@P1", "PATCH", "P1 stream", "patch", "update"),
    ("delete@P1", "DELETE", "Observations?$filter=true", None, "delete"),
])
def test_a_refusal_is_a_403_with_a_json_message_naming_the_role(
        world: World, who: str, method: str, path: str, body: str | None, role: str) -> None:
    bodies = {"P1 observation": {"result": 1, "Datastream": ref(world.streams["P1"])},
              "P2 observation": {"result": 1, "Datastream": ref(world.streams["P2"])},
              "thing": thing_body(), "patch": {"description": "x"}, None: None}
    path = {"P1 stream": f"Datastreams({world.streams['P1']})"}.get(path, path)
    before = snapshot(world)
    response = world.send(who, method, path, bodies[body])
    text = assert_refused(response, 403, role)  # 403, JSON, no challenge, the role named
    assert response.status_code != 401 and "authenticate" not in text.lower(), text
    assert who in text, f"the message names the principal: {text}"
    assert response.json().get("code") == 403, response.json()
    assert snapshot(world) == before


def test_an_owner_writes_what_it_owns_whatever_its_roles(world: World, database_url: str) -> None:
    """Ownership (an authId only admin can set) grants update and delete of what the Party owns and creating
    Observations in its streams, also to a key that holds only read; nothing beyond what it owns."""
    token = scoped_key(database_url, "owner reading", ("read",), None)
    party = create(world.sta, "Parties", {"role": "individual", "authId": key_id(token)})
    thing = create(world.sta, "Things", thing_body("read-only owner's", Party=ref(party)))
    stream = create(world.sta, "Datastreams", datastream_body(
        "read-only owner's", Thing=ref(thing), Sensor=ref(world.sensor), ObservedProperty=ref(world.prop),
        Party=ref(party)))
    headers = {"Authorization": f"Bearer {token}"}
    before = snapshot(world, f"Things({world.thing})")
    for method, path, body, role in (
            ("POST", f"Datastreams({world.streams['P1']})/Observations", {"result": 1}, "create"),
            ("PATCH", f"Things({world.thing})", {"description": "changed"}, "update"),
            ("DELETE", f"Datastreams({world.streams['P2']})", None, "delete")):
        assert_refused(ANON.request(method, url(world.sta, path), json=body, headers=headers), 403, role)
    assert snapshot(world, f"Things({world.thing})") == before
    for method, path, body, status in (
            ("POST", f"Datastreams({stream})/Observations", {"result": 1, "FeatureOfInterest": feature_body()}, 201),
            ("PATCH", f"Things({thing})", {"description": "changed"}, 200),
            ("DELETE", f"Datastreams({stream})", None, 200),
            ("DELETE", f"Things({thing})", None, 200)):
        response = ANON.request(method, url(world.sta, path), json=body, headers=headers)
        assert response.status_code == status, (method, path, response.text)


# ---------------------------------------------------------------------------------------------- escapes
# Ways out of a Project: a write the rules above allow on the P1 entity it names, that changes or adds to
# another Project's data.


def test_an_observation_posted_under_a_p1_path_cannot_name_a_p2_multi_datastream(world: World) -> None:
    p1, multi = world.streams["P1"], world.multis["P2"]
    before = snapshot(world)
    response = world.send("create@P1", "POST", f"Datastreams({p1})/Observations",
                          {"result": [1.5], "MultiDatastream": ref(multi)})
    assert response.status_code in (400, 403), response.text
    assert snapshot(world) == before
    response = world.send("create@P1", "POST", f"MultiDatastreams({multi})/Observations",
                          {"result": 1.5, "Datastream": ref(p1)})
    assert response.status_code in (400, 403), response.text
    assert snapshot(world) == before


def test_an_observation_posted_under_a_p1_path_cannot_name_a_p2_datastream(world: World) -> None:
    p1, p2 = world.streams["P1"], world.streams["P2"]
    before = snapshot(world)
    response = world.send("create@P1", "POST", f"Datastreams({p1})/Observations",
                          {"result": 1, "Datastream": ref(p2)})
    assert response.status_code in (400, 403), response.text
    assert snapshot(world) == before


def test_a_p1_observation_cannot_be_moved_into_a_p2_datastream(world: World) -> None:
    observation = world.new_observation(world.streams["P1"], 9)
    path = f"Observations({observation})"
    before = snapshot(world, f"{path}/Datastream")
    response = world.send("update@P1", "PATCH", path, {"Datastream": ref(world.streams["P2"])})
    assert_refused(response, 403, "update")
    assert snapshot(world, f"{path}/Datastream") == before


def test_a_p1_observation_cannot_be_moved_into_a_p2_datastream_by_ref(world: World) -> None:
    observation = world.new_observation(world.streams["P1"], 9)
    path = f"Observations({observation})/Datastream"
    before = snapshot(world, path)
    response = world.send("update@P1", "PUT", f"{path}/$ref", ref(world.streams["P2"]))
    assert_refused(response, 403, "update")
    assert snapshot(world, path) == before


def test_a_p1_datastream_cannot_be_moved_into_p2(world: World) -> None:
    stream = world.new_stream("P1")
    path = f"Datastreams({stream})/Project"
    before = snapshot(world, path)
    response = world.send("update@P1", "PATCH", f"Datastreams({stream})", {"Project": ref(world.p2)})
    assert_refused(response, 403, "update")
    assert snapshot(world, path) == before


def test_an_owner_cannot_pull_a_p2_datastream_under_its_thing(world: World) -> None:
    thing = world.new_thing(owned=True)
    stream = world.new_stream("P2")
    path = f"Datastreams({stream})/Thing"
    before = snapshot(world, path)
    response = world.send("owner", "POST", f"Things({thing})/Datastreams/$ref", ref(stream))
    assert_refused(response, 403, "update")
    assert snapshot(world, path) == before


def test_the_json_message_of_a_batch_refusal_names_the_role(world: World) -> None:
    response = world.send("create@P1", "POST", "$batch", {"requests": [
        {"id": "1", "method": "patch", "url": f"Datastreams({world.streams['P1']})", "body": {"name": "x"}}]})
    (answer,) = response.json()["responses"]
    assert answer["status"] == 403 and "'update'" in answer["body"]["message"], answer


def test_deleting_an_owned_thing_does_not_delete_a_p2_datastream_on_it(world: World) -> None:
    thing = world.new_thing(owned=True)
    stream = create(world.sta, "Datastreams", datastream_body(
        "p2 on owned thing", Thing=ref(thing), Sensor=ref(world.sensor), ObservedProperty=ref(world.prop),
        Project=ref(world.p2)))
    world.new_observation(stream)
    before = snapshot(world, f"Datastreams({stream})")
    assert_refused(world.send("owner", "DELETE", f"Things({thing})"), 403, "delete")
    assert snapshot(world, f"Datastreams({stream})") == before
