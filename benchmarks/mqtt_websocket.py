"""What the `/mqtt` relay costs: MQTT over WebSocket directly at the broker's listener vs through `/mqtt`.

    .venv/bin/python benchmarks/mqtt_websocket.py [--messages 50000] [--round-trips 2000] [--repeat 3]

Starts a private PostgreSQL and the platform's generated Mosquitto (temporary directory, free loopback
ports) and the real API, `citystream serve`, in a process of its own with `/mqtt` relaying to the broker's
WebSocket listener (CITYSTREAM_MQTT_WS_URL). Three paths, same clients:

  direct          ws://127.0.0.1:<broker ws port>: Mosquitto's own listener (libwebsockets, no compression)
  relay           ws://127.0.0.1:<http port>/mqtt, the client offering no compression
  relay+deflate   the same, the client offering permessage-deflate as browsers (and Node's `ws`, which
                  MQTT.js uses) do: uvicorn accepts it, so the relay compresses and decompresses every
                  message on the client's side (the broker's side is never compressed)

Two measurements per path and QoS (0 and 1), interleaved, --repeat times after one warm-up each:

  throughput   one publisher and one subscriber process (MQTT 5 over the `websockets` client on uvloop,
               packets framed from bytes: the lean clients of benchmarks/loadgen.py's kind), --messages
               PUBLISHes of 150 bytes, one MQTT packet per WebSocket message as MQTT.js sends them; QoS 1:
               at most 1,000 unacknowledged at the publisher, every PUBLISH acknowledged by the subscriber
               in its own message. The rate is (received - 1) / (last receive - first receive) at the
               subscriber; every message passes the relay twice (publisher -> broker -> subscriber).
  round trip   one client publishes to a topic it subscribed to and waits for its own message (QoS 1: and
               the PUBACK) before the next, --round-trips times: p50 / p90 / p99.

Also the CPU time (user + sys) of the API process (the relay; its bridge only follows the broker's log) and
of Mosquitto per message, from /proc, over each throughput run. Ratios are relay / direct for the same QoS.
Everything shares the machine's cores, so rates are partly CPU contention figures; the CPU per message
depends less on the rest of the machine. Prints a table and writes benchmarks/results/mqtt_websocket-<ts>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import psycopg

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))

from harness import machine_info, percentile, platform_process, write_report  # noqa: E402

from citystream.embedded import EmbeddedMosquitto, EmbeddedPostgres, find_free_port  # noqa: E402
from mqtt_bridge import wire  # noqa: E402

T = TypeVar("T")
PAYLOAD = b'{"result": 21.5, "phenomenonTime": "2026-12-03T07:00:00.000000Z", ' + b'"parameters": {"pad": "' + \
    b"x" * 58 + b'"}}'
assert len(PAYLOAD) == 150
WINDOW = 1000  # unacknowledged QoS 1 PUBLISHes at the publisher
PATHS = ("direct", "relay", "relay+deflate")
IDLE_SECONDS = 5.0  # a subscriber that received nothing for this long stops (loss)


# ----------------------------------------------------------------------------------------- the clients


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """`coro` on uvloop (a platform dependency): less client CPU per message."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def _open(url: str, client_id: str, deflate: bool, username: str | None, password: str | None) -> Any:
    from websockets.asyncio.client import connect

    socket = await connect(url, subprotocols=["mqtt"], compression="deflate" if deflate else None,  # type: ignore[list-item]
                           proxy=None, max_size=2**20, ping_interval=None)
    await socket.send(wire.connect_packet(client_id, username=username, password=password, clean_start=True,
                                          keepalive=120, session_expiry=0, receive_maximum=65535))
    connack = await socket.recv()
    if connack[:1] != b"\x20" or connack[3] != 0:
        raise SystemExit(f"CONNACK refused: {connack!r}")
    return socket


