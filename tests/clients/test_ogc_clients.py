"""OGC API – Features with clients we did not write: GDAL's OAPIF driver (ogrinfo, ogr2ogr) and OWSLib.

What Debian's GDAL 3.6.2 does (seen with CPL_DEBUG=ON, which logs every `HTTP: Fetch(url)`): it reads
/collections, a first items page (`limit=PAGE_SIZE`) for the schema, the landing page and the OpenAPI
document (/ogcapi/api); then it pushes `-spat` down as `bbox`, a string or integer equality in `-where` on a
property the OpenAPI declares as a query parameter as that parameter (`observedProperty=temperature`), and
comparisons on the temporal field as `datetime`: `>= a AND <= b` becomes one `datetime=a/b`. It follows the
body's `next` links, and evaluates what it could not push down (e.g. `result > 2.5`) itself.
Its quirks: a strict `<`/`>` is sent as the inclusive `datetime=../b` and the boundary instant is kept; a
mixed `>= a AND < b` is sent as two `datetime` parameters, which the server rejects with 400. GDAL 3.6 has no
`crs` open option: `-t_srs` reprojects on the client, with PROJ. It never sends `filter` (no CQL2).
OWSLib 0.35 passes every keyword of `collection_items` as a query parameter (`filter=` without `filter-lang`).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import struct
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import shapely.wkb
from owslib.ogcapi.features import Features
from pyproj import Transformer

from tests.ogc_city import OBSERVATIONS_PER_DATASTREAM, THINGS, City, coordinates, phenomenon_time
from tests.sta_helpers import HTTP

COLLECTIONS = ["things", "datastreams", "latest", "observations", "features-of-interest", "locations", "aggregates"]
CORE = "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core"
EPSG = "http://www.opengis.net/def/crs/EPSG/0/"
FIRST, LAST = 2, 4  # the Things inside the test box
FROM_SLOT, TO_SLOT = 20, 27  # and the time window, both ends included: 8 slots x 3 Things = 24 features
PAGE_SIZE = 7  # 24 features are 4 pages: GDAL has to follow 3 `next` links

needs_gdal = pytest.mark.skipif(shutil.which("ogr2ogr") is None or shutil.which("ogrinfo") is None,
                                reason="GDAL (gdal-bin) is not installed")


def gdal(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a GDAL utility with CPL_DEBUG=ON, so stderr lists the URLs it fetched."""
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CPL_DEBUG": "ON"})
    assert done.returncode == 0, "\n".join(line for line in done.stderr.splitlines()
                                           if line.startswith(("ERROR", "HTTP: Fetch")))
    return done


def fetched(stderr: str) -> list[str]:
    return re.findall(r"HTTP: Fetch\((\S+)\)", stderr)


def box() -> tuple[float, float, float, float]:
    (x1, y1), (x2, y2) = coordinates(FIRST), coordinates(LAST)
    return x1 - 0.001, y1 - 0.001, x2 + 0.001, y2 + 0.001


def read_gpkg(path: Path, layer: str) -> dict[int, dict[str, Any]]:
    """fid -> attributes and a shapely geometry (GeoPackage blobs: 'GP' header with an envelope, then WKB)."""
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(f'SELECT * FROM "{layer}"').fetchall()  # noqa: S608 - a fixed test layer name
    found = {}
    for row in rows:
        blob = row["geom"]
        assert blob[:2] == b"GP"
        flags = blob[3]
        envelope = (0, 32, 48, 48, 64)[(flags >> 1) & 0x07]
        assert struct.unpack("<i" if flags & 1 else ">i", blob[4:8])[0] in (4326, 25832)
        found[row["fid"]] = {**dict(row), "geom": shapely.wkb.loads(blob[8 + envelope:])}
    return found


def thing_index(city: City, datastream: int) -> int:
    return city.datastreams.index(datastream) // 2


def expected_observations(city: City) -> dict[int, dict[str, Any]]:
    """What STA says is in the box and the window: the temperature Observations of Things FIRST..LAST in slots
    FROM_SLOT..TO_SLOT; checked against the city's layout so that STA and OGC cannot share a mistake."""
    x1, y1, x2, y2 = box()
    polygon = f"POLYGON(({x1} {y1},{x2} {y1},{x2} {y2},{x1} {y2},{x1} {y1}))"
    response = HTTP.get(f"{city.sta}/Observations", params={
        "$filter": f"Datastream/ObservedProperty/name eq 'temperature' and phenomenonTime ge "
                   f"{phenomenon_time(FROM_SLOT)} and phenomenonTime le {phenomenon_time(TO_SLOT)} and "
                   f"st_intersects(FeatureOfInterest/feature, geography'{polygon}')",
        "$expand": "FeatureOfInterest,Datastream($expand=ObservedProperty)",
        "$top": 1000})
    assert response.status_code == 200, response.text
    observations = {o["@iot.id"]: o for o in response.json()["value"]}
    slots = {phenomenon_time(k): k for k in range(OBSERVATIONS_PER_DATASTREAM)}
    layout = set()
    for o in observations.values():
        i, k = thing_index(city, o["Datastream"]["@iot.id"]), slots[o["phenomenonTime"]]
        assert o["result"] == pytest.approx(i + k / 10)
        assert o["FeatureOfInterest"]["feature"]["coordinates"] == pytest.approx(list(coordinates(i)))
        layout.add((i, k))
    assert layout == {(i, k) for i in range(FIRST, LAST + 1) for k in range(FROM_SLOT, TO_SLOT + 1)}
    return observations


