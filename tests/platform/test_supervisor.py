"""`citystream up` as a supervisor: real subprocesses, real crashes (SIGSEGV, SIGKILL), real restarts.

A crash of one part must never take down the others: the API dying leaves PostgreSQL and Mosquitto (and
their pids) alone, a dead Mosquitto is started again and the bridge reconnects, and a SIGKILLed supervisor
leaves nothing behind.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from citystream.embedded import find_free_port
from tests.mqtt_helpers import wait_for
from tests.platform.test_embedded_cli import (
    _assert_all_gone,
    _service_pids,
    _sigterm,
    _start_up,
    _wait_ready,
)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Mode 0755: as root the postgres/mosquitto accounts must reach it."""
    root = Path(tempfile.mkdtemp(prefix="cs-supervisor-", dir="/var/tmp"))
    root.chmod(0o755)
    yield root / "data"
    shutil.rmtree(root, ignore_errors=True)


def _children(parent: int) -> dict[int, str]:
    """pid -> command line of the live children of `parent`."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if int(stat[1]) == parent and stat[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def _child(parent: int, marker: str) -> int:
    pids = [pid for pid, cmdline in _children(parent).items() if marker in cmdline]
    assert len(pids) == 1, _children(parent)
    return pids[0]


def _service_pid(data_dir: Path) -> tuple[int, int]:
    """(postmaster, mosquitto) pids, from their pid files."""
    postmaster = int((data_dir / "postgres" / "pgdata" / "postmaster.pid").read_text().splitlines()[0])
    return postmaster, int((data_dir / "mosquitto" / "mosquitto.pid").read_text())


def _records(log: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _supervisor_says(log: Path, fragment: str) -> dict[str, object] | None:
    for record in _records(log):
        if record["logger"] == "citystream.supervisor" and fragment in str(record["message"]):
            return record
    return None


@dataclass
class Platform:
    """A running `citystream up` (its supervisor's process) and where to reach it."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    log: Path
    http_port: int
    mqtt_port: int

    @property
    def sta(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1.1"

    @property
    def admin(self) -> dict[str, str]:
        """The admin key `up` made on its first start (DATA_DIR/keys/admin-key)."""
        return {"Authorization": f"Bearer {(self.data_dir / 'keys' / 'admin-key').read_text().strip()}"}


@pytest.fixture
def platform(data_dir: Path, tmp_path: Path) -> Iterator[Platform]:
    """`citystream up` in the data directory, ready; stopped by SIGTERM afterwards, which must exit 0."""
    http_port, mqtt_port = find_free_port(), find_free_port()
    log = tmp_path / "up.log"
    proc = _start_up(data_dir, http_port, mqtt_port, log)
    try:
        _wait_ready(f"http://127.0.0.1:{http_port}/v1.1", proc, log)
        yield Platform(proc, data_dir, log, http_port, mqtt_port)
    finally:
        rc = _sigterm(proc, log)
    assert rc == 0, log.read_text()[-4000:]


def test_a_crashed_api_is_restarted_and_nothing_else_moves(platform: Platform) -> None:
    proc, data_dir, log, sta = platform.proc, platform.data_dir, platform.log, platform.sta
    http_port = platform.http_port
    created = httpx.post(f"{sta}/Things", json={"name": "kept", "description": "across a crash"},
                         headers=platform.admin, timeout=10)
    assert created.status_code == 201, created.text
    services = _service_pid(data_dir)
    api = _child(proc.pid, "serve --supervised")
    # The URLs carry passwords: in the child's environment, never in its argv.
    password = (data_dir / "postgres" / "password").read_text().strip()
    assert password not in Path(f"/proc/{api}/cmdline").read_text()
    assert password in Path(f"/proc/{api}/environ").read_bytes().decode()

    started = time.monotonic()
    subprocess.run(["kill", "-SEGV", str(api)], check=True)
    wait_for(lambda: _supervisor_says(log, f"API process {api} died from SIGSEGV"), timeout=10,
             what="the supervisor to log the crash")
    _wait_ready(f"http://127.0.0.1:{http_port}/health", proc, log, timeout=20, announced=False)
    assert time.monotonic() - started < 15
    assert _child(proc.pid, "serve --supervised") != api
    assert _service_pid(data_dir) == services  # PostgreSQL and Mosquitto kept running
    again = httpx.get(created.headers["location"], timeout=10)
    assert again.status_code == 200 and again.json()["name"] == "kept"
    crash = _supervisor_says(log, "died from SIGSEGV")
    assert crash is not None and crash["signal"] == "SIGSEGV" and crash["child_pid"] == api
    assert crash["level"] == "ERROR" and "restarting in 1 s" in str(crash["message"])
    text = log.read_text()
    assert "Fatal Python error: Segmentation fault" in text  # faulthandler: the Python stack on stderr
    assert "in cmd_serve" in text
    wait_for(lambda: _supervisor_says(log, "is ready again"), timeout=5, what="the supervisor to see it ready")


def _publish(data_dir: Path, mqtt_port: int, topic: str, payload: bytes, user: str = "sensor",
             password: str | None = None) -> None:
    """mosquitto_pub, as the sensor account by default; another user is judged by the API (the broker's
    plugin asks it at /internal/mqtt)."""
    if password is None:
        password = (data_dir / "mosquitto" / "sensor-password").read_text().strip()
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mqtt_port), "-V", "mqttv5", "-q", "1",
                    "-u", user, "-P", password, "-t", topic, "-s"], input=payload, check=True, timeout=30)


