"""The `citystream` command end to end: real subprocesses, real PostgreSQL and Mosquitto, real signals."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from citystream.embedded import EmbeddedMosquitto, EmbeddedPostgres, find_free_port

_SCRIPT = Path(sys.executable).with_name("citystream")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "citystream.cli"]


def _env() -> dict[str, str]:
    """Our environment without CITYSTREAM_* so the embedded services are used."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CITYSTREAM_")}


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Under /tmp, mode 0755: as root the postgres/mosquitto accounts must reach it (pytest's is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="cs-cli-"))
    root.chmod(0o755)
    yield root / "data"
    shutil.rmtree(root, ignore_errors=True)


def _service_pids(data_dir: Path, exclude: int) -> set[int]:
    """Processes started for this data dir: the postmaster and mosquitto (their argv names the dir) and
    the postmaster's children; `exclude` is the citystream process itself."""
    marker = str(data_dir.absolute())
    owners: set[int] = set()
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            continue
        if state == "Z":
            continue
        parents[int(entry.name)] = ppid
        if marker in cmdline and int(entry.name) != exclude:
            owners.add(int(entry.name))
    return owners | {pid for pid, ppid in parents.items() if ppid in owners}


def _listen_addresses(port: int) -> set[str]:
    """Addresses with a TCP listener on `port` (from /proc/net/tcp{,6}, like `ss -ltn`)."""
    found: set[str] = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            rows = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, raw))
    return found


def _start_up(data_dir: Path, http_port: int, mqtt_port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                *CLI,
                "up",
                "--host",
                "127.0.0.1",
                "--http-port",
                str(http_port),
                "--mqtt-port",
                str(mqtt_port),
                "--mqtt-ws-port",
                str(find_free_port()),
                "--data-dir",
                str(data_dir),
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
        )


_BANNER = "CityStream is up:"


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90.0,
                announced: bool = True) -> None:
    """Until `url` answers 200 and, with `announced`, the process has printed its banner (after its own
    readiness check, so a client can be served a moment before it): a SIGTERM before the banner would
    leave the banner out of the log."""
    banners = log.read_text().count(_BANNER) if announced else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"citystream up exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200 and (
                    not announced or log.read_text().count(_BANNER) > banners):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} not ready after {timeout}s:\n{log.read_text()[-4000:]}")


def _sigterm(proc: subprocess.Popen[bytes], log: Path) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"citystream up ignored SIGTERM:\n{log.read_text()[-4000:]}")


def _assert_all_gone(pids: set[int]) -> None:
    deadline = time.monotonic() + 5
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if Path(f"/proc/{p}").exists() and _not_zombie(p)}
        time.sleep(0.1)
    assert not alive, f"processes left behind: {alive}"


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_help_lists_commands() -> None:
    out = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=30, env=_env())
    assert out.returncode == 0, out.stderr
    for command in ("up", "serve", "migrate"):
        assert command in out.stdout


def test_up_serves_stops_cleanly_and_keeps_data_across_restart(data_dir: Path, tmp_path: Path) -> None:
    http_port, mqtt_port = find_free_port(), find_free_port()
    base = f"http://127.0.0.1:{http_port}/v1.1"
    log = tmp_path / "up.log"

    proc = _start_up(data_dir, http_port, mqtt_port, log)
    try:
        _wait_ready(base, proc, log)
        with socket.create_connection(("127.0.0.1", mqtt_port), timeout=5):
            pass  # the embedded broker listens on --mqtt-port
        # Secure from the first start: an anonymous write is refused; the admin key `up` made writes.
        anonymous = httpx.post(f"{base}/Things", json={"name": "a", "description": "b"}, timeout=10)
        assert anonymous.status_code == 401 and "WWW-Authenticate" in anonymous.headers, anonymous.text
        admin_key = (data_dir / "keys" / "admin-key").read_text().strip()
        assert (data_dir / "keys" / "admin-key").stat().st_mode & 0o777 == 0o600
        created = httpx.post(f"{base}/Things", json={"name": "a", "description": "b"},
                             headers={"Authorization": f"Bearer {admin_key}"}, timeout=10)
        assert created.status_code == 201, created.text
        location = created.headers["location"]
        pids = _service_pids(data_dir, proc.pid)
        assert pids, "no embedded postgres/mosquitto process found"
    finally:
        rc = _sigterm(proc, log)
    assert rc == 0, log.read_text()[-4000:]
    _assert_all_gone(pids)
    # The banner names the database but never prints its password.
    password = (data_dir / "postgres" / "password").read_text().strip()
    output = log.read_text()
    assert password not in output
    assert "postgresql://citystream:***@127.0.0.1:" in output
    # The banner names the keys by id and file, never their secrets.
    admin_id = admin_key.split("_")[1]
    assert f"API key           admin cs_{admin_id}_***" in output and admin_key not in output
    assert (data_dir / "keys" / "demo-sensor-key").read_text().strip() not in output

    proc = _start_up(data_dir, http_port, mqtt_port, log)
    try:
        _wait_ready(base, proc, log)
        again = httpx.get(location, timeout=10)
        assert again.status_code == 200, again.text
        assert (data_dir / "keys" / "admin-key").read_text().strip() == admin_key  # kept, still valid
        assert httpx.patch(location, json={"name": "a"}, timeout=10,
                           headers={"Authorization": f"Bearer {admin_key}"}).status_code == 200
        assert again.json()["name"] == "a"
        assert again.json()["description"] == "b"
        pids = _service_pids(data_dir, proc.pid)
    finally:
        rc = _sigterm(proc, log)
    assert rc == 0, log.read_text()[-4000:]
    _assert_all_gone(pids)


