"""Helpers shared by the SensorThings API test files (test_sta_*.py, test_frost_client.py).

No tests live here. The helpers build the smallest valid entities and wrap the few HTTP calls every test
needs, so that each test reads as the one behaviour it checks. Everything goes over real HTTP (httpx) to
the real app served by the `sta` fixture.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

ENTITY_SETS = (
    "Things",
    "Locations",
    "HistoricalLocations",
    "Datastreams",
    "Sensors",
    "ObservedProperties",
    "Observations",
    "FeaturesOfInterest",
    "MultiDatastreams",
)

NAVIGATION = {
    "Thing": ("Locations", "HistoricalLocations", "Datastreams", "MultiDatastreams"),
    "Location": ("Things", "HistoricalLocations"),
    "HistoricalLocation": ("Thing", "Locations"),
    "Datastream": ("Thing", "Sensor", "ObservedProperty", "Observations"),
    "Sensor": ("Datastreams", "MultiDatastreams"),
    "ObservedProperty": ("Datastreams", "MultiDatastreams"),
    "Observation": ("Datastream", "FeatureOfInterest"),  # a MultiDatastream's: MultiDatastream for Datastream
    "FeatureOfInterest": ("Observations",),
    "MultiDatastream": ("Thing", "Sensor", "ObservedProperties", "Observations"),
}

ADMIN_TOKEN = "test-operator-token-not-a-secret"
"""The operator token (CITYSTREAM_ADMIN_TOKEN) of every app the tests run (conftest.running_app sets it)."""
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HTTP = httpx.Client(timeout=30, headers=ADMIN)
"""The tests' client: it writes as the operator. Anonymous requests use httpx directly or `headers=`."""
_ID_IN_LOCATION = re.compile(r"/(?P<set>[A-Za-z]+)\((?P<id>\d+)\)$")


# ------------------------------------------------------------------ entity bodies (smallest valid ones)


def thing_body(name: str = "thing", **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": f"{name} description", **extra}


def point(lon: float = 9.99, lat: float = 53.55) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [lon, lat]}


def location_body(name: str = "location", lon: float = 9.99, lat: float = 53.55, **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": f"{name} description", "encodingType": "application/geo+json",
            "location": point(lon, lat), **extra}


def sensor_body(name: str = "sensor", **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": f"{name} description", "encodingType": "application/pdf",
            "metadata": "https://example.org/sensor.pdf", **extra}


def observed_property_body(name: str = "temperature", **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": f"{name} description",
            "definition": f"https://example.org/def/{name}", **extra}


def feature_body(name: str = "feature", lon: float = 10.0, lat: float = 53.6, **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": f"{name} description", "encodingType": "application/geo+json",
            "feature": point(lon, lat), **extra}


def datastream_body(name: str = "datastream", **extra: Any) -> dict[str, Any]:
    """A Datastream without its relations; pass Thing/Sensor/ObservedProperty as needed."""
    return {"name": name, "description": f"{name} description",
            "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Observation",
            "unitOfMeasurement": {"name": "degree Celsius", "symbol": "°C",
                                  "definition": "http://unitsofmeasure.org/ucum.html#para-30"},
            **extra}


def ref(entity_id: int) -> dict[str, int]:
    return {"@iot.id": entity_id}


# ------------------------------------------------------------------ HTTP


def url(sta: str, path: str) -> str:
    return f"{sta}/{path.lstrip('/')}" if path else sta


def get(sta: str, path: str, **kwargs: Any) -> httpx.Response:
    return HTTP.get(url(sta, path), **kwargs)


