"""Access control over HTTP (sensorthings/model/access.py, citystream/auth): which role each request of the
STA and the OGC API needs, for keys holding each single role and for the anonymous caller; every credential
form and every way one can fail; revocation reaching every API process; anonymous read switched off; the
operator endpoints; and the OpenAPI document's security declarations.

The matrix runs against the session app (anonymous read on); every refused write must leave the data as it
was (counts and the entity itself).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate as validate_openapi

from citystream.auth import credentials
from tests.auth.helpers import (
    ANON,
    PRINCIPALS,
    ROLE_NAMES,
    app_settings,
    assert_refused,
    basic,
    basic_key,
    bearer,
    connection,
    expected_status,
    key_id,
    new_key,
    new_user,
    revoked_key,
)
from tests.conftest import empty_database, running_app
from tests.mqtt_helpers import wait_for
from tests.sta_helpers import (
    ADMIN,
    ADMIN_TOKEN,
    HTTP,
    count,
    counts,
    create,
    create_observation,
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

ENTITY_TYPES = ("Things", "Sensors", "ObservedProperties", "Locations", "Datastreams", "Observations",
                "FeaturesOfInterest")
NEEDS = {"POST": "create", "PATCH": "update", "PUT": "update", "DELETE": "delete"}
ALLOWED = {"POST": 201, "PATCH": 200, "PUT": 200, "DELETE": 200}
USER_PASSWORD = "correct horse battery"


@dataclass
class World:
    """The base entities the matrix's new entities hang on, and a credential per principal."""

    sta: str
    root: str
    database_url: str
    headers: dict[str, dict[str, str]]
    tokens: dict[str, str]
    thing: int
    sensor: int
    prop: int
    datastream: int
    feature: int

    def send(self, who: str, method: str, path: str, body: Any = None) -> httpx.Response:
        return ANON.request(method, url(self.sta, path), json=body, headers=self.headers[who])

    def body(self, kind: str) -> dict[str, Any]:
        """A valid new entity of `kind`."""
        return {
            "Things": thing_body("new"), "Sensors": sensor_body("new"),
            "ObservedProperties": observed_property_body("new"), "Locations": location_body("new"),
            "Datastreams": datastream_body("new", Thing=ref(self.thing), Sensor=ref(self.sensor),
                                           ObservedProperty=ref(self.prop)),
            "Observations": {"result": 7, "Datastream": ref(self.datastream),
                             "FeatureOfInterest": ref(self.feature)},
            "FeaturesOfInterest": feature_body("new"),
        }[kind]

    def new(self, kind: str) -> int:
        """A new entity of `kind`, created as the operator."""
        return create(self.sta, kind, self.body(kind))


@pytest.fixture(scope="module")
def world(server_url: str, database_url: str) -> World:
    empty_database(database_url)
    sta = f"{server_url}/v1.1"
    thing = create_thing_with_location(sta, "base")
    sensor, prop = create(sta, "Sensors", sensor_body()), create(sta, "ObservedProperties", observed_property_body())
    datastream = create(sta, "Datastreams", datastream_body(Thing=ref(thing), Sensor=ref(sensor),
                                                            ObservedProperty=ref(prop)))
    feature = create(sta, "FeaturesOfInterest", feature_body())
    create_observation(sta, datastream, 1, FeatureOfInterest=ref(feature))
    tokens = {role: new_key(database_url, role, name=f"only {role}") for role in ROLE_NAMES}
    headers = {"anonymous": {}, **{role: bearer(token) for role, token in tokens.items()}}
    return World(sta, server_url, database_url, headers, tokens, thing, sensor, prop, datastream, feature)


def snapshot(sta: str, path: str | None = None) -> tuple[dict[str, int], Any]:
    return counts(sta), (read(sta, path) if path else None)


