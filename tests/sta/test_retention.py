"""Retention of raw Observations (issue 18, part 2): declared through STA, enforced by a pass that empties
whole month partitions where it can and deletes in batches elsewhere, keeps summaries true, leaves rollups
alone (unless they have a retention of their own), runs in the API process without losing ingest, and is
run (or dry-run) by `citystream retention run`.

Data is placed relative to the database's now, and never within hours of a horizon, so that a pass of the
session app's own job (hourly) would delete exactly what the test's pass does."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from citystream.embedded import find_free_port
from citystream.retention import PassOutcome, RetentionPass
from citystream.settings import Settings
from sensorthings.model.errors import BadRequest
from sensorthings.model.kinds import parse_retention
from tests.conftest import running_app
from tests.sta_helpers import (
    HTTP,
    assert_error,
    create,
    create_thing_with_location,
    datastream_body,
    feature_body,
    get,
    observed_property_body,
    patch,
    post,
    put,
    read,
    ref,
    sensor_body,
    values,
)

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
_SCRIPT = Path(sys.executable).with_name("citystream")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "citystream.cli"]


# ------------------------------------------------------------------ helpers


def measurement_stream(sta: str, name: str = "NO2", **extra: Any) -> int:
    thing = create_thing_with_location(sta, name=f"{name} station")
    return create(sta, f"Things({thing})/Datastreams", datastream_body(
        name, observationType=OM + "OM_Measurement", Sensor=sensor_body(), ObservedProperty=observed_property_body(),
        **extra))


def multi_stream(sta: str, **extra: Any) -> int:
    thing = create_thing_with_location(sta, name="weather station")
    return create(sta, "MultiDatastreams", {
        "name": "weather", "description": "one component", "observationType": OM + "OM_ComplexObservation",
        "multiObservationDataTypes": [OM + "OM_Measurement"],
        "unitOfMeasurements": [{"name": "degree Celsius", "symbol": "°C", "definition": "ucum:Cel"}],
        "Thing": ref(thing), "Sensor": sensor_body(), "ObservedProperties": [observed_property_body("air")],
        **extra})


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def send(sta: str, stream: str, stream_id: int, rows: list[tuple[datetime, Any, int | None, datetime | None]]
         ) -> list[int]:
    """CreateObservations (the ingest path): (phenomenonTime, result, FeatureOfInterest id, resultTime)."""
    ids: list[int] = []
    for first in range(0, len(rows), 5000):
        chunk = rows[first:first + 5000]
        response = post(sta, "CreateObservations", [{
            stream: ref(stream_id), "components": ["phenomenonTime", "result", "FeatureOfInterest/id", "resultTime"],
            "dataArray": [[iso(t), v, f, iso(r) if r else None] for t, v, f, r in chunk]}])
        assert response.status_code == 201, response.text
        links = response.json()
        assert not [link for link in links if link.startswith("error")], links[:3]
        ids += [int(link.rsplit("(", 1)[1].rstrip(")")) for link in links]
    return ids


def database_now(database_url: str) -> datetime:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]


def run_pass(database_url: str, at: datetime | None = None, *, dry_run: bool = False, batch_rows: int = 10_000
             ) -> PassOutcome:
    """One pass through the Python API (skipped while another process runs one: the session app's job)."""
    async def once() -> PassOutcome:
        async with AsyncConnectionPool(database_url, min_size=1, max_size=3, kwargs={"autocommit": True},
                                       open=False) as pool:
            return await RetentionPass(pool, batch_rows=batch_rows).run(dry_run=dry_run, at=at)

    for _ in range(60):
        outcome = asyncio.run(once())
        if not outcome.skipped:
            return outcome
        time.sleep(0.5)
    raise AssertionError("another process kept running a retention pass")


def rows_of(database_url: str, column: str, stream_id: int) -> dict[int, datetime]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute(f"SELECT id, phenomenon_time_start FROM observations WHERE {column} = %s",  # noqa: S608
                                 (stream_id,)).fetchall())


