"""pygeoapi (from PyPI) in front of CityStream: its SensorThings provider republishes /v1.1 as OGC API – Features.

pygeoapi runs as a server process of its own (Flask's, `flask --app pygeoapi.flask_app run`) on a random port,
with a configuration written here: one collection per STA entity set, each with pygeoapi's default provider
settings (`name: SensorThings`, `data`, `entity`) and only what a collection strictly needs beyond them:

- Locations and FeaturesOfInterest need an `expand`: the provider has a default `$expand` only for Things,
  Datastreams, Observations and ObservedProperties, and without one it raises KeyError in
  SensorThingsProvider._get_response (its EXPAND has no such key) while it reads the fields, so the
  collection errors and `pygeoapi openapi generate` drops the /items paths of every collection. FROST gets
  the same; it is pygeoapi's limit.
- Observations has `time_field: phenomenonTime`, without which the provider refuses `datetime` (its
  ProviderQueryError "time_field not enabled for collection", a 500 "query error").

CityStream runs with max_top 50: a larger `limit` makes pygeoapi follow @iot.nextLinks, which fails (see
test_a_limit_beyond_one_sta_page_follows_the_next_links); the other tests page through pygeoapi's own `next`
links with limit 50, as an OGC API client does. What pygeoapi answers is compared with what STA answers directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from citystream.embedded import find_free_port
from citystream.settings import Settings
from tests.clients.pygeoapi_server import COLLECTIONS, Pygeoapi, running_pygeoapi, sta_all
from tests.conftest import empty_database, running_app
from tests.sta_helpers import (
    count,
    create,
    datastream_body,
    feature_body,
    location_body,
    observed_property_body,
    read,
    sensor_body,
    thing_body,
    values,
)

MAX_TOP = 50
PAGE = MAX_TOP  # one STA page per pygeoapi page
GEOMETRY_FROM_PROVIDER = ("Things", "Datastreams", "Observations", "ObservedProperties")
CENTRE = (9.98, 53.54, 10.0, 53.56)  # Rathausmarkt, Jungfernstieg and the Rathausmarkt features

# name, lon, lat, Thing properties, Location properties
THINGS = [
    ("Rathausmarkt", 9.9937, 53.5503, {"district": "Hamburg-Mitte", "owner": "LGV"}, {"height": 6}),
    ("Jungfernstieg", 9.9930, 53.5530, None, None),
    ("Altona station", 9.9350, 53.5520, {"district": "Altona"}, None),
    ("Harburg station", 9.9800, 53.4600, None, {"height": 3}),
    ("Bergedorf station", 10.2100, 53.4880, {"district": "Bergedorf"}, None),
]


# ------------------------------------------------------------------ the city, through STA


def build_city(sta: str) -> dict[str, Any]:
    """5 Things with a Location each, 2 Sensors, 3 ObservedProperties (one unused), 5 Datastreams (one
    without Observations) and 300 Observations: two Datastreams with explicit FeaturesOfInterest, two with
    generated ones, some with resultTime and parameters and most without."""
    things = []
    for name, lon, lat, props, loc_props in THINGS:
        location = location_body(f"{name} location", lon, lat, **({"properties": loc_props} if loc_props else {}))
        body = thing_body(name, Locations=[location], **({"properties": props} if props else {}))
        things.append(create(sta, "Things", body))
    pt100 = create(sta, "Sensors", sensor_body("PT100"))
    no2_sensor = create(sta, "Sensors", sensor_body("NO2 sensor"))
    temperature = create(sta, "ObservedProperties", observed_property_body("air temperature"))
    no2 = create(sta, "ObservedProperties", observed_property_body("nitrogen dioxide"))
    create(sta, "ObservedProperties", observed_property_body("relative humidity", properties={"unit": "%"}))
    north = create(sta, "FeaturesOfInterest", feature_body("Rathausmarkt north", 9.9935, 53.5510))
    south = create(sta, "FeaturesOfInterest", feature_body("Rathausmarkt south", 9.9940, 53.5495,
                                                           properties={"surface": "paving"}))
    harbour = create(sta, "FeaturesOfInterest", feature_body("Harburg harbour", 9.9900, 53.4650))

    def observations(n: int, day: str, foi: Any = None, extra_every: int = 0) -> list[dict[str, Any]]:
        out = []
        for i in range(n):
            obs: dict[str, Any] = {"result": i, "phenomenonTime": f"{day}T{i // 60:02d}:{i % 60:02d}:00Z"}
            if foi is not None:
                obs["FeatureOfInterest"] = {"@iot.id": foi(i)}
            if extra_every and i % extra_every == 0:
                obs["resultTime"] = f"{day}T{i // 60:02d}:{i % 60:02d}:30Z"
                obs["parameters"] = {"battery": 100 - i}
            out.append(obs)
        return out

    plan = [  # name, Thing, Sensor, ObservedProperty, Observations
        ("air temperature at Rathausmarkt", 0, pt100, temperature,
         observations(80, "2024-05-01", lambda i: north if i % 2 == 0 else south)),
        ("NO2 at Jungfernstieg", 1, no2_sensor, no2, observations(80, "2024-05-02", extra_every=10)),
        ("air temperature at Altona", 2, pt100, temperature, observations(70, "2024-05-03")),
        ("NO2 at Harburg", 3, no2_sensor, no2, observations(70, "2024-05-04", lambda i: harbour, extra_every=7)),
        ("air temperature at Bergedorf", 4, pt100, temperature, []),
    ]
    datastreams = []
    for name, thing, sensor, observed, obs in plan:
        body = datastream_body(name, Sensor={"@iot.id": sensor}, ObservedProperty={"@iot.id": observed},
                               **({"Observations": obs} if obs else {}))
        datastreams.append(create(sta, f"Things({things[thing]})/Datastreams", body))
    assert count(sta, "Observations") == 300
    return {"things": things, "datastreams": datastreams}


# ------------------------------------------------------------------ pygeoapi as its own server


@pytest.fixture(scope="module")
def sta(database_url: str) -> Iterator[str]:
    """CityStream with max_top 50 on the emptied session database (in place of conftest's `sta`)."""
    empty_database(database_url)
    settings = Settings(database_url=database_url, host="127.0.0.1", http_port=find_free_port(), max_top=MAX_TOP)
    with running_app(settings, database_url) as url:
        yield f"{url}/v1.1"


@pytest.fixture(scope="module")
def city(sta: str) -> dict[str, Any]:
    return build_city(sta)


@pytest.fixture(scope="module")
def pygeoapi(sta: str, city: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pygeoapi]:
    with running_pygeoapi(sta, tmp_path_factory.mktemp("pygeoapi"), page=PAGE) as server:
        yield server


# ------------------------------------------------------------------ what STA says directly


def sta_geometry(sta: str, entity: str, item: dict[str, Any]) -> Any:
    """The geometry pygeoapi's provider derives for an entity, read from STA by plain navigation paths."""
    path = f"{entity}({item['@iot.id']})"
    if entity == "Things":
        return values(sta, f"{path}/Locations")[0]["location"]
    if entity == "Observations":
        return read(sta, f"{path}/FeatureOfInterest")["feature"]
    if entity == "Datastreams":
        latest = values(sta, f"{path}/Observations", **{"$orderby": "phenomenonTime desc", "$top": "1"})
        if latest:
            return read(sta, f"Observations({latest[0]['@iot.id']})/FeatureOfInterest")["feature"]
        return values(sta, f"{path}/Thing/Locations")[0]["location"]
    if entity == "ObservedProperties":
        first = values(sta, f"{path}/Datastreams", **{"$top": "1"})
        if not first:
            return None
        return values(sta, f"Datastreams({first[0]['@iot.id']})/Thing/Locations")[0]["location"]
    return None


def ids_of(features: list[dict[str, Any]]) -> list[str]:
    return [f["id"] for f in features]


def sta_ids(entities: list[dict[str, Any]]) -> list[str]:
    return [str(e["@iot.id"]) for e in entities]


def positions(coordinates: Any) -> Iterator[tuple[float, float]]:
    if isinstance(coordinates[0], int | float):
        yield coordinates[0], coordinates[1]
    else:
        for part in coordinates:
            yield from positions(part)


def within(geometry: dict[str, Any] | None, box: tuple[float, float, float, float]) -> bool:
    """Every position inside the box (st_within of points, lines and polygons, near enough here)."""
    if geometry is None:
        return False
    return all(box[0] < lon < box[2] and box[1] < lat < box[3] for lon, lat in positions(geometry["coordinates"]))


# ------------------------------------------------------------------ the collections and the OpenAPI document


def test_collections_lists_every_entity_set(pygeoapi: Pygeoapi) -> None:
    listed = {c["id"] for c in pygeoapi.get("collections")["collections"]}
    assert listed == set(COLLECTIONS)


def test_openapi_document_has_the_items_paths_of_every_collection(pygeoapi: Pygeoapi) -> None:
    paths = pygeoapi.get("openapi")["paths"]
    missing = [p for c in COLLECTIONS for p in (f"/collections/{c}/items", f"/collections/{c}/items/{{featureId}}")
               if p not in paths]
    assert not missing, f"pygeoapi dropped {missing}; openapi generate said:\n{pygeoapi.openapi_log}"
    datetime_params = [p.get("$ref", "") for p in paths["/collections/Observations/items"]["get"]["parameters"]]
    assert any(ref.endswith("/parameters/datetime") for ref in datetime_params)


# ------------------------------------------------------------------ every item, as STA has it


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_every_item_equals_the_sta_entity(pygeoapi: Pygeoapi, sta: str, collection: str) -> None:
    entities = sta_all(sta, collection)
    features = pygeoapi.all_items(collection)  # Observations: 6 pages
    assert ids_of(features) == sta_ids(entities)
    hits = pygeoapi.get(f"collections/{collection}/items", resulttype="hits")
    assert hits["numberMatched"] == count(sta, collection) == len(entities)
    for feature, entity in zip(features, entities, strict=True):
        props = feature["properties"]
        if collection != "Observations":
            assert (props["name"], props["description"]) == (entity["name"], entity["description"])
        else:
            assert (props["result"], props["phenomenonTime"]) == (entity["result"], entity["phenomenonTime"])
            for optional in ("resultTime", "parameters"):
                assert props.get(optional) == entity.get(optional)
        for key, value in (entity.get("properties") or {}).items():  # the provider lifts `properties`
            assert props[key] == value
        if collection in GEOMETRY_FROM_PROVIDER:
            assert feature["geometry"] == sta_geometry(sta, collection, entity), feature["id"]
        else:  # pygeoapi's provider derives no geometry for these; the GeoJSON stays a property
            assert feature["geometry"] is None
            key = "location" if collection == "Locations" else "feature"
            assert props[key] == entity[key]


def test_thing_properties_take_in_those_of_its_location(pygeoapi: Pygeoapi, sta: str, city: dict[str, Any]) -> None:
    first, second, _, fourth, _ = city["things"]
    merged = pygeoapi.get(f"collections/Things/items/{first}")["properties"]
    assert merged.items() >= {"district": "Hamburg-Mitte", "owner": "LGV", "height": 6}.items()
    # Things without properties (CityStream leaves the member out), one with a Location that has some
    assert "properties" not in read(sta, f"Things({second})") and "properties" not in read(sta, f"Things({fourth})")
    assert pygeoapi.get(f"collections/Things/items/{second}")["properties"]["name"] == "Jungfernstieg"
    assert pygeoapi.get(f"collections/Things/items/{fourth}")["properties"]["name"] == "Harburg station"


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_single_items(pygeoapi: Pygeoapi, collection: str) -> None:
    listed = pygeoapi.items(collection, limit=2, offset=1)
    assert len(listed) == 2
    for feature in listed:
        single = pygeoapi.get(f"collections/{collection}/items/{feature['id']}")
        assert (single["id"], single["geometry"]) == (feature["id"], feature["geometry"])
        assert single["properties"].get("name") == feature["properties"].get("name")


# ------------------------------------------------------------------ limit, offset, bbox, datetime, filters, sortby


@pytest.mark.parametrize(("collection", "limit", "offset"), [
    ("Things", 2, 1), ("Things", 10, 4), ("Datastreams", 3, 0), ("Observations", 50, 30),
    ("Observations", 10, 295), ("Observations", 7, 0), ("FeaturesOfInterest", 2, 2), ("ObservedProperties", 1, 2),
])
def test_limit_and_offset(pygeoapi: Pygeoapi, sta: str, collection: str, limit: int, offset: int) -> None:
    body = pygeoapi.get(f"collections/{collection}/items", limit=limit, offset=offset)
    expected = sta_ids(sta_all(sta, collection))[offset:offset + limit]
    assert ids_of(body["features"]) == expected
    assert body["numberReturned"] == len(expected)
    assert ("next" in [link["rel"] for link in body["links"]]) == (len(expected) == limit)


@pytest.mark.parametrize("collection", GEOMETRY_FROM_PROVIDER)
def test_bbox(pygeoapi: Pygeoapi, sta: str, collection: str) -> None:
    """The provider filters st_within(<its geometry path>, geography'POLYGON(…)'); ObservedProperties by
    Datastreams/observedArea (any of them)."""
    bbox = ",".join(map(str, CENTRE))
    got = ids_of(pygeoapi.all_items(collection, bbox=bbox))
    if collection == "ObservedProperties":
        expected = [str(op["@iot.id"]) for op in sta_all(sta, collection, **{"$expand": "Datastreams"})
                    if any(ds.get("observedArea") and within(ds["observedArea"], CENTRE) for ds in op["Datastreams"])]
    elif collection == "Datastreams":  # the provider filters by the Thing's Location
        expected = [str(ds["@iot.id"]) for ds in sta_all(sta, collection, **{"$expand": "Thing/Locations"})
                    if within(ds["Thing"]["Locations"][0]["location"], CENTRE)]
    else:
        expected = [str(e["@iot.id"]) for e in sta_all(sta, collection) if within(sta_geometry(sta, collection, e),
                                                                                   CENTRE)]
    assert expected, "the bbox should hold something"
    assert got == expected
    assert len(got) < count(sta, collection)


@pytest.mark.parametrize(("datetime", "sta_filter"), [
    ("2024-05-02T00:10:00Z", "phenomenonTime eq 2024-05-02T00:10:00Z"),
    ("2024-05-03T00:00:00Z/2024-05-03T00:09:00Z",
     "phenomenonTime ge 2024-05-03T00:00:00Z and phenomenonTime le 2024-05-03T00:09:00Z"),
    ("../2024-05-01T00:04:00Z", "phenomenonTime le 2024-05-01T00:04:00Z"),
    ("2024-05-04T01:00:00Z/..", "phenomenonTime ge 2024-05-04T01:00:00Z"),
])
def test_datetime(pygeoapi: Pygeoapi, sta: str, datetime: str, sta_filter: str) -> None:
    got = ids_of(pygeoapi.all_items("Observations", datetime=datetime))
    expected = sta_ids(sta_all(sta, "Observations", **{"$filter": sta_filter}))
    assert got == expected and got
    hits = pygeoapi.get("collections/Observations/items", datetime=datetime, resulttype="hits")
    assert hits["numberMatched"] == len(expected)


def test_property_filters(pygeoapi: Pygeoapi, sta: str, city: dict[str, Any]) -> None:
    """`?name='…'` becomes `$filter=name eq '…'`: pygeoapi passes the value on as an OData literal, so a
    string needs its quotes; a relation name filters by its @iot.id."""
    things, datastreams = city["things"], city["datastreams"]
    named = pygeoapi.all_items("Things", name="'Altona station'")
    assert ids_of(named) == [str(things[2])]
    assert ids_of(pygeoapi.all_items("Datastreams", name="'NO2 at Harburg'")) == [str(datastreams[3])]
    assert ids_of(pygeoapi.all_items("ObservedProperties", name="'nitrogen dioxide'")) == sta_ids(
        values(sta, "ObservedProperties", **{"$filter": "name eq 'nitrogen dioxide'"}))
    results = pygeoapi.all_items("Observations", result="5")
    assert ids_of(results) == sta_ids(values(sta, "Observations", **{"$filter": "result eq 5"})) and len(results) == 4
    of_stream = pygeoapi.all_items("Observations", Datastream=str(datastreams[1]))
    assert ids_of(of_stream) == sta_ids(sta_all(sta, f"Datastreams({datastreams[1]})/Observations"))
    assert len(of_stream) == 80
    assert ids_of(pygeoapi.all_items("Datastreams", Thing=str(things[0]))) == [str(datastreams[0])]
    both = pygeoapi.all_items("Observations", Datastream=str(datastreams[0]), result="3")
    assert ids_of(both) == sta_ids(values(sta, f"Datastreams({datastreams[0]})/Observations",
                                          **{"$filter": "result eq 3"}))
    assert len(both) == 1
    assert pygeoapi.all_items("Things", name="'nowhere'") == []


@pytest.mark.parametrize(("collection", "sortby", "orderby"), [
    ("Things", "-name", "name desc"),
    ("Things", "name", "name asc"),
    ("Datastreams", "name", "name asc"),
    ("ObservedProperties", "-name", "name desc"),
    ("Observations", "-phenomenonTime", "phenomenonTime desc"),
    ("Observations", "-result,phenomenonTime", "result desc,phenomenonTime asc"),
    ("Observations", "Datastream,-result", "Datastream/@iot.id asc,result desc"),
])
def test_sortby(pygeoapi: Pygeoapi, sta: str, collection: str, sortby: str, orderby: str) -> None:
    got = pygeoapi.all_items(collection, sortby=sortby)
    assert ids_of(got) == sta_ids(sta_all(sta, collection, **{"$orderby": orderby}))
    assert len(got) == count(sta, collection)


# ------------------------------------------------------------------ a limit beyond one STA page


@pytest.mark.parametrize("params", [{}, {"sortby": "-phenomenonTime"}], ids=["plain", "sorted"])
def test_a_limit_beyond_one_sta_page_follows_the_next_links(pygeoapi: Pygeoapi, sta: str,
                                                           params: dict[str, str]) -> None:
    """pygeoapi re-sends its default $expand with every nextLink it follows (requests appends params to the
    link's query): the server takes an option repeated with the same value, else paging stopped silently."""
    body = pygeoapi.get("collections/Observations/items", limit=120, offset=30, **params)
    orderby = {"$orderby": "phenomenonTime desc"} if params else {}
    assert ids_of(body["features"]) == sta_ids(sta_all(sta, "Observations", **orderby))[30:150]
