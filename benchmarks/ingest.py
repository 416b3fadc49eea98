"""Ingest benchmark: how close MQTT and HTTP creates get to raw COPY into the same table, on this machine.

One run measures, against a private PostgreSQL and Mosquitto (fresh, in benchmarks/.data/ingest):
  (a) the ceiling: binary COPY (psycopg, 5,000-row batches, one connection) of the same rows straight
      into the observations table;
  (b) MQTT end to end — publishers (--publishers processes, default 2) -> Mosquitto -> `citystream bridge`
      -> committed rows — at QoS 0 and QoS 1, offering --offered-rate messages/s for --seconds; the
      sustained rate is the slope of the stored-row count after a warm-up. Then QoS 1 paced at half that
      rate: latency from publish (the phenomenonTime each message carries) to the notification a subscriber
      receives for it, which is sent after commit (so it bounds publish-to-commit from above);
  (c) `POST /v1.1/Observations` with 1 and 32 concurrent clients against `citystream serve`;
  (d) `POST /v1.1/CreateObservations` (Data Array) with 10,000 rows per request, 1 and 2 clients.
Each figure is also given as a ratio to (a), because these machines are shared and noisy.

The load generators are benchmarks/loadgen.py (raw asyncio: MQTT 5 over TCP, HTTP/1.1 keep-alive), because
the generic clients ate the 2-core machine: per message, `mosquitto_pub -l` (QoS 1) cost ~16 µs of CPU plus
~5.5 µs for the Python generating its lines, against ~26 µs for the bridge; the httpx AsyncClient cost
~2.8 ms per POST (58% of the machine) against ~1.3 ms for the server. Each generator measures its own CPU,
and the table shows it per message and as a share of the machine. `--publisher mosquitto_pub` still runs
the C client (a real external one) for comparison. "published" at QoS 1 with the lean publisher counts the
messages the broker acknowledged (PUBACK), not the ones written; "not stored" = published but missing
once the backlog is committed.

    .venv/bin/python benchmarks/ingest.py                 # the full run (about 6 minutes)
    .venv/bin/python benchmarks/ingest.py --seconds 20    # a quicker look
    .venv/bin/python benchmarks/ingest.py --principal key # devices as an API key with create for one Project
    .venv/bin/python benchmarks/ingest.py --rollups 3     # every Datastream with three rollups (issue 18)

The devices publish as the broker's shared device account by default (the plugin asks nobody), or with
`--principal key` as an API key that may create only in the Project holding the Datastreams: the plugin asks
the platform once per client and topic, and the bridge checks every batch's Datastreams against the
publisher stamped on the messages (loadgen publishes to v1.1/Observations, the Datastream in the body).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import loadgen  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    BENCHMARKS,
    machine_info,
    percentile,
    platform_process,
    write_headers,
    write_report,
)
from citystream.auth.credentials import create_key, split_key  # noqa: E402
from citystream.embedded import EmbeddedMosquitto, EmbeddedPostgres, find_free_port  # noqa: E402
from ingest.store import COPY_COLUMNS  # noqa: E402
from sensorthings.model.access import Role  # noqa: E402
from sensorthings.schema.migrate import apply_migrations  # noqa: E402

DATA = BENCHMARKS / ".data" / "ingest"
BATCH = 5000
SAMPLED_DATASTREAMS = 4  # the latency subscriber listens to this many Datastreams' topics
DATA_ARRAY_ROWS = 10_000  # rows per CreateObservations request in (d)


# ------------------------------------------------------------------ platform processes


def stored(dsn: str) -> int:
    """Raw Observations stored (a rollup's computed ones live in the same table and are not counted)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM observations WHERE datastream_id NOT IN "
                           "(SELECT id FROM datastreams WHERE rollup_of_id IS NOT NULL)").fetchone()
        return int(row[0]) if row else 0