def check(response: httpx.Response, who: str, needed: str, allowed: int) -> bool:
    """Assert the answer `who` gets for an action needing `needed`; True if it was allowed."""
    refused = expected_status(who, needed)
    if refused is None:
        assert response.status_code == allowed, response.text
        return True
    assert_refused(response, refused, needed)
    return False


# ---------------------------------------------------------------------------------------------- the matrix

REPLACED: dict[str, dict[str, Any]] = {
    "Things": thing_body("replaced"), "Sensors": sensor_body("replaced"),
    "ObservedProperties": observed_property_body("replaced"), "Locations": location_body("replaced"),
    "Datastreams": datastream_body("replaced"), "FeaturesOfInterest": feature_body("replaced"),
    "Observations": {"result": 4242, "phenomenonTime": "2024-01-01T00:00:00Z"},
}


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("kind", ENTITY_TYPES)
@pytest.mark.parametrize("verb", ["POST", "PATCH", "PUT", "DELETE"])
def test_writes_need_their_role(world: World, verb: str, kind: str, who: str) -> None:
    target = None if verb == "POST" else f"{kind}({world.new(kind)})"
    body = {"POST": world.body(kind), "PUT": REPLACED[kind], "DELETE": None,
            "PATCH": {"result": 4243} if kind == "Observations" else {"description": "patched"}}[verb]
    before = snapshot(world.sta, target)
    response = world.send(who, verb, target or kind, body)
    if not check(response, who, NEEDS[verb], ALLOWED[verb]):
        assert snapshot(world.sta, target) == before
    elif verb == "POST":
        assert count(world.sta, kind) == before[0][kind] + 1
    elif verb == "DELETE":
        assert HTTP.get(url(world.sta, target or "")).status_code == 404
    else:
        changed, sent = read(world.sta, target or ""), body or {}
        assert all(changed[k] == sent[k] for k in ("name", "description", "result") if k in sent), changed


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("kind", ENTITY_TYPES)
def test_anyone_reads_while_anonymous_read_is_on(world: World, kind: str, who: str) -> None:
    collection = world.send(who, "GET", kind)
    assert collection.status_code == 200, collection.text
    first = collection.json()["value"][0]["@iot.id"]
    assert world.send(who, "GET", f"{kind}({first})").status_code == 200
    assert world.send(who, "HEAD", kind).status_code == 200


@pytest.mark.parametrize("who", PRINCIPALS)
def test_anyone_reads_the_ogc_api_while_anonymous_read_is_on(world: World, who: str) -> None:
    for path in ("/ogcapi", "/ogcapi/collections", "/ogcapi/collections/things/items",
                 "/ogcapi/collections/observations/items"):
        response = ANON.get(world.root + path, headers=world.headers[who])
        assert response.status_code == 200, f"{path}: {response.text}"


def _linked_locations(world: World, thing: int) -> list[int]:
    return [v["@iot.id"] for v in read(world.sta, f"Things({thing})/Locations")["value"]]


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("verb", ["POST", "PUT", "DELETE"])
def test_ref_writes_need_update(world: World, verb: str, who: str) -> None:
    thing, location, sensor = world.new("Things"), world.new("Locations"), world.new("Sensors")
    datastream = world.new("Datastreams")
    if verb == "DELETE":
        assert HTTP.post(url(world.sta, f"Things({thing})/Locations/$ref"), json=ref(location)).status_code == 204
    path, body = {"POST": (f"Things({thing})/Locations/$ref", ref(location)),
                  "PUT": (f"Datastreams({datastream})/Sensor/$ref", ref(sensor)),
                  "DELETE": (f"Things({thing})/Locations({location})/$ref", None)}[verb]
    links_before = (_linked_locations(world, thing), read(world.sta, f"Datastreams({datastream})/Sensor"))
    before = snapshot(world.sta)
    allowed = check(world.send(who, verb, path, body), who, "update", 204)
    links = (_linked_locations(world, thing), read(world.sta, f"Datastreams({datastream})/Sensor"))
    if not allowed:
        assert (snapshot(world.sta), links) == (before, links_before)
    else:
        expected = {"POST": [location], "DELETE": []}
        assert links[0] == expected.get(verb, links_before[0])
        assert links[1]["@iot.id"] == (sensor if verb == "PUT" else world.sensor)