def partition_files(database_url: str) -> dict[str, tuple[int, int, datetime, datetime]]:
    """Per Observation partition: (relfilenode, size in bytes, lower, upper)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT c.relname, c.relfilenode, pg_relation_size(c.oid), b.m[1]::timestamptz, b.m[2]::timestamptz"
            " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid CROSS JOIN LATERAL (SELECT regexp_match("
            "pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\) TO \\(''([^'']+)''\\)') m) b"
            " WHERE i.inhparent = 'observations'::regclass").fetchall()
    return {name: (node, size, lower, upper) for name, node, size, lower, upper in rows}


def assert_summaries_are_true(database_url: str, table: str, column: str, stream_id: int) -> None:
    """The stream's phenomenonTime, resultTime and observedArea are those of its remaining Observations."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            f"SELECT d.phenomenon_time_start IS NOT DISTINCT FROM x.ps,"  # noqa: S608 - the test's own constants
            f" d.phenomenon_time_end IS NOT DISTINCT FROM x.pe,"
            f" d.result_time_start IS NOT DISTINCT FROM x.rs, d.result_time_end IS NOT DISTINCT FROM x.re,"
            f" coalesce(ST_Equals(d.observed_area, x.area), d.observed_area IS NULL AND x.area IS NULL),"
            f" d.phenomenon_time_start, x.ps, d.result_time_start, x.rs"
            f" FROM {table} d CROSS JOIN LATERAL (SELECT min(o.phenomenon_time_start) ps,"
            f"   max(coalesce(o.phenomenon_time_end, o.phenomenon_time_start)) pe, min(o.result_time) rs,"
            f"   max(o.result_time) re, ST_ConvexHull(ST_Collect(f.feature_geom)) area"
            f"   FROM observations o JOIN features_of_interest f ON f.id = o.feature_id WHERE o.{column} = d.id) x"
            f" WHERE d.id = %s", (stream_id,)).fetchone()
    assert row is not None
    assert row[:5] == (True, True, True, True, True), row


# ------------------------------------------------------------------ declaration


def test_parse_retention_reads_calendar_durations_and_says_what_to_fix() -> None:
    for good in ("P90D", "P1W", "P6M", "P2Y", "P1Y6M", "P1D", "P1000Y", "P52W"):
        assert parse_retention(good, "retention") == good
    for bad, fragment in (("PT5M", "shorter than a day"), ("garbage", "not an ISO 8601 duration"),
                          ("P1001Y", "longer than 1000 years"), ("P99999999999999999999D", "longer than 1000"),
                          ("P0D", "at least a day"), ("P", "not an ISO 8601 duration"), ("p90d", "upper case"),
                          ("PT48H", "'P2D'"), ("P1DT1H", "time part"), ("-P1D", "negative"), (90, "string"),
                          ("P" + "9" * 200 + "D", "not an ISO 8601 duration")):
        with pytest.raises(BadRequest) as caught:
            parse_retention(bad, "retention")
        assert fragment in caught.value.message, (bad, caught.value.message)


def test_retention_is_declared_read_and_changed_through_sta(sta: str) -> None:
    stream = measurement_stream(sta, retention="P90D")
    document = read(sta, f"Datastreams({stream})")
    assert document["retention"] == "P90D"
    assert "retainedFrom" not in document  # nothing deleted yet
    assert values(sta, "Datastreams", **{"$filter": "retention eq 'P90D'", "$select": "id"}) == [{"@iot.id": stream}]
    assert patch(sta, f"Datastreams({stream})", {"retention": "P6M"}).status_code == 200
    assert read(sta, f"Datastreams({stream})")["retention"] == "P6M"
    assert patch(sta, f"Datastreams({stream})", {"retention": None}).status_code == 200
    assert "retention" not in read(sta, f"Datastreams({stream})")
    replaced = {k: v for k, v in read(sta, f"Datastreams({stream})").items() if "@" not in k}
    assert put(sta, f"Datastreams({stream})", {**replaced, "retention": "P2Y"}).status_code == 200
    assert read(sta, f"Datastreams({stream})")["retention"] == "P2Y"
    multi = multi_stream(sta, retention="P1W")
    assert read(sta, f"MultiDatastreams({multi})")["retention"] == "P1W"
    # shown under v1.1 only, like visibility; a v1.0 write that sends it stores it (as v1.1's `properties`)
    v10 = sta.replace("/v1.1", "/v1.0")
    assert "retention" not in read(v10, f"Datastreams({stream})")
    assert_error(get(v10, "Datastreams", params={"$filter": "retention eq 'P2Y'"}), 400, "v1.1 property")
    assert HTTP.patch(f"{v10}/Datastreams({stream})", json={"retention": "P1D"}).status_code == 200
    assert read(sta, f"Datastreams({stream})")["retention"] == "P1D"