def test_a_killed_mosquitto_is_restarted_and_the_bridge_reconnects(platform: Platform) -> None:
    proc, data_dir, log, sta = platform.proc, platform.data_dir, platform.log, platform.sta
    mqtt_port = platform.mqtt_port
    thing = {"name": "t", "description": "d", "Locations": [{
        "name": "l", "description": "d", "encodingType": "application/geo+json",
        "location": {"type": "Point", "coordinates": [9.99, 53.55]}}], "Datastreams": [{
        "name": "ds", "description": "d", "observationType": "http://www.opengis.net/def/observationType/"
        "OGC-OM/2.0/OM_Measurement", "unitOfMeasurement": {"name": "degree", "symbol": "°C", "definition": "x"},
        "Sensor": {"name": "s", "description": "d", "encodingType": "text/plain", "metadata": "m"},
        "ObservedProperty": {"name": "p", "description": "d", "definition": "x"}}]}
    assert httpx.post(f"{sta}/Things", json=thing, headers=platform.admin, timeout=10).status_code == 201
    datastream = httpx.get(f"{sta}/Datastreams", timeout=10).json()["value"][0]["@iot.id"]
    postmaster, mosquitto = _service_pid(data_dir)
    api = _child(proc.pid, "serve --supervised")

    subprocess.run(["kill", "-KILL", str(mosquitto)], check=True)
    wait_for(lambda: _supervisor_says(log, f"Mosquitto process {mosquitto} died from SIGKILL"), timeout=10,
             what="the supervisor to log the dead broker")
    wait_for(lambda: _supervisor_says(log, "restarted Mosquitto"), timeout=20, what="Mosquitto to restart")
    assert _service_pid(data_dir)[0] == postmaster
    assert _service_pid(data_dir)[1] != mosquitto
    assert _child(proc.pid, "serve --supervised") == api  # the API kept running
    wait_for(lambda: "reconnected to the MQTT broker" in log.read_text(), timeout=40,
             what="the bridge to reconnect")

    def stored() -> bool:
        _publish(data_dir, mqtt_port, f"v1.1/Datastreams({datastream})/Observations", b'{"result": 21.5}')
        found = httpx.get(f"{sta}/Datastreams({datastream})/Observations", timeout=10).json()["value"]
        return any(o["result"] == 21.5 for o in found)

    wait_for(stored, timeout=30, what="an observation published after the restart to be stored")

    # The restarted broker's plugin still reaches the API, with the decision secret rewritten at its start:
    # the admin key (as the password) logs in and creates.
    key = (data_dir / "keys" / "admin-key").read_text().strip()

    def stored_with_the_key() -> bool:
        _publish(data_dir, mqtt_port, f"v1.1/Datastreams({datastream})/Observations", b'{"result": 22.5}',
                 user="admin", password=key)
        found = httpx.get(f"{sta}/Datastreams({datastream})/Observations", timeout=10).json()["value"]
        return any(o["result"] == 22.5 for o in found)

    wait_for(stored_with_the_key, timeout=30, what="an observation published with the admin key to be stored")


