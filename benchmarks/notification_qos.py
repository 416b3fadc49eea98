"""What publishing STA notifications at QoS 1 instead of QoS 0 costs (docs/mqtt.md, "Subscriptions").

Against a private PostgreSQL and Mosquitto (the generated, secured config, fresh in
benchmarks/.data/notification_qos) and `citystream bridge`, three variants:
  none   a bridge with no subscriber, so no notification: the ingest-only baseline of the increments;
  qos0   notifications published at QoS 0 (the code before);
  qos1   notifications published at QoS 1 (the code now).
All three are one bridge process, its QoS switched by a signal between runs (so all have the same
connections, prepared statements and table). For qos0 and qos1 a subscriber process is connected at QoS 1
to `v1.1/Datastreams(n)/Observations` of every Datastream (one notification per Observation); for `none`
it is gone, and the bridge forgets its topics. Lean publishers (benchmarks/loadgen.py, QoS 1, the sensor account) create
Observations over MQTT. Each variant, each round (`--repeat`, the order reversed every other round):
  paced     `--rate` Observations/s for `--seconds`: the bridge's and the broker's CPU per Observation (from
            /proc, until every notification has arrived) and, against `none`, the increment per
            notification; publish (the phenomenonTime each message carries) -> notification latency
            p50/p99 at the subscriber, and the QoS it was delivered at;
  flat out  `--offered-rate` Observations/s for `--flat-seconds`: the sustained rates (slope over the last
            three quarters of the window) of stored Observations and of notifications, notifications
            lost, and what the bridge counted: those sent at QoS 0 for a full window (the broker's Receive
            Maximum, mqtt_bridge/wire.py), change sets the notifier dropped or failed on.
The table gives medians over the rounds and the qos1/qos0 ratios.

The bridge is this file run with `--bridge-process QOS`: it wraps MqttClient.publish so that every call
goes out at the current QoS (the same wrapper for qos0 and qos1, ~0.2 µs), then runs `citystream bridge`.
`--no-echo` is for the code before the broker plugin moved creates to `citystream/ingest/...`: there the
bridge's own QoS 1 create subscriptions (`v1.x/+/Observations`) also got every notification on
`v1.1/Datastreams(n)/Observations`, and the option has it take creates on `v1.x/Observations` only (with the
current code it changes nothing). The subscriber is
our own MQTT client (mqtt_bridge/wire.py, uvloop, PUBACKs batched per read): paho would cost ~36 µs of CPU
per QoS 1 message (benchmarks/mqtt_clients.py) on the same cores.

    .venv/bin/python benchmarks/notification_qos.py                          # ~15 minutes
    .venv/bin/python benchmarks/notification_qos.py --seconds 8 --repeat 1   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

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
    stop_process,
    write_headers,
    write_report,
)
from benchmarks.ingest import RowCounter, create_datastreams, payload, stored, truncate  # noqa: E402
from citystream.embedded import EmbeddedMosquitto, EmbeddedPostgres, find_free_port  # noqa: E402
from sensorthings.schema.migrate import apply_migrations  # noqa: E402

DATA = BENCHMARKS / ".data" / "notification_qos"
VARIANTS = ("none", "qos0", "qos1")
NOTIFICATION = ("citystream", "notification")
_TIME_KEY = b'"phenomenonTime"'
STATS_MARK = "notification-qos-bridge-stats: "
DRAIN_IDLE_S = 60


def _cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ the bridge, at a chosen QoS


def bridge_process(qos: int, echo: bool) -> int:
    """`citystream bridge`, with every MqttClient.publish at `qos` (its notifications and error reports) until
    a signal switches it: SIGUSR1 to QoS 0, SIGUSR2 to QoS 1. At each switch (the same QoS again: a snapshot)
    and at exit it prints a line STATS_MARK + JSON: its client's PublishStats so far, the notifier's dropped
    count, the QoS from now on. `echo` False: the bridge subscribes only to the create topics without `+`
    (`v1.1/Observations`, where the publishers publish), so that notifications on
    `v1.1/Datastreams(n)/Observations` do not come back to its QoS 1 create subscription."""
    from citystream.cli import main
    from mqtt_bridge import bridge as bridge_module
    from mqtt_bridge import notifier, wire

    current = {"qos": qos}
    bridges: list[bridge_module.Bridge] = []
    publish = wire.MqttClient.publish

    def at_qos(self: wire.MqttClient, topic: str, payload: bytes, **options: Any) -> bool:
        options["qos"] = current["qos"]
        return publish(self, topic, payload, **options)

    def report() -> None:
        stats = bridges[0].client.stats if bridges else wire.PublishStats()
        dropped = sum(s.value for m in notifier.DROPPED.collect() for s in m.samples if s.name.endswith("_total"))
        line = STATS_MARK + json.dumps({
            "qos": current["qos"], "acknowledged": stats.acknowledged,
            "reasons": {hex(k): v for k, v in stats.reasons.items()}, "downgraded": stats.downgraded,
            "not_connected": stats.not_connected, "lost_in_flight": stats.lost_in_flight,
            "notifier_dropped_total": dropped})
        os.write(1, f"\n{line}\n".encode())  # not print(): this may run inside a signal handler

    def switch(signum: int, frame: object) -> None:
        current["qos"] = 0 if signum == signal.SIGUSR1 else 1
        report()

    wire.MqttClient.publish = at_qos  # type: ignore[method-assign]
    names = vars(bridge_module)  # what Bridge() subscribes to
    if not echo and "CREATE_FILTERS" in names:  # (a bridge that reads creates off citystream/ingest/ never echoes)
        names["CREATE_FILTERS"] = tuple(f for f in names["CREATE_FILTERS"] if "+" not in f)
    start, stop = bridge_module.Bridge.start, bridge_module.Bridge.stop

    async def start_and_keep(self: bridge_module.Bridge) -> None:
        bridges.append(self)
        await start(self)

    async def stop_and_report(self: bridge_module.Bridge) -> None:
        await stop(self)
        report()

    bridge_module.Bridge.start = start_and_keep  # type: ignore[method-assign]
    bridge_module.Bridge.stop = stop_and_report  # type: ignore[method-assign]
    signal.signal(signal.SIGUSR1, switch)
    signal.signal(signal.SIGUSR2, switch)
    return main(["bridge"])


class BridgeRun:
    """A bridge_process, its QoS switched and its stats read through its log."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, offset: int) -> None:
        self.proc, self.log_path, self.offset = proc, log_path, offset

    def _lines(self) -> list[str]:
        return self.log_path.read_bytes()[self.offset:].decode(errors="replace").splitlines()

    def switch(self, qos: int) -> dict[str, Any]:
        """Publish at `qos` from now on; the stats up to now (cumulative), with the count of notifier rounds
        that failed so far (e.g. the statement timeout of a notifier far behind)."""
        seen = sum(line.startswith(STATS_MARK) for line in self._lines())
        os.kill(self.proc.pid, signal.SIGUSR1 if qos == 0 else signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while True:
            lines = self._lines()
            marks = [line for line in lines if line.startswith(STATS_MARK)]
            if len(marks) > seen:
                stats: dict[str, Any] = json.loads(marks[-1].removeprefix(STATS_MARK))
                stats["notify_failures"] = sum('"logger":"citystream.notify"' in line and '"level":"ERROR"' in line
                                               for line in lines)
                return stats
            if time.monotonic() > deadline:
                raise RuntimeError(f"the bridge did not answer the signal; see {self.log_path}")
            time.sleep(0.05)


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    delta = {key: after[key] - before[key] for key in ("acknowledged", "downgraded", "not_connected",
                                                        "lost_in_flight", "notifier_dropped_total",
                                                        "notify_failures")}
    delta["reasons"] = {code: n - before["reasons"].get(code, 0) for code, n in after["reasons"].items()
                        if n - before["reasons"].get(code, 0)}
    return delta


@contextmanager
def bridge(qos: int, echo: bool, env: dict[str, str], log_path: Path) -> Iterator[BridgeRun]:
    offset = log_path.stat().st_size if log_path.exists() else 0
    argv = [sys.executable, __file__, "--bridge-process", str(qos), *([] if echo else ["--no-echo"])]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while b"connected" not in log_path.read_bytes()[offset:]:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bridge did not connect; see {log_path}")
            time.sleep(0.1)
        yield BridgeRun(proc, log_path, offset)
    finally:
        stop_process(proc)
        with open(log_path, "a") as log:
            log.write("\n--- bridge stopped ---\n")


# ------------------------------------------------------------------ the subscriber (its own process)


def subscriber(port: int, topics: list[str], client_id: str, ready: Any, stop: Any, count: Synchronized[int],
               marks: Any, results: Any) -> None:
    """Subscribe at QoS 1 to `topics`, then count notifications (into `count`, every 50 ms) and record each
    one's latency from its phenomenonTime, until `stop`. At each `marks.get()` (a label) the latencies so
    far are put on `results` as (label, summary) and started afresh."""
    import uvloop

    from mqtt_bridge import wire

    async def run() -> None:
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        qos_seen: Counter[int] = Counter()
        received = 0
        acks: list[int] = []
        flush_scheduled = False

        def flush() -> None:
            nonlocal flush_scheduled
            flush_scheduled = False
            client.acknowledge(acks[:], client.generation)
            acks.clear()

        def on_message(message: wire.Message) -> None:
            nonlocal received, flush_scheduled
            if message.packet_id:
                acks.append(message.packet_id)
                if not flush_scheduled:
                    flush_scheduled = True
                    loop.call_soon(flush)
            if NOTIFICATION not in message.user_properties:
                return
            received += 1
            qos_seen[message.qos] += 1
            data = message.payload  # json_build_object's text: "phenomenonTime" : "2026-12-03T15:55:04.123456Z"
            at = data.index(b'"', data.index(_TIME_KEY) + len(_TIME_KEY)) + 1
            sent = datetime.fromisoformat(data[at:data.index(b'"', at)].decode())
            latencies.append(time.time() - sent.timestamp())

        client = wire.MqttClient("127.0.0.1", port, client_id, username=None, password=None, clean_start=True,
                                 session_expiry=0, receive_maximum=65535, subscriptions=[(t, 1) for t in topics],
                                 on_message=on_message)
        cpu = time.process_time()
        await client.start()
        ready.set()
        while not stop.is_set():
            count.value = received
            while not marks.empty():
                label = marks.get()
                results.put((label, {"latencies_ms": [round(x * 1000, 3) for x in latencies],
                                     "qos": dict(qos_seen), "received": received,
                                     "cpu_seconds": time.process_time() - cpu}))
                latencies.clear()
                qos_seen.clear()
            await asyncio.sleep(0.05)
        await client.stop()

    uvloop.run(run())


class Subscriber:
    def __init__(self, port: int, topics: list[str], client_id: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ready, self.stop = ctx.Event(), ctx.Event()
        self.count: Synchronized[int] = ctx.Value("q", 0)
        self.marks, self.results = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=subscriber, args=(port, topics, client_id, self.ready, self.stop, self.count,
                                                         self.marks, self.results), daemon=True)
        self.proc.start()
        if not self.ready.wait(30):
            raise RuntimeError("the subscriber did not subscribe")

    def mark(self, label: str) -> dict[str, Any]:
        """What arrived since the last mark (latencies, QoS), and the subscriber's CPU seconds so far."""
        self.marks.put(label)
        got_label, summary = self.results.get(timeout=30)
        assert got_label == label
        return dict(summary)

    def close(self) -> None:
        self.stop.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


# ------------------------------------------------------------------ one run


def probe_until_notified(broker: EmbeddedMosquitto, datastream: int, sub: Subscriber, timeout: float = 120) -> None:
    """Publish single Observations until the subscriber has a notification: the bridge has learned the
    subscriptions from the broker's log and the notifier statement is warm."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(broker.sensor_username, broker.sensor_password)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    deadline = time.monotonic() + timeout
    try:
        seq = 0
        while sub.count.value == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("no notification reached the subscriber")
            client.publish(loadgen.TOPIC, payload(datastream, seq, datetime.now(UTC)), qos=1).wait_for_publish(10)
            seq += 1
            time.sleep(0.2)
    finally:
        client.disconnect()
        client.loop_stop()


def load(dsn: str, broker: EmbeddedMosquitto, datastreams: list[int], seconds: float, rate: float,
         publishers: int, bridge_pid: int, broker_pid: int, sub: Subscriber | None, label: str) -> dict[str, Any]:
    """Publish `rate` Observations/s for `seconds`, then wait until they are stored and (with a subscriber)
    notified; CPU of bridge and broker over all of that, rates over the last three quarters of the window."""
    counter = RowCounter(dsn)
    before_rows = stored(dsn)
    before_notes = sub.count.value if sub else 0
    if sub:
        sub.mark(f"{label}-start")
    cpu_bridge, cpu_broker = _cpu(bridge_pid), _cpu(broker_pid)
    started = time.monotonic()
    samples: list[tuple[float, int, int]] = []
    with ProcessPoolExecutor(max_workers=publishers) as pool:
        futures = [pool.submit(loadgen.publish, "127.0.0.1", broker.port, username=broker.sensor_username,
                               password=broker.sensor_password, qos=1, datastreams=datastreams, seconds=seconds,
                               rate=rate / publishers, client_id=f"bench-{label}-{n}") for n in range(publishers)]
        while not all(f.done() for f in futures):
            samples.append((time.monotonic() - started, counter(), (sub.count.value if sub else 0) - before_notes))
            time.sleep(0.5)
        results = [f.result() for f in futures]
    published = sum(r.published for r in results)
    last, progress_at = (-1, -1), time.monotonic()
    # Until all are stored and notified, or nothing moves for DRAIN_IDLE_S: a notifier far behind merges
    # everything queued into one query and one burst, and stays silent meanwhile.
    while time.monotonic() - progress_at < DRAIN_IDLE_S:
        now = (counter(), (sub.count.value if sub else 0) - before_notes)
        if now != last:
            last, progress_at = now, time.monotonic()
        if now[0] >= published and (sub is None or now[1] >= published):
            break
        time.sleep(0.2)
    time.sleep(0.3)  # the last PUBACKs and the subscriber's count
    total_rows = stored(dsn) - before_rows
    notifications = (sub.count.value - before_notes) if sub else 0
    wall = time.monotonic() - started
    cpu_bridge, cpu_broker = _cpu(bridge_pid) - cpu_bridge, _cpu(broker_pid) - cpu_broker
    counter.close()
    summary = sub.mark(f"{label}-end") if sub else {"latencies_ms": [], "qos": {}}
    window = [s for s in samples if seconds * 0.25 <= s[0] <= seconds]

    def slope(i: int) -> float:
        return (window[-1][i] - window[0][i]) / (window[-1][0] - window[0][0]) if len(window) >= 2 else 0.0

    latencies = summary["latencies_ms"]
    warm = latencies[len(latencies) // 10:]  # the first tenth: warm-up
    return {"label": label, "rate": rate, "seconds": seconds, "published": published, "stored": total_rows,
            "notifications": notifications, "notifications_lost": published - notifications if sub else None,
            "wall_seconds": round(wall, 1), "stored_per_s": round(slope(1)), "notifications_per_s": round(slope(2)),
            "notified_per_s_overall": round(notifications / wall) if sub else None,
            "bridge_cpu_s": round(cpu_bridge, 3), "broker_cpu_s": round(cpu_broker, 3),
            "bridge_cpu_us_per_obs": round(cpu_bridge / max(total_rows, 1) * 1e6, 2),
            "broker_cpu_us_per_obs": round(cpu_broker / max(total_rows, 1) * 1e6, 2),
            "delivered_qos": summary["qos"],
            "p50_ms": round(percentile(warm, 50), 1) if warm else None,
            "p99_ms": round(percentile(warm, 99), 1) if warm else None,
            "loadgen_cpu_us_per_msg": round(sum(r.cpu_seconds for r in results) / max(published, 1) * 1e6, 2),
            "load_average": os.getloadavg()}


def runs_of(variant: str, n: int, args: argparse.Namespace, dsn: str, broker: EmbeddedMosquitto,
            datastreams: list[int], bridge_run: BridgeRun, sub: Subscriber | None) -> dict[str, Any]:
    """The paced and the flat-out run of one variant (the bridge already at its QoS); the stats are filled
    in by the caller."""
    broker_pid = int((broker.data_dir / "mosquitto.pid").read_text())
    common = (dsn, broker, datastreams)
    truncate(dsn)
    paced = load(*common, args.seconds, args.rate, args.publishers, bridge_run.proc.pid, broker_pid, sub,
                 f"{variant}-{n}-paced")
    truncate(dsn)
    flat = load(*common, args.flat_seconds, args.offered_rate, args.publishers, bridge_run.proc.pid, broker_pid,
                sub, f"{variant}-{n}-flat")
    return {"variant": variant, "round": n, "paced": paced, "flat": flat}


def report_round(run: dict[str, Any]) -> None:
    paced, flat = run["paced"], run["flat"]
    print(f"  {run['variant']} round {run['round'] + 1}: paced {paced['bridge_cpu_us_per_obs']} µs bridge CPU/obs, "
          f"p50 {paced['p50_ms']} ms p99 {paced['p99_ms']} ms; flat out {flat['stored_per_s']:,} obs/s, "
          f"{flat['notifications_per_s']:,} notifications/s, {flat['notifications_lost'] or 0:,} lost; "
          f"bridge {run['bridge_stats']}", flush=True)


def measure(args: argparse.Namespace, dsn: str, broker: EmbeddedMosquitto, datastreams: list[int],
            env: dict[str, str], log_path: Path) -> list[dict[str, Any]]:
    """Every variant in one bridge process (the same connections, prepared statements and table), its QoS
    switched by a signal; the subscriber is connected for qos0 and qos1 and gone for `none` (a clean session
    that ends: the bridge forgets its topics and publishes nothing)."""
    runs: list[dict[str, Any]] = []
    broker_pid = int((broker.data_dir / "mosquitto.pid").read_text())
    with ExitStack() as stack:
        bridge_run = stack.enter_context(bridge(0, args.echo, env, log_path))
        sub: Subscriber | None = None

        def subscribed() -> Subscriber:
            nonlocal sub
            if sub is None:
                sub = Subscriber(broker.port, [f"v1.1/Datastreams({d})/Observations" for d in datastreams],
                                 f"bench-sub-{len(runs)}")
                probe_until_notified(broker, datastreams[0], sub)
            return sub

        def unsubscribed() -> None:
            nonlocal sub
            if sub is not None:
                sub.close()
                sub = None
                time.sleep(1)  # the broker's log tells the bridge the subscriber is gone

        stack.callback(unsubscribed)
        for qos in (0, 1):  # warm-up at each QoS
            bridge_run.switch(qos)
            load(dsn, broker, datastreams, 3, args.rate, args.publishers, bridge_run.proc.pid, broker_pid,
                 subscribed(), f"warm-{qos}")
        order = [v for v in VARIANTS if v in args.variants]
        for n in range(args.repeat):
            for variant in order if n % 2 == 0 else order[::-1]:
                if variant == "none":
                    unsubscribed()
                # `none` at QoS 1, so that its acknowledged count shows that nothing was published
                before = bridge_run.switch(0 if variant == "qos0" else 1)
                run = runs_of(variant, n, args, dsn, broker, datastreams, bridge_run,
                              None if variant == "none" else subscribed())
                run["bridge_stats"] = stats_delta(before, bridge_run.switch(0 if variant == "qos0" else 1))
                report_round(run)
                runs.append(run)
    return runs


# ------------------------------------------------------------------ summary


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    def med(variant: str, mode: str, key: str) -> float | None:
        values = [r[mode][key] for r in runs if r["variant"] == variant and r[mode][key] is not None]
        return statistics.median(values) if values else None

    out: dict[str, dict[str, Any]] = {}
    base_bridge, base_broker = med("none", "paced", "bridge_cpu_us_per_obs"), med("none", "paced",
                                                                                   "broker_cpu_us_per_obs")
    for variant in sorted({r["variant"] for r in runs}, key=VARIANTS.index):
        row: dict[str, Any] = {key: med(variant, "paced", key) for key in (
            "bridge_cpu_us_per_obs", "broker_cpu_us_per_obs", "p50_ms", "p99_ms")}
        row.update({f"flat_{key}": med(variant, "flat", key) for key in (
            "stored_per_s", "notifications_per_s", "notified_per_s_overall", "notifications_lost")})
        if variant != "none" and base_bridge is not None and base_broker is not None:
            row["bridge_cpu_us_per_notification"] = round(row["bridge_cpu_us_per_obs"] - base_bridge, 2)
            row["broker_cpu_us_per_notification"] = round(row["broker_cpu_us_per_obs"] - base_broker, 2)
        for mode, key in (("paced", "delivered_qos"), ("flat", "flat_delivered_qos")):
            qos: Counter[str] = Counter()
            for r in runs:
                if r["variant"] == variant:
                    qos.update({str(k): v for k, v in r[mode]["delivered_qos"].items()})
            row[key] = dict(qos)
        for key in ("downgraded", "notifier_dropped_total", "lost_in_flight", "notify_failures"):
            row[key] = sum(r["bridge_stats"].get(key, 0) for r in runs if r["variant"] == variant)
        row["refused"] = sum(n for r in runs if r["variant"] == variant
                             for code, n in r["bridge_stats"].get("reasons", {}).items() if int(code, 16) >= 0x80)
        out[variant] = row
    return out


def print_table(summary: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[list[str]]:
    def f(value: Any, digits: int = 1) -> str:
        if value is None:
            return "-"
        return f"{value:,.{digits}f}" if isinstance(value, float) and digits else f"{round(value):,}"

    header = ["variant", "bridge µs/obs", "Δ bridge µs/notif", "Δ broker µs/notif", "p50 ms", "p99 ms",
              "delivered QoS", "flat: stored/s", "flat: notif/s", "flat: notif/s overall", "flat: lost"]
    lines = [header]
    for variant, row in summary.items():
        lines.append([variant, f(row["bridge_cpu_us_per_obs"]), f(row.get("bridge_cpu_us_per_notification")),
                      f(row.get("broker_cpu_us_per_notification")), f(row["p50_ms"]), f(row["p99_ms"]),
                      ",".join(f"{k}:{v:,}" for k, v in sorted(row["delivered_qos"].items())) or "-",
                      f(row["flat_stored_per_s"], 0), f(row["flat_notifications_per_s"], 0),
                      f(row.get("flat_notified_per_s_overall"), 0), f(row["flat_notifications_lost"], 0)])
    q0, q1 = summary.get("qos0", {}), summary.get("qos1", {})

    def ratio(key: str) -> str:
        a, b = q0.get(key), q1.get(key)
        return f"{b / a:.2f}" if a and b is not None else "-"

    lines.append(["qos1 / qos0", ratio("bridge_cpu_us_per_obs"), ratio("bridge_cpu_us_per_notification"),
                  ratio("broker_cpu_us_per_notification"), ratio("p50_ms"), ratio("p99_ms"), "",
                  ratio("flat_stored_per_s"), ratio("flat_notifications_per_s"), ratio("flat_notified_per_s_overall"),
                  ""])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    echo = ("notifications echo to the bridge's create subscription" if getattr(args, "echoes", args.echo)
            else "no notification reaches the bridge's create subscription")
    print(f"\npaced at {args.rate:,.0f} obs/s for {args.seconds:.0f} s; flat out offered {args.offered_rate:,.0f}"
          f" obs/s; {args.datastreams} Datastreams; {echo}; medians of {args.repeat} round(s)")
    for n, line in enumerate(lines):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths,
                                                                                          strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for variant, row in summary.items():
        if variant != "none":
            flat_qos = ", ".join(f"{n:,} at QoS {q}" for q, n in sorted(row["flat_delivered_qos"].items()))
            print(f"{variant}: flat out delivered {flat_qos or 'nothing'}; "
                  f"{row['downgraded']:,} notifications sent at QoS 0 for a full window; "
                  f"{row['notifier_dropped_total']:,.0f} dropped (change sets by the notifier, or no connection); "
                  f"{row['refused']:,} refused by the broker; {row['lost_in_flight']:,} lost in flight; "
                  f"{row['notify_failures']:,} notifier rounds failed (all runs)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20, help="duration of each paced run (default 20)")
    parser.add_argument("--flat-seconds", type=float, default=10, help="duration of each flat-out run (default 10)")
    parser.add_argument("--rate", type=float, default=5000, help="paced Observations/s (default 5,000)")
    parser.add_argument("--offered-rate", type=float, default=35_000, help="flat out: offered/s (default 35,000)")
    parser.add_argument("--datastreams", type=int, default=100)
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes (default 2)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of the three variants (default 2)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="which bridges to run (default: all three; the increments need `none`)")
    parser.add_argument("--no-echo", dest="echo", action="store_false",
                        help="the bridge takes creates on v1.x/Observations only, so notifications on "
                             "v1.1/Datastreams(n)/Observations do not come back to its own QoS 1 create "
                             "subscription (as when the broker moves creates to an internal topic)")
    parser.add_argument("--table", type=Path, metavar="REPORT", help="print the table of a JSON report again")
    parser.add_argument("--bridge-process", type=int, choices=[0, 1], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bridge_process is not None:
        return bridge_process(args.bridge_process, args.echo)
    if args.table is not None:
        old = json.loads(args.table.read_text())
        for run in old["runs"]:  # reports written before this column
            for mode in ("paced", "flat"):
                r = run[mode]
                r.setdefault("notified_per_s_overall", round(r["notifications"] / r["wall_seconds"])
                             if run["variant"] != "none" else None)
        print_table(summarize(old["runs"]), argparse.Namespace(**old["settings"]))
        return 0

    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    DATA.chmod(0o755)
    log_path = DATA / "platform.log"
    from mqtt_bridge import bridge as bridge_module

    # Only a bridge that takes creates on the device topics (before the plugin moved them to
    # citystream/ingest/) gets notifications on v1.x/+/Observations back.
    args.echoes = args.echo and "CREATE_FILTERS" in vars(bridge_module)
    report: dict[str, Any] = {"benchmark": "notification_qos", "started": datetime.now(UTC).isoformat(),
                              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "runs": []}
    with EmbeddedPostgres(DATA / "postgres") as postgres:
        dsn = postgres.dsn
        apply_migrations(dsn)
        with psycopg.connect(dsn) as conn:
            report["machine"] = machine_info(conn)
        broker = EmbeddedMosquitto(DATA / "mosquitto", find_free_port())
        broker.start()
        try:
            http_port = find_free_port()
            env = {"CITYSTREAM_DATABASE_URL": dsn, "CITYSTREAM_HOST": "127.0.0.1",
                   "CITYSTREAM_HTTP_PORT": str(http_port)}
            with platform_process(["serve"], env, log_path, f"http://127.0.0.1:{http_port}/health"):
                datastreams = create_datastreams(f"http://127.0.0.1:{http_port}/v1.1", args.datastreams,
                                                 write_headers(dsn))
            truncate(dsn)
            bridge_env = {**env, "CITYSTREAM_MQTT_URL": broker.platform_url}
            variants = [v for v in VARIANTS if v in args.variants]
            print(f"{len(datastreams)} Datastreams; {args.repeat} round(s) of {', '.join(variants)}", flush=True)
            report["runs"] = measure(args, dsn, broker, datastreams, bridge_env, log_path)
        finally:
            broker.stop()
    report["summary"] = summarize(report["runs"])
    report["table"] = print_table(report["summary"], args)
    print(f"\nreport: {write_report('notification_qos', report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