@pytest.mark.parametrize("who", PRINCIPALS)
def test_ref_with_a_trailing_slash_needs_update_too(world: World, who: str) -> None:
    thing, location = world.new("Things"), world.new("Locations")
    response = world.send(who, "POST", f"Things({thing})/Locations/$ref/", ref(location))
    if expected_status(who, "update") is None:
        assert response.status_code in (204, 400), response.text
    else:
        assert_refused(response, expected_status(who, "update") or 0, "update")
        assert _linked_locations(world, thing) == []


@pytest.mark.parametrize("who", PRINCIPALS)
def test_filtered_delete_needs_delete(world: World, who: str) -> None:
    result = 555.25 + PRINCIPALS.index(who)  # of this case only: refused cases before it leave theirs
    for _ in range(2):
        create_observation(world.sta, world.datastream, result, FeatureOfInterest=ref(world.feature))
    before = snapshot(world.sta)
    response = world.send(who, "DELETE", f"Observations?$filter=result eq {result}")
    if check(response, who, "delete", 200):
        assert response.json() == {"deleted": 2}
    else:
        assert snapshot(world.sta) == before


@pytest.mark.parametrize("who", PRINCIPALS)
def test_create_observations_needs_create(world: World, who: str) -> None:
    before = snapshot(world.sta)
    response = world.send(who, "POST", "CreateObservations", [
        {"Datastream": ref(world.datastream), "components": ["result", "FeatureOfInterest/id"],
         "dataArray": [[1, world.feature], [2, world.feature]]}])
    if check(response, who, "create", 201):
        assert count(world.sta, "Observations") == before[0]["Observations"] + 2
    else:
        assert snapshot(world.sta) == before


@pytest.mark.parametrize("who", PRINCIPALS)
def test_batch_requests_are_each_checked(world: World, who: str) -> None:
    patched, deleted = world.new("Things"), world.new("Things")
    before = snapshot(world.sta)
    response = world.send(who, "POST", "$batch", {"requests": [
        {"id": "get", "method": "get", "url": "Things"},
        {"id": "post", "method": "post", "url": "Things", "body": thing_body("from a batch")},
        {"id": "patch", "method": "patch", "url": f"Things({patched})", "body": {"description": "batched"}},
        {"id": "delete", "method": "delete", "url": f"Things({deleted})"},
    ]})
    assert response.status_code == 200, response.text
    answers = {a["id"]: a for a in response.json()["responses"]}
    assert answers["get"]["status"] == 200
    allowed = {}
    for name, needed, status in (("post", "create", 201), ("patch", "update", 200), ("delete", "delete", 200)):
        refused = expected_status(who, needed)
        assert answers[name]["status"] == (refused or status), answers[name]
        if refused == 403:
            assert f"'{needed}'" in answers[name]["body"]["message"]
        allowed[name] = refused is None
    things = before[0]["Things"] + allowed["post"] - allowed["delete"]
    assert count(world.sta, "Things") == things
    assert (read(world.sta, f"Things({patched})")["description"] == "batched") == allowed["patch"]


def test_a_refused_request_rolls_its_change_set_back(world: World) -> None:
    victim = world.new("Things")
    before = snapshot(world.sta)
    response = world.send("create", "POST", "$batch", {"requests": [
        {"id": "a", "atomicityGroup": "g", "method": "post", "url": "Things", "body": thing_body("rolled back")},
        {"id": "b", "atomicityGroup": "g", "method": "delete", "url": f"Things({victim})"}]})
    statuses = {a["id"]: a["status"] for a in response.json()["responses"]}
    assert statuses == {"a": 424, "b": 403}
    assert snapshot(world.sta) == before


