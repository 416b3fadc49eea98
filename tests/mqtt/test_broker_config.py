"""The generated Mosquitto set-up: accounts, ACL, listeners and $SYS log topics. What needs no broker (the
deploy/ copies are the rendered files, settings and flags) is in tests/unit/test_broker_config_rendering.py.

Everything runs against a real Mosquitto; publishers and most checks are the real command-line clients
(mosquitto_pub/mosquitto_sub) or paho-mqtt, as sensors and apps would use them. "Nothing arrives" is checked
with a platform-account subscriber on `#` that would see the message if the broker had accepted it.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from citystream.cli import _broker
from citystream.embedded import (
    DEPLOY_MOSQUITTO_DIR,
    PLATFORM_MQTT_USER,
    EmbeddedMosquitto,
    EmbeddedServiceError,
    auth_plugin_library,
    find_free_port,
    find_mosquitto,
    render_mosquitto_acl,
    render_mosquitto_conf,
)
from citystream.settings import Settings

QUIET = 1.0  # how long "nothing arrives" is watched for


def make_service_dir(prefix: str) -> Path:
    """A temp dir the mosquitto account can traverse when we run as root (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None or shutil.which("mosquitto_sub") is None,
    reason="mosquitto-clients (mosquitto_pub, mosquitto_sub) not installed",
)


# ------------------------------------------------------------------------------------------ clients