@pytest.mark.parametrize(("value", "fragment"), [
    ("PT5M", "shorter than a day"), ("garbage", "not an ISO 8601 duration"), ("P5000Y", "longer than 1000 years"),
    ("P0D", "at least a day"), (30, "ISO 8601 duration string"), ({"days": 30}, "ISO 8601 duration string")])
def test_a_bad_retention_is_a_400_saying_what_to_write(sta: str, value: Any, fragment: str) -> None:
    stream = measurement_stream(sta)
    assert_error(patch(sta, f"Datastreams({stream})", {"retention": value}), 400, "retention", fragment)
    thing = create_thing_with_location(sta)
    assert_error(post(sta, f"Things({thing})/Datastreams", datastream_body(
        "x", Sensor=sensor_body(), ObservedProperty=observed_property_body(), retention=value)), 400, fragment)
    assert_error(post(sta, "MultiDatastreams", {"retention": value}), 400)


def test_retained_from_is_read_only(sta: str) -> None:
    stream = measurement_stream(sta, retention="P30D")
    for sent in ("2020-01-01T00:00:00Z", None, "not even a time"):
        assert patch(sta, f"Datastreams({stream})", {"retainedFrom": sent}).status_code == 200
        assert "retainedFrom" not in read(sta, f"Datastreams({stream})")


# ------------------------------------------------------------------ a pass