def test_headers_inside_a_batch_grant_nothing(world: World) -> None:
    before = snapshot(world.sta)
    response = world.send("anonymous", "POST", "$batch", {"requests": [
        {"id": "1", "method": "post", "url": "Things", "body": thing_body(), "headers": ADMIN}]})
    assert response.json()["responses"][0]["status"] == 401
    assert snapshot(world.sta) == before


# ---------------------------------------------------------------------------------------------- credentials


@pytest.fixture(scope="module")
def writer(world: World) -> dict[str, str]:
    """A create+read key and a user with those roles."""
    new_user(world.database_url, "writer", USER_PASSWORD, "create", "read")
    return {"key": new_key(world.database_url, "create", "read", name="writer key")}


@pytest.mark.parametrize("form", ["bearer", "x-api-key", "basic-key", "basic-user", "operator"])
def test_every_credential_form_authenticates(world: World, writer: dict[str, str], form: str) -> None:
    token = writer["key"]
    headers = {"bearer": bearer(token), "x-api-key": {"X-API-Key": token}, "basic-key": basic_key(token),
               "basic-user": basic("writer", USER_PASSWORD), "operator": ADMIN}[form]
    for _ in range(2):  # the second time from the store's snapshot (and the user's remembered check)
        response = ANON.post(url(world.sta, "Things"), json=thing_body(f"by {form}"), headers=headers)
        assert response.status_code == 201, response.text


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


