"""$resultFormat=CSV and $resultFormat=GeoJSON (issue 6, part 4), as FROST offers them: flattened values."""

from __future__ import annotations

import csv
import io

from tests.sta_helpers import (
    HTTP,
    assert_error,
    create,
    create_datastream_with_observations,
    create_thing_with_location,
    get,
    location_body,
    read,
    send_raw,
    thing_body,
)


def csv_rows(sta: str, path: str, **params: str) -> list[dict[str, str]]:
    response = get(sta, path, params={"$resultFormat": "CSV", **params})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.text)))


def test_csv_has_a_header_and_a_row_per_entity(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 3)
    rows = csv_rows(sta, f"Datastreams({datastream})/Observations", **{"$orderby": "phenomenonTime"})
    assert [r["result"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["phenomenonTime"] == "2024-05-01T00:00:00Z"
    assert "Datastream@iot.navigationLink" not in rows[0]  # links are left out
    assert set(rows[0]) >= {"@iot.id", "@iot.selfLink", "phenomenonTime", "result", "resultTime"}
    assert rows[0]["resultTime"] == ""  # null is an empty cell


def test_csv_flattens_expands_with_paths(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 2)
    rows = csv_rows(sta, "Observations", **{"$expand": "Datastream($select=name,unitOfMeasurement;"
                                                         "$expand=Thing($select=name))", "$orderby": "id"})
    assert rows[0]["Datastream/name"] == "datastream"
    assert rows[0]["Datastream/Thing/name"] == "thing"
    assert rows[0]["Datastream/unitOfMeasurement"].startswith("{")  # objects stay whole, as JSON text
    things = csv_rows(sta, "Things", **{"$expand": "Datastreams($select=id)"})
    assert things[0]["Datastreams/0/@iot.id"] == str(datastream)


def test_numbers_keep_the_text_they_were_sent_as(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 1)
    send_raw("POST", sta, f"Datastreams({datastream})/Observations",
             '{"result": 21.50, "phenomenonTime": "2024-06-01T00:00:00Z"}')
    params = {"$filter": "phenomenonTime eq 2024-06-01T00:00:00Z", "$select": "result"}
    assert csv_rows(sta, "Observations", **params) == [{"result": "21.50"}]
    response = get(sta, "Observations", params={**params, "$resultFormat": "GeoJSON"})
    assert '"result":21.50' in response.text


def test_csv_select_and_next_link_header(sta: str) -> None:
    create_datastream_with_observations(sta, 5)
    response = get(sta, "Observations", params={"$resultFormat": "CSV", "$select": "result", "$top": "2",
                                                "$orderby": "result"})
    assert response.text.splitlines() == ["result", "0", "1"]
    following = response.headers["link"].split(";")[0].strip("<>")
    assert "$resultFormat=CSV" in following
    assert HTTP.get(following).text.splitlines() == ["result", "2", "3"]


def test_geojson_takes_the_first_geometry_and_flattens_the_rest(sta: str) -> None:
    thing = create(sta, "Things", thing_body("pier", Locations=[location_body("pier location", 9.99, 53.55)]))
    create_thing_with_location(sta, "far", 10.5, 54.0)
    response = get(sta, "Things", params={"$resultFormat": "GeoJSON", "$expand": "Locations", "$count": "true",
                                          "$orderby": "id"})
    assert response.headers["content-type"].startswith("application/geo+json")
    collection = response.json()
    assert collection["type"] == "FeatureCollection" and collection["@iot.count"] == 2
    feature = collection["features"][0]
    assert feature["id"] == thing
    assert feature["geometry"] == {"type": "Point", "coordinates": [9.99, 53.55]}
    assert feature["properties"]["name"] == "pier"
    assert feature["properties"]["Locations/0/name"] == "pier location"
    assert "Locations/0/location" not in feature["properties"]  # it became the geometry


def test_geojson_without_a_geometry_has_null_geometry(sta: str) -> None:
    create(sta, "Things", thing_body("nowhere"))
    (feature,) = read(sta, "Things", **{"$resultFormat": "GeoJSON"})["features"]
    assert feature["geometry"] is None and feature["properties"]["name"] == "nowhere"


def test_result_formats_only_apply_to_collections(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    assert_error(get(sta, f"Things({thing})", params={"$resultFormat": "CSV"}), 400, "collections")
