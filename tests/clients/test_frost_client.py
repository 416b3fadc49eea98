"""FROST's Python client (frost_sta_client, from PyPI) against the real server: what a Hamburg data manager's
script does. Create a Thing with a Location, a Sensor, an ObservedProperty, a Datastream and Observations with
the client's create(), read them back through the client, update, patch and delete. It authenticates as
FROST clients do, with its AuthHandler (HTTP Basic): as a user (`citystream users create`) and with an API
key's id and secret.
"""

from __future__ import annotations

import frost_sta_client as fsc
import psycopg
import pytest
import requests
from frost_sta_client.service.auth_handler import AuthHandler

from citystream.auth.credentials import create_key, create_user
from sensorthings.model.access import Role
from tests.sta_helpers import count, read

WRITER = frozenset({Role.READ, Role.CREATE, Role.UPDATE, Role.DELETE})

UNIT = {"name": "degree Celsius", "symbol": "°C", "definition": "http://unitsofmeasure.org/ucum.html#para-30"}
TIMES = ["2024-05-01T10:00:00Z", "2024-05-01T10:05:00Z", "2024-05-01T10:10:00Z"]


def credentials(database_url: str, kind: str) -> AuthHandler:
    """A user, or an API key (its id and secret as Basic), with the roles a data manager's script needs."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        if kind == "user":
            create_user(conn, "data-manager", "correct horse battery staple", WRITER)
            return AuthHandler("data-manager", "correct horse battery staple")
        key = create_key(conn, "frost client", WRITER)
        return AuthHandler(key.id, key.secret)


@pytest.fixture(params=["v1.1 user", "v1.0 key"])
def service(sta: str, database_url: str, request: pytest.FixtureRequest) -> fsc.SensorThingsService:
    """The client on either version's root (many FROST layer configs still say 1.0; the same store), with a
    user or an API key."""
    version, kind = request.param.split()
    return fsc.SensorThingsService(sta.removesuffix("/v1.1") + "/" + version,
                                   auth_handler=credentials(database_url, kind))


def new_thing(service: fsc.SensorThingsService) -> fsc.Thing:
    location = fsc.Location(name="Jungfernstieg", description="pier", encoding_type="application/geo+json",
                            location={"type": "Point", "coordinates": [9.993, 53.553]})
    thing = fsc.Thing(name="weather station", description="on the pier", properties={"owner": "HPA"},
                      locations=[location])
    service.create(thing)
    return thing


def new_datastream(service: fsc.SensorThingsService, thing: fsc.Thing) -> fsc.Datastream:
    sensor = fsc.Sensor(name="PT100", description="thermometer", encoding_type="application/pdf",
                        metadata="https://example.org/pt100.pdf")
    observed = fsc.ObservedProperty(name="air temperature", definition="https://example.org/def/air_temperature",
                                    description="temperature of the air")
    service.create(sensor)
    service.create(observed)
    datastream = fsc.Datastream(
        name="air temperature at the pier", description="every five minutes",
        observation_type="http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
        unit_of_measurement=fsc.UnitOfMeasurement(**UNIT), thing=thing, sensor=sensor, observed_property=observed)
    service.create(datastream)
    return datastream


def new_observations(service: fsc.SensorThingsService, datastream: fsc.Datastream) -> list[fsc.Observation]:
    observations = [fsc.Observation(result=12.5 + i, phenomenon_time=time, datastream=datastream)
                    for i, time in enumerate(TIMES)]
    for observation in observations:
        service.create(observation)
    return observations


def test_client_creates_a_thing_with_its_location(service: fsc.SensorThingsService, sta: str) -> None:
    thing = new_thing(service)
    assert isinstance(thing.id, int)
    found = service.things().find(thing.id)
    assert (found.name, found.description, found.properties) == ("weather station", "on the pier", {"owner": "HPA"})
    locations = service.locations().query().list().entities
    assert [loc.name for loc in locations] == ["Jungfernstieg"]
    assert locations[0].location == {"type": "Point", "coordinates": [9.993, 53.553]}
    assert count(sta, f"Things({thing.id})/HistoricalLocations") == 1


def test_client_creates_a_datastream_linked_by_id(service: fsc.SensorThingsService, sta: str) -> None:
    thing = new_thing(service)
    datastream = new_datastream(service, thing)
    found = service.datastreams().find(datastream.id)
    assert found.name == "air temperature at the pier"
    assert found.unit_of_measurement.symbol == "°C"
    assert read(sta, f"Datastreams({datastream.id})/Thing")["@iot.id"] == thing.id
    assert read(sta, f"Datastreams({datastream.id})/Sensor")["name"] == "PT100"


def test_client_creates_observations_and_lists_them_per_datastream(service: fsc.SensorThingsService) -> None:
    datastream = new_datastream(service, new_thing(service))
    observations = new_observations(service, datastream)
    listed = datastream.get_observations().query().orderby("phenomenonTime", "asc").list()
    assert [o.id for o in listed] == [o.id for o in observations]
    assert [o.result for o in listed] == [12.5, 13.5, 14.5]
    assert [o.phenomenon_time for o in listed] == TIMES


def test_client_finds_an_observation_by_id(service: fsc.SensorThingsService) -> None:
    datastream = new_datastream(service, new_thing(service))
    observation = new_observations(service, datastream)[1]
    found = service.observations().find(observation.id)
    assert (found.id, found.result, found.phenomenon_time, found.result_time) == (
        observation.id, 13.5, TIMES[1], None)


def test_client_iterates_over_every_page(service: fsc.SensorThingsService) -> None:
    datastream = new_datastream(service, new_thing(service))
    new_observations(service, datastream)
    listed = datastream.get_observations().query().top(1).list()
    assert len(listed.entities) == 1
    assert sorted(o.result for o in listed) == [12.5, 13.5, 14.5]


def test_client_counts(service: fsc.SensorThingsService) -> None:
    datastream = new_datastream(service, new_thing(service))
    new_observations(service, datastream)
    assert service.observations().query().count().top(1).list().count == 3


def test_client_update_puts_the_changed_entity(service: fsc.SensorThingsService) -> None:
    thing = new_thing(service)
    found = service.things().find(thing.id)
    found.name = "renamed station"
    service.update(found)
    again = service.things().find(thing.id)
    assert (again.name, again.description, again.properties) == ("renamed station", "on the pier", {"owner": "HPA"})


def test_client_update_of_a_datastream_keeps_its_links(service: fsc.SensorThingsService, sta: str) -> None:
    thing = new_thing(service)
    datastream = new_datastream(service, thing)
    datastream.name = "renamed datastream"
    service.update(datastream)
    assert read(sta, f"Datastreams({datastream.id})")["name"] == "renamed datastream"
    assert read(sta, f"Datastreams({datastream.id})/Thing")["@iot.id"] == thing.id


def test_client_json_patch(service: fsc.SensorThingsService) -> None:
    thing = new_thing(service)
    service.patch(thing, [{"op": "replace", "path": "/name", "value": "patched"},
                          {"op": "add", "path": "/properties/height", "value": 3}])
    found = service.things().find(thing.id)
    assert (found.name, found.properties) == ("patched", {"owner": "HPA", "height": 3})


def test_client_delete_cascades(service: fsc.SensorThingsService, sta: str) -> None:
    thing = new_thing(service)
    datastream = new_datastream(service, thing)
    observations = new_observations(service, datastream)
    service.delete(observations[0])
    assert count(sta, "Observations") == 2
    service.delete(thing)
    assert (count(sta, "Things"), count(sta, "Datastreams"), count(sta, "Observations")) == (0, 0, 0)
    assert count(sta, "Sensors") == 1


def test_client_reports_a_missing_entity_as_an_http_error(service: fsc.SensorThingsService) -> None:
    with pytest.raises(requests.exceptions.HTTPError) as raised:
        service.things().find(424242)
    assert raised.value.response.status_code == 404


def test_client_without_credentials_or_with_a_wrong_password_is_refused(sta: str, database_url: str) -> None:
    anonymous = fsc.SensorThingsService(sta)
    with pytest.raises(requests.exceptions.HTTPError) as raised:
        anonymous.create(fsc.Thing(name="nope", description="no credential"))
    assert raised.value.response.status_code == 401
    assert "Basic" in raised.value.response.headers["WWW-Authenticate"]
    credentials(database_url, "user")
    wrong = fsc.SensorThingsService(sta, auth_handler=AuthHandler("data-manager", "wrong horse"))
    with pytest.raises(requests.exceptions.HTTPError) as raised:
        wrong.things().find(1)
    assert raised.value.response.status_code == 401
    assert count(sta, "Things") == 0
