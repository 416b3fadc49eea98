"""CQL2 filters: the compiler against a real PostgreSQL table, then `filter` on the OGC API over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from geo.filtering import compile_filter
from geo.queryables import Queryable
from sensorthings.model.errors import BadRequest
from sensorthings.query.sql import SqlBuilder
from tests.ogc_city import OBSERVATIONS_PER_DATASTREAM, THINGS, City, coordinates, phenomenon_time
from tests.sta_helpers import HTTP

QUERYABLES = {
    "name": Queryable("name", "string", sql.SQL("c.name")),
    "value": Queryable("value", "number", sql.SQL("c.value")),
    "count": Queryable("count", "integer", sql.SQL("c.count")),
    "flag": Queryable("flag", "boolean", sql.SQL("c.flag")),
    "datetime": Queryable("datetime", "datetime", sql.SQL("c.t_start"), end_expression=sql.SQL("c.t_end")),
    "geometry": Queryable("geometry", "geometry", sql.SQL("c.geom")),
}
ROWS = [  # id, name, value, count, flag, start, end, lon, lat
    (1, "alpha", 1.5, 1, True, "2024-05-01T00:00:00Z", None, 9.9, 53.5),
    (2, "Beta", 2.5, 2, False, "2024-05-01T06:00:00Z", "2024-05-01T12:00:00Z", 10.0, 53.6),
    (3, "gamma_x", None, 3, None, "2024-05-02T00:00:00Z", None, 10.5, 54.0),
    (4, "it's", 10.0, 40, True, None, None, None, None),
    (5, "delta%", -3.0, 5, False, "2024-05-03T00:00:00Z", "2024-05-04T00:00:00Z", 9.95, 53.55),
]


@pytest.fixture(scope="module")
def table(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE cql (id bigint, name text, value double precision, count bigint, "
                     "flag boolean, t_start timestamptz, t_end timestamptz, geom geometry(Geometry, 4326))")
        for row in ROWS:
            *values, lon, lat = row
            conn.execute("INSERT INTO cql VALUES (%s, %s, %s, %s, %s, %s, %s, "
                         "CASE WHEN %s::float8 IS NULL THEN NULL ELSE ST_SetSRID(ST_MakePoint(%s, %s), 4326) END)",
                         (*values, lon, lon, lat))
        yield conn


def matches(conn: psycopg.Connection[Any], text: str, lang: str = "cql2-text") -> list[int]:
    b = SqlBuilder("")
    condition = compile_filter(text, lang, QUERYABLES, b.param)
    query = sql.SQL("SELECT c.id FROM cql AS c WHERE {} ORDER BY c.id").format(condition)
    return [row[0] for row in conn.execute(query, b.params).fetchall()]


@pytest.mark.parametrize(("text", "expected"), [
    ("name = 'alpha'", [1]),
    ("name <> 'alpha'", [2, 3, 4, 5]),
    ("value > 2", [2, 4]),
    ("value >= 2.5 AND count < 10", [2]),
    ("value < 0 OR flag = true", [1, 4, 5]),
    ("NOT (count > 2)", [1, 2]),
    ("flag", [1, 4]),
    ("count BETWEEN 2 AND 5", [2, 3, 5]),
    ("count NOT BETWEEN 2 AND 5", [1, 4]),
    ("name LIKE 'gam%'", [3]),
    ("name LIKE 'gamma\\_x'", [3]),
    ("name LIKE 'delta\\%'", [5]),
    ("name NOT LIKE '%a%'", [4]),
    ("CASEI(name) = casei('BETA')", [2]),
    ("name IN ('alpha', 'Beta', 'nobody')", [1, 2]),
    ("count NOT IN (1, 2)", [3, 4, 5]),
    ("value IS NULL", [3]),
    ("value IS NOT NULL AND flag IS NULL", []),
    ("name = 'it''s'", [4]),
    ("count + 1 > 5", [4, 5]),
    ("value * 2 = 5", [2]),
    ("S_INTERSECTS(geometry, BBOX(9.8, 53.4, 10.1, 53.7))", [1, 2, 5]),
    ("S_INTERSECTS(geometry, POLYGON((9.8 53.4, 10.1 53.4, 10.1 53.7, 9.8 53.7, 9.8 53.4)))", [1, 2, 5]),
    ("S_INTERSECTS(geometry, POINT(10.5 54.0))", [3]),
    ("S_DISJOINT(geometry, BBOX(9.8, 53.4, 10.1, 53.7))", [3]),
    ("S_WITHIN(geometry, BBOX(9.96, 53.56, 10.6, 54.1))", [2, 3]),
    ("datetime = TIMESTAMP('2024-05-01T00:00:00Z')", [1]),
    ("datetime > TIMESTAMP('2024-05-01T03:00:00Z')", [2, 3, 5]),
    ("datetime >= DATE('2024-05-02')", [3, 5]),
    ("T_INTERSECTS(datetime, INTERVAL('2024-05-01T10:00:00Z', '2024-05-01T11:00:00Z'))", [2]),
    ("T_INTERSECTS(datetime, INTERVAL('2024-05-03T12:00:00Z', '..'))", [5]),
    ("T_INTERSECTS(datetime, INTERVAL('..', '2024-05-01T00:00:00Z'))", [1]),
    ("T_INTERSECTS(datetime, DATE('2024-05-01'))", [1, 2]),
    ("T_BEFORE(datetime, TIMESTAMP('2024-05-02T00:00:00Z'))", [1, 2]),
    ("T_AFTER(datetime, TIMESTAMP('2024-05-01T12:00:00Z'))", [3, 5]),
    ("T_DURING(datetime, INTERVAL('2024-05-01T05:00:00Z', '2024-05-01T13:00:00Z'))", [2]),
    ("T_CONTAINS(datetime, TIMESTAMP('2024-05-03T06:00:00Z'))", [5]),
    ("T_EQUALS(datetime, TIMESTAMP('2024-05-02T00:00:00Z'))", [3]),
    ("T_DISJOINT(datetime, INTERVAL('2024-05-01T01:00:00Z', '2024-05-02T12:00:00Z'))", [1, 5]),
])
def test_cql2_text(table: psycopg.Connection[Any], text: str, expected: list[int]) -> None:
    assert matches(table, text) == expected


@pytest.mark.parametrize(("tree", "expected"), [
    ({"op": "=", "args": [{"property": "name"}, "alpha"]}, [1]),
    ({"op": "and", "args": [{"op": ">", "args": [{"property": "value"}, 2]},
                            {"op": "<", "args": [{"property": "count"}, 10]}]}, [2]),
    ({"op": "in", "args": [{"property": "count"}, [1, 3]]}, [1, 3]),
    ({"op": "isNull", "args": [{"property": "flag"}]}, [3]),
    ({"op": "like", "args": [{"property": "name"}, "%a"]}, [1, 2]),
    ({"op": "s_intersects", "args": [{"property": "geometry"},
                                     {"type": "Point", "coordinates": [10.0, 53.6]}]}, [2]),
    ({"op": "s_intersects", "args": [{"property": "geometry"}, {"bbox": [9.8, 53.4, 10.1, 53.7]}]}, [1, 2, 5]),
    ({"op": "t_intersects", "args": [{"property": "datetime"},
                                     {"interval": ["2024-05-02T00:00:00Z", ".."]}]}, [3, 5]),
    ({"op": "t_overlaps", "args": [{"property": "datetime"},
                                   {"interval": ["2024-05-03T12:00:00Z", "2024-05-05T00:00:00Z"]}]}, [5]),
    ({"op": "t_after", "args": [{"property": "datetime"}, {"timestamp": "2024-05-02T12:00:00Z"}]}, [5]),
])
def test_cql2_json(table: psycopg.Connection[Any], tree: dict[str, Any], expected: list[int]) -> None:
    assert matches(table, json.dumps(tree), "cql2-json") == expected


@pytest.mark.parametrize(("text", "lang", "fragment"), [
    ("name = ", "cql2-text", "not valid cql2-text"),
    ("((", "cql2-text", "not valid cql2-text"),
    ("{\"op\": ", "cql2-json", "not valid cql2-json"),
    ("nope = 1", "cql2-text", "unknown property 'nope'"),
    ("name = 5", "cql2-text", "cannot compare a string with a number"),
    ("count = 'x'", "cql2-text", "cannot compare"),
    ("datetime = 5", "cql2-text", "cannot compare"),
    ("name LIKE 5", "cql2-text", "LIKE"),
    ("S_INTERSECTS(name, BBOX(1,2,3,4))", "cql2-text", "not a geometry"),
    ("T_AFTER(name, TIMESTAMP('2024-01-01T00:00:00Z'))", "cql2-text", "not a time"),
    ("name + 1 > 2", "cql2-text", "needs numbers"),
    ("geometry = 1", "cql2-text", "spatial functions"),
    ("datetime > TIMESTAMP('2024-13-45T00:00:00Z')", "cql2-text", ""),
    ("{\"op\": \"frobnicate\", \"args\": []}", "cql2-json", "'frobnicate' is not supported"),
    ("{\"op\": \"=\", \"args\": [1]}", "cql2-json", "takes 2 arguments"),
    ("{\"op\": \"=\", \"args\": [{\"property\": \"name\"}, {\"x\": 1}]}", "cql2-json", "not supported"),
    ("[1, 2]", "cql2-json", "expected a condition"),
    ("{\"op\": \"a_contains\", \"args\": [{\"property\": \"name\"}, [\"a\"]]}", "cql2-json", "not supported"),
])
def test_bad_filters_are_400_with_a_reason(table: psycopg.Connection[Any], text: str, lang: str,
                                           fragment: str) -> None:
    with pytest.raises(BadRequest) as raised:
        matches(table, text, lang)
    assert raised.value.status == 400
    assert fragment in raised.value.message


def test_values_are_bound_never_written_into_the_sql(table: psycopg.Connection[Any]) -> None:
    hostile = "x'); DROP TABLE cql; --"
    b = SqlBuilder("")
    condition = compile_filter(json.dumps({"op": "=", "args": [{"property": "name"}, hostile]}), "cql2-json",
                               QUERYABLES, b.param)
    assert hostile not in condition.as_string(table)
    assert hostile in b.params.values()
    assert matches(table, "name = 'x''); DROP TABLE cql; --'") == []
    assert len(matches(table, "count > 0")) == len(ROWS)  # the table is still there


# ---------------------------------------------------------------------------------------------- over HTTP


def _ids(city: City, collection: str, **params: Any) -> list[int]:
    response = HTTP.get(f"{city.ogc}/collections/{collection}/items", params={"limit": 10_000, **params})
    assert response.status_code == 200, response.text
    return sorted(f["id"] for f in response.json()["features"])


def test_filter_on_observations_is_anded_with_bbox_and_datetime(city: City) -> None:
    lon, lat = coordinates(3)
    window = f"{phenomenon_time(5)}/{phenomenon_time(9)}"
    both = _ids(city, "observations", filter="observedProperty = 'temperature' AND resultNumber > 3",
                bbox=f"{lon - 0.001},{lat - 0.001},{lon + 0.001},{lat + 0.001}", datetime=window)
    # thing 3's temperature results are 3 + k/10: above 3 for every k > 0, so all five slots
    sta = HTTP.get(f"{city.sta}/Datastreams({city.datastreams[6]})/Observations", params={
        "$filter": f"phenomenonTime ge {phenomenon_time(5)} and phenomenonTime le {phenomenon_time(9)}",
        "$select": "id"}).json()["value"]
    assert both == sorted(o["@iot.id"] for o in sta)
    assert len(both) == 5


def test_filter_in_cql2_json_over_http(city: City) -> None:
    tree = {"op": "and", "args": [
        {"op": "=", "args": [{"property": "datastream"}, city.datastreams[0]]},
        {"op": "t_intersects", "args": [{"property": "datetime"},
                                        {"interval": [phenomenon_time(OBSERVATIONS_PER_DATASTREAM - 3), ".."]}]},
    ]}
    assert len(_ids(city, "observations", filter=json.dumps(tree), **{"filter-lang": "cql2-json"})) == 3


def test_filter_on_things_and_spatial_filter(city: City) -> None:
    assert _ids(city, "things", filter="name = 'thing 3'") == [city.things[3]]
    lon, lat = coordinates(0)
    near = f"S_INTERSECTS(geometry, BBOX({lon - 0.001}, {lat - 0.001}, {lon + 0.001}, {lat + 0.001}))"
    assert _ids(city, "things", filter=near) == [city.things[0]]
    assert len(_ids(city, "latest", filter="observedProperty = 'bikes'")) == THINGS


def test_bad_filter_over_http_is_400(city: City) -> None:
    response = HTTP.get(f"{city.ogc}/collections/things/items", params={"filter": "name = = 'x'"})
    assert response.status_code == 400
    assert response.json()["description"].startswith("filter: not valid cql2-text")
    response = HTTP.get(f"{city.ogc}/collections/things/items", params={"filter": "nope = 1"})
    assert response.status_code == 400 and "queryables are" in response.json()["description"]
