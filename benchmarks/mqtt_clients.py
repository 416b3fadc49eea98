"""MQTT client benchmark: how fast one Python subscriber receives 150-byte Observations from Mosquitto.

    .venv/bin/python benchmarks/mqtt_clients.py [--messages 200000 | --seconds S] [--repeat 3]

Starts a private Mosquitto (temporary directory, free loopback port, per-client queues unlimited so the
broker drops nothing) and, for QoS 0 and QoS 1, measures one subscriber at a time, each in its own process:

  mosquitto_sub  the ceiling the ratios refer to: Mosquitto's C client, writing one receive timestamp per
                 message (-F %U) to a file. Not a hard ceiling: libmosquitto reads each packet with four
                 read() calls plus a select, and mosquitto_sub write()s every line
  raw-socket     the broker's delivery rate: MQTT 3.1.1 on a plain socket, 256 KiB reads, PUBLISH headers
                 walked and counted, a read's PUBACKs sent in one write; no client library at all
  paho           paho-mqtt 2 (callback API v2, MQTT 5, loop_forever); QoS 1: manual_ack=True and
                 client.ack() of every message in on_message, as a bridge acknowledging after processing
  gmqtt          gmqtt (asyncio, MQTT 5); QoS 1: optimistic_acknowledgement=False and an async on_message
                 returning 0, so the PUBACK goes out when the handler has finished (ack after commit)
  gmqtt-uvloop   the same on uvloop (installed with uvicorn[standard])

The Python subscribers only count (no JSON parsing), so the figure is the client library's receive cost.
paho and gmqtt announce Receive Maximum 16384 and the broker's max_inflight_messages (the window for MQTT
3.1.1 clients) is 16384, so the broker's QoS 1 in-flight window is not the limit.

Per measurement: the subscriber connects and subscribes (the Python ones report their SUBACK, for
mosquitto_sub the broker's subscribe log line is the signal), then C `mosquitto_pub -l` processes publish
the N messages at the same QoS from files (paho publishers manage only ~28k QoS 0 / ~8k QoS 1 msg/s each,
several times less than mosquitto_pub, so they could not keep a subscriber saturated). The rate is
(received - 1) / (last receive - first receive), taken at the subscriber; messages that never arrive are
reported as lost. Each configuration gets one warm-up run, then --repeat runs, interleaved; the table
shows medians, their ratios to mosquitto_sub and raw-socket for the same QoS, the subscriber's CPU time
per message (user + sys; depends less on the rest of the machine than msg/s), its CPU time as a share of
one core over the receive span, and the broker's share over the publish-to-done window. Broker,
publishers and subscriber share the machine's cores, so on a small machine every rate is partly a CPU
contention figure. Prints a table and writes benchmarks/results/mqtt_clients-<timestamp>.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import queue
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from harness import write_report

from citystream.embedded import find_free_port

HOST = "127.0.0.1"
PAYLOAD_BYTES = 150
RECEIVE_MAXIMUM = 16384
# mosquitto_pub 2.0.11 -l at QoS 1 stops after the PUBACK whose packet id equals the last message's id, and
# packet ids wrap at 65535: one process per at most CHUNK lines keeps every message.
CHUNK = 50_000
PUBLISHER_INFLIGHT = 1000  # mosquitto_pub -M (its default, 20, publishes QoS 1 noticeably slower)
WARMUP_MESSAGES = 20_000
IDLE_SECONDS = 3.0  # a subscriber that received nothing for this long after its first message stops (loss)
READY_TIMEOUT = 30.0
CEILING, RAW = "mosquitto_sub", "raw-socket"
CLIENTS = (CEILING, RAW, "paho", "gmqtt", "gmqtt-uvloop")
WORKERS = (RAW, "paho", "gmqtt", "gmqtt-uvloop")
EXITED = "<mosquitto exited>"


def observation(i: int) -> str:
    """The i-th test message: an Observation as a sensor would publish it, padded to exactly 150 bytes."""
    obs: dict[str, Any] = {
        "result": round(15 + (i % 200) / 10, 1),
        "phenomenonTime": f"2026-11-22T{8 + i // 3600 % 12:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
        "Datastream": {"@iot.id": 1 + i % 3000},
        "parameters": {"seq": i, "pad": ""},
    }
    obs["parameters"]["pad"] = "x" * (PAYLOAD_BYTES - len(json.dumps(obs, separators=(",", ":"))))
    text = json.dumps(obs, separators=(",", ":"))
    assert len(text) == PAYLOAD_BYTES, text
    return text


# --------------------------------------------------------------------------------------------- subscribers
# Each runs as `mqtt_clients.py --worker NAME ...` in a process of its own and stops after --messages
# messages, or IDLE_SECONDS after the last one when some never come. Protocol on stdout: the line READY once
# the SUBACK granted the QoS, then one JSON line with the count, the receive span and the CPU time.


@dataclass
class Receiver:
    """What a worker's message handler updates (perf_counter times of the first and the last message)."""

    received: int = 0
    first: float = 0.0
    last: float = 0.0
    cpu_at_ready: float = 0.0

    def ready(self) -> None:
        self.cpu_at_ready = _cpu_seconds()
        print("READY", flush=True)

    def idle(self, seconds: float) -> bool:
        return self.received > 0 and time.perf_counter() - self.last > seconds

    def report(self) -> None:
        print(json.dumps({"received": self.received, "seconds": self.last - self.first,
                          "cpu_seconds": _cpu_seconds() - self.cpu_at_ready}), flush=True)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def paho_worker(port: int, topic: str, qos: int, count: int, client_id: str, idle: float) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5,
                         manual_ack=qos > 0)
    rx = Receiver()
    errors: list[str] = []
    ack = qos > 0
    perf_counter = time.perf_counter

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            errors.append(f"CONNACK {reason_code}")
            client.disconnect()
        else:
            client.subscribe(topic, qos=qos)

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[Any], properties: Any) -> None:
        if reason_codes[0].is_failure or reason_codes[0].value != qos:
            errors.append(f"SUBACK {reason_codes[0]}")
            client.disconnect()
        else:
            rx.ready()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        now = perf_counter()
        if not rx.received:
            rx.first = now
        rx.last = now
        rx.received += 1
        if ack:
            client.ack(message.mid, message.qos)
        if rx.received == count:
            client.disconnect()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    properties = Properties(PacketTypes.CONNECT)
    properties.ReceiveMaximum = RECEIVE_MAXIMUM
    client.connect(HOST, port, keepalive=60, clean_start=True, properties=properties)

    def watchdog() -> None:
        while not rx.idle(idle):
            time.sleep(0.1)
        client.disconnect()

    threading.Thread(target=watchdog, daemon=True).start()
    client.loop_forever()
    if errors:
        print("; ".join(errors), file=sys.stderr)
        return 1
    rx.report()
    return 0