def test_a_pass_empties_whole_partitions_and_deletes_the_rest_in_batches(sta: str, database_url: str) -> None:
    at = database_now(database_url)
    a = measurement_stream(sta, "A", retention="P30D")
    b = measurement_stream(sta, "B", retention="P90D")
    c = measurement_stream(sta, "C")  # no retention: keeps everything
    m = multi_stream(sta, retention="P30D")
    old, mid, new = (create(sta, "FeaturesOfInterest", feature_body(n, 10.0 + i / 10, 53.5 + i / 20))
                     for i, n in enumerate(("old", "mid", "new")))

    def feature(t: datetime) -> int:
        return old if t < at - timedelta(days=100) else mid if t < at - timedelta(days=45) else new

    # every 6 hours from 150 days to 1 day ago, 3 hours off every horizon (at - 30 / 90 days)
    times = [at - timedelta(days=150) + timedelta(hours=3 + 6 * k) for k in range(149 * 4)]
    rows = [(t, k % 50 + 0.5, feature(t), t + timedelta(hours=1) if k % 2 else None) for k, t in enumerate(times)]
    send(sta, "Datastream", a, rows)
    send(sta, "Datastream", b, rows)
    send(sta, "Datastream", c, [r for r in rows if r[0] > at - timedelta(days=60)])
    send(sta, "MultiDatastream", m, [(t, [v], f, r) for t, v, f, r in rows])
    horizons = {("Datastream", a): at - timedelta(days=30), ("Datastream", b): at - timedelta(days=90),
                ("MultiDatastream", m): at - timedelta(days=30)}
    before = {("Datastream", s): rows_of(database_url, "datastream_id", s) for s in (a, b, c)}
    before[("MultiDatastream", m)] = rows_of(database_url, "multi_datastream_id", m)
    files = partition_files(database_url)

    dry = run_pass(database_url, at, dry_run=True)
    assert rows_of(database_url, "datastream_id", a) == before[("Datastream", a)]  # a dry run deletes nothing
    outcome = run_pass(database_url, at, batch_rows=50)

    # exactly the expired rows went, per stream, and the report says how many
    reported = {(s.entity, s.id): s.deleted for s in outcome.streams}
    for (entity, stream), rows_before in before.items():
        column = "multi_datastream_id" if entity == "MultiDatastream" else "datastream_id"
        horizon = horizons.get((entity, stream))
        expected = {i: t for i, t in rows_before.items() if horizon is None or t >= horizon}
        assert rows_of(database_url, column, stream) == expected, (entity, stream)
        if horizon is not None:
            assert reported[(entity, stream)] == len(rows_before) - len(expected)
            assert {(s.entity, s.id): s.deleted for s in dry.streams}[(entity, stream)] == reported[(entity, stream)]
    assert ("Datastream", c) not in reported
    # a month whose rows all belong to streams expired past its end was emptied whole (TRUNCATE: new file,
    # empty, still attached); the others kept their file and were deleted from in batches
    with_rows: dict[str, set[tuple[str, int]]] = {}
    for key, rows_before in before.items():
        for t in rows_before.values():
            name = f"observations_{t.astimezone(UTC):%Y%m}"
            with_rows.setdefault(name, set()).add(key)
    whole = sorted(name for name, keys in with_rows.items()
                   if all(key in horizons and horizons[key] >= files[name][3] for key in keys))
    assert len(whole) >= 1 and len(with_rows) >= 5, (whole, sorted(with_rows))
    assert sorted(outcome.emptied) == whole == sorted(dry.emptied)
    after = partition_files(database_url)
    for name in with_rows:
        assert name in after  # nothing dropped
        if name in whole:
            assert after[name][0] != files[name][0] and after[name][1] == 0, name
        else:
            assert after[name][0] == files[name][0], name
    # summaries are those of what remains; the horizon is in the JSON; FeaturesOfInterest stay
    for stream in (a, b, c):
        assert_summaries_are_true(database_url, "datastreams", "datastream_id", stream)
    assert_summaries_are_true(database_url, "multi_datastreams", "multi_datastream_id", m)
    document = read(sta, f"Datastreams({a})")
    assert datetime.fromisoformat(document["retainedFrom"].replace("Z", "+00:00")) == horizons[("Datastream", a)]
    assert "retainedFrom" not in read(sta, f"Datastreams({c})")
    assert get(sta, f"FeaturesOfInterest({old})").status_code == 200  # no longer used, but kept
    # a second pass finds nothing more
    again = run_pass(database_url, at, batch_rows=50)
    assert again.deleted == 0 and again.emptied == []


def test_a_pass_stopped_before_the_summaries_is_made_good_by_the_next(sta: str, database_url: str) -> None:
    at = database_now(database_url)
    stream = measurement_stream(sta, "PM10", retention="P30D")
    near, far = (create(sta, "FeaturesOfInterest", feature_body(n, lon)) for n, lon in (("near", 10.0), ("far", 11.0)))
    send(sta, "Datastream", stream, [(at - timedelta(days=d, hours=3), d, far if d > 40 else near,
                                      at - timedelta(days=d)) for d in range(1, 60)])
    with psycopg.connect(database_url) as conn:  # what a pass that was stopped after its deletions left
        conn.execute("UPDATE datastreams SET retained_from = %s WHERE id = %s", (at - timedelta(days=30), stream))
        conn.execute("DELETE FROM observations WHERE datastream_id = %s AND phenomenon_time_start < %s",
                     (stream, at - timedelta(days=30)))
    with pytest.raises(AssertionError):
        assert_summaries_are_true(database_url, "datastreams", "datastream_id", stream)
    outcome = run_pass(database_url, at)
    assert outcome.deleted == 0
    assert_summaries_are_true(database_url, "datastreams", "datastream_id", stream)


