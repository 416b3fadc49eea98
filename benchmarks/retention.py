"""Retention benchmark: a retention pass deleting 30 days' worth of Observations while MQTT ingest runs at a
steady rate, and the ingest rate during the pass against the rate just before it (target >= 0.8).

One run, against a private PostgreSQL and Mosquitto (fresh, in benchmarks/.data/retention):
  1. the city of benchmarks/city.py (1,000 Things x 3 Datastreams), with N Observations (default 10 M)
     spread evenly over the last --days days (default 120) and loaded by binary COPY; every Datastream gets
     `retention` --retention (default P90D), so 30 days' worth expire: the months wholly before the horizon
     are emptied whole, the month holding it is deleted from in batches;
  2. `citystream serve` (for the broker's plugin; its retention job off) and `citystream bridge`; 2 publisher
     processes (benchmarks/loadgen.py) offer --rate messages/s at QoS 1 for the whole run, each to a
     Datastream of the city, phenomenonTime now;
  3. after --warmup s, the ceiling: the committed-row rate over --before s (the slope of the id sequence,
     sampled twice a second), with nothing else running;
  4. then a retention pass (citystream/retention.py: the pass the API process runs every hour and
     `citystream retention run` runs, here in a thread of this process), timed, and the ingest rate over its
     duration; publishing goes on until --max-pass s after the pass began, plus --after s;
  5. once the backlog is in: every published (broker-acknowledged) Observation is stored, and nothing older
     than the horizon is left.

    .venv/bin/python benchmarks/retention.py                                  # 10 M: a quiet machine, ~15 min
    .venv/bin/python benchmarks/retention.py --observations 200000 --before 15 # quick look, ~2 min

The ratio "during / before" is the one the issue asks for (>= 0.8); "during / offered" says whether the
bridge kept up at all. Both are printed with the pass's duration and what it deleted how.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shutil
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import loadgen  # noqa: E402
from benchmarks.city import PROPERTIES, CityParams, _metadata, _summaries  # noqa: E402
from benchmarks.harness import BENCHMARKS, machine_info, platform_process, write_report  # noqa: E402
from benchmarks.ingest import RowCounter  # noqa: E402
from citystream.embedded import EmbeddedMosquitto, EmbeddedPostgres, find_free_port  # noqa: E402
from citystream.retention import PassOutcome, RetentionPass, report_lines  # noqa: E402
from sensorthings.model.observation_ids import observation_id  # noqa: E402
from sensorthings.schema.migrate import apply_migrations  # noqa: E402

DATA = BENCHMARKS / ".data" / "retention"
CHUNK_ROWS = 1_000_000


# ------------------------------------------------------------------ the city


def load(dsn: str, observations: int, days: int, retention: str) -> dict[str, Any]:
    """The city's metadata, `observations` spread over the last `days` days (ending a minute ago), the
    summaries, and `retention` on every Datastream."""
    params = CityParams(observations=observations, days=days)
    rng = random.Random(params.seed)
    began = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        _metadata(conn, params, rng)
        end = datetime.now(UTC) - timedelta(minutes=1)
        start = end - timedelta(days=days)
        month = datetime(start.year, start.month, 1, tzinfo=UTC)
        while month <= end + timedelta(days=40):
            conn.execute("SELECT sta_ensure_observation_partition(%s)", (month,))
            month = (month + timedelta(days=32)).replace(day=1)
        _copy(conn, params, rng, start, end)
        _summaries(conn, params)
        conn.execute("UPDATE datastreams SET retention = %s", (retention,))
        conn.execute("VACUUM ANALYZE")
        horizon = conn.execute("SELECT sta_retention_horizon(%s, now())", (retention,)).fetchone()
        expired = conn.execute("SELECT count(*) FROM observations WHERE phenomenon_time_start < %s",
                               (horizon[0] if horizon else None,)).fetchone()
    return {"params": asdict(params), "start": start.isoformat(), "end": end.isoformat(),
            "expired": int(expired[0]) if expired else 0, "seconds": round(time.perf_counter() - began, 1)}


def _copy(conn: psycopg.Connection[Any], p: CityParams, rng: random.Random, start: datetime, end: datetime) -> None:
    """Binary COPY in phenomenon-time order (ids rise with time, as with real ingest)."""
    n, per = p.observations, p.datastreams_per_thing
    order = list(range(1, p.datastreams + 1))
    rng.shuffle(order)
    row = conn.execute("SELECT nextval('observation_id_seq')").fetchone()
    assert row is not None
    base = int(row[0])
    conn.execute("SELECT setval('observation_id_seq', %s)", (base + n,))
    step_us = (end - start) / timedelta(microseconds=1) / n
    copied = 0
    while copied < n:
        stop = min(copied + CHUNK_ROWS, n)
        began = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit = off")
            cur.execute("SET LOCAL session_replication_role = replica")  # ids it has just inserted: no FK checks
            with cur.copy("COPY observations (id, phenomenon_time_start, result_time, result_type, result_number,"
                          " result_string, datastream_id, feature_id) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "timestamptz", "timestamptz", "int2", "float8", "text", "int8", "int8"])
                for g in range(copied, stop):
                    d = order[g % p.datastreams]
                    level, swing, noise = PROPERTIES[(d - 1) % per][4:]
                    at = start + timedelta(microseconds=int(g * step_us))
                    value = round(level + swing * math.sin(g / 97.0) + rng.gauss(0.0, noise), 1)
                    copy.write_row((observation_id(base + g, at), at, at, 1, value, str(value), d, (d - 1) // per + 1))
        rate = (stop - copied) / (time.perf_counter() - began)
        copied = stop
        print(f"  city: {copied:,}/{n:,} observations ({rate:,.0f} rows/s)", flush=True)


# ------------------------------------------------------------------ the run


def run_pass(dsn: str, batch_rows: int) -> PassOutcome:
    """The pass the API process runs (citystream/retention.py), here in a thread of the benchmark process: the
    same code as `citystream retention run`, without a process start inside the measured window."""
    async def once() -> PassOutcome:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False) as pool:
            return await RetentionPass(pool, batch_rows=batch_rows).run()

    return asyncio.run(once())


def slope(samples: list[tuple[float, int]], t0: float, t1: float) -> float:
    """Committed rows per second between t0 and t1 (the samples nearest inside the window)."""
    window = [(t, n) for t, n in samples if t0 <= t <= t1]
    if len(window) < 2 or window[-1][0] <= window[0][0]:
        return 0.0
    return (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])


def run(args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    DATA.chmod(0o755)
    log_path = DATA / "platform.log"
    report: dict[str, Any] = {"benchmark": "retention", "started": datetime.now(UTC).isoformat(),
                              "settings": vars(args)}
    with EmbeddedPostgres(DATA / "postgres") as postgres:
        dsn = postgres.dsn
        apply_migrations(dsn)
        with psycopg.connect(dsn) as conn:
            report["machine"] = machine_info(conn)
        print(f"loading {args.observations:,} Observations over {args.days} days ...", flush=True)
        report["load"] = load(dsn, args.observations, args.days, args.retention)
        print(f"  {report['load']['expired']:,} of them older than the horizon ({args.retention})", flush=True)
        http_port = find_free_port()
        broker = EmbeddedMosquitto(DATA / "mosquitto", find_free_port(),
                                   decision_url=f"http://127.0.0.1:{http_port}/internal/mqtt")
        broker.start()
        try:
            env = {"CITYSTREAM_DATABASE_URL": dsn, "CITYSTREAM_HOST": "127.0.0.1",
                   "CITYSTREAM_HTTP_PORT": str(http_port), "CITYSTREAM_MQTT_URL": broker.platform_url,
                   "CITYSTREAM_MQTT_INGEST": "false", "CITYSTREAM_MQTT_CLIENT_ID": "citystream-bridge-api",
                   "CITYSTREAM_RETENTION_INTERVAL_SECONDS": "0"}
            bridge_env = {"CITYSTREAM_DATABASE_URL": dsn, "CITYSTREAM_MQTT_URL": broker.platform_url,
                          "CITYSTREAM_HTTP_PORT": str(http_port), "CITYSTREAM_RETENTION_INTERVAL_SECONDS": "0"}
            with platform_process(["serve"], env, log_path, f"http://127.0.0.1:{http_port}/health"), \
                    platform_process(["bridge"], bridge_env, log_path):
                time.sleep(3)  # connected and subscribed
                report.update(_measure(args, dsn, broker))
        finally:
            broker.stop()
    return report


def _measure(args: argparse.Namespace, dsn: str, broker: EmbeddedMosquitto) -> dict[str, Any]:
    datastreams = list(range(1, CityParams(observations=0).datastreams + 1))
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM observations").fetchone()
        stored_before = int(row[0]) if row else 0
    counter = RowCounter(dsn)
    seconds = args.warmup + args.before + args.max_pass + args.after
    started = time.monotonic()
    samples: list[tuple[float, int]] = []
    pass_started = pass_ended = None
    retention: threading.Thread | None = None
    outcome: list[PassOutcome] = []
    with ProcessPoolExecutor(max_workers=args.publishers) as pool:
        futures: list[Future[Any]] = [
            pool.submit(loadgen.publish, "127.0.0.1", broker.port, username=broker.sensor_username,
                        password=broker.sensor_password, qos=1, datastreams=datastreams, seconds=seconds,
                        rate=args.rate / args.publishers, client_id=f"bench-retention-{n}")
            for n in range(args.publishers)]
        while not all(f.done() for f in futures):
            now = time.monotonic() - started
            samples.append((now, counter()))
            if retention is None and now >= args.warmup + args.before:
                print(f"pass starts at {now:.1f} s (ingest so far {samples[-1][1]:,} rows) ...", flush=True)
                pass_started = now
                retention = threading.Thread(target=lambda: outcome.append(run_pass(dsn, args.batch_rows)),
                                             name="retention-pass")
                retention.start()
            if retention is not None and pass_ended is None and not retention.is_alive():
                pass_ended = now
                print(f"pass ended at {now:.1f} s", flush=True)
            time.sleep(0.5)
        results = [f.result() for f in futures]
    wall = time.monotonic() - started
    if retention is not None:
        retention.join(3600)
        if pass_ended is None:
            pass_ended = time.monotonic() - started
    assert outcome, "the retention pass failed (see above)"
    output = "\n".join(report_lines(outcome[0]))
    published = sum(r.published for r in results)
    last, progress_at = -1, time.monotonic()
    while time.monotonic() - progress_at < 30 and counter() < published:  # the backlog
        if (now_stored := counter()) != last:
            last, progress_at = now_stored, time.monotonic()
        time.sleep(0.5)
    time.sleep(2)
    counter.close()
    with psycopg.connect(dsn) as conn:
        horizon_row = conn.execute("SELECT min(retained_from) FROM datastreams").fetchone()
        horizon = horizon_row[0] if horizon_row else None
        left = conn.execute("SELECT count(*) FROM observations WHERE phenomenon_time_start < %s",
                            (horizon,)).fetchone()
        total = conn.execute("SELECT count(*) FROM observations").fetchone()
    assert pass_started is not None and pass_ended is not None, "the run ended before the pass started"
    done = outcome[0]
    before_rate = slope(samples, args.warmup, args.warmup + args.before)
    during_rate = slope(samples, pass_started, pass_ended)
    stored_new = (int(total[0]) if total else 0) - (stored_before - done.deleted)
    return {
        "offered_per_s": args.rate, "published": published,
        "acknowledged_not_stored": max(0, published - stored_new),
        "refused": sum(sum(r.refused.values()) for r in results), "wall_seconds": round(wall, 1),
        "before_per_s": round(before_rate), "during_per_s": round(during_rate),
        "ratio": round(during_rate / before_rate, 3) if before_rate else None,
        "pass_seconds": round(pass_ended - pass_started, 1),
        "pass_phases": done.phases,
        "pass_covered_by_load": pass_ended <= args.warmup + args.before + args.max_pass + args.after,
        "deleted": done.deleted, "emptied": ", ".join(done.emptied),
        "left_before_horizon": int(left[0]) if left else None, "horizon": horizon,
        "pass_output": "\n".join(output.splitlines()[:8]), "samples": [(round(t, 1), n) for t, n in samples],
    }


def print_table(report: dict[str, Any]) -> None:
    ratio = report["ratio"]
    rows = [
        ("Observations loaded", f"{report['load']['params']['observations']:,}",
         f"over {report['settings']['days']} days, {report['load']['expired']:,} older than the horizon "
         f"({report['settings']['retention']})"),
        ("ingest before the pass (ceiling)", f"{report['before_per_s']:,}/s",
         f"MQTT QoS 1 offered at {report['offered_per_s']:,}/s"),
        ("ingest during the pass", f"{report['during_per_s']:,}/s",
         f"ratio {ratio} (target >= 0.80)" if ratio is not None else "no ceiling measured"),
        ("retention pass", f"{report['pass_seconds']} s",
         f"deleted {report['deleted']:,}; partitions emptied: {report['emptied'] or 'none'}; per step: "
         + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report["pass_phases"].items())
         + ("" if report["pass_covered_by_load"] else "; WARNING: load ended before the pass (raise --max-pass)")),
        ("published (broker-acknowledged) not stored", f"{report['acknowledged_not_stored']:,}",
         f"of {report['published']:,}; {report['refused']:,} refused"),
        ("left older than the horizon", f"{report['left_before_horizon']:,}", f"horizon {report['horizon']}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=120, help="days the Observations span, ending now")
    parser.add_argument("--retention", default="P90D", help="every Datastream's retention (default P90D)")
    parser.add_argument("--rate", type=float, default=10_000, help="MQTT messages/s offered throughout")
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--before", type=float, default=30, help="seconds of the ceiling window")
    parser.add_argument("--max-pass", type=float, default=300,
                        help="seconds the load goes on after the pass starts (must outlast the pass)")
    parser.add_argument("--after", type=float, default=5)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    args = parser.parse_args(argv)
    report = run(args)
    print()
    print_table(report)
    print(f"\nreport: {write_report('retention', report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