def test_a_killed_postgresql_is_restarted_and_the_api_reconnects(platform: Platform) -> None:
    """The postmaster dies by SIGKILL: its backends are let go first (two sets of server processes on one
    data directory would corrupt it), a new one starts on the same data, the API's pool reconnects."""
    proc, data_dir, log, sta = platform.proc, platform.data_dir, platform.log, platform.sta
    created = httpx.post(f"{sta}/Things", json={"name": "durable", "description": "d"}, headers=platform.admin,
                         timeout=10)
    assert created.status_code == 201, created.text
    postmaster, mosquitto = _service_pid(data_dir)
    api = _child(proc.pid, "serve --supervised")

    subprocess.run(["kill", "-KILL", str(postmaster)], check=True)
    wait_for(lambda: _supervisor_says(log, f"PostgreSQL process {postmaster} died from SIGKILL"), timeout=10,
             what="the supervisor to log the dead postmaster")
    wait_for(lambda: _supervisor_says(log, "restarted PostgreSQL"), timeout=60, what="PostgreSQL to restart")
    assert _service_pid(data_dir)[0] != postmaster
    assert _service_pid(data_dir)[1] == mosquitto and _child(proc.pid, "serve --supervised") == api
    # A pooled connection to the dead server fails once; the pool replaces it.
    wait_for(lambda: httpx.post(f"{sta}/Things", json={"name": "after", "description": "d"},
                                headers=platform.admin, timeout=10).status_code == 201,
             timeout=30, what="a write after the restart")
    assert httpx.get(created.headers["location"], timeout=10).json()["name"] == "durable"


def test_sigterm_stops_demo_api_mosquitto_postgresql_in_that_order(data_dir: Path, tmp_path: Path) -> None:
    http_port = find_free_port()
    log = tmp_path / "up.log"
    proc = _start_up(data_dir, http_port, find_free_port(), log, "--demo", "--demo-speed", "3600")
    _wait_ready(f"http://127.0.0.1:{http_port}/v1.1", proc, log)
    wait_for(lambda: "citystream demo:" in log.read_text(), timeout=60, what="the demo to publish")
    api, demo = _child(proc.pid, "serve --supervised"), _child(proc.pid, " demo --url")
    pids = _service_pids(data_dir, proc.pid) | set(_children(proc.pid))
    assert _sigterm(proc, log) == 0, log.read_text()[-4000:]
    _assert_all_gone(pids)
    messages = [str(r["message"]) for r in _records(log)
                if r["logger"] in ("citystream.supervisor", "citystream.cli") and r["pid"] == proc.pid]
    order = [f"stopping demo process {demo}", f"stopping API process {api}", f"API process {api} exited with code 0",
             "stopping Mosquitto", "stopping PostgreSQL", "stopped"]
    positions = [messages.index(m) for m in order]
    assert positions == sorted(positions), messages
    assert log.read_text().count("CityStream is up:") == 1
    assert not any("died" in m or "restart" in m for m in messages), messages


def test_a_sigkilled_supervisor_leaves_no_process_behind(data_dir: Path, tmp_path: Path) -> None:
    http_port = find_free_port()
    log = tmp_path / "up.log"
    proc = _start_up(data_dir, http_port, find_free_port(), log, "--demo")
    _wait_ready(f"http://127.0.0.1:{http_port}/v1.1", proc, log)
    # PostgreSQL, Mosquitto, the API and the demo (started right after the API is ready)
    wait_for(lambda: len(_children(proc.pid)) == 4, timeout=10, what="four children")
    pids = _service_pids(data_dir, proc.pid) | set(_children(proc.pid))
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.2)
    _assert_all_gone(pids)