def test_rollups_outlive_their_source_and_a_rollup_may_have_its_own_retention(sta: str, database_url: str) -> None:
    at = database_now(database_url)
    source = measurement_stream(sta, "bicycles", retention="P30D")
    daily = create(sta, "Datastreams", {"RollupOf": ref(source), "rollup": {"width": "P1D", "function": "mean"}})
    quarterly = create(sta, "Datastreams", {"RollupOf": ref(source), "rollup": {"width": "PT6H", "function": "count"},
                                            "retention": "P60D"})
    times = [at - timedelta(days=120) + timedelta(hours=1 + 2 * k) for k in range(119 * 12)]
    send(sta, "Datastream", source, [(t, k % 17, None, None) for k, t in enumerate(times)])

    def observations(rollup: int) -> dict[int, tuple[str, Any, Any]]:
        return {o["@iot.id"]: (o["phenomenonTime"], o["result"], o["parameters"]["rollup"]["count"])
                for o in values(sta, f"Datastreams({rollup})/Observations", **{"$top": 10000})}

    def buckets(rollup: int) -> dict[datetime, int]:
        with psycopg.connect(database_url) as conn:
            return dict(conn.execute("SELECT bucket_start, count FROM rollup_buckets WHERE rollup_id = %s",
                                     (rollup,)).fetchall())

    daily_before, quarterly_before = observations(daily), observations(quarterly)
    daily_summary = {k: v for k, v in read(sta, f"Datastreams({daily})").items() if "@" not in k}
    daily_buckets, quarterly_buckets = buckets(daily), buckets(quarterly)
    outcome = run_pass(database_url, at, batch_rows=100)

    assert min(rows_of(database_url, "datastream_id", source).values()) >= at - timedelta(days=30)
    assert outcome.emptied == []  # the rollups' Observations live in every month
    # the source's retention leaves its rollups as they were
    assert observations(daily) == daily_before
    assert buckets(daily) == daily_buckets
    assert {k: v for k, v in read(sta, f"Datastreams({daily})").items() if "@" not in k} == daily_summary
    assert "retainedFrom" not in read(sta, f"Datastreams({daily})")
    # the rollup with a retention of its own loses its buckets before its horizon: a whole bucket's start
    h = at - timedelta(days=60)
    horizon = h.replace(hour=h.hour - h.hour % 6, minute=0, second=0, microsecond=0)
    kept = {i: o for i, o in quarterly_before.items()
            if datetime.fromisoformat(o[0].split("/")[0].replace("Z", "+00:00")) >= horizon}
    assert 0 < len(kept) < len(quarterly_before)
    assert observations(quarterly) == kept
    assert buckets(quarterly) == {start: n for start, n in quarterly_buckets.items() if start >= horizon}
    assert datetime.fromisoformat(read(sta, f"Datastreams({quarterly})")["retainedFrom"].replace("Z", "+00:00")) \
        == horizon
    for stream in (source, daily, quarterly):
        assert_summaries_are_true(database_url, "datastreams", "datastream_id", stream)
    # new data still reaches both rollups
    send(sta, "Datastream", source, [(at - timedelta(hours=5), 100, None, None)])
    assert len(observations(quarterly)) >= len(kept)


# ------------------------------------------------------------------ the job in the API process