WINDOW = f"phenomenonTime >= '{phenomenon_time(FROM_SLOT)}' AND phenomenonTime <= '{phenomenon_time(TO_SLOT)}'"
TEMPERATURE = "observedProperty = 'temperature'"


def copy_observations(city: City, tmp_path: Path, *extra: str,
                      where: str = f"{WINDOW} AND {TEMPERATURE}") -> tuple[dict[int, dict[str, Any]], list[str]]:
    """ogr2ogr of the box and window into a GeoPackage: its rows by fid (= @iot.id) and the URLs GDAL fetched."""
    out = tmp_path / "observations.gpkg"
    x1, y1, x2, y2 = box()
    done = gdal("ogr2ogr", "-preserve_fid", "-f", "GPKG", str(out), f"OAPIF:{city.ogc}", "observations",
                "-oo", f"PAGE_SIZE={PAGE_SIZE}", "-spat", str(x1), str(y1), str(x2), str(y2), "-where", where, *extra)
    return read_gpkg(out, "observations"), fetched(done.stderr)


def served(city: City, collection: str, **params: Any) -> Any:
    response = HTTP.get(f"{city.ogc}/collections/{collection}/items", params=params)
    assert response.status_code == 200, response.text
    return response


# ---------------------------------------------------------------------------------------------- GDAL


@needs_gdal
def test_ogrinfo_lists_the_seven_layers(city: City) -> None:
    listing = gdal("ogrinfo", "-ro", f"OAPIF:{city.ogc}").stdout
    layers = re.findall(r"^\d+: (\S+) ", listing, re.MULTILINE)
    assert layers == COLLECTIONS, listing


@needs_gdal
def test_ogrinfo_summary_of_things_has_fields_and_count(city: City) -> None:
    summary = gdal("ogrinfo", "-ro", "-so", f"OAPIF:{city.ogc}", "things").stdout
    assert "Layer name: things" in summary
    assert f"Feature Count: {THINGS + 1}" in summary, summary
    assert "Geometry: Point" in summary
    for field in ("name: String", "description: String", "observedProperties: StringList",
                  "sensorThingsLink: String", "properties.district: String", "properties.index: Integer",
                  "properties.owner.name: String", "properties.owner.contact.email: String"):
        assert f"\n{field} " in summary, summary


@needs_gdal
def test_ogr2ogr_copies_what_sta_returns_for_the_same_box_and_window(city: City, tmp_path: Path) -> None:
    copied, urls = copy_observations(city, tmp_path)
    expected = expected_observations(city)
    assert sorted(copied) == sorted(expected)  # fids are the @iot.ids
    for observation_id, observation in expected.items():
        row = copied[observation_id]
        assert row["result"] == pytest.approx(observation["result"])
        assert row["phenomenonTime"].replace(".000Z", "Z") == observation["phenomenonTime"]
        assert row["datastream"] == observation["Datastream"]["@iot.id"]
        assert row["observedProperty"] == observation["Datastream"]["ObservedProperty"]["name"] == "temperature"
        assert row["unit"] == observation["Datastream"]["unitOfMeasurement"]["symbol"] == "°C"
        lon, lat = observation["FeatureOfInterest"]["feature"]["coordinates"]
        assert (row["geom"].x, row["geom"].y) == pytest.approx((lon, lat), abs=1e-9)
    # the server did the selecting (bbox, the equality and the window were pushed down) over 4 pages
    pages = [parse_qs(urlsplit(u).query) for u in urls if urlsplit(u).path.endswith("/observations/items")]
    selecting = [p for p in pages if "bbox" in p]
    assert len(selecting) == 4 and sum("next" in p for p in selecting) == 3, urls
    for page in selecting:
        assert page["observedProperty"] == ["temperature"]
        assert page["datetime"] == [f"{phenomenon_time(FROM_SLOT)}/{phenomenon_time(TO_SLOT)}"]
        assert page["limit"] == [str(PAGE_SIZE)]


@needs_gdal
def test_ogr2ogr_with_the_time_window_after_another_condition(city: City, tmp_path: Path) -> None:
    # GDAL 3.6 sends `a AND t >= x AND t <= y` as `…&observedProperty=temperature&datetime=x/..&datetime=../y`
    # (only a leading or parenthesized pair becomes one `datetime=x/y`); both values must hold
    copied, _ = copy_observations(city, tmp_path, where=f"{TEMPERATURE} AND {WINDOW}")
    assert sorted(copied) == sorted(expected_observations(city))