async def _subscribe(socket: Any, topic: str, qos: int) -> None:
    await socket.send(wire.subscribe_packet(1, [(topic, qos)]))
    suback = await socket.recv()
    if suback[:1] != b"\x90" or suback[-1] != qos:
        raise SystemExit(f"SUBACK refused: {suback!r}")


def _packet_id(packet: bytes) -> bytes:
    """The packet id of a QoS 1 PUBLISH (one packet per message, as Mosquitto sends them)."""
    at = 1
    while packet[at] & 0x80:
        at += 1
    at += 1
    topic_length = int.from_bytes(packet[at:at + 2], "big")
    return packet[at + 2 + topic_length:at + 4 + topic_length]


async def subscriber(url: str, topic: str, qos: int, count: int, deflate: bool, user: str, password: str) -> None:
    socket = await _open(url, f"bench-sub-{os.getpid()}", deflate, user, password)
    await _subscribe(socket, topic, qos)
    print("ready", flush=True)
    cpu = time.process_time()
    received = 0
    first = last = 0.0
    puback = bytes([wire.PUBACK << 4, 2])
    try:
        while received < count:
            packet = await asyncio.wait_for(socket.recv(), IDLE_SECONDS if received else 60)
            if packet[0] & 0xF0 != 0x30:
                continue
            last = time.monotonic()
            if not received:
                first = last
            received += 1
            if qos:
                await socket.send(puback + _packet_id(packet))
    except TimeoutError:
        pass
    print(json.dumps({"received": received, "first": first, "last": last,
                      "cpu": time.process_time() - cpu}), flush=True)
    await socket.close()


async def publisher(url: str, topic: str, qos: int, count: int, deflate: bool, user: str, password: str) -> None:
    socket = await _open(url, f"bench-pub-{os.getpid()}", deflate, user, password)
    print("ready", flush=True)
    sys.stdin.readline()  # go
    cpu = time.process_time()
    started = time.monotonic()
    if qos == 0:
        packet = wire.publish_packet(topic, PAYLOAD)
        for _ in range(count):
            await socket.send(packet)
    else:
        acked = 0
        room = asyncio.Event()
        room.set()

        async def read_acks() -> None:
            nonlocal acked
            while acked < count:
                packet = await socket.recv()
                if packet[0] >> 4 == wire.PUBACK:
                    acked += 1
                    room.set()

        reader = asyncio.create_task(read_acks())
        for i in range(count):
            while i - acked >= WINDOW:
                room.clear()
                await room.wait()
            await socket.send(wire.publish_packet(topic, PAYLOAD, qos=1, packet_id=i % 65535 + 1))
        await reader
    print(json.dumps({"sent": count, "started": started, "ended": time.monotonic(),
                      "cpu": time.process_time() - cpu}), flush=True)
    await socket.close()


async def round_trips(url: str, topic: str, qos: int, count: int, deflate: bool, user: str, password: str
                      ) -> list[float]:
    socket = await _open(url, f"bench-rtt-{os.getpid()}", deflate, user, password)
    await _subscribe(socket, topic, qos)
    samples = []
    for i in range(count):
        started = time.perf_counter()
        await socket.send(wire.publish_packet(topic, PAYLOAD, qos=qos, packet_id=i % 65535 + 1 if qos else 0))
        echoed = acked = False
        while not (echoed and (acked or not qos)):
            packet = await socket.recv()
            kind = packet[0] >> 4
            if kind == wire.PUBLISH:
                echoed = True
                if qos:
                    await socket.send(bytes([wire.PUBACK << 4, 2]) + _packet_id(packet))
            elif kind == wire.PUBACK:
                acked = True
        samples.append(time.perf_counter() - started)
    await socket.close()
    return samples


# ------------------------------------------------------------------------------------------ measuring


def _cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Setup:
    urls: dict[str, str]
    user: str
    password: str
    api_pid: int
    broker_pid: int