def truncate(dsn: str) -> None:
    """An empty table between runs, and a CHECKPOINT, so that no run pays for writing out the dirty pages
    of the one before."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE observations, dead_letters, rollup_buckets")
        conn.execute("UPDATE datastreams SET phenomenon_time_start = NULL, phenomenon_time_end = NULL, "
                     "result_time_start = NULL, result_time_end = NULL, observed_area = NULL")
        conn.execute("VACUUM ANALYZE observations")
        conn.execute("CHECKPOINT")


# ------------------------------------------------------------------ the city


def create_datastreams(sta: str, count: int, headers: dict[str, str]) -> list[int]:
    """`count` Datastreams on Things that have a Location (so FeaturesOfInterest are generated)."""
    with httpx.Client(timeout=30, headers=headers) as client:
        sensor = client.post(f"{sta}/Sensors", json={
            "name": "bench", "description": "bench", "encodingType": "text/html", "metadata": "https://x"})
        prop = client.post(f"{sta}/ObservedProperties", json={
            "name": "bench", "description": "bench", "definition": "https://x"})
        sensor_id = int(sensor.headers["location"].rsplit("(", 1)[1].rstrip(")"))
        prop_id = int(prop.headers["location"].rsplit("(", 1)[1].rstrip(")"))
        ids = []
        for n in range(count):
            thing = client.post(f"{sta}/Things", json={
                "name": f"station {n}", "description": "benchmark station",
                "Locations": [{"name": f"spot {n}", "description": "x", "encodingType": "application/geo+json",
                               "location": {"type": "Point", "coordinates": [9.9 + n / 1000, 53.55]}}],
                "Datastreams": [{
                    "name": f"ds {n}", "description": "x", "unitOfMeasurement": {"name": "C", "symbol": "C",
                                                                                 "definition": "x"},
                    "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
                    "Sensor": {"@iot.id": sensor_id}, "ObservedProperty": {"@iot.id": prop_id}}]})
            thing.raise_for_status()
            thing_id = thing.headers["location"].rsplit("(", 1)[1].rstrip(")")
            ds = client.get(f"{sta}/Things({thing_id})/Datastreams").json()["value"][0]["@iot.id"]
            ids.append(int(ds))
        # one observation each, so that every Datastream has its generated FeatureOfInterest
        for ds in ids:
            client.post(f"{sta}/Datastreams({ds})/Observations", json={"result": 0}).raise_for_status()
    return ids


ROLLUPS = (("PT15M", "mean"), ("PT1H", "max"), ("P1D", "count"))
"""What --rollups N declares on every Datastream (the first N), in Europe/Berlin."""


def create_rollups(sta: str, datastreams: list[int], count: int, headers: dict[str, str]) -> int:
    """`count` rollups (ROLLUPS) of each Datastream; how many were made."""
    made = 0
    with httpx.Client(timeout=30, headers=headers) as client:
        for ds in datastreams:
            for width, function in ROLLUPS[:count]:
                client.post(f"{sta}/Datastreams", json={"RollupOf": {"@iot.id": ds}, "rollup": {
                    "width": width, "function": function, "timeZone": "Europe/Berlin"}}).raise_for_status()
                made += 1
    return made


def project_device_login(dsn: str, sta: str, datastreams: list[int]) -> tuple[str, str]:
    """Put the Datastreams into one (public) Project and make an API key that may create only there: the
    devices' MQTT login (key id, secret) for --principal key."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        admin = create_key(conn, "bench admin", frozenset({Role.ADMIN})).token
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {admin}"}) as client:
        project = client.post(f"{sta}/Projects", json={"name": "bench", "termsOfUse": "CC-BY"})
        project.raise_for_status()
        project_id = int(project.headers["location"].rsplit("(", 1)[1].rstrip(")"))
        for ds in datastreams:
            client.patch(f"{sta}/Datastreams({ds})", json={"Project": {"@iot.id": project_id}}).raise_for_status()
    with psycopg.connect(dsn, autocommit=True) as conn:
        key = create_key(conn, "bench device", frozenset({Role.CREATE}), projects=[project_id])
    parts = split_key(key.token)
    assert parts is not None
    return parts


def payload(datastream: int, seq: int, at: datetime) -> bytes:
    return orjson.dumps({"phenomenonTime": at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
                         "result": round(20 + (seq % 1000) / 100, 2), "Datastream": {"@iot.id": datastream}})


# ------------------------------------------------------------------ (a) the COPY ceiling


