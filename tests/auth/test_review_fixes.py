"""Holes a review of access control found, each shut and kept shut: a key with only `create` moving existing
entities by a deep insert, anyone claiming a Party's authId, a key's secret reaching the audit log through a
Basic user name, a non-ASCII Basic header, and a nested $batch written as %24batch."""

from __future__ import annotations

import base64

from tests.auth.helpers import ANON, assert_refused, bearer, new_key
from tests.mqtt_helpers import wait_for
from tests.sta_helpers import (
    HTTP,
    create,
    create_datastream,
    datastream_body,
    observed_property_body,
    read,
    sensor_body,
    thing_body,
)


def test_create_alone_cannot_move_an_existing_entity_by_deep_insert(sta: str, database_url: str) -> None:
    datastream = create_datastream(sta)
    owner = read(sta, f"Datastreams({datastream})/Thing")["@iot.id"]
    creator = bearer(new_key(database_url, "create", "read"))
    moved = ANON.post(f"{sta}/Things", json=thing_body("thief", Datastreams=[{"@iot.id": datastream}]),
                      headers=creator)
    assert_refused(moved, 403, "update")
    assert read(sta, f"Datastreams({datastream})/Thing")["@iot.id"] == owner
    assert read(sta, "Things", **{"$count": "true", "$top": "0"})["@iot.count"] == 1  # nothing of it stayed
    updater = bearer(new_key(database_url, "create", "update"))
    assert ANON.post(f"{sta}/Things", json=thing_body("new owner", Datastreams=[{"@iot.id": datastream}]),
                     headers=updater).status_code == 201
    # Creating new children, or linking existing entities that do not change (a Sensor), is create alone.
    sensor = create(sta, "Sensors", sensor_body())
    assert ANON.post(f"{sta}/Things", json=thing_body("fine", Datastreams=[datastream_body(
        Sensor={"@iot.id": sensor}, ObservedProperty=observed_property_body())]), headers=creator).status_code == 201


def test_only_an_admin_sets_a_partys_auth_id(sta: str, database_url: str) -> None:
    writer = bearer(new_key(database_url, "create", "update", "read"))
    assert_refused(ANON.post(f"{sta}/Parties", json={"role": "individual", "authId": "operator"}, headers=writer),
                   403, "admin")
    party = ANON.post(f"{sta}/Parties", json={"role": "individual", "displayName": "me"}, headers=writer)
    assert party.status_code == 201, party.text
    assert_refused(ANON.patch(party.headers["location"], json={"authId": "operator"}, headers=writer), 403, "admin")
    assert HTTP.patch(party.headers["location"], json={"authId": "operator"}).status_code == 200


def test_a_key_in_a_basic_user_name_reaches_the_audit_log_as_its_id_only(sta: str, database_url: str) -> None:
    key = new_key(database_url, "read")
    key_id, secret = key.split("_", 2)[1:]
    as_user = base64.b64encode(f"{key}:".encode()).decode()  # curl -u "$KEY:"
    refused = ANON.post(f"{sta}/Things", json=thing_body(), headers={"Authorization": f"Basic {as_user}"})
    assert refused.status_code == 401
    entries = wait_for(lambda: [e for e in HTTP.get(f"{sta.rsplit('/', 1)[0]}/admin/audit").json()["value"]
                                if e["principalKind"] == "unverified"], what="the audit entry")
    assert entries[0]["principal"] == key_id and secret not in str(entries)


def test_a_non_ascii_basic_header_is_a_401(sta: str) -> None:
    response = ANON.post(f"{sta}/Things", json=thing_body(), headers={"Authorization": "Basic \xe9".encode("latin-1")})
    assert_refused(response, 401)


def test_a_batch_nested_as_percent_encoded_is_refused(sta: str) -> None:
    body = {"requests": [{"id": "1", "method": "post", "url": "%24batch", "body": {"requests": []}}]}
    answer = HTTP.post(f"{sta}/$batch", json=body).json()["responses"][0]
    assert answer["status"] == 400 and "nested" in answer["body"]["message"]


def test_an_unverified_callers_audit_entry_is_short(sta: str) -> None:
    """Anonymous writes cost their sender nothing: each keeps only 200 characters of its path."""
    long_query = "x=" + "a" * 1900
    assert ANON.post(f"{sta}/Things?{long_query}", json=thing_body()).status_code == 401
    entries = wait_for(lambda: [e for e in HTTP.get(f"{sta.rsplit('/', 1)[0]}/admin/audit").json()["value"]
                                if e["principalKind"] == "anonymous" and "aaaa" in e["path"]],
                       what="the audit entry")
    assert len(entries[0]["path"]) <= 200 and "characters)" in entries[0]["path"]


def test_web_maps_on_other_origins_may_send_a_credential_to_the_ogc_api(sta: str) -> None:
    preflight = ANON.options(f"{sta.rsplit('/', 1)[0]}/ogcapi/collections", headers={
        "Origin": "https://maps.example.org", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "Authorization"})
    assert preflight.status_code == 200, preflight.text
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