def test_embedded_database_never_takes_the_api_port(data_dir: Path, tmp_path: Path) -> None:
    """The cluster's remembered port is the one asked for HTTP (free now: the API starts after the
    database): it takes another, and the API gets its port (a CI run once lost it this way)."""
    http_port, mqtt_port = find_free_port(), find_free_port()
    (data_dir / "postgres").mkdir(parents=True)
    (data_dir / "postgres" / "port").write_text(f"{http_port}\n")
    log = tmp_path / "up.log"
    proc = _start_up(data_dir, http_port, mqtt_port, log)
    try:
        _wait_ready(f"http://127.0.0.1:{http_port}/v1.1", proc, log)
        assert int((data_dir / "postgres" / "port").read_text()) != http_port
    finally:
        rc = _sigterm(proc, log)
    assert rc == 0, log.read_text()[-4000:]


def test_taken_http_port_is_reported_with_its_flag(data_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        out = subprocess.run(
            [*CLI, "up", "--http-port", str(port), "--mqtt-port", str(find_free_port()), "--mqtt-ws-port",
             str(find_free_port()), "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
            stdin=subprocess.DEVNULL,
        )
    assert out.returncode != 0
    assert "--http-port" in out.stderr and str(port) in out.stderr, out.stderr
    assert not (data_dir / "postgres" / "pgdata").exists(), "nothing may start when a port is taken"


def _migrate(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "migrate", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )


def test_migrate_is_idempotent(data_dir: Path) -> None:
    first = _migrate(data_dir)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "applied migration" in first.stdout
    second = _migrate(data_dir)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "up to date" in second.stdout
    assert "applied migration" not in second.stdout
    _assert_all_gone(_service_pids(data_dir, os.getpid()))


def _run_with_external_services(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([*CLI, *command], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={**_env(), **env})


def test_up_demo_shows_data_flowing_within_seconds(data_dir: Path, tmp_path: Path) -> None:
    """The quickstart's promise: `up --demo` creates the city and its observations arrive over MQTT."""
    http_port = find_free_port()
    log = tmp_path / "up-demo.log"
    proc = _start_up(data_dir, http_port, find_free_port(), log, "--demo", "--demo-speed", "3600")
    sta = f"http://127.0.0.1:{http_port}/v1.1"
    try:
        _wait_ready(sta, proc, log)
        root = httpx.get(sta, timeout=10).json()
        assert any("create-observations-via-mqtt" in c for c in root["serverSettings"]["conformance"])
        deadline = time.monotonic() + 60
        stored = 0
        while time.monotonic() < deadline and stored < 100:
            stored = httpx.get(f"{sta}/Observations", params={"$count": "true", "$top": "0"},
                               timeout=10).json()["@iot.count"]
            time.sleep(0.5)
        assert stored >= 100, log.read_text()[-4000:]
        things = httpx.get(f"{sta}/Things", params={"$count": "true", "$top": "0"}, timeout=10).json()
        assert things["@iot.count"] == 30
        assert "citystream demo:" in log.read_text()
    finally:
        assert _sigterm(proc, log) == 0, log.read_text()[-4000:]


def test_up_uses_external_database_and_broker_and_starts_neither(
    data_dir: Path, tmp_path: Path, database_url: str, mosquitto_server: EmbeddedMosquitto
) -> None:
    http_port = find_free_port()
    log = tmp_path / "up-external.log"
    broker_url = mosquitto_server.platform_url
    # Notifications only: a second ingesting bridge would join the test app's shared subscription.
    proc = _run_with_external_services(
        ["up", "--http-port", str(http_port), "--data-dir", str(data_dir)],
        {"CITYSTREAM_DATABASE_URL": database_url, "CITYSTREAM_MQTT_URL": broker_url,
         "CITYSTREAM_MQTT_CLIENT_ID": "cli-test", "CITYSTREAM_MQTT_INGEST": "false"}, log)
    _wait_ready(f"http://127.0.0.1:{http_port}/v1.1", proc, log)
    assert _service_pids(data_dir, exclude=proc.pid) == set()
    assert not (data_dir / "postgres").exists() and not (data_dir / "mosquitto").exists()
    assert _sigterm(proc, log) == 0, log.read_text()
    shown = log.read_text()
    assert mosquitto_server.platform_password not in shown  # the URL is printed with its password masked
    assert f"citystream:***@127.0.0.1:{mosquitto_server.port}" in shown


def test_serve_runs_the_http_api_only(tmp_path: Path, database_url: str) -> None:
    http_port = find_free_port()
    log = tmp_path / "serve.log"
    proc = _run_with_external_services(["serve", "--http-port", str(http_port)],
                                       {"CITYSTREAM_DATABASE_URL": database_url}, log)
    _wait_ready(f"http://127.0.0.1:{http_port}/v1.1", proc, log)
    assert httpx.get(f"http://127.0.0.1:{http_port}/health").json()["status"] == "ok"
    assert _sigterm(proc, log) == 0, log.read_text()


def test_serve_without_database_url_says_what_is_missing(tmp_path: Path) -> None:
    result = subprocess.run([*CLI, "serve"], env=_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "CITYSTREAM_DATABASE_URL" in result.stdout + result.stderr


def test_embedded_postgres_requires_its_password(
    postgres_server: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new cluster has a random password in a 0600 file of ours; TCP without it is refused."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    info = os.stat(postgres_server.password_file)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()
    password = postgres_server.password_file.read_text().strip()
    assert len(password) >= 32
    assert "trust" not in "".join(
        line for line in (postgres_server.pgdata / "pg_hba.conf").read_text().splitlines() if not line.startswith("#")
    )

    with psycopg.connect(postgres_server.dsn, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("citystream",)
    assert "***" in postgres_server.masked_dsn and password not in postgres_server.masked_dsn

    port = postgres_server.port
    for dsn in (
        f"postgresql://citystream@127.0.0.1:{port}/citystream",
        f"postgresql://citystream:wrong@127.0.0.1:{port}/citystream",
        f"postgresql://postgres@127.0.0.1:{port}/postgres",
    ):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(dsn, connect_timeout=5, passfile=os.devnull).close()


def test_exposed_http_keeps_the_anonymous_broker_on_loopback(
    data_dir: Path, tmp_path: Path, database_url: str
) -> None:
    """`up --host 0.0.0.0` exposes the API, but the embedded Mosquitto stays on 127.0.0.1."""
    http_port, mqtt_port = find_free_port("0.0.0.0"), find_free_port()
    log = tmp_path / "up-exposed.log"
    proc = _run_with_external_services(
        ["up", "--host", "0.0.0.0", "--http-port", str(http_port), "--mqtt-port", str(mqtt_port),
         "--mqtt-ws-port", str(find_free_port()), "--data-dir", str(data_dir)],
        {"CITYSTREAM_DATABASE_URL": database_url}, log)
    try:
        _wait_ready(f"http://127.0.0.1:{http_port}/v1.1", proc, log)
        assert _listen_addresses(http_port) == {"0.0.0.0"}
        assert _listen_addresses(mqtt_port) == {"127.0.0.1"}
        conf = (data_dir / "mosquitto" / "mosquitto.conf").read_text()
        assert f"listener {mqtt_port} 127.0.0.1" in conf.splitlines()
    finally:
        rc = _sigterm(proc, log)
    assert rc == 0, log.read_text()[-4000:]