def copy_ceiling(dsn: str, datastreams: list[int], rows: int) -> dict[str, Any]:
    from psycopg.types.json import Jsonb  # noqa: F401  (same types as ingest/store.py)

    with psycopg.connect(dsn) as conn:
        features: dict[int, int] = dict(
            conn.execute("SELECT datastream_id, min(feature_id) FROM observations GROUP BY 1").fetchall())
        start_seq = int(conn.execute("SELECT nextval('observation_id_seq')").fetchone()[0])  # type: ignore[index]
        conn.execute("SELECT setval('observation_id_seq', %s)", (start_seq + rows + 10,))
        conn.commit()
        base = datetime.now(UTC)
        columns = ", ".join(name for name, _ in COPY_COLUMNS)
        started = time.perf_counter()
        written = 0
        while written < rows:
            n = min(BATCH, rows - written)
            with conn.cursor() as cur, cur.copy(f"COPY observations ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types([kind for _, kind in COPY_COLUMNS])
                for i in range(written, written + n):
                    ds = datastreams[i % len(datastreams)]
                    at = base + timedelta(microseconds=i)
                    value = round(20 + (i % 1000) / 100, 2)
                    copy.write_row([(start_seq + i) * 65536 + (at - datetime(1900, 1, 1, tzinfo=UTC)).days, at,
                                    None, None, 1, value, str(value), None, None, None, None, None, None, ds,
                                    None, features[ds]])
            conn.commit()
            written += n
        elapsed = time.perf_counter() - started
    return {"rows": rows, "seconds": round(elapsed, 2), "rows_per_s": round(rows / elapsed)}


# ------------------------------------------------------------------ (b) MQTT end to end


LINES_PER_PROCESS = 50_000  # mosquitto_pub 2.0.11 -l loses QoS 1 messages once its packet ids wrap (65,535)


def _mosquitto_pub(port: int, user: str, password: str, qos: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", password,
                             "-V", "mqttv5", "-q", str(qos), "-M", "5000", "-t", "v1.1/Observations", "-l"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _publisher(port: int, user: str, password: str, qos: int, datastreams: list[int], seconds: float,
               rate: float | None) -> dict[str, float]:
    """Feed lines to `mosquitto_pub -l` (a fresh one every LINES_PER_PROCESS lines); `rate` None = as fast
    as it takes them. Returns the lines written and the CPU time of this process and its mosquitto_pubs."""
    cpu_started = time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    sent = 0
    started = time.monotonic()
    chunk = 200
    proc = _mosquitto_pub(port, user, password, qos)
    in_this_process = 0
    finished: list[subprocess.Popen[bytes]] = []
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            if rate is not None and sent > elapsed * rate:
                time.sleep(min(0.005, sent / rate - elapsed))
                continue
            if in_this_process >= LINES_PER_PROCESS:
                assert proc.stdin is not None
                proc.stdin.close()
                finished.append(proc)
                proc, in_this_process = _mosquitto_pub(port, user, password, qos), 0
            now = datetime.now(UTC)
            lines = b"".join(payload(datastreams[(sent + i) % len(datastreams)], sent + i, now) + b"\n"
                             for i in range(chunk))
            assert proc.stdin is not None
            proc.stdin.write(lines)
            sent += chunk
            in_this_process += chunk
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        for p in [*finished, proc]:
            p.wait(120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (time.process_time() - cpu_started + after.ru_utime + after.ru_stime - children.ru_utime
           - children.ru_stime)
    return {"sent": sent, "cpu_seconds": cpu}


class RowCounter:
    """Rows committed so far, cheaply: the Observation id sequence (allocated per batch just before its COPY,
    so at most one batch per writer ahead of the commits); exact counts only at the end of a run."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.base = self._sequence()
        self.computed_base = self._computed()

    def _sequence(self) -> int:
        row = self.conn.execute("SELECT last_value FROM observation_id_seq").fetchone()
        return int(row[0]) if row else 0

    def _computed(self) -> int:
        """Rollup Observations made so far: they take ids from the same sequence (few: one per new bucket)."""
        row = self.conn.execute("SELECT count(*) FROM observations WHERE datastream_id IN "
                                "(SELECT id FROM datastreams WHERE rollup_of_id IS NOT NULL)").fetchone()
        return int(row[0]) if row else 0

    def __call__(self) -> int:
        return self._sequence() - self.base - self._computed() + self.computed_base

    def close(self) -> None:
        self.conn.close()


def _loadgen_summary(kind: str, processes: int, cpu_seconds: float, messages: int, wall: float) -> dict[str, Any]:
    """The load generator's own CPU: per message, and as a share of the whole machine over the run."""
    return {"kind": kind, "processes": processes, "cpu_seconds": round(cpu_seconds, 2),
            "cpu_us_per_msg": round(cpu_seconds / messages * 1e6, 1) if messages else None,
            "machine_share": round(cpu_seconds / (wall * (os.cpu_count() or 1)), 3) if wall else None}


def mqtt_run(dsn: str, broker: EmbeddedMosquitto, datastreams: list[int], qos: int, seconds: float,
             publishers: int, rate: float, publisher: str = "lean",
             login: tuple[str, str] | None = None) -> dict[str, Any]:
    """Offer `rate` messages/s for `seconds`; the sustained rate is the slope of the committed rows over the
    last three quarters of that window (the bridge is saturated whenever the offered rate exceeds what it
    takes: the broker queues the difference). Then wait until the backlog is stored, so runs never overlap.

    "published" is what the broker took: with the lean publisher at QoS 1 the messages it acknowledged
    (PUBACK), otherwise the messages written; "lost" = published but not stored once the backlog is in."""
    username, password = login or (broker.sensor_username, broker.sensor_password)
    before = stored(dsn)
    counter = RowCounter(dsn)
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=publishers) as pool:
        futures: list[Future[Any]]
        if publisher == "lean":
            futures = [pool.submit(loadgen.publish, "127.0.0.1", broker.port, username=username,
                                   password=password, qos=qos, datastreams=datastreams,
                                   seconds=seconds, rate=rate / publishers, client_id=f"bench-q{qos}-{n}")
                       for n in range(publishers)]
        else:
            futures = [pool.submit(_publisher, broker.port, username, password, qos,
                                   datastreams, seconds, rate / publishers) for _ in range(publishers)]
        samples: list[tuple[float, int]] = []
        while not all(f.done() for f in futures):
            samples.append((time.monotonic() - started, counter()))
            time.sleep(1.0)
        results = [f.result() for f in futures]
    wall = time.monotonic() - started
    extra: dict[str, Any] = {}
    if publisher == "lean":
        sent = sum(r.sent for r in results)
        published = sum(r.published for r in results)
        refused: dict[int, int] = {}
        for r in results:
            for reason, n in r.refused.items():
                refused[reason] = refused.get(reason, 0) + n
        if qos:
            extra = {"acknowledged": published, "refused": {hex(k): v for k, v in refused.items()},
                     "unacknowledged": sum(r.unacknowledged for r in results)}
        cpu = sum(r.cpu_seconds for r in results)
    else:
        sent = published = sum(int(r["sent"]) for r in results)
        cpu = sum(r["cpu_seconds"] for r in results)
    last, progress_at = -1, time.monotonic()
    while time.monotonic() - progress_at < 30:  # drain: until all are in, or nothing moves for 30 s
        now_stored = counter()
        if now_stored != last:
            last, progress_at = now_stored, time.monotonic()
        if now_stored >= published:
            break
        time.sleep(0.5)
    # The sequence is allocated before a batch's COPY commits: wait for the exact count too (bounded), until it
    # reaches `published`, catches up with the sequence (nothing uncommitted left), or stops moving for 5 s.
    total, deadline, progress_at = stored(dsn) - before, time.monotonic() + 30, time.monotonic()
    while total < published and total < counter() and time.monotonic() < deadline \
            and time.monotonic() - progress_at < 5:
        time.sleep(0.2)
        if (now_total := stored(dsn) - before) != total:
            total, progress_at = now_total, time.monotonic()
    drained = time.monotonic() - started - seconds
    counter.close()
    window = [s for s in samples if seconds * 0.25 <= s[0] <= seconds]
    slope = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]) if len(window) >= 2 else 0.0
    return {"qos": qos, "publisher": publisher, "offered_per_s": round(rate), "sent": sent, "published": published,
            **extra, "stored": total, "lost": published - total, "seconds": seconds,
            "drain_seconds": round(drained, 1), "obs_per_s": round(slope), "kept_up": slope >= 0.97 * rate,
            "loadgen": _loadgen_summary(publisher, publishers, cpu, sent, wall),
            "samples": [(round(t, 1), n) for t, n in samples]}