def post(sta: str, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return HTTP.post(url(sta, path), json=body, **kwargs)


def patch(sta: str, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return HTTP.patch(url(sta, path), json=body, **kwargs)


def put(sta: str, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return HTTP.put(url(sta, path), json=body, **kwargs)


def delete(sta: str, path: str, **kwargs: Any) -> httpx.Response:
    return HTTP.delete(url(sta, path), **kwargs)


def send_raw(method: str, sta: str, path: str, content: bytes | str,
             content_type: str = "application/json") -> httpx.Response:
    return HTTP.request(method, url(sta, path), content=content, headers={"Content-Type": content_type})


def id_from_location(response: httpx.Response) -> int:
    match = _ID_IN_LOCATION.search(response.headers["Location"])
    assert match is not None, response.headers["Location"]
    return int(match.group("id"))


def create(sta: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> int:
    """POST an entity that must be accepted; return its id (from the Location header). `headers`: another
    credential than the tests' operator token."""
    response = post(sta, path, body, headers=headers)
    assert response.status_code == 201, f"POST {path} -> {response.status_code} {response.text}"
    return id_from_location(response)


def read(sta: str, path: str, **params: Any) -> Any:
    """GET that must succeed; the decoded JSON body."""
    response = get(sta, path, params=params or None)
    assert response.status_code == 200, f"GET {path} -> {response.status_code} {response.text}"
    return response.json()


def values(sta: str, path: str, **params: Any) -> list[dict[str, Any]]:
    """The `value` array of a collection GET."""
    return read(sta, path, **params)["value"]


def ids(sta: str, path: str, **params: Any) -> list[int]:
    return [e["@iot.id"] for e in values(sta, path, **params)]


def count(sta: str, path: str) -> int:
    return read(sta, path, **{"$count": "true", "$top": "0"})["@iot.count"]


def counts(sta: str) -> dict[str, int]:
    """Entity count of every entity set."""
    return {name: count(sta, name) for name in ENTITY_SETS}


def assert_error(response: httpx.Response, status: int, *fragments: str) -> dict[str, Any]:
    """A JSON error with `status` whose message mentions every fragment (case-insensitive)."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    body = response.json()
    assert isinstance(body.get("message"), str) and body["message"], body
    for fragment in fragments:
        assert fragment.lower() in body["message"].lower(), f"{fragment!r} not in {body['message']!r}"
    return body


# ------------------------------------------------------------------ standard trees


def create_thing_with_location(sta: str, name: str = "thing", lon: float = 9.99, lat: float = 53.55,
                               headers: dict[str, str] | None = None) -> int:
    return create(sta, "Things", thing_body(name, Locations=[location_body(f"{name} location", lon, lat)]), headers)


def create_datastream(sta: str, thing_id: int | None = None, name: str = "datastream",
                      headers: dict[str, str] | None = None) -> int:
    """A Datastream with a new Sensor and ObservedProperty; its Thing is `thing_id` or a new located one."""
    if thing_id is None:
        thing_id = create_thing_with_location(sta, headers=headers)
    return create(sta, f"Things({thing_id})/Datastreams",
                  datastream_body(name, Sensor=sensor_body(), ObservedProperty=observed_property_body()), headers)


def create_observation(sta: str, datastream_id: int, result: Any = 1, time: str | None = None,
                       **extra: Any) -> int:
    body: dict[str, Any] = {"result": result, **extra}
    if time is not None:
        body["phenomenonTime"] = time
    return create(sta, f"Datastreams({datastream_id})/Observations", body)


def create_observations(sta: str, datastream_id: int, n: int, day: str = "2024-05-01") -> list[int]:
    """`n` Observations at consecutive minutes of `day`, results 0..n-1 (n <= 1440)."""
    return [create_observation(sta, datastream_id, i, f"{day}T{i // 60:02d}:{i % 60:02d}:00Z") for i in range(n)]


def create_datastream_with_observations(sta: str, n: int, thing_id: int | None = None,
                                        day: str = "2024-05-01") -> int:
    """One deep insert: a Datastream (new Sensor, ObservedProperty) with `n` Observations at consecutive
    minutes of `day` and results 0..n-1 (n <= 1440). Returns the Datastream id."""
    if thing_id is None:
        thing_id = create_thing_with_location(sta)
    observations = [{"result": i, "phenomenonTime": f"{day}T{i // 60:02d}:{i % 60:02d}:00Z"} for i in range(n)]
    return create(sta, f"Things({thing_id})/Datastreams",
                  datastream_body(Sensor=sensor_body(), ObservedProperty=observed_property_body(),
                                  Observations=observations))
