"""OGC API – Features at /ogcapi: every rule REFERENCE.md lists, one test each, over real HTTP and PostGIS.

The data is tests/ogc_city.py's small city, built once for the module through the SensorThings API.
"""

from __future__ import annotations

import base64
import gzip
from typing import Any

import httpx
import orjson
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from pyproj import Transformer

from tests.ogc_city import (
    OBSERVATIONS_PER_DATASTREAM,
    THINGS,
    City,
    coordinates,
    phenomenon_time,
)
from tests.sta_helpers import HTTP

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
EPSG = "http://www.opengis.net/def/crs/EPSG/0/"
COLLECTIONS = ("things", "datastreams", "latest", "observations", "features-of-interest", "locations")
ALL_OBSERVATIONS = THINGS * 2 * OBSERVATIONS_PER_DATASTREAM
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def get(city: City, path: str, headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:
    return HTTP.get(f"{city.ogc}{path}", params=params, headers=headers)


def items(city: City, collection: str, **params: Any) -> dict[str, Any]:
    response = get(city, f"/collections/{collection}/items", **params)
    assert response.status_code == 200, response.text
    return response.json()


def ids(document: dict[str, Any]) -> list[int]:
    return [f["id"] for f in document["features"]]


def link(document: dict[str, Any], rel: str, media_type: str | None = None) -> dict[str, Any] | None:
    return next((li for li in document["links"]
                 if li["rel"] == rel and (media_type is None or li["type"].startswith(media_type))), None)


def walk(city: City, collection: str, **params: Any) -> list[int]:
    """Every id reached by following `next` links from the first page."""
    return follow(items(city, collection, **params))


def follow(document: dict[str, Any]) -> list[int]:
    """The ids of this page and of every page its `next` links lead to."""
    found = ids(document)
    while (following := link(document, "next")) is not None:
        response = HTTP.get(following["href"])
        assert response.status_code == 200, response.text
        document = response.json()
        found += ids(document)
    return found


def assert_400(response: httpx.Response, *fragments: str) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == "InvalidParameterValue"
    for fragment in fragments:
        assert fragment in body["description"]


# ---------------------------------------------------------------------------------------------- landing page


def test_landing_page_links_everything_with_types(city: City) -> None:
    landing = city.get("")
    rels = {li["rel"] for li in landing["links"]}
    assert {"self", "alternate", "service-desc", "service-doc", "conformance", "data"} <= rels
    assert all(li.get("type") for li in landing["links"])
    assert link(landing, "service-desc")["type"] == "application/vnd.oai.openapi+json;version=3.0"  # type: ignore
    assert link(landing, "data")["href"].endswith("/ogcapi/collections")  # type: ignore[index]


@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_json_is_the_default_encoding(city: City, accept: str | None) -> None:
    headers = {} if accept is None else {"Accept": accept}
    for path in ("", "/", "/conformance", "/collections", "/collections/things",
                 "/collections/things/items", "/collections/things/queryables"):
        response = HTTP.get(f"{city.ogc}{path}", headers=headers)
        assert response.status_code == 200, (path, response.text)
        assert "json" in response.headers["content-type"], path
        response.json()


def test_items_are_geojson(city: City) -> None:
    response = get(city, "/collections/things/items")
    assert response.headers["content-type"].startswith("application/geo+json")


@pytest.mark.parametrize("path", ["", "/conformance", "/collections", "/collections/observations",
                                  "/collections/observations/items", "/collections/things/queryables", "/api"])
def test_html_for_browsers_and_f_html(city: City, path: str) -> None:
    for response in (get(city, path, f="html"), get(city, path, headers={"Accept": BROWSER_ACCEPT})):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/html")
        assert response.text.startswith("<!DOCTYPE html>")


def test_conformance_declares_what_qgis_needs_for_cql2_pushdown(city: City) -> None:
    classes = set(city.get("/conformance")["conformsTo"])
    for needed in ("ogcapi-features-1/1.0/conf/core", "ogcapi-features-1/1.0/conf/geojson",
                   "ogcapi-features-1/1.0/conf/oas30", "ogcapi-features-1/1.0/conf/html",
                   "ogcapi-features-2/1.0/conf/crs", "ogcapi-features-3/1.0/conf/filter",
                   "ogcapi-features-3/1.0/conf/features-filter", "ogcapi-features-3/1.0/conf/queryables",
                   "cql2/1.0/conf/basic-cql2", "cql2/1.0/conf/cql2-text", "cql2/1.0/conf/cql2-json"):
        assert f"http://www.opengis.net/spec/{needed}" in classes, needed


# ---------------------------------------------------------------------------------------------- collections


def test_collections_have_item_links_per_encoding_extent_and_crs(city: City) -> None:
    document = city.get("/collections")
    assert [c["id"] for c in document["collections"]] == [*COLLECTIONS, "aggregates"]
    for collection in document["collections"][:len(COLLECTIONS)]:  # aggregates: tests/ogc/test_aggregates.py
        item_types = {li["type"] for li in collection["links"] if li["rel"] == "items"}
        assert {"application/geo+json", "text/html", "text/csv"} <= item_types
        assert collection["crs"][0] == CRS84
        assert {EPSG + "4326", EPSG + "25832", EPSG + "3857"} <= set(collection["crs"])
        assert collection["storageCrs"] == CRS84
        assert collection["extent"]["spatial"]["crs"] == CRS84
        (xmin, ymin, xmax, ymax), = collection["extent"]["spatial"]["bbox"]
        first, last = coordinates(0), coordinates(THINGS - 1)
        assert (xmin, ymin, xmax, ymax) == pytest.approx((*first, *last)), collection["id"]


def test_temporal_extent_of_observations_is_their_phenomenon_time_range(city: City) -> None:
    extent = city.get("/collections/observations")["extent"]
    assert extent["temporal"]["interval"] == [[phenomenon_time(0), phenomenon_time(OBSERVATIONS_PER_DATASTREAM - 1)]]
    assert "temporal" not in city.get("/collections/things")["extent"]


def test_unknown_collection_is_404_json(city: City) -> None:
    response = get(city, "/collections/nope/items")
    assert response.status_code == 404
    assert "things" in response.json()["description"]


# ---------------------------------------------------------------------------------------------- items


def test_items_document_members(city: City) -> None:
    document = items(city, "things", limit=4)
    assert document["type"] == "FeatureCollection"
    assert document["numberReturned"] == 4
    assert document["numberMatched"] == THINGS + 1
    assert document["timeStamp"].endswith("Z")
    for rel in ("self", "alternate", "next"):
        assert link(document, rel) is not None, rel
    assert all(li.get("type") for li in document["links"])


def test_feature_ids_are_the_sta_ids(city: City) -> None:
    assert sorted(ids(items(city, "things"))) == sorted(city.things)
    assert sorted(ids(items(city, "datastreams"))) == sorted(city.datastreams)
    sta_ids = [o["@iot.id"] for o in HTTP.get(f"{city.sta}/Observations", params={"$top": 1000}).json()["value"]]
    assert sorted(ids(items(city, "observations", limit=1000))) == sorted(sta_ids)


def test_limit_defaults_to_100_and_is_clamped_above_the_maximum(city: City) -> None:
    assert items(city, "observations")["numberReturned"] == 100
    clamped = items(city, "observations", limit=1_000_000)
    assert clamped["numberReturned"] == ALL_OBSERVATIONS
    assert link(clamped, "next") is None


@pytest.mark.parametrize(("params", "fragment"), [
    ({"limit": "0"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"offset": "-1"}, "offset"),
    ({"bbox": "9,53,10"}, "bbox"),
    ({"bbox": "9,53,0,10,54"}, "bbox"),
    ({"bbox": "9,53,10,x"}, "bbox"),
    ({"bbox": "9,54,10,53"}, "bbox"),
    ({"bbox": "9,-91,10,54"}, "bbox"),
    ({"bbox": "9,53,10,54", "bbox-crs": "EPSG:31467"}, "bbox-crs"),
    ({"bbox-crs": EPSG + "4326"}, "bbox-crs"),
    ({"datetime": "yesterday"}, "datetime"),
    ({"datetime": "2024-05-02T00:00:00Z/2024-05-01T00:00:00Z"}, "datetime"),
    ({"datetime": "2024-05-01/2024-05-02/2024-05-03"}, "datetime"),
    ({"crs": "EPSG:31467"}, "crs"),
    ({"sortby": "nonsense"}, "sortby"),
    ({"properties": "nonsense"}, "properties"),
    ({"filter-lang": "cql2-text"}, "filter-lang"),
    ({"filter": "result > 1", "filter-lang": "ecql"}, "filter-lang"),
    ({"next": "not-a-token"}, "next"),
    ({"datastream": "two"}, "datastream"),
    ({"unknown": "1"}, "unknown"),
    ({"LIMIT": "1"}, "LIMIT"),
])
def test_invalid_or_unknown_parameters_are_400_not_422(city: City, params: dict[str, str], fragment: str) -> None:
    assert_400(get(city, "/collections/observations/items", **params), fragment)


def test_unknown_parameter_on_metadata_resources_is_400(city: City) -> None:
    for path in ("", "/conformance", "/collections", "/collections/things", "/collections/things/queryables"):
        assert_400(get(city, path, foo="1"), "foo")
    assert_400(get(city, "/collections/things/items/2", limit="1"), "limit")


def test_repeated_parameter_is_400(city: City) -> None:
    assert_400(HTTP.get(f"{city.ogc}/collections/things/items?limit=1&limit=2"), "limit")


# ---------------------------------------------------------------------------------------------- bbox


def _things_in(city: City, bbox: str, **params: Any) -> list[int]:
    return sorted(ids(items(city, "things", bbox=bbox, **params)))


def test_bbox_selects_intersecting_features_and_features_without_geometry(city: City) -> None:
    # things 2..4 lie inside; the thing without a Location matches any bbox
    lon2, lat2 = coordinates(2)
    lon4, lat4 = coordinates(4)
    found = _things_in(city, f"{lon2 - 0.001},{lat2 - 0.001},{lon4 + 0.001},{lat4 + 0.001}")
    assert found == sorted([*city.things[2:5], city.things[-1]])


def test_bbox_with_six_numbers_equals_four(city: City) -> None:
    four = _things_in(city, "9.93,53.51,9.99,53.54")
    assert four == _things_in(city, "9.93,53.51,-100,9.99,53.54,100")


def test_bbox_on_a_boundary_point_matches(city: City) -> None:
    lon, lat = coordinates(5)
    assert city.things[5] in _things_in(city, f"{lon},{lat},{lon + 1},{lat + 1}")


def test_bbox_in_another_crs(city: City) -> None:
    expected = _things_in(city, "9.93,53.51,9.99,53.54")
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:25832", always_xy=True)
    x1, y1 = to_utm.transform(9.93, 53.51)
    x2, y2 = to_utm.transform(9.99, 53.54)
    # the transformed box is a little larger than the geographic one; no Thing sits near its edge
    assert _things_in(city, f"{x1},{y1},{x2},{y2}", **{"bbox-crs": EPSG + "25832"}) == expected
    assert _things_in(city, "53.51,9.93,53.54,9.99", **{"bbox-crs": EPSG + "4326"}) == expected  # lat/lon order


def test_bbox_across_the_antimeridian_is_two_boxes(city: City) -> None:
    assert _things_in(city, "170,53,-170,54") == [city.things[-1]]  # only the Thing without a Location
    assert len(_things_in(city, "9,53,-170,54")) == THINGS + 1


# ---------------------------------------------------------------------------------------------- datetime


def _observation_count(city: City, **params: Any) -> int:
    return len(ids(items(city, "observations", limit=10_000, **params)))


@pytest.mark.parametrize(("value", "slots"), [
    (phenomenon_time(3), [3]),  # an instant
    (f"{phenomenon_time(3)}/{phenomenon_time(5)}", [3, 4, 5]),  # closed: both ends included
    (f"../{phenomenon_time(2)}", [0, 1, 2]),
    (f"/{phenomenon_time(2)}", [0, 1, 2]),
    (f"{phenomenon_time(27)}/..", [27, 28, 29]),
    (f"{phenomenon_time(27)}/", [27, 28, 29]),
    ("2024-05-01", list(range(12))),  # a date is the whole day
    ("2024-05-01T02:00:00+02:00", [0]),  # offsets are honoured
])
def test_datetime_instants_and_intervals(city: City, value: str, slots: list[int]) -> None:
    assert _observation_count(city, datetime=value) == len(slots) * THINGS * 2


def test_repeated_datetime_means_all_of_them_also_in_next_links(city: City) -> None:
    # GDAL 3.6 sends `… AND t >= a AND t <= b` as datetime=a/.. and datetime=../b
    query = f"datetime={phenomenon_time(3)}/..&datetime=../{phenomenon_time(5)}&limit=7"
    first = HTTP.get(f"{city.ogc}/collections/observations/items?{query}").json()
    following = link(first, "next")
    assert following is not None and following["href"].count("datetime=") == 2
    walked = follow(first)
    assert len(walked) == len(set(walked)) == 3 * THINGS * 2
    assert _observation_count(city, datetime=[f"{phenomenon_time(9)}/..", f"../{phenomenon_time(2)}"]) == 0


def test_datetime_keeps_features_without_time(city: City) -> None:
    assert len(ids(items(city, "things", datetime="1999-01-01T00:00:00Z"))) == THINGS + 1


def test_datetime_on_datastreams_is_interval_overlap(city: City) -> None:
    inside = items(city, "datastreams", datetime=f"{phenomenon_time(10)}/{phenomenon_time(11)}")
    assert sorted(ids(inside)) == sorted(city.datastreams)
    assert items(city, "datastreams", datetime="2030-01-01T00:00:00Z/..")["numberReturned"] == 0


# ---------------------------------------------------------------------------------------------- paging


def test_next_link_walk_returns_every_feature_exactly_once(city: City) -> None:
    walked = walk(city, "observations", limit=37)
    assert len(walked) == ALL_OBSERVATIONS
    assert len(set(walked)) == ALL_OBSERVATIONS


def test_next_link_walk_with_sortby_and_filters(city: City) -> None:
    params = {"limit": 7, "sortby": "-phenomenonTime,datastream", "datetime": f"../{phenomenon_time(4)}"}
    walked = walk(city, "observations", **params)
    full = ids(items(city, "observations", limit=10_000, sortby="-phenomenonTime,datastream",
                     datetime=f"../{phenomenon_time(4)}"))
    assert walked == full
    assert len(set(walked)) == 5 * THINGS * 2


def test_next_link_walk_sorted_by_a_nullable_property(city: City) -> None:
    walked = walk(city, "observations", limit=50, sortby="-resultTime")
    assert sorted(walked) == sorted(ids(items(city, "observations", limit=10_000)))


def test_offset_paging_like_owslib_and_arcgis(city: City) -> None:
    whole = ids(items(city, "observations", limit=100))
    assert ids(items(city, "observations", limit=30, offset=30)) == whole[30:60]
    page = items(city, "observations", limit=30, offset=ALL_OBSERVATIONS - 10)
    assert page["numberReturned"] == 10
    assert page["numberMatched"] == ALL_OBSERVATIONS  # the last page tells the exact total for free
    assert link(page, "next") is None
    following = link(items(city, "observations", limit=30, offset=30), "next")
    assert following is not None and "offset=60" in following["href"]


def test_number_matched_is_exact_or_absent(city: City) -> None:
    assert items(city, "things", limit=2)["numberMatched"] == THINGS + 1
    assert items(city, "latest", limit=2)["numberMatched"] == THINGS * 2
    lon, lat = coordinates(1)
    in_box = items(city, "datastreams", limit=1, bbox=f"{lon - 0.001},{lat - 0.001},{lon + 0.001},{lat + 0.001}")
    assert in_box["numberMatched"] == 2  # counted without the latest-Observation lookups
    latest_time = phenomenon_time(OBSERVATIONS_PER_DATASTREAM - 1)
    filtered = items(city, "datastreams", limit=1, filter=f"latestTime = TIMESTAMP('{latest_time}')")
    assert filtered["numberMatched"] == len(city.datastreams)  # counted with them: the filter needs them
    first_page = items(city, "observations", limit=10)
    assert "numberMatched" not in first_page  # counting Observations is not cheap: left out, never guessed
    whole = items(city, "observations", limit=10_000, datastream=city.datastreams[0])
    assert whole["numberMatched"] == OBSERVATIONS_PER_DATASTREAM


def test_a_tampered_next_token_is_400(city: City) -> None:
    token = base64.urlsafe_b64encode(orjson.dumps({"k": ["abc", 1], "s": "+datastream"})).decode().rstrip("=")
    assert_400(get(city, "/collections/observations/items", sortby="datastream", next=token), "next")


def test_next_token_from_another_sortby_is_400(city: City) -> None:
    following = link(items(city, "observations", limit=5, sortby="-phenomenonTime"), "next")
    assert following is not None
    token = following["href"].split("next=")[1].split("&")[0]
    assert_400(get(city, "/collections/observations/items", limit=5, next=token), "sortby")


# ---------------------------------------------------------------------------------------------- crs


def test_crs_25832_coordinates_match_pyproj(city: City) -> None:
    response = get(city, "/collections/things/items", crs=EPSG + "25832")
    assert response.headers["content-crs"] == f"<{EPSG}25832>"
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:25832", always_xy=True)
    for feature in response.json()["features"]:
        if feature["geometry"] is None:
            continue
        i = city.things.index(feature["id"])
        x, y = to_utm.transform(*coordinates(i))
        assert feature["geometry"]["coordinates"] == pytest.approx([x, y], abs=0.001)


def test_crs_4326_is_latitude_first_and_crs84_is_the_default(city: City) -> None:
    lon, lat = coordinates(0)
    default = get(city, f"/collections/things/items/{city.things[0]}")
    assert default.headers["content-crs"] == f"<{CRS84}>"
    assert default.json()["geometry"]["coordinates"] == pytest.approx([lon, lat])
    swapped = get(city, f"/collections/things/items/{city.things[0]}", crs="EPSG:4326")
    assert swapped.json()["geometry"]["coordinates"] == pytest.approx([lat, lon])
    mercator = get(city, f"/collections/things/items/{city.things[0]}", crs=EPSG + "3857").json()
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(lon, lat)
    assert mercator["geometry"]["coordinates"] == pytest.approx([x, y], abs=0.001)


# ---------------------------------------------------------------------------------------------- single feature


def test_single_feature_with_links_and_404s(city: City) -> None:
    feature = city.get(f"/collections/things/items/{city.things[1]}")
    assert feature["type"] == "Feature" and feature["id"] == city.things[1]
    rels = {li["rel"] for li in feature["links"]}
    assert {"self", "alternate", "collection", "related"} <= rels
    sta = next(li for li in feature["links"] if li["rel"] == "related")
    assert sta["href"].endswith(f"/v1.1/Things({city.things[1]})")
    for missing in ("999999", "abc", "-1", "%C2%B2", "99999999999999999999"):
        response = get(city, f"/collections/things/items/{missing}")
        assert response.status_code == 404, missing
        assert response.json()["code"] == "NotFound"


def test_single_observation_by_its_id(city: City) -> None:
    first = items(city, "observations", limit=1)["features"][0]
    assert city.get(f"/collections/observations/items/{first['id']}") == {
        **first, "links": city.get(f"/collections/observations/items/{first['id']}")["links"]}


# ---------------------------------------------------------------------------------------------- content


def test_things_carry_observed_properties_flattened_properties_and_sta_link(city: City) -> None:
    feature = city.get(f"/collections/things/items/{city.things[0]}")
    props = feature["properties"]
    assert props["name"] == "thing 0"
    assert sorted(props["observedProperties"]) == ["bikes", "temperature"]
    assert props["properties.owner.contact.email"] == "udp@example.org"
    assert props["properties.index"] == 0
    assert props["sensorThingsLink"].endswith(f"/v1.1/Things({city.things[0]})")


def test_datastreams_and_latest_carry_the_latest_value(city: City) -> None:
    last = OBSERVATIONS_PER_DATASTREAM - 1
    for datastream in city.datastreams[:4]:
        newest = HTTP.get(f"{city.sta}/Datastreams({datastream})/Observations",
                          params={"$orderby": "phenomenonTime desc", "$top": 1}).json()["value"][0]
        props = city.get(f"/collections/datastreams/items/{datastream}")["properties"]
        assert (props["latestResult"], props["latestTime"]) == (newest["result"], phenomenon_time(last))
        latest = city.get(f"/collections/latest/items/{datastream}")
        assert latest["geometry"]["type"] == "Point"
        assert latest["properties"]["result"] == newest["result"]
        assert latest["properties"]["phenomenonTime"] == newest["phenomenonTime"]
        assert latest["properties"]["observation"] == newest["@iot.id"]
    assert items(city, "latest", limit=1000)["numberReturned"] == len(city.datastreams)


def test_observation_properties_match_sta(city: City) -> None:
    datastream = city.datastreams[1]  # bikes of thing 0: Count, unit "bicycles"
    features = items(city, "observations", datastream=datastream, limit=100)["features"]
    sta = HTTP.get(f"{city.sta}/Datastreams({datastream})/Observations",
                   params={"$top": 100, "$expand": "FeatureOfInterest"}).json()["value"]
    by_id = {o["@iot.id"]: o for o in sta}
    assert sorted(by_id) == sorted(f["id"] for f in features)
    for feature in features:
        observation, props = by_id[feature["id"]], feature["properties"]
        assert props["result"] == observation["result"]
        assert props["phenomenonTime"] == observation["phenomenonTime"]
        assert (props["datastream"], props["observedProperty"], props["unit"]) == (datastream, "bikes", "bicycles")
        assert feature["geometry"] == observation["FeatureOfInterest"]["feature"]


def test_property_equality_filter_and_properties_selection(city: City) -> None:
    document = items(city, "observations", observedProperty="temperature", properties="result,unit", limit=1000)
    assert document["numberReturned"] == ALL_OBSERVATIONS // 2
    assert all(set(f["properties"]) == {"result", "unit"} for f in document["features"])
    assert all(f["properties"]["unit"] == "°C" for f in document["features"])


def test_sortby(city: City) -> None:
    document = items(city, "things", sortby="-name", limit=3)
    assert [f["properties"]["name"] for f in document["features"]] == ["thing without location", "thing 9",
                                                                        "thing 8"]


def test_csv_items(city: City) -> None:
    response = get(city, "/collections/things/items", f="csv", limit=3)
    assert response.headers["content-type"].startswith("text/csv")
    lines = response.text.splitlines()
    assert lines[0].split(",")[:3] == ["id", "name", "description"]
    assert lines[0].endswith("geometry")
    assert len(lines) == 4 and "POINT(" in lines[1]


# ---------------------------------------------------------------------------------------------- HTTP caching


def test_etag_last_modified_and_cache_control(city: City) -> None:
    path = "/collections/things/items"
    first = get(city, path)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert "max-age" in first.headers["cache-control"]
    again = get(city, path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert get(city, path, headers={"If-Modified-Since": modified}).status_code == 304
    assert get(city, path, headers={"If-None-Match": '"something-else"'}).status_code == 200


def test_large_responses_are_gzipped(city: City) -> None:
    response = HTTP.get(f"{city.ogc}/collections/observations/items", params={"limit": 500},
                        headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    raw = HTTP.get(f"{city.ogc}/collections/observations/items", params={"limit": 500},
                   headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers
    assert len(gzip.compress(raw.content)) < len(raw.content) / 3


def test_web_maps_on_other_origins_may_read(city: City) -> None:
    response = get(city, "/collections/latest/items", headers={"Origin": "https://map.example.org"})
    assert response.headers["access-control-allow-origin"] == "*"
    assert "Content-Crs" in response.headers["access-control-expose-headers"]
    preflight = HTTP.options(f"{city.ogc}/collections/latest/items", headers={
        "Origin": "https://map.example.org", "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 200


def test_only_get(city: City) -> None:
    response = HTTP.post(f"{city.ogc}/collections/things/items", json={})
    assert response.status_code == 405
    assert response.json()["code"] == "MethodNotAllowed"


# ---------------------------------------------------------------------------------------------- schemas, OpenAPI


def test_queryables_and_sortables_are_json_schema(city: City) -> None:
    collection = city.get("/collections/observations")
    queryables_link = link(collection, "http://www.opengis.net/def/rel/ogc/1.0/queryables")
    assert queryables_link is not None and queryables_link["type"] == "application/schema+json"
    response = HTTP.get(queryables_link["href"])
    assert response.headers["content-type"].startswith("application/schema+json")
    schema = response.json()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
    assert schema["properties"]["phenomenonTime"]["format"] == "date-time"
    assert schema["properties"]["geometry"]["format"] == "geometry-any"
    assert schema["properties"]["datastream"]["type"] == "integer"
    sortables = city.get("/collections/observations/sortables")
    assert "geometry" not in sortables["properties"] and "phenomenonTime" in sortables["properties"]


def test_openapi_declares_limit_and_bbox_as_the_ogc_suite_and_qgis_read_them(city: City) -> None:
    response = get(city, "/api")
    assert response.headers["content-type"] == "application/vnd.oai.openapi+json;version=3.0"
    document = response.json()
    assert document["openapi"].startswith("3.0")
    limit = document["components"]["parameters"]["limit"]
    assert (limit["in"], limit["style"], limit["explode"]) == ("query", "form", False)
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 100}
    bbox = document["components"]["parameters"]["bbox"]["schema"]
    assert (bbox["type"], bbox["minItems"], bbox["maxItems"], bbox["items"]) == ("array", 4, 6, {"type": "number"})
    validate_openapi(document)  # e.g. no parameter twice (a `datetime` equality filter once was)
    for collection in COLLECTIONS:
        operation = document["paths"][f"/collections/{collection}/items"]["get"]
        refs = {p.get("$ref", "").rsplit("/", 1)[-1] for p in operation["parameters"]}
        assert {"limit", "bbox", "datetime", "crs", "bbox-crs", "filter", "filter-lang", "offset"} <= refs
