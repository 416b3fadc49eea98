"""STAplus (OGC 22-022r1) at /v1.1: the Party, Project and License entity types and their optional links from
Things, Datastreams and MultiDatastreams, declared in the entity model and so served by every surface (paths,
writes with deep insert and links, $expand, $filter, $select, OpenAPI, the service root). STA 1.0 has no
STAplus: under /v1.0 neither the entity sets nor the navigation properties to them exist."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from sensorthings.http.routes import STAPLUS_CONFORMANCE
from sensorthings.schema import migrate
from tests.sta.test_sta_multi_datastream import multi_body, new_properties
from tests.sta_helpers import (
    assert_error,
    create,
    create_datastream,
    create_observation,
    create_thing_with_location,
    datastream_body,
    delete,
    get,
    ids,
    observed_property_body,
    patch,
    post,
    put,
    read,
    ref,
    sensor_body,
    thing_body,
    values,
)

STAPLUS_SETS = ("Parties", "Projects", "Licenses")


def party_body(role: str = "individual", **extra: Any) -> dict[str, Any]:
    return {"role": role, **extra}


def project_body(name: str = "air quality", **extra: Any) -> dict[str, Any]:
    return {"name": name, "termsOfUse": "https://example.org/terms", **extra}


def license_body(name: str = "CC BY 4.0", **extra: Any) -> dict[str, Any]:
    return {"name": name, "definition": "https://creativecommons.org/licenses/by/4.0/", **extra}


@pytest.fixture
def v10(sta: str) -> str:
    return sta.removesuffix("/v1.1") + "/v1.0"


def _stream_with_all_three(sta: str) -> tuple[int, dict[str, int]]:
    """A Datastream created with an inline Party, Project and License (a deep insert); its id and theirs."""
    thing = create_thing_with_location(sta)
    datastream = create(sta, f"Things({thing})/Datastreams", datastream_body(
        Sensor=sensor_body(), ObservedProperty=observed_property_body(),
        Party=party_body(displayName="Ada", authId="ada"), Project=project_body(), License=license_body()))
    linked = {name: read(sta, f"Datastreams({datastream})/{name}")["@iot.id"]
              for name in ("Party", "Project", "License")}
    return datastream, linked


# ------------------------------------------------------------------ the entities themselves


@pytest.mark.parametrize(("set_name", "body", "change"), [
    ("Parties", party_body(description="a citizen scientist", authId="user-1", displayName="Ada"),
     {"role": "institutional", "displayName": "Ada's lab"}),
    ("Projects", project_body(description="street-level NO2", classification="public", privacyPolicy="none",
                              creationTime="2024-01-01T00:00:00Z", startTime="2024-02-01T00:00:00Z",
                              endTime="2024-12-31T00:00:00Z", url="https://example.org/p",
                              properties={"funding": "city"}),
     {"name": "air quality 2", "properties": {"funding": "EU"}}),
    ("Licenses", license_body(description="Attribution", logo="https://example.org/by.png",
                              attributionText="© the city", properties={"spdx": "CC-BY-4.0"}),
     {"attributionText": "© Hamburg"}),
])
def test_create_read_update_delete(sta: str, set_name: str, body: dict[str, Any], change: dict[str, Any]) -> None:
    response = post(sta, set_name, body)
    assert response.status_code == 201, response.text
    created = response.json()
    entity_id = created["@iot.id"]
    assert response.headers["Location"] == f"{sta}/{set_name}({entity_id})"
    assert {k: created[k] for k in body} == body
    assert read(sta, f"{set_name}({entity_id})") == created
    assert ids(sta, set_name) == [entity_id]

    changed = patch(sta, f"{set_name}({entity_id})", change)
    assert changed.status_code == 200, changed.text
    assert {k: changed.json()[k] for k in change} == change
    replaced = put(sta, f"{set_name}({entity_id})", {**body, **change})
    assert replaced.status_code == 200, replaced.text

    assert delete(sta, f"{set_name}({entity_id})").status_code == 200
    assert get(sta, f"{set_name}({entity_id})").status_code == 404


def test_optional_properties_are_left_out_and_creation_time_defaults_to_now(sta: str) -> None:
    party = read(sta, f"Parties({create(sta, 'Parties', party_body())})")
    assert set(party) == {"@iot.id", "@iot.selfLink", "role", "Things@iot.navigationLink",
                          "Datastreams@iot.navigationLink", "MultiDatastreams@iot.navigationLink"}
    project = read(sta, f"Projects({create(sta, 'Projects', project_body())})")
    assert project["creationTime"].endswith("Z") and "startTime" not in project and "properties" not in project
    assert read(sta, "Projects", **{"$filter": "creationTime le now()"})["value"][0]["@iot.id"] == project["@iot.id"]


def test_required_properties_and_bad_values_are_400s(sta: str) -> None:
    assert_error(post(sta, "Parties", party_body("citizen")), 400, "role", "individual or institutional")
    assert_error(post(sta, "Parties", {"displayName": "nobody"}), 400, "requires", "role")
    party = create(sta, "Parties", party_body())
    assert_error(patch(sta, f"Parties({party})", {"role": "company"}), 400, "individual or institutional")
    assert_error(post(sta, "Projects", {"name": "p"}), 400, "termsOfUse")
    assert_error(post(sta, "Projects", project_body(startTime="soon")), 400, "startTime")
    assert_error(post(sta, "Licenses", {"name": "l"}), 400, "definition")
    assert_error(post(sta, "Licenses", license_body(properties=[1])), 400, "properties", "JSON object")
    assert_error(post(sta, "Parties", party_body(colour="red")), 400, "colour", "authId")


def test_auth_id_is_unique_where_given(sta: str) -> None:
    create(sta, "Parties", party_body(authId="key-1"))
    assert_error(post(sta, "Parties", party_body(authId="key-1")), 409, "conflicts")
    create(sta, "Parties", party_body())
    create(sta, "Parties", party_body())  # no authId: any number of them
    assert len(values(sta, "Parties")) == 3


# ------------------------------------------------------------------ links, deep insert, navigation


def test_deep_insert_of_a_datastream_with_party_project_and_license(sta: str) -> None:
    datastream, linked = _stream_with_all_three(sta)
    assert read(sta, f"Datastreams({datastream})/Project")["name"] == "air quality"
    assert read(sta, f"Datastreams({datastream})/License/name") == {"name": "CC BY 4.0"}
    assert read(sta, f"Datastreams({datastream})/Party")["authId"] == "ada"
    assert ids(sta, f"Parties({linked['Party']})/Datastreams") == [datastream]
    assert ids(sta, f"Projects({linked['Project']})/Datastreams") == [datastream]
    assert ids(sta, f"Licenses({linked['License']})/Datastreams") == [datastream]
    body = read(sta, f"Datastreams({datastream})")
    for name in ("Party", "Project", "License"):
        assert body[f"{name}@iot.navigationLink"] == f"{sta}/Datastreams({datastream})/{name}"


def test_a_thing_with_a_party_and_linking_by_id(sta: str) -> None:
    thing = create(sta, "Things", thing_body(Party=party_body("institutional", displayName="City")))
    party = read(sta, f"Things({thing})/Party")["@iot.id"]
    assert ids(sta, f"Parties({party})/Things") == [thing]
    other = create(sta, "Things", thing_body("other", Party=ref(party)))
    assert sorted(ids(sta, f"Parties({party})/Things")) == [thing, other]

    project, license_ = create(sta, "Projects", project_body()), create(sta, "Licenses", license_body())
    datastream = create(sta, f"Things({thing})/Datastreams", datastream_body(
        Sensor=sensor_body(), ObservedProperty=observed_property_body(), Party=ref(party), Project=ref(project)))
    assert read(sta, f"Datastreams({datastream})/Project/$ref") == {"@iot.selfLink": f"{sta}/Projects({project})"}
    assert get(sta, f"Datastreams({datastream})/License").status_code == 404  # not linked (yet)
    assert put(sta, f"Datastreams({datastream})/License/$ref", ref(license_)).status_code == 204
    assert ids(sta, f"Licenses({license_})/Datastreams") == [datastream]
    assert_error(post(sta, "Things", thing_body(Party=ref(999))), 400, "no Party with @iot.id 999")


def test_links_change_by_patch_and_null_removes_one(sta: str) -> None:
    datastream, linked = _stream_with_all_three(sta)
    project = create(sta, "Projects", project_body("another"))
    assert patch(sta, f"Datastreams({datastream})", {"Project": ref(project)}).status_code == 200
    assert read(sta, f"Datastreams({datastream})/Project/name") == {"name": "another"}
    cleared = patch(sta, f"Datastreams({datastream})", {"Party": None, "License": None})
    assert cleared.status_code == 200, cleared.text
    assert get(sta, f"Datastreams({datastream})/Party").status_code == 404
    assert ids(sta, f"Licenses({linked['License']})/Datastreams") == []
    assert read(sta, f"Datastreams({datastream})", **{"$expand": "Project"})["Project"]["@iot.id"] == project
    # A required link stays required: null is no way to take a Datastream's Thing away.
    assert_error(patch(sta, f"Datastreams({datastream})", {"Thing": None}), 400, "Thing")


def test_creating_through_the_inverse_links_the_new_entity(sta: str) -> None:
    party = create(sta, "Parties", party_body())
    thing = create(sta, f"Parties({party})/Things", thing_body())
    assert read(sta, f"Things({thing})/Party")["@iot.id"] == party
    nested = create(sta, "Parties", party_body(Things=[thing_body("inline")]))
    assert [t["name"] for t in values(sta, f"Parties({nested})/Things")] == ["inline"]


def test_multi_datastreams_have_the_three_links(sta: str) -> None:
    thing = create_thing_with_location(sta)
    multi = create(sta, "MultiDatastreams", multi_body(
        Thing=ref(thing), Sensor=sensor_body(), ObservedProperties=[ref(p) for p in new_properties(sta)],
        Party=party_body(), Project=project_body(), License=license_body()))
    expanded = read(sta, f"MultiDatastreams({multi})", **{"$expand": "Party,Project,License"})
    assert expanded["Party"]["role"] == "individual" and expanded["License"]["name"] == "CC BY 4.0"
    assert ids(sta, f"Projects({expanded['Project']['@iot.id']})/MultiDatastreams") == [multi]
    assert ids(sta, f"Parties({expanded['Party']['@iot.id']})/MultiDatastreams") == [multi]


# ------------------------------------------------------------------ the query language


def test_expand_select_and_filter_across_the_links(sta: str) -> None:
    datastream, linked = _stream_with_all_three(sta)
    create_datastream(sta, name="unlinked")
    body = read(sta, f"Datastreams({datastream})", **{"$expand": "Party,Project,License"})
    assert body["Party"]["@iot.id"] == linked["Party"] and body["Project"]["name"] == "air quality"
    assert body["License"]["definition"] == "https://creativecommons.org/licenses/by/4.0/"
    unlinked = values(sta, "Datastreams", **{"$expand": "Party", "$filter": "name eq 'unlinked'"})[0]
    assert "Party" not in unlinked  # no Party: the expanded to-one entity is left out
    assert ids(sta, "Datastreams", **{"$filter": "Project/name eq 'air quality'"}) == [datastream]
    assert ids(sta, "Datastreams", **{"$filter": "Party/role eq 'individual'"}) == [datastream]
    assert ids(sta, "Datastreams", **{"$filter": "Party/role eq 'institutional'"}) == []
    observation = create_observation(sta, datastream, 1.5)  # an Observation reaches them through its stream
    assert ids(sta, "Observations", **{"$filter": "Datastream/License/name eq 'CC BY 4.0'"}) == [observation]
    assert ids(sta, "Observations", **{"$filter": "Datastream/Party/authId eq 'nobody'"}) == []
    assert ids(sta, "Parties", **{"$filter": "Datastreams/name eq 'datastream'"}) == [linked["Party"]]
    selected = read(sta, f"Datastreams({datastream})",
                    **{"$select": "name,Project", "$expand": "Project($select=name)"})
    assert selected == {"name": "datastream", "Project": {"name": "air quality"}}
    parties = read(sta, "Parties", **{"$expand": "Datastreams($select=name)", "$select": "displayName"})
    assert parties["value"] == [{"displayName": "Ada", "Datastreams": [{"name": "datastream"}]}]


# ------------------------------------------------------------------ deletes


@pytest.mark.parametrize("name", ["Party", "Project", "License"])
def test_deleting_one_leaves_its_datastreams_unlinked(sta: str, name: str) -> None:
    datastream, linked = _stream_with_all_three(sta)
    set_name = {"Party": "Parties", "Project": "Projects", "License": "Licenses"}[name]
    assert delete(sta, f"{set_name}({linked[name]})").status_code == 200
    assert get(sta, f"{set_name}({linked[name]})").status_code == 404
    body = read(sta, f"Datastreams({datastream})", **{"$expand": "Party,Project,License"})
    assert name not in body
    assert {"Party", "Project", "License"} - {name} <= set(body)
    assert get(sta, f"Datastreams({datastream})/{name}").status_code == 404


def test_deleting_a_datastream_keeps_its_party(sta: str) -> None:
    datastream, linked = _stream_with_all_three(sta)
    assert delete(sta, f"Datastreams({datastream})").status_code == 200
    assert read(sta, f"Parties({linked['Party']})")["displayName"] == "Ada"
    assert ids(sta, f"Projects({linked['Project']})/Datastreams") == []


# ------------------------------------------------------------------ versions, service root, OpenAPI


def test_v10_has_no_staplus(sta: str, v10: str) -> None:
    datastream, linked = _stream_with_all_three(sta)
    for set_name in STAPLUS_SETS:
        assert_error(get(v10, set_name), 404, f"unknown entity set '{set_name}'", "v1.1")
        assert_error(post(v10, set_name, {}), 404, "unknown entity set")
    assert_error(get(v10, f"Parties({linked['Party']})"), 404)
    body = read(v10, f"Datastreams({datastream})")
    assert not any(k.startswith(("Party", "Project", "License")) for k in body), body
    assert body["Thing@iot.navigationLink"] == f"{v10}/Datastreams({datastream})/Thing"
    assert "Party@iot.navigationLink" in read(sta, f"Datastreams({datastream})")
    assert_error(get(v10, f"Datastreams({datastream})/Party"), 404, "v1.1 navigation property", "/v1.1")
    assert_error(get(v10, "Datastreams", params={"$expand": "Project"}), 400, "v1.1 navigation property")
    assert_error(get(v10, "Datastreams", params={"$select": "License"}), 400, "v1.1 navigation property")
    assert_error(get(v10, "Datastreams", params={"$filter": "Party/role eq 'individual'"}), 400,
                 "v1.1 navigation property")
    thing = read(v10, "Things")["value"][0]
    assert "Party@iot.navigationLink" not in thing
    root = read(v10, "")
    assert not {e["name"] for e in root["value"]} & set(STAPLUS_SETS)


def test_a_v10_write_that_links_a_party_stores_the_link(sta: str, v10: str) -> None:
    """As for the 1.1 `properties` (docs/conformance.md): FROST serves one model under both versions, so a
    client of its /v1.0 may send what only 1.1 has; it is stored, and shown under /v1.1 only."""
    party = create(sta, "Parties", party_body())
    thing = create(v10, "Things", thing_body(Party=ref(party)))
    assert "Party@iot.navigationLink" not in read(v10, f"Things({thing})")
    assert read(sta, f"Things({thing})/Party")["@iot.id"] == party


def test_v10_csv_still_shows_every_property_of_a_whole_entity(v10: str) -> None:
    """A Datastream shown whole under /v1.0 carries the navigation links 1.0 has, not the STAplus ones;
    CSV still recognises it as whole and gives its absent properties their columns."""
    create_datastream(v10)
    header = get(v10, "Datastreams", params={"$resultFormat": "CSV"}).text.splitlines()[0].split(",")
    assert "phenomenonTime" in header and "observedArea" in header  # no Observations: absent, still a column
    assert "properties" not in header


def test_service_root_and_conformance_of_v11(sta: str) -> None:
    root = read(sta, "")
    listed = {e["name"]: e["url"] for e in root["value"]}
    assert {name: listed.get(name) for name in STAPLUS_SETS} == {name: f"{sta}/{name}" for name in STAPLUS_SETS}
    assert STAPLUS_CONFORMANCE == "http://www.opengis.net/spec/sensorthings-staplus/1.0/conf/core"
    assert STAPLUS_CONFORMANCE in root["serverSettings"]["conformance"]


def test_openapi_documents_staplus_under_v11_only(sta: str, v10: str) -> None:
    doc11, doc10 = read(sta, "api"), read(v10, "api")
    for path in ("/Parties", "/Parties({id})", "/Projects({id})/Datastreams", "/Licenses({id})/MultiDatastreams",
                 "/Parties({id})/Things", "/Datastreams({id})/Party", "/Datastreams({id})/Project/$ref",
                 "/Things({id})/Party", "/Parties({id})/authId", "/Projects({id})/creationTime/$value"):
        assert path in doc11["paths"], path
        assert path not in doc10["paths"], path
    schemas11, schemas10 = doc11["components"]["schemas"], doc10["components"]["schemas"]
    assert schemas11["Party"]["properties"]["role"]["enum"] == ["individual", "institutional"]
    assert "Party" in schemas11["DatastreamCreate"]["properties"]
    assert "Party" not in schemas10["DatastreamCreate"]["properties"]
    assert "Party@iot.navigationLink" not in schemas10["Datastream"]["properties"]
    assert "PartyCreate" in schemas11 and "PartyCreate" not in schemas10
    assert schemas11["DatastreamPatch"]["properties"]["Party"].get("nullable") is True
    assert "nullable" not in schemas11["DatastreamPatch"]["properties"]["Thing"]
    assert {t["name"] for t in doc11["tags"]} >= set(STAPLUS_SETS)
    assert not {t["name"] for t in doc10["tags"]} & set(STAPLUS_SETS)


# ------------------------------------------------------------------ the migration


def test_existing_data_migrates_to_staplus(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database of the migrations before 0006, with data, takes 0006: the new links of its rows are NULL."""
    name = "citystream_staplus_upgrade"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(database_url, dbname=name)
    try:
        every = migrate.migration_files()
        with monkeypatch.context() as patched:
            patched.setattr(migrate, "migration_files", lambda: [m for m in every if m[0] < "0006"])
            assert migrate.apply_migrations(dsn)[-1] == "0005_multi_datastreams"
        with psycopg.connect(dsn) as conn:
            conn.execute("""
                WITH t AS (INSERT INTO things (name, description) VALUES ('t', 'd') RETURNING id),
                     s AS (INSERT INTO sensors (name, description, encoding_type, metadata)
                           VALUES ('s', 'd', 'text/html', '"m"') RETURNING id),
                     o AS (INSERT INTO observed_properties (name, definition, description)
                           VALUES ('o', 'https://example.org/o', 'd') RETURNING id)
                INSERT INTO datastreams (name, description, observation_type, unit_of_measurement, thing_id,
                                         sensor_id, observed_property_id)
                SELECT 'ds', 'd', 'OM_Measurement', '{}', t.id, s.id, o.id FROM t, s, o""")
        applied = migrate.apply_migrations(dsn)
        assert applied[0] == "0006_staplus"
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT name, party_id, project_id, license_id FROM datastreams").fetchall() == [
                ("ds", None, None, None)]
            assert conn.execute("SELECT party_id FROM things").fetchall() == [(None,)]
            assert conn.execute("SELECT count(*) FROM parties").fetchone() == (0,)
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