class Client:
    """A paho MQTT 5 client that records every message it receives."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        transport: str = "tcp",
        client_id: str | None = None,
        clean_start: bool = True,
    ) -> None:
        self.client_id = client_id or f"test-{uuid.uuid4().hex[:12]}"
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._connack: queue.Queue[Any] = queue.Queue()
        self._acks: queue.Queue[int] = queue.Queue()
        self.mqtt = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            transport=transport,  # type: ignore[arg-type]
        )
        if username is not None:
            self.mqtt.username_pw_set(username, password)
        self.mqtt.reconnect_delay_set(min_delay=0.05, max_delay=0.05)  # type: ignore[arg-type]  # quick close
        self.mqtt.on_connect = lambda _c, _u, _f, reason, _p: self._connack.put(reason)
        self.mqtt.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, bytes(msg.payload)))
        self.mqtt.on_subscribe = lambda _c, _u, mid, _r, _p: self._acks.put(mid)
        self.mqtt.on_unsubscribe = lambda _c, _u, mid, _r, _p: self._acks.put(mid)
        self.mqtt.connect(host, port, keepalive=60, clean_start=clean_start)
        self.mqtt.loop_start()
        reason = self._connack.get(timeout=10)
        if reason.is_failure:
            self.close()
            raise ConnectionRefusedError(str(reason))

    def subscribe(self, *topics: str, qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK: after this, matching messages are delivered."""
        _, mid = self.mqtt.subscribe([(topic, qos) for topic in topics])
        self._wait_ack(mid)

    def unsubscribe(self, *topics: str) -> None:
        _, mid = self.mqtt.unsubscribe(list(topics))
        self._wait_ack(mid)

    def _wait_ack(self, mid: int | None) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._acks.get(timeout=max(0.01, deadline - time.monotonic())) == mid:
                return
        raise TimeoutError(f"no ack for mid {mid}")

    def wait_for(self, match: Callable[[str, bytes], bool], timeout: float = 10.0) -> tuple[str, bytes]:
        """The first message that satisfies `match` (others are skipped), or fail after `timeout`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                topic, payload = self.messages.get(timeout=left)
            except queue.Empty:
                break
            if match(topic, payload):
                return topic, payload
        pytest.fail(f"{self.client_id}: no matching message within {timeout}s")

    def assert_nothing(self, match: Callable[[str, bytes], bool], within: float = QUIET) -> None:
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                topic, payload = self.messages.get(timeout=left)
            except queue.Empty:
                return
            assert not match(topic, payload), f"{self.client_id} unexpectedly received {topic}: {payload[:80]!r}"

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def _is(topic: str, payload: bytes) -> Callable[[str, bytes], bool]:
    return lambda t, p: t == topic and p == payload


def _token() -> bytes:
    return uuid.uuid4().hex.encode()


@pytest.fixture
def platform(mosquitto_server: EmbeddedMosquitto) -> Iterator[Client]:
    """The platform account, subscribed to everything (`#` does not match $SYS)."""
    client = Client(
        mosquitto_server.host,
        mosquitto_server.port,
        username=PLATFORM_MQTT_USER,
        password=mosquitto_server.platform_password,
    )
    client.subscribe("#")
    yield client
    client.close()


def _pub(
    broker: EmbeddedMosquitto,
    topic: str,
    payload: bytes,
    *,
    user: str | None = None,
    password: str | None = None,
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """mosquitto_pub, MQTT 5, QoS 1 (so the broker's PUBACK reason code reaches us as a warning)."""
    argv = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5", "-q", "1", "-t", topic]
    if user is not None:
        argv += ["-u", user, "-P", password or ""]
    return subprocess.run([*argv, *extra, "-s"], input=payload.decode(), capture_output=True, text=True, timeout=30)


def _sensor_pub(broker: EmbeddedMosquitto, topic: str, payload: bytes) -> subprocess.CompletedProcess[str]:
    return _pub(broker, topic, payload, user=broker.sensor_username, password=broker.sensor_password)


def _sub_argv(broker: EmbeddedMosquitto, *args: str) -> list[str]:
    return ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5", *args]


class ExternalSubscriber:
    """mosquitto_sub in debug mode: started, then waited for until its SUBACK is in.

    Its stdout is a pipe, so it is made line-buffered (stdbuf); otherwise nothing arrives before it exits.
    """

    def __init__(self, broker: EmbeddedMosquitto, *args: str) -> None:
        stdbuf = shutil.which("stdbuf")
        if stdbuf is None:
            pytest.skip("stdbuf (coreutils) not installed")
        self.proc = subprocess.Popen(
            [stdbuf, "-oL", *_sub_argv(broker, "-d", "-v", *args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("Subscribed (mid:"):
                return
        pytest.fail("mosquitto_sub exited before subscribing:\n" + "\n".join(self.lines))

    def output(self, timeout: float = 15.0) -> list[str]:
        """Everything after the SUBACK, once mosquitto_sub has exited (use -C/-W so it does)."""
        out, _ = self.proc.communicate(timeout=timeout)
        return out.splitlines()


# ------------------------------------------------------------------------------------ deploy and files


def test_generated_files_modes_and_owners(mosquitto_server: EmbeddedMosquitto) -> None:
    broker = mosquitto_server
    me = os.geteuid()
    for secret in (broker.platform_password_file, broker.sensor_password_file):
        info = os.stat(secret)
        assert stat.S_IMODE(info.st_mode) == 0o600, secret
        assert info.st_uid == me, f"{secret} must stay ours, not the broker account's"
        assert len(secret.read_text().strip()) >= 32
    for path in (broker.password_file, broker.acl_path, broker.plugin_path):
        assert stat.S_IMODE(os.stat(path).st_mode) in (0o600, 0o640), path
    if me == 0:
        import pwd

        for path in (broker.password_file, broker.plugin_path):  # the broker account reads (loads) them
            assert os.stat(path).st_uid == pwd.getpwnam("mosquitto").pw_uid, path
    hashed = broker.password_file.read_text()
    assert broker.platform_password not in hashed and broker.sensor_password not in hashed
    assert [line.split(":", 1)[0] for line in hashed.splitlines()] == [PLATFORM_MQTT_USER, broker.sensor_username]
    assert broker.acl_path.read_text() == render_mosquitto_acl()
    conf = broker.conf_path.read_text().splitlines()
    for directive in (
        f"password_file {broker.password_file}",
        f"acl_file {broker.acl_path}",
        "allow_anonymous true",
        f"plugin {broker.plugin_path}",
        "plugin_opt_bridge_client_id citystream-bridge",
        "log_dest topic",
        "log_type subscribe",
        "log_type unsubscribe",
        "persistence true",
        "max_queued_messages 1000000",
        "max_packet_size 1048576",
        f"listener {broker.port} 127.0.0.1",
        f"listener {broker.websocket_port} 127.0.0.1",
        "protocol websockets",
        "socket_domain ipv4",
    ):
        assert directive in conf, directive


def _listen_addresses(port: int) -> set[str]:
    """Addresses with a TCP listener on `port`, from /proc/net/tcp{,6}."""
    found: set[str] = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        with open(f"/proc/net/{table}") as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                address, _, hex_port = fields[1].partition(":")
                if fields[3] == "0A" and int(hex_port, 16) == port:
                    raw = bytes.fromhex(address)
                    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    found.add(socket.inet_ntop(family, raw))
    return found


def test_both_listeners_stay_on_the_given_address(mosquitto_server: EmbeddedMosquitto) -> None:
    """libwebsockets ignores the listener address without socket_domain and listens on `::`."""
    assert mosquitto_server.websocket_port is not None
    assert _listen_addresses(mosquitto_server.port) == {"127.0.0.1"}
    assert _listen_addresses(mosquitto_server.websocket_port) == {"127.0.0.1"}


# ---------------------------------------------------------------------------------------------- ACL


def test_anonymous_clients_read_v1_1_and_nothing_else(
    mosquitto_server: EmbeddedMosquitto, platform: Client
) -> None:
    broker = mosquitto_server
    reader = ExternalSubscriber(broker, "-t", "v1.1/#", "-t", "citystream/errors/#", "-C", "1", "-W", "10")
    notice, error = b"notice-" + _token(), b"error-" + _token()
    _pub(broker, "citystream/errors/v1.1/Observations", error, user=PLATFORM_MQTT_USER,
         password=broker.platform_password)
    _pub(broker, "v1.1/Things(1)", notice, user=PLATFORM_MQTT_USER, password=broker.platform_password)
    out = reader.output()
    assert f"v1.1/Things(1) {notice.decode()}" in out  # -C 1: the first message it may read is this one
    assert not any(error.decode() in line for line in out)


def test_anonymous_publish_is_not_delivered(mosquitto_server: EmbeddedMosquitto, platform: Client) -> None:
    payload = b'{"result": 1, "anonymous": "' + _token() + b'"}'
    for topic in ("v1.1/Observations", "v1.1/Datastreams(1)/Observations", "v1.1/Things"):
        result = _pub(mosquitto_server, topic, payload)
        assert "Not authorized" in result.stderr, result.stderr
    platform.assert_nothing(lambda _t, p: p == payload)


def test_sensor_creates_observations_only(mosquitto_server: EmbeddedMosquitto, platform: Client) -> None:
    broker = mosquitto_server
    for topic in ("v1.1/Observations", "v1.1/Datastreams(1)/Observations", "v1.1/FeaturesOfInterest(7)/Observations"):
        payload = b'{"result": "' + _token() + b'"}'
        result = _sensor_pub(broker, topic, payload)
        assert result.returncode == 0 and not result.stderr, result.stderr
        platform.wait_for(_is(topic, payload))
    denied = b"denied-" + _token()
    for topic in ("v1.1/Things", "v1.1/Datastreams(1)", "citystream/errors/v1.1/Observations", "other"):
        assert "Not authorized" in _sensor_pub(broker, topic, denied).stderr
    platform.assert_nothing(lambda _t, p: p == denied)


def test_sensor_reads_sta_topics_and_error_reports(mosquitto_server: EmbeddedMosquitto) -> None:
    broker = mosquitto_server
    sensor = Client(broker.host, broker.port, username=broker.sensor_username, password=broker.sensor_password)
    try:
        sensor.subscribe("v1.1/#", "citystream/errors/#", "$SYS/#", "other/#")
        sent = {
            "citystream/errors/v1.1/Datastreams(1)/Observations": b"error-" + _token(),
            "v1.1/Datastreams(1)": b"entity-" + _token(),
        }
        hidden = {"other/topic": b"other-" + _token()}
        for topic, payload in {**hidden, **sent}.items():
            _pub(broker, topic, payload, user=PLATFORM_MQTT_USER, password=broker.platform_password)
        for topic, payload in sent.items():
            sensor.wait_for(_is(topic, payload))
        sensor.assert_nothing(lambda t, _p: t.startswith(("$SYS", "other")), within=0.3)
    finally:
        sensor.close()


def test_wrong_password_is_refused(mosquitto_server: EmbeddedMosquitto) -> None:
    with pytest.raises(ConnectionRefusedError):
        Client(mosquitto_server.host, mosquitto_server.port, username=PLATFORM_MQTT_USER, password="wrong")
    with pytest.raises(ConnectionRefusedError):
        Client(mosquitto_server.host, mosquitto_server.port, username="sensor", password="")


def test_oversize_packets_are_refused_below_the_limit_delivered(
    mosquitto_server: EmbeddedMosquitto, platform: Client
) -> None:
    """max_packet_size 1 MiB: a 900 kB payload is delivered (for the bridge to judge), 1.1 MB is not."""
    broker = mosquitto_server
    sensor = Client(broker.host, broker.port, username=broker.sensor_username, password=broker.sensor_password)
    try:
        big = b"x" * 900_000 + _token()
        sensor.mqtt.publish("v1.1/Observations", big, qos=1).wait_for_publish(timeout=10)
        platform.wait_for(_is("v1.1/Observations", big))
        huge = b"y" * 1_100_000 + _token()
        sensor.mqtt.publish("v1.1/Observations", huge, qos=1)
        platform.assert_nothing(lambda _t, p: p == huge)
    finally:
        sensor.close()


# ------------------------------------------------------------------------------------- $SYS log topics


_TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}"


def test_platform_follows_subscriptions_in_the_broker_log(mosquitto_server: EmbeddedMosquitto) -> None:
    """The exact topics and payloads the platform parses (Mosquitto 2.0.x; see EmbeddedMosquitto)."""
    broker = mosquitto_server
    log = Client(broker.host, broker.port, username=PLATFORM_MQTT_USER, password=broker.platform_password)
    try:
        log.subscribe("$SYS/broker/log/#", qos=0)
        cid = f"watched-{uuid.uuid4().hex[:8]}"
        app = Client(broker.host, broker.port, username=broker.sensor_username, password=broker.sensor_password,
                     client_id=cid, clean_start=False)
        app.subscribe("v1.1/Datastreams(1)/Observations?$select=result", qos=1)
        app.unsubscribe("v1.1/Datastreams(1)/Observations?$select=result")
        app.close()

        def line(topic: str, pattern: str) -> Callable[[str, bytes], bool]:
            return lambda t, p: t == topic and re.fullmatch(pattern, p.decode()) is not None

        user = re.escape(broker.sensor_username)
        log.wait_for(line("$SYS/broker/log/N",
                          rf"{_TS}: New client connected from 127\.0\.0\.1:\d+ as {cid} \(p5, c0, k60, u'{user}'\)\."))
        log.wait_for(line("$SYS/broker/log/M/subscribe",
                          rf"{_TS}: {cid} 1 v1\.1/Datastreams\(1\)/Observations\?\$select=result"))
        log.wait_for(line("$SYS/broker/log/M/unsubscribe",
                          rf"{_TS}: {cid} v1\.1/Datastreams\(1\)/Observations\?\$select=result"))
        log.wait_for(line("$SYS/broker/log/N", rf"{_TS}: Client {cid} disconnected\."))

        # An anonymous client and a clean MQTT 3.1.1 session: c1, no user; closing the socket without
        # DISCONNECT gives "closed its connection".
        anon = f"anon-{uuid.uuid4().hex[:8]}"
        proc = subprocess.Popen(
            ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv311", "-i", anon,
             "-t", "v1.1/Things"],
            stdout=subprocess.DEVNULL,
        )
        try:
            log.wait_for(line("$SYS/broker/log/N",
                              rf"{_TS}: New client connected from 127\.0\.0\.1:\d+ as {anon} \(p2, c1, k60\)\."))
            log.wait_for(line("$SYS/broker/log/M/subscribe", rf"{_TS}: {anon} 0 v1\.1/Things"))
        finally:
            proc.kill()
            proc.wait()
        log.wait_for(line("$SYS/broker/log/N", rf"{_TS}: Client {anon} closed its connection\."))
    finally:
        log.close()


def test_only_the_platform_reads_sys(mosquitto_server: EmbeddedMosquitto) -> None:
    broker = mosquitto_server
    anonymous = Client(broker.host, broker.port)
    sensor = Client(broker.host, broker.port, username=broker.sensor_username, password=broker.sensor_password)
    try:
        for client in (anonymous, sensor):
            client.subscribe("$SYS/#", qos=0)
        Client(broker.host, broker.port).close()  # something to log
        for client in (anonymous, sensor):
            client.assert_nothing(lambda t, _p: t.startswith("$SYS"), within=0.5)
    finally:
        anonymous.close()
        sensor.close()


# ---------------------------------------------------------------------------------------- websockets


def test_websocket_client_subscribes(mosquitto_server: EmbeddedMosquitto) -> None:
    broker = mosquitto_server
    assert broker.websocket_port is not None and broker.websocket_url == f"ws://127.0.0.1:{broker.websocket_port}"
    web = Client(broker.host, broker.websocket_port, transport="websockets")
    try:
        web.subscribe("v1.1/#", qos=0)
        payload = b"ws-" + _token()
        _pub(broker, "v1.1/Datastreams(3)", payload, user=PLATFORM_MQTT_USER, password=broker.platform_password)
        web.wait_for(_is("v1.1/Datastreams(3)", payload))
    finally:
        web.close()


# ------------------------------------------------------------------- settings, restart, no anonymous


def test_taken_websocket_port_is_reported_with_its_flag(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        root = make_service_dir("cs-mqtt-ws-")
        try:
            with pytest.raises(EmbeddedServiceError, match=rf"websocket port {port} .*--mqtt-ws-port"):
                EmbeddedMosquitto(root / "m", find_free_port(), websocket_port=port).start()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def test_no_anonymous_env_password_and_restart_reuse(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """Through the CLI's broker set-up: CITYSTREAM_MQTT_ANONYMOUS_READ="" refuses anonymous clients, the
    sensor password comes from the environment, and a restart keeps the platform password."""
    root = make_service_dir("cs-mqtt-auth-")
    monkeypatch.setenv("CITYSTREAM_MQTT_ANONYMOUS_READ", "")
    monkeypatch.setenv("CITYSTREAM_MQTT_SENSOR_USER", "meter")
    monkeypatch.setenv("CITYSTREAM_MQTT_SENSOR_PASSWORD", "p:ss word%/@")  # ':' would break mosquitto_passwd -U
    monkeypatch.setenv("CITYSTREAM_MQTT_CLIENT_ID", "meter-bridge")  # reserved by the broker plugin
    monkeypatch.delenv("CITYSTREAM_MQTT_URL", raising=False)
    settings = Settings.from_env()
    settings = Settings(**{**settings.__dict__, "data_dir": root, "mqtt_port": find_free_port(),
                           "mqtt_ws_port": find_free_port()})
    probe = EmbeddedMosquitto(root / "mosquitto", settings.mqtt_port)
    try:
        with _broker(settings) as (url, shown, _sensor):
            platform_password = (root / "mosquitto" / "platform-password").read_text().strip()
            assert url == f"mqtt://citystream:{platform_password}@127.0.0.1:{settings.mqtt_port}"
            out = capsys.readouterr().out + "\n".join(shown)
            assert platform_password not in out and "p:ss word" not in out
            assert "'meter'" in out and "CITYSTREAM_MQTT_SENSOR_PASSWORD" in out
            conf = (root / "mosquitto" / "mosquitto.conf").read_text().splitlines()
            assert "allow_anonymous false" in conf and "plugin_opt_bridge_client_id meter-bridge" in conf

            refused = subprocess.run(_sub_argv(probe, "-t", "v1.1/#", "-C", "1", "-W", "5"),
                                     capture_output=True, text=True, timeout=30)
            assert refused.returncode != 0 and "authori" in (refused.stdout + refused.stderr).lower()
            with pytest.raises(ConnectionRefusedError):
                Client("127.0.0.1", settings.mqtt_port)
            Client("127.0.0.1", settings.mqtt_port, username="meter", password="p:ss word%/@").close()
            Client("127.0.0.1", settings.mqtt_port, username=PLATFORM_MQTT_USER, password=platform_password).close()
            assert not (root / "mosquitto" / "sensor-password").exists()

        again = EmbeddedMosquitto(root / "mosquitto", settings.mqtt_port, anonymous_read="")
        with again:
            assert again.platform_password == platform_password
            generated = again.sensor_password  # now generated (no password given) and kept
            Client("127.0.0.1", settings.mqtt_port, username=PLATFORM_MQTT_USER, password=platform_password).close()
            Client("127.0.0.1", settings.mqtt_port, username="sensor", password=generated).close()
        with EmbeddedMosquitto(root / "mosquitto", settings.mqtt_port) as third:
            assert (third.platform_password, third.sensor_password) == (platform_password, generated)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_compose_entrypoint_creates_a_working_password_file() -> None:
    """deploy/mosquitto/entrypoint.sh + the deploy ACL, run against a real Mosquitto."""
    root = make_service_dir("cs-mqtt-deploy-")
    try:
        env = {**os.environ, "CITYSTREAM_MQTT_AUTH_DIR": str(root / "auth"),
               "CITYSTREAM_MQTT_PLATFORM_PASSWORD": "plat:form pw", "CITYSTREAM_MQTT_SENSOR_PASSWORD": "sens-pw"}
        done = subprocess.run(["sh", str(DEPLOY_MOSQUITTO_DIR / "entrypoint.sh"), "true"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        passwd = root / "auth" / "passwd"
        assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
        assert "plat:form" not in passwd.read_text()
        missing = subprocess.run(["sh", str(DEPLOY_MOSQUITTO_DIR / "entrypoint.sh"), "true"],
                                 env={k: v for k, v in env.items() if k != "CITYSTREAM_MQTT_SENSOR_PASSWORD"},
                                 capture_output=True, text=True, timeout=60)
        assert missing.returncode != 0 and "CITYSTREAM_MQTT_SENSOR_PASSWORD" in missing.stderr

        shutil.copy(DEPLOY_MOSQUITTO_DIR / "acl", root / "acl")
        (root / "citystream_auth.so").write_bytes(auth_plugin_library(find_mosquitto()))
        port = find_free_port()
        as_root = os.geteuid() == 0
        conf = render_mosquitto_conf(
            host="127.0.0.1", port=port, websocket_port=None, persistence_location=f"{root}/",
            password_file=str(passwd), acl_file=str(root / "acl"), log_file=str(root / "log"),
            run_as="mosquitto" if as_root else os.environ.get("USER", "nobody"), anonymous=True, header="test",
            auth_plugin=str(root / "citystream_auth.so"),
        )
        (root / "mosquitto.conf").write_text(conf)
        if as_root:
            shutil.chown(root, "mosquitto")
            for path in root.rglob("*"):
                shutil.chown(path, "mosquitto")
        proc = subprocess.Popen([str(find_mosquitto()), "-c", str(root / "mosquitto.conf")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                user="mosquitto" if as_root else None)
        try:
            deadline = time.monotonic() + 10
            while _listen_addresses(port) != {"127.0.0.1"}:
                assert proc.poll() is None and time.monotonic() < deadline, (root / "log").read_text()
                time.sleep(0.05)
            watcher = Client("127.0.0.1", port, username="citystream", password="plat:form pw")
            try:
                watcher.subscribe("#")
                payload = b"deploy-" + _token()
                sensor = Client("127.0.0.1", port, username="sensor", password="sens-pw")
                sensor.mqtt.publish("v1.1/Observations", payload, qos=1).wait_for_publish(timeout=10)
                sensor.mqtt.publish("v1.1/Things", payload + b"!", qos=1).wait_for_publish(timeout=10)
                sensor.close()
                watcher.wait_for(_is("v1.1/Observations", payload))
                watcher.assert_nothing(_is("v1.1/Things", payload + b"!"), within=0.5)
            finally:
                watcher.close()
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    finally:
        shutil.rmtree(root, ignore_errors=True)

