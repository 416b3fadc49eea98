"""OGC API – Features with clients we did not write: GDAL's OAPIF driver (ogrinfo, ogr2ogr) and OWSLib.

What GDAL 3.6 does (seen with CPL_CURL_VERBOSE): it reads /collections, a first items page for the schema,
the landing page and the OpenAPI document; then it pushes `-spat` down as `bbox`, an equality in `-where`
on a property the OpenAPI declares as a query parameter as that parameter, and a comparison on the
temporal field as `datetime`; it follows the body's `next` links.
"""

from __future__ import annotations

import shutil
import sqlite3
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
import shapely.wkb
from owslib.ogcapi.features import Features
from pyproj import Transformer

from tests.ogc_city import OBSERVATIONS_PER_DATASTREAM, THINGS, City, coordinates, phenomenon_time
from tests.sta_helpers import HTTP

pytestmark = pytest.mark.skipif(shutil.which("ogr2ogr") is None, reason="GDAL (gdal-bin) is not installed")

FIRST, LAST = 2, 4  # the Things inside the test box
FROM_SLOT = 20  # and the time window: from this slot on


def gdal(*args: str) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


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
        envelope = (0, 32, 48, 48, 64)[(blob[3] >> 1) & 0x07]
        found[row["fid"]] = {**dict(row), "geom": shapely.wkb.loads(blob[8 + envelope:])}
        assert struct.unpack("<i" if blob[3] & 1 else ">i", blob[4:8])[0] in (4326, 25832)
    return found


def expected_observations(city: City) -> dict[int, dict[str, Any]]:
    """What STA says is in the box and the window: the temperature Observations of Things FIRST..LAST."""
    x1, y1, x2, y2 = box()
    polygon = f"POLYGON(({x1} {y1},{x2} {y1},{x2} {y2},{x1} {y2},{x1} {y1}))"
    response = HTTP.get(f"{city.sta}/Observations", params={
        "$filter": f"Datastream/ObservedProperty/name eq 'temperature' and phenomenonTime ge "
                   f"{phenomenon_time(FROM_SLOT)} and st_intersects(FeatureOfInterest/feature, geography'{polygon}')",
        "$expand": "FeatureOfInterest,Datastream($select=id;$expand=ObservedProperty($select=name))",
        "$top": 1000})
    assert response.status_code == 200, response.text
    observations = response.json()["value"]
    assert len(observations) == (LAST - FIRST + 1) * (OBSERVATIONS_PER_DATASTREAM - FROM_SLOT)
    return {o["@iot.id"]: o for o in observations}


def copy_observations(city: City, tmp_path: Path, *extra: str) -> dict[int, dict[str, Any]]:
    out = tmp_path / "observations.gpkg"
    x1, y1, x2, y2 = box()
    gdal("ogr2ogr", "-preserve_fid", "-f", "GPKG", str(out), f"OAPIF:{city.ogc}", "observations",
         "-oo", "PAGE_SIZE=7", "-spat", str(x1), str(y1), str(x2), str(y2),
         "-where", f"observedProperty = 'temperature' AND phenomenonTime >= '{phenomenon_time(FROM_SLOT)}'", *extra)
    return read_gpkg(out, "observations")


def test_ogrinfo_lists_the_layers(city: City) -> None:
    listing = gdal("ogrinfo", "-ro", f"OAPIF:{city.ogc}")
    for layer in ("things", "datastreams", "latest", "observations", "features-of-interest", "locations"):
        assert f": {layer} " in listing, listing


def test_ogrinfo_summary_of_things_has_fields_and_count(city: City) -> None:
    summary = gdal("ogrinfo", "-ro", "-so", f"OAPIF:{city.ogc}", "things")
    assert f"Feature Count: {THINGS + 1}" in summary
    for field in ("name: String", "description: String", "observedProperties: StringList",
                  "properties.district: String", "properties.owner.contact.email: String"):
        assert field in summary, summary


def test_ogr2ogr_copies_what_sta_returns_for_the_same_box_and_window(city: City, tmp_path: Path) -> None:
    copied = copy_observations(city, tmp_path)
    expected = expected_observations(city)
    assert sorted(copied) == sorted(expected)  # fids are the @iot.ids; 30 features over 5 pages of 7
    for observation_id, observation in expected.items():
        row = copied[observation_id]
        assert float(row["result"]) == pytest.approx(observation["result"])
        assert row["phenomenonTime"].replace(".000Z", "Z") == observation["phenomenonTime"]
        assert row["datastream"] == observation["Datastream"]["@iot.id"]
        assert row["observedProperty"] == observation["Datastream"]["ObservedProperty"]["name"] == "temperature"
        assert row["unit"] == "°C"
        lon, lat = observation["FeatureOfInterest"]["feature"]["coordinates"]
        assert (row["geom"].x, row["geom"].y) == pytest.approx((lon, lat), abs=1e-9)


def test_ogr2ogr_to_utm_matches_pyproj_within_a_millimetre(city: City, tmp_path: Path) -> None:
    copied = copy_observations(city, tmp_path, "-t_srs", "EPSG:25832")
    expected = expected_observations(city)
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:25832", always_xy=True)
    assert sorted(copied) == sorted(expected)
    for observation_id, observation in expected.items():
        x, y = to_utm.transform(*observation["FeatureOfInterest"]["feature"]["coordinates"])
        geom = copied[observation_id]["geom"]
        assert (geom.x, geom.y) == pytest.approx((x, y), abs=0.001)


def test_utm_served_directly_matches_pyproj_within_a_millimetre(city: City) -> None:
    response = HTTP.get(f"{city.ogc}/collections/observations/items",
                        params={"crs": "http://www.opengis.net/def/crs/EPSG/0/25832", "limit": 1000})
    assert response.headers["content-crs"] == "<http://www.opengis.net/def/crs/EPSG/0/25832>"
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:25832", always_xy=True)
    features = response.json()["features"]
    assert len(features) == THINGS * 2 * OBSERVATIONS_PER_DATASTREAM
    plain = {f["id"]: f["geometry"]["coordinates"] for f in
             HTTP.get(f"{city.ogc}/collections/observations/items", params={"limit": 1000}).json()["features"]}
    for feature in features:
        x, y = to_utm.transform(*plain[feature["id"]])
        assert feature["geometry"]["coordinates"] == pytest.approx([x, y], abs=0.001)


def test_owslib_features(city: City) -> None:
    api = Features(city.ogc)
    assert "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core" in api.conformance()["conformsTo"]
    assert [c["id"] for c in api.collections()["collections"]] == [
        "things", "datastreams", "latest", "observations", "features-of-interest", "locations"]
    assert api.collection("observations")["extent"]["spatial"]["bbox"]
    bbox = list(box())
    first_ten = api.collection_items("observations", bbox=bbox, limit=10)
    second_page = api.collection_items("observations", bbox=bbox, limit=5, offset=5)
    assert [f["id"] for f in second_page["features"]] == [f["id"] for f in first_ten["features"]][5:10]
    in_box = api.collection_items("things", bbox=bbox, limit=100)
    assert sorted(f["id"] for f in in_box["features"]) == sorted([*city.things[FIRST:LAST + 1], city.things[-1]])
    filtered = api.collection_items("things", filter="name = 'thing 3'")
    assert [f["id"] for f in filtered["features"]] == [city.things[3]]
    queryables = api.collection_queryables("observations")
    assert {"phenomenonTime", "observedProperty", "geometry"} <= set(queryables["properties"])