async def gmqtt_worker(port: int, topic: str, qos: int, count: int, client_id: str, idle: float) -> int:
    import gmqtt
    from gmqtt.mqtt.constants import MQTTv50

    # QoS 1: optimistic_acknowledgement=False + an async on_message -> gmqtt sends the PUBACK (with the
    # handler's return value as reason code) from the handler task's done-callback, i.e. after the handler.
    client = gmqtt.Client(client_id, clean_session=True, optimistic_acknowledgement=qos == 0,
                          receive_maximum=RECEIVE_MAXIMUM)
    rx = Receiver()
    done = asyncio.Event()
    subscribed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    perf_counter = time.perf_counter

    def on_subscribe(client: Any, mid: int, granted: tuple[int, ...], properties: Any) -> None:
        if not subscribed.done():
            subscribed.set_result(granted[0])

    def receive() -> None:
        now = perf_counter()
        if not rx.received:
            rx.first = now
        rx.last = now
        rx.received += 1
        if rx.received == count:
            done.set()

    async def on_message_async(client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        receive()
        return 0

    def on_message_sync(client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        receive()
        return 0

    client.on_subscribe = on_subscribe
    client.on_message = on_message_async if qos > 0 else on_message_sync
    await client.connect(HOST, port, keepalive=60, version=MQTTv50)
    client.subscribe(topic, qos=qos)
    granted = await asyncio.wait_for(subscribed, READY_TIMEOUT)
    if granted != qos:
        print(f"SUBACK granted {granted}", file=sys.stderr)
        await client.disconnect()
        return 1
    rx.ready()
    while not done.is_set() and not rx.idle(idle):
        try:
            await asyncio.wait_for(done.wait(), 0.1)
        except TimeoutError:
            pass
    for _ in range(3):  # let the last handler's done-callback put its PUBACK on the wire
        await asyncio.sleep(0)
    await client.disconnect()
    rx.report()
    return 0


def raw_worker(port: int, topic: str, qos: int, count: int, client_id: str, idle: float) -> int:
    """The broker's delivery rate: MQTT 3.1.1 on a plain socket, 256 KiB reads, PUBLISH headers walked and
    counted (payloads untouched), QoS 1 PUBACKs of one read sent together."""
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid  # clean session, keepalive 60
    sock.sendall(bytes([0x10]) + _varint(len(body)) + body)
    if _recv_exactly(sock, 4) != b"\x20\x02\x00\x00":
        print("CONNACK refused", file=sys.stderr)
        return 1
    filt = topic.encode()
    body = b"\x00\x01" + len(filt).to_bytes(2, "big") + filt + bytes([qos])
    sock.sendall(bytes([0x82]) + _varint(len(body)) + body)
    if _recv_exactly(sock, 5) != bytes([0x90, 0x03, 0x00, 0x01, qos]):
        print("SUBACK refused", file=sys.stderr)
        return 1
    rx = Receiver()
    rx.ready()
    sock.settimeout(0.1)
    buf = b""
    perf_counter = time.perf_counter
    while rx.received < count and not rx.idle(idle):
        try:
            chunk = sock.recv(1 << 18)
        except TimeoutError:
            continue
        if not chunk:
            break
        now = perf_counter()
        buf = buf + chunk if buf else chunk
        pos, end, acks, before = 0, len(buf), [], rx.received
        while pos + 2 <= end:
            header = buf[pos]
            length, shift, i = 0, 0, pos + 1
            while i < end:
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            else:
                break
            if i + length > end:
                break
            if header >> 4 == 3:
                rx.received += 1
                if header & 0x06:
                    id_at = i + 2 + int.from_bytes(buf[i:i + 2], "big")
                    acks.append(b"\x40\x02" + buf[id_at:id_at + 2])
            pos = i + length
        buf = buf[pos:]
        if acks:
            sock.sendall(b"".join(acks))
        if rx.received > before:
            if not before:
                rx.first = now
            rx.last = now
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    rx.report()
    return 0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


# ------------------------------------------------------------------------------------------------- broker


class Broker:
    """A private Mosquitto on a free loopback port with a minimal config; its log (stderr) is kept in memory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = find_free_port(HOST)
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.conf = workdir / "mosquitto.conf"
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        return "\n".join([
            f"listener {self.port} {HOST}",
            "allow_anonymous true",
            "persistence false",
            # No per-client queue limit (0 = none): QoS 1 messages beyond the in-flight window, and QoS 0
            # messages for a subscriber that falls behind (which Mosquitto drops once max_queued_messages,
            # default 1000, are pending), all wait in the broker instead of being dropped.
            "max_queued_messages 0",
            "max_queued_bytes 0",
            # Outgoing QoS 1 window for MQTT 3.1.1 clients (mosquitto_sub); MQTT 5 clients' Receive Maximum wins.
            f"max_inflight_messages {RECEIVE_MAXIMUM}",
            "max_inflight_bytes 0",
            "log_dest stderr",  # unbuffered, unlike stdout into a pipe
            "log_type error",
            "log_type warning",
            "log_type information",
            "log_type notice",
            "log_type subscribe",
            "",
        ])

    def __enter__(self) -> Broker:
        self.conf.write_text(self.config())
        self._proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        threading.Thread(target=self._read_log, args=(self._proc,), daemon=True).start()
        self.wait_for_log(lambda line: line.endswith(" running") or line == EXITED, 15, "about running")
        if self._proc.poll() is not None or EXITED in self.lines:
            raise RuntimeError("mosquitto did not start:\n" + "\n".join(self.lines))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def _read_log(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append(EXITED)
            self._changed.notify_all()

    def wait_for_log(self, match: Callable[[str], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                if any(match(line) for line in self.lines[seen:]):
                    return
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"mosquitto log: nothing {what} within {timeout:.0f} s; last lines:\n"
                                       + "\n".join(self.lines[-10:]))
                self._changed.wait(remaining)

    def cpu_seconds(self) -> float:
        """The broker's user + sys CPU time so far (from /proc; 0 where there is none)."""
        try:
            fields = Path(f"/proc/{self._proc.pid if self._proc else 0}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_for_subscription(self, client_id: str, qos: int, topic: str, timeout: float) -> None:
        """Mosquitto logs "<client id> <qos> <filter>" while handling the SUBSCRIBE, before any other packet."""
        self.wait_for_log(lambda line: line.endswith(f": {client_id} {qos} {topic}"), timeout,
                          f"about {client_id} subscribing")


# ---------------------------------------------------------------------------------------------- publishing


class Payloads:
    """Files of N messages split into mosquitto_pub -l inputs of at most CHUNK lines, cached per N."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._cache: dict[int, list[Path]] = {}

    def files(self, n: int) -> list[Path]:
        if n not in self._cache:
            chunks = math.ceil(n / CHUNK)
            bounds = [n * k // chunks for k in range(chunks + 1)]
            paths = []
            for k in range(chunks):
                path = self.workdir / f"payload-{n}-{k}.txt"
                path.write_text("".join(observation(i) + "\n" for i in range(bounds[k], bounds[k + 1])))
                paths.append(path)
            self._cache[n] = paths
        return self._cache[n]


def publish(port: int, topic: str, qos: int, files: list[Path], concurrency: int) -> float:
    """Publish every line of `files` with up to `concurrency` mosquitto_pub processes; returns the seconds."""
    pending: queue.SimpleQueue[Path] = queue.SimpleQueue()
    for path in files:
        pending.put(path)
    errors: list[str] = []
    binary = shutil.which("mosquitto_pub") or "mosquitto_pub"

    def worker() -> None:
        while True:
            try:
                path = pending.get_nowait()
            except queue.Empty:
                return
            with open(path, "rb") as stdin:
                done = subprocess.run([binary, "-h", HOST, "-p", str(port), "-t", topic, "-q", str(qos),
                                       "-M", str(PUBLISHER_INFLIGHT), "-l"], stdin=stdin,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
            if done.returncode != 0:
                errors.append(f"mosquitto_pub exited with {done.returncode}: {done.stderr.decode().strip()}")

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(min(concurrency, len(files)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------- measurements


@dataclass
class Run:
    client: str
    qos: int
    messages: int
    received: int
    seconds: float
    cpu_seconds: float
    publish_seconds: float
    broker_cpu_share: float = 0.0

    @property
    def rate(self) -> float:
        return (self.received - 1) / self.seconds if self.received > 1 and self.seconds > 0 else 0.0

    @property
    def lost(self) -> int:
        return self.messages - self.received

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "msg_per_s": round(self.rate), "lost": self.lost,
                "cpu_us_per_msg": 1e6 * self.cpu_seconds / max(self.received, 1)}


def _wait_with_rusage(proc: subprocess.Popen[Any], deadline: float, on_idle: Callable[[], bool] | None = None
                      ) -> float:
    """Reap `proc` (killing it at `deadline`); returns its CPU seconds. `on_idle` may ask it to stop."""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return float(usage.ru_utime + usage.ru_stime)
        if time.monotonic() > deadline:
            proc.kill()
        elif on_idle is not None and on_idle():
            proc.send_signal(signal.SIGINT)  # mosquitto_sub flushes its output and disconnects
            on_idle = None
        time.sleep(0.05)


def _timeout(messages: int) -> float:
    return 60 + messages / 1000  # generous: even 1,000 msg/s finishes


def run_mosquitto_sub(broker: Broker, payloads: Payloads, qos: int, messages: int, concurrency: int,
                      client_id: str, topic: str) -> Run:
    out = broker.workdir / f"{client_id}.txt"
    binary = shutil.which("mosquitto_sub") or "mosquitto_sub"
    argv = [binary, "-h", HOST, "-p", str(broker.port), "-i", client_id, "-t", topic, "-q", str(qos),
            "-C", str(messages), "-F", "%U"]  # %U: receive time, Unix seconds with nanoseconds
    files = payloads.files(messages)
    with open(out, "wb") as stdout:
        # TZ set: otherwise glibc's localtime() stats /etc/localtime twice per message for %U
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.DEVNULL,
                                env={**os.environ, "TZ": "UTC"})
    try:
        broker.wait_for_subscription(client_id, qos, topic, READY_TIMEOUT)
        broker_cpu, started = broker.cpu_seconds(), time.monotonic()
        publish_seconds = publish(broker.port, topic, qos, files, concurrency)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    size = [out.stat().st_size, time.monotonic()]

    def idle() -> bool:  # output is block-buffered: it grows every ~190 messages while messages arrive
        now_size = out.stat().st_size
        if now_size != size[0]:
            size[:] = [now_size, time.monotonic()]
        return time.monotonic() - size[1] > IDLE_SECONDS

    cpu = _wait_with_rusage(proc, time.monotonic() + _timeout(messages), idle)
    broker_share = (broker.cpu_seconds() - broker_cpu) / (time.monotonic() - started)
    stamps = [float(line) for line in out.read_text().split()]
    out.unlink()
    if proc.returncode not in (0, -signal.SIGINT, 130) and not stamps:
        raise RuntimeError(f"mosquitto_sub exited with {proc.returncode}")
    seconds = stamps[-1] - stamps[0] if stamps else 0.0
    return Run(CEILING, qos, messages, len(stamps), seconds, cpu, publish_seconds, broker_share)


def run_python(broker: Broker, payloads: Payloads, client: str, qos: int, messages: int, concurrency: int,
               client_id: str, topic: str) -> Run:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", client, "--port", str(broker.port),
            "--topic", topic, "--qos", str(qos), "--messages", str(messages), "--client-id", client_id]
    files = payloads.files(messages)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode().strip())
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        line = lines.get(timeout=READY_TIMEOUT)
        if line != "READY":
            raise RuntimeError(f"{client} worker did not subscribe: {line!r}")
        broker_cpu, started = broker.cpu_seconds(), time.monotonic()
        publish_seconds = publish(broker.port, topic, qos, files, concurrency)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    _wait_with_rusage(proc, time.monotonic() + _timeout(messages))
    broker_share = (broker.cpu_seconds() - broker_cpu) / (time.monotonic() - started)
    result = None
    while (line := lines.get(timeout=10)) is not None:
        result = json.loads(line)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"{client} worker exited with {proc.returncode}")
    return Run(client, qos, messages, result["received"], result["seconds"], result["cpu_seconds"],
               publish_seconds, broker_share)


@dataclass
class Config:
    client: str
    qos: int
    messages: int = 0
    warmup: Run | None = None
    runs: list[Run] = field(default_factory=list)


def measure(broker: Broker, payloads: Payloads, config: Config, messages: int, concurrency: int, tag: str) -> Run:
    client_id = f"bench-{config.client}-q{config.qos}-{tag}-{os.getpid()}"
    topic = f"citystream-bench/{client_id}/v1.1/Observations"
    if config.client == CEILING:
        run = run_mosquitto_sub(broker, payloads, config.qos, messages, concurrency, client_id, topic)
    else:
        run = run_python(broker, payloads, config.client, config.qos, messages, concurrency, client_id, topic)
    time.sleep(0.5)  # let the broker and the kernel settle before the next measurement
    return run


# ------------------------------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    cpu = memory = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
        memory = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except OSError:
        pass
    mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False).stdout
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "mosquitto": mosquitto.splitlines()[0] if mosquitto else None,
        "paho-mqtt": version("paho-mqtt"),
        "gmqtt": version("gmqtt"),
    }


def summarize(configs: list[Config]) -> list[dict[str, Any]]:
    def medians(client: str) -> dict[int, float]:
        return {c.qos: statistics.median(r.rate for r in c.runs) for c in configs if c.client == client}

    ceilings, raws = medians(CEILING), medians(RAW)
    rows = []
    for c in configs:
        median = statistics.median(r.rate for r in c.runs)
        rows.append({
            "client": c.client,
            "qos": c.qos,
            "messages": c.messages,
            "msg_per_s_median": round(median),
            "ratio_to_ceiling": median / ceilings[c.qos] if ceilings.get(c.qos) else None,
            "ratio_to_raw_socket": median / raws[c.qos] if raws.get(c.qos) else None,
            "cpu_us_per_msg_median": statistics.median(1e6 * r.cpu_seconds / max(r.received, 1) for r in c.runs),
            "subscriber_cpu_share_median": statistics.median(r.cpu_seconds / r.seconds if r.seconds else 0.0
                                                             for r in c.runs),
            "broker_cpu_share_median": statistics.median(r.broker_cpu_share for r in c.runs),
            "lost_total": sum(r.lost for r in c.runs),
            "runs": [r.summary() for r in c.runs],
            "warmup": c.warmup.summary() if c.warmup else None,
        })
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("client", "QoS", "msg/s (median)", f"/ {CEILING}", f"/ {RAW}", "sub CPU us/msg", "sub CPU",
              "broker CPU", "lost", "runs (msg/s)")
    lines: list[tuple[str, ...]] = [header]

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for r in rows:
        lines.append((
            r["client"], str(r["qos"]), f"{r['msg_per_s_median']:,}", ratio(r["ratio_to_ceiling"]),
            ratio(r["ratio_to_raw_socket"]), f"{r['cpu_us_per_msg_median']:.1f}",
            f"{100 * r['subscriber_cpu_share_median']:.0f}%", f"{100 * r['broker_cpu_share_median']:.0f}%",
            f"{r['lost_total']:,}", " ".join(f"{run['msg_per_s']:,}" for run in r["runs"]),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    right = set(range(1, len(header) - 1))
    for n, line in enumerate(lines):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=False))]
        print("  ".join([*cells, line[-1]]))
        if n == 0:
            print("  ".join("-" * w for w in widths) + "  " + "-" * len(header[-1]))


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="citystream-mqtt-bench-") as path:
        yield Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--messages", type=int, default=200_000, help="messages per measurement (200,000)")
    size.add_argument("--seconds", type=float,
                      help="instead size each configuration's measurements to take about this long at the "
                           "subscriber, from its warm-up rate")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per configuration; median (3)")
    parser.add_argument("--publishers", type=int, default=4,
                        help=f"concurrent mosquitto_pub processes, each at most {CHUNK:,} messages (4)")
    parser.add_argument("--qos", type=int, nargs="+", choices=(0, 1), default=[0, 1], help="QoS levels (0 1)")
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS),
                        help=f"subscribers ({' '.join(CLIENTS)})")
    # internal: one subscriber process
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--client-id", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        worker_args = (args.port, args.topic, args.qos[0], args.messages, args.client_id, IDLE_SECONDS)
        if args.worker == "paho":
            return paho_worker(*worker_args)
        if args.worker == RAW:
            return raw_worker(*worker_args)
        if args.worker == "gmqtt-uvloop":
            import uvloop

            return uvloop.run(gmqtt_worker(*worker_args))
        return asyncio.run(gmqtt_worker(*worker_args))

    if args.messages < 2 or args.repeat < 1 or args.publishers < 1 or (args.seconds is not None
                                                                        and args.seconds <= 0):
        parser.error("--messages must be at least 2, --repeat, --publishers and --seconds positive")
    if CEILING not in args.clients:
        args.clients.insert(0, CEILING)  # the ratios need it
    missing = [b for b in ("mosquitto", "mosquitto_sub", "mosquitto_pub") if shutil.which(b) is None
               and not (b == "mosquitto" and Path("/usr/sbin/mosquitto").exists())]
    if missing:
        parser.error(f"not found on PATH: {', '.join(missing)} (Debian: apt-get install mosquitto mosquitto-clients)")

    configs = [Config(client, qos) for qos in args.qos for client in CLIENTS if client in args.clients]
    machine = machine_info()
    load_before = os.getloadavg()
    started = time.monotonic()
    print(f"machine: {machine['nproc']} CPUs, {machine['memory']}, load {load_before[0]:.2f}; "
          f"{machine['mosquitto']}, paho-mqtt {machine['paho-mqtt']}, gmqtt {machine['gmqtt']}", flush=True)
    with workdir() as tmp, Broker(tmp) as broker:
        payloads = Payloads(tmp)
        print(f"mosquitto on {HOST}:{broker.port}; {PAYLOAD_BYTES}-byte messages, up to {args.publishers} "
              f"mosquitto_pub processes; 1 warm-up + {args.repeat} runs per configuration", flush=True)
        for config in configs:
            warmup_messages = min(WARMUP_MESSAGES, args.messages) if args.seconds is None else WARMUP_MESSAGES
            config.warmup = measure(broker, payloads, config, warmup_messages, args.publishers, "warmup")
            if args.seconds is None:
                config.messages = args.messages
            else:
                config.messages = max(10_000, round(config.warmup.rate * args.seconds))
            print(f"  warm-up {config.client} QoS {config.qos}: {config.warmup.rate:,.0f} msg/s"
                  + ("" if args.seconds is None else f" -> {config.messages:,} messages per run"), flush=True)
        for n in range(args.repeat):
            for config in configs:
                run = measure(broker, payloads, config, config.messages, args.publishers, f"run{n}")
                config.runs.append(run)
                print(f"  run {n + 1}/{args.repeat} {config.client} QoS {config.qos}: {run.rate:,.0f} msg/s, "
                      f"{run.received:,}/{run.messages:,} received", flush=True)
    elapsed = time.monotonic() - started
    rows = summarize(configs)
    load_after = os.getloadavg()
    print()
    print_table(rows)
    print(f"\n{elapsed:.0f} s; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
          f"(the machine is shared: compare ratios and CPU us/msg rather than msg/s across runs)")
    report = {
        "benchmark": "mqtt_clients",
        "parameters": {"messages": args.messages if args.seconds is None else None, "seconds": args.seconds,
                       "repeat": args.repeat, "publishers": args.publishers, "chunk": CHUNK,
                       "publisher_inflight": PUBLISHER_INFLIGHT, "payload_bytes": PAYLOAD_BYTES,
                       "receive_maximum": RECEIVE_MAXIMUM, "warmup_messages": WARMUP_MESSAGES,
                       "example_payload": observation(0), "broker_config": broker.config()},
        "machine": machine,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "elapsed_seconds": elapsed,
        "results": rows,
    }
    print(f"report: {write_report('mqtt_clients', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