@dataclass
class Throughput:
    received: int
    sent: int
    msg_per_s: float
    api_cpu_us_per_msg: float
    broker_cpu_us_per_msg: float
    publisher_cpu_us_per_msg: float
    subscriber_cpu_us_per_msg: float


def _worker(role: str, url: str, topic: str, qos: int, count: int, deflate: bool, setup: Setup
            ) -> subprocess.Popen[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", role, "--url", url, "--topic", topic,
            "--qos", str(qos), "--messages", str(count), *(["--deflate"] if deflate else [])]
    env = {**os.environ, "BENCH_MQTT_USER": setup.user, "BENCH_MQTT_PASSWORD": setup.password}
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{role} worker did not start")
    return proc


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=600)
    return dict(json.loads(out.strip().splitlines()[-1]))


def throughput(setup: Setup, path: str, qos: int, count: int, tag: str) -> Throughput:
    topic = f"citystream-bench/ws/{tag.replace('+', '-')}"  # `+` is a wildcard in a topic filter
    url, deflate = setup.urls[path], path.endswith("+deflate")
    sub = _worker("subscribe", url, topic, qos, count, deflate, setup)
    pub = _worker("publish", url, topic, qos, count, deflate, setup)
    api, broker = _cpu(setup.api_pid), _cpu(setup.broker_pid)
    assert pub.stdin is not None
    pub.stdin.write("go\n")
    pub.stdin.flush()
    sent, got = _result(pub), _result(sub)
    api, broker = _cpu(setup.api_pid) - api, _cpu(setup.broker_pid) - broker
    received = got["received"]
    span = got["last"] - got["first"]
    time.sleep(0.3)
    return Throughput(received, sent["sent"], (received - 1) / span if span > 0 else 0.0,
                      1e6 * api / max(received, 1), 1e6 * broker / max(received, 1),
                      1e6 * sent["cpu"] / max(received, 1), 1e6 * got["cpu"] / max(received, 1))


@dataclass
class Config:
    path: str
    qos: int
    runs: list[Throughput] = field(default_factory=list)
    latencies: list[list[float]] = field(default_factory=list)