def latency_run(dsn: str, broker: EmbeddedMosquitto, datastreams: list[int], rate: float, seconds: float,
                publishers: int, publisher: str = "lean", login: tuple[str, str] | None = None) -> dict[str, Any]:
    latencies: list[float] = []
    lock = threading.Lock()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received = datetime.now(UTC)
        body = orjson.loads(message.payload)
        if "@iot.id" not in body:
            return  # a device's own publish echoed by the broker, not our notification
        sent = datetime.fromisoformat(body["phenomenonTime"].replace("Z", "+00:00"))
        with lock:
            latencies.append((received - sent).total_seconds() * 1000)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    for ds in datastreams[:SAMPLED_DATASTREAMS]:
        client.subscribe(f"v1.1/Datastreams({ds})/Observations", qos=0)
    time.sleep(2)  # the platform learns the subscriptions from the broker's log
    result = mqtt_run(dsn, broker, datastreams, 1, seconds, publishers, rate, publisher, login)
    time.sleep(1)
    client.loop_stop()
    client.disconnect()
    samples = latencies[len(latencies) // 10:]  # skip the first tenth (warm-up)
    result.update(paced_rate=round(rate), samples=len(samples),
                  p50_ms=round(percentile(samples, 50), 1) if samples else None,
                  p99_ms=round(percentile(samples, 99), 1) if samples else None)
    return result


# ------------------------------------------------------------------ (c) HTTP POST


def http_run(sta: str, datastreams: list[int], clients: int, seconds: float, headers: dict[str, str]
             ) -> dict[str, Any]:
    """`clients` sequential clients (one keep-alive connection each, one request in flight) POST for
    `seconds`, all in one load process: at ~tens of µs of CPU per request it needs no second one."""
    with ProcessPoolExecutor(max_workers=1) as pool:
        result = pool.submit(loadgen.post_observations, sta, datastreams, clients=clients, seconds=seconds,
                             authorization=headers["Authorization"]).result()
    others = {str(status): n for status, n in sorted(result.statuses.items()) if status != 201}
    return {"clients": clients, "created": result.created, "requests": result.requests, "other_statuses": others,
            "seconds": seconds, "obs_per_s": round(result.created / seconds),
            "loadgen": _loadgen_summary("lean", 1, result.cpu_seconds, result.requests, result.seconds)}


def data_array_document(datastreams: list[int], rows: int, start: datetime) -> bytes:
    """A CreateObservations body of `rows` Observations spread over the Datastreams, one Data Array each."""
    per = rows // len(datastreams)
    return orjson.dumps([
        {"Datastream": {"@iot.id": ds}, "components": ["phenomenonTime", "result"],
         "dataArray": [[(start + timedelta(microseconds=j * len(datastreams) + n)).isoformat(
             timespec="microseconds").replace("+00:00", "Z"), round(20 + (j % 1000) / 100, 2)] for j in range(per)]}
        for n, ds in enumerate(datastreams)])


def create_observations_run(sta: str, datastreams: list[int], clients: int, seconds: float, headers: dict[str, str],
                            rows: int) -> dict[str, Any]:
    """`clients` threads, each POSTing CreateObservations documents of `rows` rows back to back for `seconds`
    (one connection each). The documents are built before the clock starts; posting them costs the client
    little next to the server's ~25 µs per row."""
    documents = [data_array_document(datastreams, rows, datetime.now(UTC) + timedelta(seconds=i))
                 for i in range(clients)]
    created, errors, requests = [0] * clients, [0] * clients, [0] * clients

    def client(i: int, deadline: float) -> None:
        with httpx.Client(timeout=300, headers=headers) as http:
            while time.perf_counter() < deadline:
                response = http.post(f"{sta}/CreateObservations", content=documents[i],
                                     headers={"Content-Type": "application/json"})
                response.raise_for_status()
                links = response.json()
                failed = sum(1 for link in links if link.startswith("error"))
                requests[i] += 1
                errors[i] += failed
                created[i] += len(links) - failed

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i, started + seconds)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"clients": clients, "rows_per_request": len(datastreams) * (rows // len(datastreams)),
            "requests": sum(requests), "created": sum(created), "errors": sum(errors),
            "seconds": round(elapsed, 2), "obs_per_s": round(sum(created) / elapsed)}


