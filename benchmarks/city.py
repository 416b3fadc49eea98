"""A synthetic city for the benchmarks: 1,000 air-quality stations in and around Hamburg.

Each Thing has one Location (and one FeatureOfInterest generated from it) and three Datastreams (NO2, PM10,
temperature). The Observations are spread evenly over 30 days and written with binary COPY straight into
`observations`, in phenomenon-time order: slot g (0 <= g < N) is at START + g * 30 days / N, belongs to
Datastream order[g % 3000] and gets the sequence value base + g. So ids increase with time, as with real
ingest, and every index is appended to rather than written all over (which keeps the COPY fast).

The load is cached: table `benchmark_city` records the parameters, and a second run with the same ones
skips generation. Different parameters empty the STA tables and load again.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from sensorthings.model.observation_ids import observation_id

GENERATOR_VERSION = 1
START = datetime(2025, 1, 20, tzinfo=UTC)
CHUNK_ROWS = 1_000_000
BBOX = (9.7, 53.4, 10.3, 53.7)  # lon min, lat min, lon max, lat max
DISTRICTS = ("Hamburg-Mitte", "Altona", "Eimsbüttel", "Hamburg-Nord", "Wandsbek", "Bergedorf", "Harburg")
# name, definition, description, unit (name, symbol, definition), typical level, daily swing, noise
PROPERTIES = (
    ("NO2", "http://dd.eionet.europa.eu/vocabulary/aq/pollutant/8", "Nitrogen dioxide concentration",
     ("microgram per cubic metre", "µg/m³", "http://dd.eionet.europa.eu/vocabulary/uom/concentration/ug.m-3"),
     28.0, 14.0, 8.0),
    ("PM10", "http://dd.eionet.europa.eu/vocabulary/aq/pollutant/5", "Particulate matter < 10 µm",
     ("microgram per cubic metre", "µg/m³", "http://dd.eionet.europa.eu/vocabulary/uom/concentration/ug.m-3"),
     18.0, 6.0, 5.0),
    ("temperature", "http://vocab.nerc.ac.uk/collection/P07/current/CFSN0023/", "Air temperature",
     ("degree Celsius", "°C", "http://www.qudt.org/qudt/owl/1.0.0/unit/Instances.html#DegreeCelsius"),
     2.0, 3.0, 1.5),
)
STA_TABLES = (
    "observations", "observation_relocations", "datastreams", "features_of_interest", "thing_locations",
    "location_historical_locations", "historical_locations", "locations", "sensors", "observed_properties",
    "things",
)


@dataclass(frozen=True)
class CityParams:
    observations: int
    things: int = 1000
    datastreams_per_thing: int = len(PROPERTIES)
    days: int = 30
    start: str = START.isoformat()
    seed: int = 42
    generator: int = GENERATOR_VERSION

    @property
    def datastreams(self) -> int:
        return self.things * self.datastreams_per_thing

    @property
    def end(self) -> datetime:
        return START + timedelta(days=self.days)


def loaded_params(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS benchmark_city ("
        " id int PRIMARY KEY, params jsonb NOT NULL, generation_seconds double precision NOT NULL,"
        " loaded_at timestamptz NOT NULL DEFAULT now())"
    )
    row = conn.execute("SELECT params FROM benchmark_city WHERE id = 1").fetchone()
    return None if row is None else dict(row[0])


def ensure_city(dsn: str, params: CityParams) -> float | None:
    """Load the city unless the same parameters are already loaded; the generation time, or None if cached."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if loaded_params(conn) == asdict(params):
            return None
        conn.execute("DELETE FROM benchmark_city")
        conn.execute(f"TRUNCATE {', '.join(STA_TABLES)} RESTART IDENTITY CASCADE")  # noqa: S608 (constants)
        began = time.perf_counter()
        _generate(conn, params)
        seconds = time.perf_counter() - began
        conn.execute("INSERT INTO benchmark_city (id, params, generation_seconds) VALUES (1, %s, %s)",
                     (Jsonb(asdict(params)), seconds))
        return seconds


