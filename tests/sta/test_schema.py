"""Schema and migrations on a real PostgreSQL/PostGIS: idempotent migrations, time partitioning of
Observations, id lookups that touch one partition, and the TimescaleDB path where the extension exists."""

from __future__ import annotations

import json
from typing import Any

import httpx
import psycopg
import pytest

from sensorthings.query.compiler import compile_entity
from sensorthings.query.path import parse_path
from sensorthings.query.visibility import View
from sensorthings.schema.migrate import apply_migrations, migration_files
from tests.sta_helpers import HTTP


def _post(sta: str, resource: str, body: dict[str, Any]) -> int:
    response = HTTP.post(f"{sta}/{resource}", json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["@iot.id"])


def _datastream(sta: str) -> int:
    return _post(sta, "Datastreams", {
        "name": "NO2", "description": "NO2 at the station", "observationType": "OM_Measurement",
        "unitOfMeasurement": {"name": "microgram per cubic metre", "symbol": "µg/m³", "definition": "ucum:ug/m3"},
        "Thing": {"name": "Station", "description": "Air quality station",
                  "Locations": [{"name": "Altona", "description": "kerbside", "encodingType": "application/geo+json",
                                 "location": {"type": "Point", "coordinates": [9.93, 53.55]}}]},
        "Sensor": {"name": "NO2 sensor", "description": "chemiluminescence", "encodingType": "text/html",
                   "metadata": "https://example.org/sensor"},
        "ObservedProperty": {"name": "NO2", "definition": "https://example.org/no2", "description": "nitrogen dioxide"},
    })


def _uses_timescaledb(conn: psycopg.Connection[Any]) -> bool:
    return conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is not None


def test_migrations_are_idempotent(database_url: str) -> None:
    assert apply_migrations(database_url) == []
    with psycopg.connect(database_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM citystream_migrations ORDER BY version")]
    assert versions == [version for version, _ in migration_files()]


def test_postgis_geometry_columns_have_srid_4326_and_gist_indexes(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        columns = dict(conn.execute(
            "SELECT f_table_name || '.' || f_geometry_column, srid FROM geometry_columns").fetchall())
        gist = {r[0] for r in conn.execute("SELECT tablename FROM pg_indexes WHERE indexdef LIKE '%USING gist%'")}
    assert columns == {"locations.location_geom": 4326, "features_of_interest.feature_geom": 4326,
                       "datastreams.observed_area": 4326, "multi_datastreams.observed_area": 4326}
    assert {"locations", "features_of_interest", "datastreams", "multi_datastreams"} <= gist


def test_observations_have_the_datastream_time_index(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'observations_datastream_time'"
                           ).fetchone()
    assert row is not None
    assert "(datastream_id, phenomenon_time_start DESC, id)" in row[0]


def test_observations_are_time_partitioned(sta: str, database_url: str) -> None:
    datastream = _datastream(sta)
    for when in ("2023-01-10T00:00:00Z", "2024-02-29T23:59:59Z", "2024-03-01T00:00:00Z"):
        _post(sta, f"Datastreams({datastream})/Observations", {"result": 1, "phenomenonTime": when})
    with psycopg.connect(database_url) as conn:
        if _uses_timescaledb(conn):
            hypertables = conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables").fetchall()
            assert ("observations",) in hypertables
            return
        partitions = {r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'observations'::regclass")}
    assert {"observations_202301", "observations_202402", "observations_202403"} <= partitions


def test_every_observation_partition_holds_exactly_one_stream(sta: str, database_url: str) -> None:
    """observations_one_stream (migration 0005) reaches partitions created after it, in the database itself."""
    datastream = _datastream(sta)
    observation = _post(sta, f"Datastreams({datastream})/Observations",
                        {"result": 1, "phenomenonTime": "2019-07-04T00:00:00Z"})  # a month no test wrote before
    with psycopg.connect(database_url) as conn:
        day = conn.execute("SELECT phenomenon_time_start FROM observations WHERE id = %s", (observation,)).fetchone()
        for datastream_id, multi_id in ((None, None), (datastream, datastream)):
            with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
                conn.execute("INSERT INTO observations (id, phenomenon_time_start, result_type, datastream_id, "
                             "multi_datastream_id, feature_id) SELECT 1, %s, 0, %s, %s, feature_id "
                             "FROM observations WHERE id = %s", (day[0] if day else None, datastream_id, multi_id,
                                                                 observation))
            with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
                conn.execute("UPDATE observations SET datastream_id = %s, multi_datastream_id = %s WHERE id = %s",
                             (datastream_id, multi_id, observation))


def _executed_scans(plan: dict[str, Any]) -> list[str]:
    """Relations that a plan actually scanned (nodes with loops > 0)."""
    found = []
    if plan.get("Relation Name", "").startswith("observations") and plan.get("Actual Loops", 0) > 0:
        found.append(plan["Relation Name"])
    for child in plan.get("Plans", []):
        found += _executed_scans(child)
    return found


def _explain(database_url: str, resource: str) -> list[str]:
    compiled = compile_entity(parse_path(resource), "http://x/v1.1", view=View.ALL)
    with psycopg.connect(database_url) as conn:
        statement = b"EXPLAIN (ANALYZE, FORMAT JSON) " + compiled.statement.as_bytes(conn)
        row = conn.execute(statement, compiled.params).fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    return _executed_scans(plan[0]["Plan"])


def test_observation_id_lookup_scans_one_partition(sta: str, database_url: str) -> None:
    datastream = _datastream(sta)
    ids = [_post(sta, f"Datastreams({datastream})/Observations", {"result": i, "phenomenonTime": when})
           for i, when in enumerate(("2022-05-01T00:00:00Z", "2023-06-01T00:00:00Z", "2024-07-01T12:00:00Z"))]
    scanned = _explain(database_url, f"Observations({ids[1]})")
    assert len(scanned) == 1


def test_observation_moved_to_another_month_is_found_and_still_pruned(sta: str, database_url: str) -> None:
    datastream = _datastream(sta)
    observation = _post(sta, f"Datastreams({datastream})/Observations",
                        {"result": 5, "phenomenonTime": "2024-01-15T08:00:00Z"})
    _post(sta, f"Datastreams({datastream})/Observations", {"result": 6, "phenomenonTime": "2024-09-15T08:00:00Z"})
    moved = HTTP.patch(f"{sta}/Observations({observation})", json={"phenomenonTime": "2024-09-20T08:00:00Z"})
    assert moved.status_code == 200, moved.text
    read = httpx.get(f"{sta}/Observations({observation})")
    assert read.status_code == 200
    assert read.json()["phenomenonTime"] == "2024-09-20T08:00:00Z"
    assert len(_explain(database_url, f"Observations({observation})")) == 1


def test_timescaledb_hypertable_where_the_extension_exists(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        if not _uses_timescaledb(conn):
            pytest.skip("TimescaleDB is not installed here (not packaged for Debian 12); the native "
                        "partitioning path is what this run covers")
        row = conn.execute("SELECT column_name FROM timescaledb_information.dimensions "
                           "WHERE hypertable_name = 'observations'").fetchone()
    assert row == ("phenomenon_time_start",)