# ------------------------------------------------------------------ main


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("measurement", "obs/s", "ratio to COPY", "notes")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="duration of each MQTT run (default 60)")
    parser.add_argument("--http-seconds", type=float, default=20)
    parser.add_argument("--datastreams", type=int, default=100)
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes (default 2)")
    parser.add_argument("--publisher", choices=["lean", "mosquitto_pub"], default="lean",
                        help="MQTT load generator: benchmarks/loadgen.py (default) or C `mosquitto_pub -l`")
    parser.add_argument("--bridge-workers", type=int, default=1, help="`citystream bridge --workers`")
    parser.add_argument("--copy-rows", type=int, default=1_000_000)
    parser.add_argument("--offered-rate", type=float, default=35_000,
                        help="messages/s the publishers offer in the throughput runs (default 35,000)")
    parser.add_argument("--qos", type=int, nargs="+", default=[0, 1], choices=[0, 1],
                        help="QoS levels of the throughput runs (default: 0 1)")
    parser.add_argument("--skip-http", action="store_true", help="leave out (c) and (d)")
    parser.add_argument("--skip-mqtt", action="store_true", help="leave out (b)")
    parser.add_argument("--principal", choices=["account", "key"], default="account",
                        help="whom the devices publish as: the broker's shared device account (default), or an "
                             "API key holding 'create' only for the Project of the Datastreams, which the "
                             "broker's plugin asks the platform about and the bridge checks each batch against")
    parser.add_argument("--rollups", type=int, default=0, choices=range(len(ROLLUPS) + 1),
                        help="rollups declared on every Datastream: 0 (default) to 3 (PT15M mean, PT1H max, "
                             "P1D count, in Europe/Berlin), which every ingest batch then maintains")
    parser.add_argument("--latency-rate", type=float, default=0,
                        help="pace the latency run at this rate (default: half the sustained QoS 1 rate), "
                             "so that two runs compare at the same load")
    args = parser.parse_args(argv)

    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    DATA.chmod(0o755)
    log_path = DATA / "platform.log"
    report: dict[str, Any] = {"benchmark": "ingest", "started": datetime.now(UTC).isoformat(),
                              "settings": vars(args)}
    with EmbeddedPostgres(DATA / "postgres") as postgres:
        dsn = postgres.dsn
        apply_migrations(dsn)
        with psycopg.connect(dsn) as conn:
            report["machine"] = machine_info(conn)
        http_port = find_free_port()
        broker = EmbeddedMosquitto(DATA / "mosquitto", find_free_port(),
                                   decision_url=f"http://127.0.0.1:{http_port}/internal/mqtt")
        broker.start()
        try:
            # The API runs throughout: the broker's plugin asks it about API-key logins and publishes. Its own
            # bridge only notifies (CITYSTREAM_MQTT_INGEST false), under a client id of its own.
            env = {"CITYSTREAM_DATABASE_URL": dsn, "CITYSTREAM_HOST": "127.0.0.1",
                   "CITYSTREAM_HTTP_PORT": str(http_port), "CITYSTREAM_MQTT_URL": broker.platform_url,
                   "CITYSTREAM_MQTT_INGEST": "false", "CITYSTREAM_MQTT_CLIENT_ID": "citystream-bridge-api"}
            with platform_process(["serve"], env, log_path, f"http://127.0.0.1:{http_port}/health"):
                sta = f"http://127.0.0.1:{http_port}/v1.1"
                writer = write_headers(dsn)
                datastreams = create_datastreams(sta, args.datastreams, writer)
                report["rollups"] = create_rollups(sta, datastreams, args.rollups, writer)
                login = project_device_login(dsn, sta, datastreams) if args.principal == "key" else None
                print(f"{len(datastreams)} Datastreams ready; (a) COPY ceiling ...", flush=True)
                ceiling = copy_ceiling(dsn, datastreams, args.copy_rows)
                report["copy"] = ceiling
                truncate(dsn)
                create_datastreams_features = [
                    httpx.post(f"{sta}/Datastreams({d})/Observations", json={"result": 0}, headers=writer)
                    for d in datastreams]
                assert all(r.status_code == 201 for r in create_datastreams_features)
                report["http"] = []
                report["data_array"] = []
                if not args.skip_http:
                    print("(c) HTTP POST ...", flush=True)
                    report["http"] = [http_run(sta, datastreams, clients, args.http_seconds, writer)
                                      for clients in (1, 32)]
                    print("(d) CreateObservations ...", flush=True)
                    report["data_array"] = [
                        create_observations_run(sta, datastreams, clients, args.http_seconds, writer, DATA_ARRAY_ROWS)
                        for clients in (1, 2)]
                truncate(dsn)
                report["mqtt"], report["latency"] = [], None
                if args.skip_mqtt:
                    return _report(args, report)
                bridge_env = {"CITYSTREAM_DATABASE_URL": dsn, "CITYSTREAM_MQTT_URL": broker.platform_url,
                              "CITYSTREAM_HTTP_PORT": str(http_port)}
                with platform_process(["bridge", "--workers", str(args.bridge_workers)], bridge_env, log_path):
                    time.sleep(3)  # connected and subscribed
                    report["mqtt"] = []
                    for qos in args.qos:
                        print(f"(b) MQTT QoS {qos}, {args.seconds:.0f} s ...", flush=True)
                        report["mqtt"].append(mqtt_run(dsn, broker, datastreams, qos, args.seconds, args.publishers,
                                                       args.offered_rate, args.publisher, login))
                        truncate(dsn)
                    qos1 = [r for r in report["mqtt"] if r["qos"] == 1] or report["mqtt"]
                    half = args.latency_rate or max(1000.0, qos1[-1]["obs_per_s"] / 2)
                    print(f"(b) QoS 1 latency at {half:.0f} obs/s ...", flush=True)
                    report["latency"] = latency_run(dsn, broker, datastreams, half, min(args.seconds, 30),
                                                    args.publishers, args.publisher, login)
        finally:
            broker.stop()
    return _report(args, report)