def _say(message: str) -> None:
    print(f"  city: {message}", flush=True)


def _generate(conn: psycopg.Connection[Any], p: CityParams) -> None:
    rng = random.Random(p.seed)
    _say(f"{p.things} Things, {p.datastreams} Datastreams, {p.observations:,} Observations over {p.days} days")
    _metadata(conn, p, rng)
    month = datetime(START.year, START.month, 1, tzinfo=UTC)
    while month < p.end:  # partitions first, each in its own transaction (no-op with TimescaleDB)
        conn.execute("SELECT sta_ensure_observation_partition(%s)", (month,))
        month = (month + timedelta(days=32)).replace(day=1)
    began = time.perf_counter()
    _observations(conn, p, rng)
    _say(f"observations copied in {time.perf_counter() - began:.1f} s")
    _summaries(conn, p)
    began = time.perf_counter()
    conn.execute("VACUUM ANALYZE")
    _say(f"VACUUM ANALYZE in {time.perf_counter() - began:.1f} s")


def _metadata(conn: psycopg.Connection[Any], p: CityParams, rng: random.Random) -> None:
    lon0, lat0, lon1, lat1 = BBOX
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO observed_properties (id, name, definition, description, properties) "
            "VALUES (%s, %s, %s, %s, %s)",
            [(i + 1, name, definition, description, Jsonb({"domain": "air"}))
             for i, (name, definition, description, *_rest) in enumerate(PROPERTIES)],
        )
        cur.executemany(
            "INSERT INTO sensors (id, name, description, encoding_type, metadata, properties) "
            "VALUES (%s, %s, %s, 'application/pdf', %s, %s)",
            [(i + 1, f"{name} sensor model", f"Low-cost {description.lower()} sensor",
              Jsonb(f"https://example.org/datasheets/{name.lower()}.pdf"), Jsonb({"vendor": "Example GmbH"}))
             for i, (name, _definition, description, *_rest) in enumerate(PROPERTIES)],
        )
        things, locations, features, datastreams = [], [], [], []
        for t in range(1, p.things + 1):
            lon = round(rng.uniform(lon0, lon1), 6)
            lat = round(rng.uniform(lat0, lat1), 6)
            district = rng.choice(DISTRICTS)
            point = json.dumps({"type": "Point", "coordinates": [lon, lat]})
            things.append((t, f"Air station {t:04d}", f"Air-quality station {t} in {district}",
                           Jsonb({"district": district, "operator": rng.choice(("city", "university", "citizen"))})))
            locations.append((t, f"Station {t:04d}", f"Kerb-side site in {district}", point, point,
                              Jsonb({"district": district})))
            features.append((t, f"Station {t:04d}", f"Generated from the Location of Air station {t:04d}", point,
                             point, t))
            for k, (name, _definition, _description, unit, *_rest) in enumerate(PROPERTIES):
                d = (t - 1) * p.datastreams_per_thing + k + 1
                datastreams.append((
                    d, f"{name} at Air station {t:04d}", f"{name} measured at station {t}",
                    Jsonb({"name": unit[0], "symbol": unit[1], "definition": unit[2]}),
                    Jsonb({"district": district}), t, k + 1, k + 1,
                ))
        cur.executemany("INSERT INTO things (id, name, description, properties) VALUES (%s, %s, %s, %s)", things)
        cur.executemany(
            "INSERT INTO locations (id, name, description, encoding_type, location, location_geom, properties) "
            "VALUES (%s, %s, %s, 'application/geo+json', %s::jsonb, "
            "ST_SetSRID(ST_GeomFromGeoJSON(%s::text), 4326), %s)", locations)
        cur.executemany("INSERT INTO thing_locations (thing_id, location_id) VALUES (%s, %s)",
                        [(t, t) for t in range(1, p.things + 1)])
        cur.executemany(
            "INSERT INTO features_of_interest (id, name, description, encoding_type, feature, feature_geom,"
            " generated_from_location_id) VALUES (%s, %s, %s, 'application/geo+json', %s::jsonb,"
            " ST_SetSRID(ST_GeomFromGeoJSON(%s::text), 4326), %s)", features)
        cur.executemany(
            "INSERT INTO datastreams (id, name, description, observation_type, unit_of_measurement, properties,"
            " thing_id, sensor_id, observed_property_id) VALUES (%s, %s, %s,"
            " 'http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement', %s, %s, %s, %s, %s)",
            datastreams)
        for table in ("things", "locations", "features_of_interest", "datastreams", "sensors", "observed_properties"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")  # noqa: S608
    _say(f"metadata: {p.things} Things/Locations/FeaturesOfInterest, {p.datastreams} Datastreams")


def _observations(conn: psycopg.Connection[Any], p: CityParams, rng: random.Random) -> None:
    n, per = p.observations, p.datastreams_per_thing
    order = list(range(1, p.datastreams + 1))
    rng.shuffle(order)
    # per datastream: feature id, level, daily swing, noise, phase
    shape = {d: ((d - 1) // per + 1, *PROPERTIES[(d - 1) % per][4:], rng.uniform(0, 2 * math.pi)) for d in order}
    row = conn.execute("SELECT nextval('observation_id_seq')").fetchone()
    assert row is not None
    base = int(row[0])
    conn.execute("SELECT setval('observation_id_seq', %s)", (base + n,))
    step_us = p.days * 86_400_000_000 / n
    day_us = 86_400_000_000
    copied = 0
    while copied < n:
        stop = min(copied + CHUNK_ROWS, n)
        began = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit = off")
            # skip the per-row foreign-key triggers: the generator only writes ids it has just inserted
            cur.execute("SET LOCAL session_replication_role = replica")
            with cur.copy(
                "COPY observations (id, phenomenon_time_start, result_time, result_type, result_number,"
                " result_string, datastream_id, feature_id) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "timestamptz", "timestamptz", "int2", "float8", "text", "int8", "int8"])
                for g in range(copied, stop):
                    d = order[g % p.datastreams]
                    feature, level, swing, noise, phase = shape[d]
                    offset_us = int(g * step_us)
                    at = START + timedelta(microseconds=offset_us)
                    value = round(level + swing * math.sin(2 * math.pi * offset_us / day_us + phase)
                                  + rng.gauss(0.0, noise), 1)
                    if level > 10 and value < 0:
                        value = -value  # concentrations are not negative
                    copy.write_row((observation_id(base + g, at), at, at, 1, value, str(value), d, feature))
        rate = (stop - copied) / (time.perf_counter() - began)
        copied = stop
        _say(f"{copied:,}/{n:,} observations ({rate:,.0f} rows/s)")


def _summaries(conn: psycopg.Connection[Any], p: CityParams) -> None:
    """Datastream phenomenon/result time extents and observedArea, as the writer maintains them."""
    began = time.perf_counter()
    conn.execute(
        "UPDATE datastreams d SET phenomenon_time_start = s.first, phenomenon_time_end = s.last,"
        " result_time_start = s.first, result_time_end = s.last,"
        " observed_area = (SELECT ST_ConvexHull(ST_Collect(f.feature_geom)) FROM features_of_interest f"
        "                  WHERE f.id = s.feature)"
        " FROM (SELECT x.id,"
        "        (SELECT min(o.phenomenon_time_start) FROM observations o WHERE o.datastream_id = x.id) AS first,"
        "        (SELECT max(o.phenomenon_time_start) FROM observations o WHERE o.datastream_id = x.id) AS last,"
        "        (SELECT o.feature_id FROM observations o WHERE o.datastream_id = x.id LIMIT 1) AS feature"
        "       FROM datastreams x) s"
        " WHERE d.id = s.id AND s.first IS NOT NULL"
    )
    _say(f"datastream summaries in {time.perf_counter() - began:.1f} s")