BAD_CREDENTIALS: dict[str, dict[str, str]] = {
    "empty bearer": {"Authorization": "Bearer"},
    "bearer of nothing known": {"Authorization": "Bearer not-a-key"},
    "malformed key": {"Authorization": "Bearer cs_short_secret"},
    "key without secret": {"Authorization": "Bearer cs_abcdefghijkl_"},
    "near-miss operator token": {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    "jwt without an issuer": {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"},
    "unknown scheme": {"Authorization": "Token abc"},
    "bare word": {"Authorization": "abc"},
    "basic not base64": {"Authorization": "Basic !!!not base64!!!"},
    "basic without colon": {"Authorization": "Basic " + _b64("nocolon")},
    "basic not utf-8": {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()},
    "basic unknown user": {"Authorization": "Basic " + _b64("nobody:whatever-password")},
    "basic empty name": {"Authorization": "Basic " + _b64(":password")},
    "x-api-key garbage": {"X-API-Key": "garbage"},
    "x-api-key empty": {"X-API-Key": ""},
    "long bearer key": {"Authorization": "Bearer cs_abcdefghijkl_" + "s" * 10_000},
    "long bearer jwt": {"Authorization": "Bearer " + "a" * 6_000 + "." + "b" * 4_000 + ".c"},
    "long basic": {"Authorization": "Basic " + _b64("u:" + "p" * 9_000)},
    "long x-api-key": {"X-API-Key": "cs_" + "k" * 12_000},
    "long scheme": {"Authorization": "X" * 12_000},
}


@pytest.fixture(scope="module")
def bad_credentials(world: World, writer: dict[str, str]) -> dict[str, dict[str, str]]:
    """BAD_CREDENTIALS and those about real keys and users: wrong secrets, expired, revoked, disabled."""
    db, token = world.database_url, writer["key"]
    past = datetime.now(UTC) - timedelta(minutes=1)
    new_user(db, "disabled", USER_PASSWORD, "read", "create", disabled=True)
    return {**BAD_CREDENTIALS,
            "wrong secret": bearer(f"cs_{key_id(token)}_wrong-secret"),
            "wrong secret x-api-key": {"X-API-Key": f"cs_{key_id(token)}_wrong-secret"},
            "basic key id, wrong secret": basic(key_id(token), "wrong-secret"),
            "basic user, wrong password": basic("writer", "wrong password!"),
            "expired key": bearer(new_key(db, "read", "create", name="expired", expires=past)),
            "expired key as basic": basic_key(new_key(db, "read", name="expired", expires=past)),
            "revoked key": bearer(revoked_key(db, "read", "create")),
            "disabled user": basic("disabled", USER_PASSWORD)}


@pytest.mark.parametrize("case", [*BAD_CREDENTIALS, "wrong secret", "wrong secret x-api-key",
                                  "basic key id, wrong secret", "basic user, wrong password", "expired key",
                                  "expired key as basic", "revoked key", "disabled user"])
def test_a_bad_credential_is_401_even_where_anonymous_may_read(
        world: World, bad_credentials: dict[str, dict[str, str]], case: str) -> None:
    headers = bad_credentials[case]
    for target in (url(world.sta, "Things"), world.sta, world.root + "/ogcapi/collections"):
        assert_refused(ANON.get(target, headers=headers), 401)
    before = count(world.sta, "Things")
    assert_refused(ANON.post(url(world.sta, "Things"), json=thing_body(), headers=headers), 401)
    assert count(world.sta, "Things") == before


def test_a_basic_failure_challenges_with_basic(world: World) -> None:
    response = ANON.get(url(world.sta, "Things"), headers=basic("writer", "wrong password!"))
    assert_refused(response, 401)
    assert response.headers["www-authenticate"].startswith("Basic")


# ---------------------------------------------------------------------------------------------- revocation


def test_revocation_reaches_every_process_within_the_reload_interval(world: World) -> None:
    db, reload_seconds = world.database_url, 1.0
    with (running_app(app_settings(db, auth_reload_seconds=reload_seconds), db) as first,
          running_app(app_settings(db, auth_reload_seconds=reload_seconds), db) as second):
        apps = [f"{first}/v1.1/Things", f"{second}/v1.1/Things"]
        token = new_key(db, "read", "create", name="to be revoked")  # made after both apps started
        new_user(db, "leaver", USER_PASSWORD, "create")
        for target in apps:  # the first request of each: known at once (the reload on a miss)
            assert ANON.post(target, json=thing_body(), headers=bearer(token)).status_code == 201
            assert ANON.post(target, json=thing_body(), headers=basic("leaver", USER_PASSWORD)).status_code == 201
        with connection(db) as conn:
            assert credentials.revoke_key(conn, key_id(token))
            assert credentials.disable_user(conn, "leaver")
        revoked_at = time.monotonic()
        refused_after: dict[tuple[str, str], float] = {}

        def all_refused() -> bool:
            for target in apps:
                for what, headers in (("key", bearer(token)), ("user", basic("leaver", USER_PASSWORD))):
                    if (target, what) not in refused_after and ANON.get(target, headers=headers).status_code == 401:
                        refused_after[(target, what)] = time.monotonic() - revoked_at
            return len(refused_after) == 4

        wait_for(all_refused, timeout=15, what="both apps to refuse the revoked key and the disabled user")
        assert max(refused_after.values()) <= reload_seconds + 1.5, refused_after


def test_an_unknown_key_flood_is_refused_and_a_new_key_still_works(world: World) -> None:
    for n in range(5):
        assert_refused(ANON.get(url(world.sta, "Things"), headers=bearer(f"cs_unknown{n:04d}ab_x")), 401)
    fresh = new_key(world.database_url, "create")
    assert ANON.post(url(world.sta, "Things"), json=thing_body(), headers=bearer(fresh)).status_code == 201


# ---------------------------------------------------------------------------------------------- anonymous read off


@pytest.fixture(scope="module")
def closed(world: World) -> Iterator[str]:
    with running_app(app_settings(world.database_url, anonymous_read=False), world.database_url) as root:
        yield root


CLOSED_READS = ("/v1.1/Things", "/v1.1/Things({thing})", "/v1.1/Things({thing})/Locations/$ref", "/v1.0/Things",
                "/ogcapi/collections", "/ogcapi/collections/things/items")


def test_without_anonymous_read_reads_need_a_credential(world: World, closed: str) -> None:
    for path in CLOSED_READS:
        target = closed + path.format(thing=world.thing)
        assert_refused(ANON.get(target), 401)
        assert ANON.get(target, headers=world.headers["read"]).status_code == 200, path
        assert ANON.get(target, headers=world.headers["admin"]).status_code == 200, path
        assert ANON.get(target, headers=ADMIN).status_code == 200, path
        assert_refused(ANON.get(target, headers=world.headers["create"]), 403, "read")


def test_without_anonymous_read_discovery_stays_open(closed: str) -> None:
    for path in ("/v1.1", "/v1.1/", "/v1.1/api", "/v1.0"):
        assert ANON.get(closed + path).status_code == 200, path


def test_without_anonymous_read_a_batch_needs_a_credential(world: World, closed: str) -> None:
    batch = {"requests": [{"id": "1", "method": "get", "url": "Things"}]}
    assert_refused(ANON.post(f"{closed}/v1.1/$batch", json=batch), 401)
    response = ANON.post(f"{closed}/v1.1/$batch", json=batch, headers=world.headers["create"])
    assert response.json()["responses"][0]["status"] == 403
    response = ANON.post(f"{closed}/v1.1/$batch", json=batch, headers=world.headers["read"])
    assert response.json()["responses"][0]["status"] == 200


# ---------------------------------------------------------------------------------------------- operator endpoints


@pytest.mark.parametrize("who", [*PRINCIPALS, "operator"])
@pytest.mark.parametrize("path", ["/admin/dead-letters", "/admin/subscriptions"])
def test_the_admin_endpoints_need_admin(world: World, path: str, who: str) -> None:
    response = ANON.get(world.root + path, headers=ADMIN if who == "operator" else world.headers[who])
    if who in ("admin", "operator"):
        assert response.status_code == 200, response.text
        assert isinstance(response.json()["value"], list)
    else:
        assert_refused(response, 401 if who == "anonymous" else 403, "admin")


def test_metrics_are_open_and_hold_no_observation_results(world: World) -> None:
    observation = create_observation(world.sta, world.datastream, 987654.321, FeatureOfInterest=ref(world.feature))
    assert read(world.sta, f"Observations({observation})")["result"] == 987654.321
    response = ANON.get(world.root + "/metrics")
    assert response.status_code == 200
    assert "987654" not in response.text


# ---------------------------------------------------------------------------------------------- OpenAPI

WRITES = ("post", "patch", "put", "delete")


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method in (*WRITES, "get", "head"):
                yield path, method, operation


def test_the_openapi_document_declares_the_credentials(world: World) -> None:
    response = ANON.get(f"{world.sta}/api")
    assert response.status_code == 200
    document = response.json()
    validate_openapi(document)
    schemes = document["components"]["securitySchemes"]
    assert {"bearer", "basic", "apiKey"} <= set(schemes)
    assert (schemes["bearer"]["scheme"], schemes["basic"]["scheme"]) == ("bearer", "basic")
    assert (schemes["apiKey"]["in"], schemes["apiKey"]["name"]) == ("header", "X-API-Key")
    writes = reads = 0
    for path, method, operation in _operations(document):
        security = operation.get("security")
        if method in WRITES:
            writes += 1
            assert security and {} not in security, (path, method, security)
            assert {"401", "403"} <= set(operation["responses"]), (path, method)
        elif path not in ("/", "/api"):
            reads += 1
            assert security and {} in security, (path, method, security)
    assert writes > 20 and reads > 20


def test_without_anonymous_read_the_document_says_reads_need_credentials(closed: str) -> None:
    document = ANON.get(f"{closed}/v1.1/api").json()
    validate_openapi(document)
    for path, method, operation in _operations(document):
        if path not in ("/", "/api"):
            assert operation["security"] and {} not in operation["security"], (path, method)
            assert {"401", "403"} <= set(operation["responses"]), (path, method)