def _report(args: argparse.Namespace, report: dict[str, Any]) -> int:
    ceiling_rate = report["copy"]["rows_per_s"]

    def ratio(value: float) -> str:
        return f"{value / ceiling_rate:.2f}"

    def load(run: dict[str, Any], unit: str) -> str:
        gen = run["loadgen"]
        return (f"load gen {gen['kind']} x{gen['processes']}: {gen['cpu_us_per_msg']} µs CPU/{unit}, "
                f"{gen['machine_share']:.0%} of the machine")

    rows = [("(a) binary COPY, 1 connection, 5,000-row batches", f"{ceiling_rate:,}", "1.00",
             f"{report['copy']['rows']:,} rows")]
    for run in report["mqtt"]:
        kept_up = " (kept up: a lower bound)" if run["kept_up"] else ""
        acked = " (broker-acknowledged)" if "acknowledged" in run else ""
        refused = f", {sum(run['refused'].values()):,} refused" if run.get("refused") else ""
        rows.append((f"(b) MQTT QoS {run['qos']} end to end, sustained {args.seconds:.0f} s", f"{run['obs_per_s']:,}",
                     ratio(run["obs_per_s"]),
                     f"offered {run['offered_per_s']:,}/s{kept_up}; {run['published']:,} published{acked}"
                     f"{refused}, {run['lost']:,} not stored; {load(run, 'msg')}"))
    lat = report["latency"]
    if lat is not None:
        rows.append((f"(b) MQTT QoS 1 paced at {lat['paced_rate']:,}/s: publish -> notification",
                     f"{lat['obs_per_s']:,}", ratio(lat["obs_per_s"]),
                     f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms ({lat['samples']:,} samples); "
                     f"{load(lat, 'msg')}"))
    for run in report["http"]:
        others = "".join(f", {n:,} x {status}" for status, n in run["other_statuses"].items())
        rows.append((f"(c) POST /v1.1/Observations, {run['clients']} client(s)", f"{run['obs_per_s']:,}",
                     ratio(run["obs_per_s"]),
                     f"{run['created']:,} created in {run['seconds']:.0f} s{others}; {load(run, 'request')}"))
    for run in report["data_array"]:
        rows.append((f"(d) POST /v1.1/CreateObservations, {run['rows_per_request']:,} rows, {run['clients']} client(s)",
                     f"{run['obs_per_s']:,}", ratio(run["obs_per_s"]),
                     f"{run['created']:,} created by {run['requests']:,} requests in {run['seconds']:.0f} s, "
                     f"{run['errors']:,} errors; target >= 0.60"))
    report["table"] = rows
    print()
    print_table(rows)
    print(f"\nreport: {write_report('ingest', report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