def summarize(configs: list[Config]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for c in configs:
        samples = [s for run in c.latencies for s in run]
        rows.append({
            "path": c.path, "qos": c.qos,
            "msg_per_s_median": round(statistics.median(r.msg_per_s for r in c.runs)),
            "lost_total": sum(r.sent - r.received for r in c.runs),
            "api_cpu_us_per_msg_median": statistics.median(r.api_cpu_us_per_msg for r in c.runs),
            "broker_cpu_us_per_msg_median": statistics.median(r.broker_cpu_us_per_msg for r in c.runs),
            "rtt_ms": {f"p{q}": 1000 * percentile(samples, q) for q in (50, 90, 99)},
            "runs": [vars(r) for r in c.runs],
        })
    direct = {r["qos"]: r for r in rows if r["path"] == "direct"}
    for r in rows:
        base = direct[r["qos"]]
        r["rate_ratio_to_direct"] = r["msg_per_s_median"] / base["msg_per_s_median"]
        r["rtt_p50_ratio_to_direct"] = r["rtt_ms"]["p50"] / base["rtt_ms"]["p50"]
        r["rtt_p99_ratio_to_direct"] = r["rtt_ms"]["p99"] / base["rtt_ms"]["p99"]
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("path", "QoS", "msg/s", "/ direct", "lost", "API CPU us/msg", "broker CPU us/msg",
              "RTT p50 ms", "p90", "p99", "p50 / direct", "p99 / direct")
    lines = [header]
    for r in rows:
        rtt = r["rtt_ms"]
        lines.append((r["path"], str(r["qos"]), f"{r['msg_per_s_median']:,}", f"{r['rate_ratio_to_direct']:.2f}",
                      f"{r['lost_total']:,}", f"{r['api_cpu_us_per_msg_median']:.1f}",
                      f"{r['broker_cpu_us_per_msg_median']:.1f}", f"{rtt['p50']:.3f}", f"{rtt['p90']:.3f}",
                      f"{rtt['p99']:.3f}", f"{r['rtt_p50_ratio_to_direct']:.2f}",
                      f"{r['rtt_p99_ratio_to_direct']:.2f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths,
                                                                                          strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def run(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="cs-bench-ws-"))
    root.chmod(0o755)  # the service accounts must reach their directories when we run as root
    try:
        with EmbeddedPostgres(root / "postgres") as pg, \
                EmbeddedMosquitto(root / "mosquitto", find_free_port(), websocket_port=find_free_port()) as broker:
            from sensorthings.schema.migrate import apply_migrations

            apply_migrations(pg.dsn)
            port = find_free_port()
            assert broker.websocket_url is not None
            env = {"CITYSTREAM_DATABASE_URL": pg.dsn, "CITYSTREAM_MQTT_URL": broker.platform_url,
                   "CITYSTREAM_MQTT_WS_URL": broker.websocket_url, "CITYSTREAM_HOST": "127.0.0.1",
                   "CITYSTREAM_LOG_LEVEL": "warning"}
            with platform_process(["serve", "--http-port", str(port)], env, root / "api.log",
                                  f"http://127.0.0.1:{port}/health") as api:
                relay = f"ws://127.0.0.1:{port}/mqtt"
                setup = Setup({"direct": broker.websocket_url, "relay": relay, "relay+deflate": relay},
                              broker.platform_username, broker.platform_password, api.pid,
                              int((broker.data_dir / "mosquitto.pid").read_text()))
                configs = [Config(path, qos) for qos in args.qos for path in PATHS]
                for c in configs:  # warm-up
                    throughput(setup, c.path, c.qos, min(args.messages, 10_000), f"warm-{c.path}-{c.qos}")
                for n in range(args.repeat):
                    for c in configs:
                        c.runs.append(throughput(setup, c.path, c.qos, args.messages, f"{c.path}-{c.qos}-{n}"))
                        topic = f"citystream-bench/rtt/{c.path.replace('+', '-')}-{c.qos}-{n}"
                        c.latencies.append(_run(round_trips(setup.urls[c.path], topic, c.qos, args.round_trips,
                                                            c.path.endswith("+deflate"), setup.user, setup.password)))
                        print(f"  {c.path:<14} QoS {c.qos} run {n + 1}: {c.runs[-1].msg_per_s:,.0f} msg/s, "
                              f"RTT p50 {1000 * statistics.median(c.latencies[-1]):.3f} ms", flush=True)
                with psycopg.connect(pg.dsn) as conn:
                    machine = machine_info(conn)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = summarize(configs)
    print()
    print_table(rows)
    mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False).stdout
    report = {
        "benchmark": "mqtt_websocket",
        "settings": {"messages": args.messages, "round_trips": args.round_trips, "repeat": args.repeat,
                     "payload_bytes": len(PAYLOAD), "qos1_window": WINDOW},
        "machine": {**machine, "mosquitto": mosquitto.splitlines()[0] if mosquitto else None,
                    "uvicorn": version("uvicorn"), "websockets": version("websockets"),
                    "uvloop": version("uvloop")},
        "rows": rows,
    }
    print(f"\nreport: {write_report('mqtt_websocket', report)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000, help="messages per throughput run (50,000)")
    parser.add_argument("--round-trips", type=int, default=2_000, help="round trips per latency run (2,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per path and QoS; medians (3)")
    parser.add_argument("--qos", type=int, nargs="+", choices=(0, 1), default=[0, 1], help="QoS levels (0 1)")
    # internal: one client process
    parser.add_argument("--worker", choices=("subscribe", "publish"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--deflate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        role = subscriber if args.worker == "subscribe" else publisher
        user, password = os.environ["BENCH_MQTT_USER"], os.environ["BENCH_MQTT_PASSWORD"]
        _run(role(args.url, args.topic, args.qos[0], args.messages, args.deflate, user, password))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