@needs_gdal
def test_ogr2ogr_to_utm_matches_pyproj_within_a_millimetre(city: City, tmp_path: Path) -> None:
    copied, _ = copy_observations(city, tmp_path, "-t_srs", "EPSG:25832")
    expected = expected_observations(city)
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:25832", always_xy=True)
    assert sorted(copied) == sorted(expected)
    for observation_id, observation in expected.items():
        x, y = to_utm.transform(*observation["FeatureOfInterest"]["feature"]["coordinates"])
        geom = copied[observation_id]["geom"]
        assert (geom.x, geom.y) == pytest.approx((x, y), abs=0.001)


# ---------------------------------------------------------------------------------------------- CRS over HTTP


def test_utm_served_directly_matches_pyproj_within_a_millimetre(city: City) -> None:
    response = served(city, "observations", crs=EPSG + "25832", limit=1000)
    assert response.headers["content-crs"] == f"<{EPSG}25832>"
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:25832", always_xy=True)
    features = response.json()["features"]
    assert len(features) == THINGS * 2 * OBSERVATIONS_PER_DATASTREAM
    for feature in features:
        x, y = to_utm.transform(*coordinates(thing_index(city, feature["properties"]["datastream"])))
        assert feature["geometry"]["coordinates"] == pytest.approx([x, y], abs=0.001)
    short = served(city, "observations", crs="EPSG:25832", limit=1000)
    assert short.headers["content-crs"] == f"<{EPSG}25832>"
    assert short.json()["features"] == features


def test_epsg_4326_is_served_in_lat_lon_order(city: City) -> None:
    response = served(city, "observations", crs=EPSG + "4326", limit=1000)
    assert response.headers["content-crs"] == f"<{EPSG}4326>"
    features = response.json()["features"]
    assert len(features) == THINGS * 2 * OBSERVATIONS_PER_DATASTREAM
    for feature in features:
        lon, lat = coordinates(thing_index(city, feature["properties"]["datastream"]))
        assert feature["geometry"]["coordinates"] == pytest.approx([lat, lon], abs=1e-9)


# ---------------------------------------------------------------------------------------------- OWSLib


def test_owslib_conformance_and_collections(city: City) -> None:
    api = Features(city.ogc)
    assert CORE in api.conformance()["conformsTo"]
    assert [c["id"] for c in api.collections()["collections"]] == COLLECTIONS


def test_owslib_collection_has_the_city_extent(city: City) -> None:
    extent = Features(city.ogc).collection("observations")["extent"]
    (west, south), (east, north) = coordinates(0), coordinates(THINGS - 1)
    assert extent["spatial"]["bbox"] == [pytest.approx([west, south, east, north])]
    assert extent["temporal"]["interval"] == [[phenomenon_time(0), phenomenon_time(OBSERVATIONS_PER_DATASTREAM - 1)]]


def test_owslib_offset_gives_the_second_page(city: City) -> None:
    api = Features(city.ogc)
    bbox = list(box())
    first_ten = api.collection_items("observations", bbox=bbox, limit=10)
    second_page = api.collection_items("observations", bbox=bbox, limit=5, offset=5)
    in_box = served(city, "observations", bbox=",".join(map(str, bbox)), limit=1000).json()["features"]
    assert len(in_box) == (LAST - FIRST + 1) * 2 * OBSERVATIONS_PER_DATASTREAM  # both Datastreams of 3 Things
    assert {thing_index(city, f["properties"]["datastream"]) for f in in_box} == set(range(FIRST, LAST + 1))
    assert first_ten["features"] == in_box[:10]
    assert second_page["numberReturned"] == 5
    assert [f["id"] for f in second_page["features"]] == [f["id"] for f in first_ten["features"]][5:10]
    assert second_page["features"] == first_ten["features"][5:10]


def test_owslib_cql2_filter(city: City) -> None:
    api = Features(city.ogc)
    filtered = api.collection_items("things", filter="name = 'thing 3'")
    assert [f["id"] for f in filtered["features"]] == [city.things[3]]
    assert filtered["features"][0]["properties"]["name"] == "thing 3"
    # temperature results are i + k/10; above 9.5: 24 of thing 9, 14 of thing 8, 4 of thing 7
    warm = api.collection_items("observations", filter="observedProperty = 'temperature' AND resultNumber > 9.5",
                                limit=1000)
    found = sorted((thing_index(city, f["properties"]["datastream"]), round(f["properties"]["result"], 6))
                   for f in warm["features"])
    assert found == sorted((i, round(i + k / 10, 6)) for i in (7, 8, 9) for k in range(OBSERVATIONS_PER_DATASTREAM)
                           if round(i + k / 10, 6) > 9.5)


def test_owslib_queryables(city: City) -> None:
    queryables = Features(city.ogc).collection_queryables("observations")
    assert {"geometry", "datastream", "observedProperty", "unit", "resultNumber", "phenomenonTime",
            "featureOfInterest"} <= set(queryables["properties"])