def test_the_job_runs_in_the_app_and_ingest_during_a_pass_loses_nothing(sta: str, database_url: str) -> None:
    at = database_now(database_url)
    expiring = measurement_stream(sta, "expiring", retention="P30D")
    keeping = measurement_stream(sta, "keeping")
    old = [(at - timedelta(days=95) + timedelta(minutes=10 * k), k % 7, None, None) for k in range(9000)]
    send(sta, "Datastream", expiring, old)
    # one row a week of a stream without retention keeps every month's partition: all of it goes in batches
    send(sta, "Datastream", keeping, [(at - timedelta(days=95 - 7 * k), k, None, None) for k in range(14)])
    acknowledged: list[int] = []
    stop = threading.Event()
    failures: list[str] = []

    def ingest() -> None:
        n = 0
        with httpx.Client(timeout=30, headers=HTTP.headers) as client:
            while not stop.is_set():
                stamp = datetime.now(UTC) - timedelta(days=5)
                body = [{"Datastream": ref(s), "components": ["phenomenonTime", "result"],
                         "dataArray": [[iso(stamp + timedelta(microseconds=n * 1000 + i)), i] for i in range(50)]}
                        for s in (expiring, keeping)]
                n += 1
                response = client.post(f"{sta}/CreateObservations", json=body)
                if response.status_code != 201:
                    failures.append(response.text)
                    continue
                acknowledged.extend(int(link.rsplit("(", 1)[1].rstrip(")")) for link in response.json()
                                    if not link.startswith("error"))

    writer = threading.Thread(target=ingest, name="retention-test-ingest")
    writer.start()
    try:
        settings = Settings(database_url=database_url, host="127.0.0.1", http_port=find_free_port(),
                            retention_interval_seconds=1, retention_batch_rows=200)
        with running_app(settings, database_url):
            deadline = time.monotonic() + 120
            while min(rows_of(database_url, "datastream_id", expiring).values()) < at - timedelta(days=31):
                assert time.monotonic() < deadline, "the app's retention job did not delete the expired rows"
                time.sleep(0.5)
            time.sleep(1)  # ingest goes on after the pass
    finally:
        stop.set()
        writer.join(30)
    assert not failures, failures[:3]
    assert len(acknowledged) > 200
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM observations WHERE id = ANY(%s)", (acknowledged,)).fetchone()
    assert row is not None and row[0] == len(acknowledged)  # every acknowledged Observation is stored
    assert read(sta, f"Datastreams({expiring})")["retainedFrom"] > iso(at - timedelta(days=31))
    assert_summaries_are_true(database_url, "datastreams", "datastream_id", expiring)


# ------------------------------------------------------------------ citystream retention run


@pytest.fixture
def cli_env(database_url: str) -> Iterator[dict[str, str]]:
    yield {**{k: v for k, v in os.environ.items() if not k.startswith("CITYSTREAM_")},
           "CITYSTREAM_DATABASE_URL": database_url, "CITYSTREAM_LOG_LEVEL": "warning"}


def test_the_cli_dry_run_deletes_nothing_and_the_run_deletes(sta: str, database_url: str,
                                                                cli_env: dict[str, str]) -> None:
    at = database_now(database_url)
    stream = measurement_stream(sta, "noise", retention="P30D")
    send(sta, "Datastream", stream, [(at - timedelta(days=60, hours=k), k, None, None) for k in range(40)]
         + [(at - timedelta(days=2, hours=k), k, None, None) for k in range(3)])
    before = rows_of(database_url, "datastream_id", stream)

    dry = subprocess.run([*CLI, "retention", "run", "--dry-run"], env=cli_env, capture_output=True, text=True,
                         timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "would delete 40 Observations" in dry.stdout, dry.stdout
    assert f"Datastream  {stream}" in dry.stdout or f"Datastream {stream}" in " ".join(dry.stdout.split())
    assert rows_of(database_url, "datastream_id", stream) == before
    assert "retainedFrom" not in read(sta, f"Datastreams({stream})")

    with psycopg.connect(database_url, autocommit=True) as holder:  # another process's pass
        holder.execute("SELECT pg_advisory_lock(hashtextextended('citystream-retention', 0))")
        busy = subprocess.run([*CLI, "retention", "run"], env=cli_env, capture_output=True, text=True, timeout=120)
    assert busy.returncode == 1 and "another process" in busy.stderr, (busy.stdout, busy.stderr)
    assert rows_of(database_url, "datastream_id", stream) == before

    done = subprocess.run([*CLI, "retention", "run"], env=cli_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "deleted 40 Observations" in done.stdout, done.stdout
    assert len(rows_of(database_url, "datastream_id", stream)) == 3


def test_settings_read_the_retention_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSTREAM_RETENTION_INTERVAL_SECONDS", "0")
    monkeypatch.setenv("CITYSTREAM_RETENTION_BATCH_ROWS", "500")
    settings = Settings.from_env()
    assert (settings.retention_interval_seconds, settings.retention_batch_rows) == (0, 500)
    assert dataclasses.replace(Settings()).retention_interval_seconds == 3600
