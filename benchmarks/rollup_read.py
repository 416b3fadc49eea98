"""Rollup read benchmark (issue 18): one year of an hourly rollup of one Datastream over HTTP, in the city of
benchmarks/query.py (10 M observations by default, cached in the same data directory).

    .venv/bin/python benchmarks/rollup_read.py [--observations 10000000] [--repeat 50]

Adds a Datastream with one year of raw Observations every 15 minutes (35,040, sent through
`CreateObservations` in 10,000-row requests, so that its hourly mean rollup, declared first, is maintained
per ingest batch as in production), then times the year's 8,760 hourly Observations as clients read them:
plain JSON, `$select=phenomenonTime,result`, and a Data Array. Beside each, in the same run: the very SQL the
server compiles for it (the database's share) and a plain SELECT of the rollup's 8,760 stored buckets (the
floor of reading them at all). Target: HTTP p95 < 50 ms. Prints a table and writes
benchmarks/results/rollup_read-<timestamp>.json. The added Thing is deleted at the end, so the cached city
stays what benchmarks/query.py measures.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from city import CityParams, ensure_city
from harness import REPO, api_server, machine_info, percentile, write_headers, write_report
from query import compile_request, time_http, time_sql

from citystream.embedded import EmbeddedPostgres
from sensorthings.schema.migrate import apply_migrations

P95_TARGET_MS = 50.0
YEAR_START = datetime(2024, 1, 1, tzinfo=UTC)  # a leap year: 8,784 hours
STEP = timedelta(minutes=15)
ROWS_PER_REQUEST = 10_000
WARMUP = 3
THING_NAME = "benchmark: rollup year"


def _id(response: httpx.Response) -> int:
    response.raise_for_status()
    return int(response.headers["location"].rsplit("(", 1)[1].rstrip(")"))


def remove_year_thing(conn: psycopg.Connection[Any]) -> None:
    conn.execute("DELETE FROM things WHERE name = %s", (THING_NAME,))


def load_year(client: httpx.Client, base: str) -> tuple[int, int, float]:
    """(raw Datastream, hourly mean rollup, seconds the year's ingest took)."""
    thing = _id(client.post(f"{base}/Things", json={
        "name": THING_NAME, "description": "a station with a year of data",
        "Locations": [{"name": "year", "description": "x", "encodingType": "application/geo+json",
                       "location": {"type": "Point", "coordinates": [10.0, 53.55]}}]}))
    raw = _id(client.post(f"{base}/Things({thing})/Datastreams", json={
        "name": "temperature, a year", "description": "x",
        "unitOfMeasurement": {"name": "degree Celsius", "symbol": "°C", "definition": "x"},
        "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
        "Sensor": {"name": "s", "description": "s", "encodingType": "text/html", "metadata": "x"},
        "ObservedProperty": {"name": "year temperature", "description": "x", "definition": "x"}}))
    hourly = _id(client.post(f"{base}/Datastreams", json={
        "RollupOf": {"@iot.id": raw}, "rollup": {"width": "PT1H", "function": "mean", "timeZone": "Europe/Berlin"}}))
    times = []
    at = YEAR_START
    while at < YEAR_START.replace(year=YEAR_START.year + 1):
        times.append(at)
        at += STEP
    began = time.perf_counter()
    for i in range(0, len(times), ROWS_PER_REQUEST):
        rows = [[t.isoformat().replace("+00:00", "Z"), round(10 + 8 * ((n % 96) / 96), 2)]
                for n, t in enumerate(times[i:i + ROWS_PER_REQUEST], start=i)]
        response = client.post(f"{base}/CreateObservations", json=[{
            "Datastream": {"@iot.id": raw}, "components": ["phenomenonTime", "result"], "dataArray": rows}])
        response.raise_for_status()
        errors = [link for link in response.json() if str(link).startswith("error")]
        if errors:
            raise RuntimeError(f"{len(errors)} rows refused: {errors[:3]}")
    return raw, hourly, time.perf_counter() - began


def time_floor(conn: psycopg.Connection[Any], rollup: int) -> float:
    began = time.perf_counter()
    rows = conn.execute("SELECT bucket_start, bucket_end, count, sum FROM rollup_buckets WHERE rollup_id = %s "
                        "ORDER BY bucket_start", (rollup,)).fetchall()
    assert rows
    return (time.perf_counter() - began) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", type=int, default=10_000_000, help="observations in the city (10M)")
    parser.add_argument("--repeat", type=int, default=50, help="timed runs per request (50)")
    parser.add_argument("--data-dir", type=Path, default=REPO / "benchmarks" / ".data" / "query",
                        help="private PostgreSQL and cached city, shared with benchmarks/query.py")
    args = parser.parse_args(argv)
    city = CityParams(observations=args.observations)
    with EmbeddedPostgres(args.data_dir) as postgres:
        dsn = postgres.dsn
        apply_migrations(dsn)
        generation = ensure_city(dsn, city)
        print(f"city: {'cached' if generation is None else f'generated in {generation:.0f} s'} "
              f"({city.observations:,} observations)", flush=True)
        with psycopg.connect(dsn, autocommit=True) as conn:
            machine = machine_info(conn)
            remove_year_thing(conn)
            try:
                with api_server(dsn, args.data_dir / "server.log") as base, \
                        httpx.Client(timeout=120, headers={"Accept-Encoding": "identity"}) as client, \
                        httpx.Client(timeout=300, headers=write_headers(dsn)) as writer:
                    _, hourly, ingest_seconds = load_year(writer, base)
                    buckets = conn.execute("SELECT count(*) FROM rollup_buckets WHERE rollup_id = %s",
                                           (hourly,)).fetchone()
                    assert buckets is not None
                    print(f"a year of 15-minute data ingested in {ingest_seconds:.1f} s; {buckets[0]:,} hourly "
                          f"buckets", flush=True)
                    conn.execute("VACUUM ANALYZE rollup_buckets")
                    conn.execute("VACUUM ANALYZE observations")
                    resource = f"Datastreams({hourly})/Observations"
                    common = [("$top", "10000"), ("$orderby", "phenomenonTime asc")]
                    variants = {
                        "json": common,
                        "select": [*common, ("$select", "phenomenonTime,result")],
                        "dataArray": [*common, ("$resultFormat", "dataArray")],
                    }
                    results = []
                    for key, params in variants.items():
                        url = f"{base}/{resource}?" + "&".join(f"{k}={v}" for k, v in params)
                        statement = compile_request(resource, params, base) if key != "dataArray" else None
                        http, sql_ms, floor = [], [], []
                        size = count = 0
                        for i in range(WARMUP + args.repeat):
                            ms, response = time_http(client, url)
                            value = response.json()["value"]
                            count = (sum(len(a["dataArray"]) for a in value) if key == "dataArray"
                                     else len(value))
                            size = len(response.content)
                            s = time_sql(conn, statement) if statement is not None else None
                            f = time_floor(conn, hourly)
                            if i >= WARMUP:
                                http.append(ms)
                                floor.append(f)
                                if s is not None:
                                    sql_ms.append(s)
                        results.append({
                            "key": key, "request": url.removeprefix(base), "observations": count, "bytes": size,
                            "http_p50_ms": round(percentile(http, 50), 1),
                            "http_p95_ms": round(percentile(http, 95), 1),
                            "sql_p50_ms": round(percentile(sql_ms, 50), 1) if sql_ms else None,
                            "floor_p50_ms": round(percentile(floor, 50), 1),
                            "meets_target": percentile(http, 95) < P95_TARGET_MS})
                        print(f"  {key}: done", flush=True)
            finally:
                remove_year_thing(conn)
    print()
    header = ("request", "obs", "bytes", "HTTP p50", "HTTP p95", "SQL p50", "bucket SELECT p50", "p95 < 50 ms")
    table = [(r["key"], f"{r['observations']:,}", f"{r['bytes']:,}", f"{r['http_p50_ms']} ms", f"{r['http_p95_ms']} ms",
              f"{r['sql_p50_ms']} ms" if r["sql_p50_ms"] is not None else "-", f"{r['floor_p50_ms']} ms",
              "yes" if r["meets_target"] else "NO") for r in results]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *table, strict=True)]
    for line in (header, tuple("-" * w for w in widths), *table):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)))
    report = {"benchmark": "rollup_read", "parameters": {"observations": city.observations, "repeat": args.repeat,
                                                         "warmup": WARMUP, "p95_target_ms": P95_TARGET_MS},
              "machine": machine, "ingest_seconds": round(ingest_seconds, 1), "buckets": buckets[0],
              "results": results}
    print(f"\nreport: {write_report('rollup_read', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
