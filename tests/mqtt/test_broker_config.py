"""The generated Mosquitto set-up: accounts, the plugin's read and write rules, listeners and $SYS log topics.
What needs no broker (the deploy/ copy is the rendered file, settings and flags) is in
tests/unit/test_broker_config_rendering.py; the plugin's own guarantees (reserved bridge ids, audiences,
stamps, options) are in tests/mqtt/test_broker_security.py.

Everything runs against a real Mosquitto; publishers and most checks are the real command-line clients
(mosquitto_pub/mosquitto_sub) or paho-mqtt, as sensors and apps would use them. "Nothing arrives" is checked
with a platform-account subscriber on `#` that would see the message if the broker had accepted it. A device's
accepted create never reaches subscribers as sent: the plugin moves it to citystream/ingest/<topic> (INGEST_PREFIX),
which only the platform reads.
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

import orjson
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
    render_mosquitto_conf,
)
from citystream.settings import Settings
from mqtt_bridge.bridge import AUDIENCE_PROPERTY, CLIENT_PROPERTY, PRINCIPAL_PROPERTY
from mqtt_bridge.topics import ERROR_PREFIX, INGEST_PREFIX

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
    """A paho MQTT 5 client that records every message it receives (and the user properties of each
    payload, in `properties`)."""

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
        self.properties: dict[bytes, list[tuple[str, str]]] = {}
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
        self.mqtt.on_message = self._on_message
        self.mqtt.on_subscribe = lambda _c, _u, mid, _r, _p: self._acks.put(mid)
        self.mqtt.on_unsubscribe = lambda _c, _u, mid, _r, _p: self._acks.put(mid)
        self.mqtt.connect(host, port, keepalive=60, clean_start=clean_start)
        self.mqtt.loop_start()
        reason = self._connack.get(timeout=10)
        if reason.is_failure:
            self.close()
            raise ConnectionRefusedError(str(reason))

    def _on_message(self, _client: Any, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.properties[bytes(msg.payload)] = list(getattr(msg.properties, "UserProperty", None) or [])
        self.messages.put((msg.topic, bytes(msg.payload)))

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

    def until(self, match: Callable[[str, bytes], bool], timeout: float = 10.0) -> list[tuple[str, bytes]]:
        """Every message up to and including the first that satisfies `match` (a sentinel published after
        the messages under test: the broker delivers one subscriber's messages in order)."""
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
            if match(*got[-1]):
                return got
        pytest.fail(f"{self.client_id}: no sentinel within {timeout}s; got {[t for t, _ in got]}")

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


def _platform_pub(broker: EmbeddedMosquitto, topic: str, payload: bytes, audience: str | None = None) -> None:
    """Publish as the platform does a notification: `audience` is its citystream-audience (None: public)."""
    extra = ("-D", "publish", "user-property", AUDIENCE_PROPERTY, audience) if audience is not None else ()
    result = _pub(broker, topic, payload, user=PLATFORM_MQTT_USER, password=broker.platform_password, extra=extra)
    assert result.returncode == 0 and not result.stderr, result.stderr


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
    for path in (broker.password_file, broker.decision_secret_path, broker.plugin_path):
        assert stat.S_IMODE(os.stat(path).st_mode) in (0o600, 0o640), path
    if me == 0:
        import pwd

        # the broker account reads (loads) them; the plugin reads the decision secret at start
        for path in (broker.password_file, broker.decision_secret_path, broker.plugin_path):
            assert os.stat(path).st_uid == pwd.getpwnam("mosquitto").pw_uid, path
    hashed = broker.password_file.read_text()
    assert broker.platform_password not in hashed and broker.sensor_password not in hashed
    assert [line.split(":", 1)[0] for line in hashed.splitlines()] == [PLATFORM_MQTT_USER, broker.sensor_username]
    # the platform's password is the secret the plugin sends the platform (X-CityStream-Broker-Secret)
    assert broker.decision_secret_path.read_text() == f"{broker.platform_password}\n"
    assert not (broker.data_dir / "mosquitto.acl").exists()  # no ACL file any more: the plugin decides
    assert broker.decision_url is not None
    conf = broker.conf_path.read_text().splitlines()
    for directive in (
        f"password_file {broker.password_file}",
        "allow_anonymous true",
        f"plugin {broker.plugin_path}",
        "plugin_opt_bridge_client_id citystream-bridge",
        f"plugin_opt_ingest_prefix {INGEST_PREFIX}",
        f"plugin_opt_readable v1.0/# v1.1/# {ERROR_PREFIX}#",
        "plugin_opt_anonymous_read v1.0/# v1.1/#",
        f"plugin_opt_account_user {broker.sensor_username}",
        f"plugin_opt_decision_url {broker.decision_url}",
        f"plugin_opt_decision_secret_file {broker.decision_secret_path}",
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
    assert not any(line.startswith("acl_file") for line in conf), "Mosquitto would apply an ACL besides the plugin"


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


# ------------------------------------------------------------------------------------ who reads, who writes


def test_anonymous_clients_read_public_sta_data_and_nothing_else(
    mosquitto_server: EmbeddedMosquitto, platform: Client
) -> None:
    """Anonymous clients read the STA topics (anonymous_read), and there only public notifications: not the
    error reports, not a notification whose audience is restricted (with -C 1, the first message it may read
    is the last one published)."""
    broker = mosquitto_server
    reader = ExternalSubscriber(broker, "-t", "v1.1/#", "-t", "citystream/errors/#", "-C", "1", "-W", "10")
    notice, error, restricted = b"notice-" + _token(), b"error-" + _token(), b"restricted-" + _token()
    _platform_pub(broker, "citystream/errors/v1.1/Observations", error)
    _platform_pub(broker, "v1.1/Things(2)", restricted, audience="r")
    _platform_pub(broker, "v1.1/Things(1)", notice)
    out = reader.output()
    assert f"v1.1/Things(1) {notice.decode()}" in out
    assert not any(error.decode() in line or restricted.decode() in line for line in out), out


def test_anonymous_publish_is_not_delivered(mosquitto_server: EmbeddedMosquitto, platform: Client) -> None:
    payload = b'{"result": 1, "anonymous": "' + _token() + b'"}'
    for topic in ("v1.1/Observations", "v1.1/Datastreams(1)/Observations", "v1.1/Things"):
        result = _pub(mosquitto_server, topic, payload)
        assert "Not authorized" in result.stderr, result.stderr
    platform.assert_nothing(lambda _t, p: p == payload)


def _stamp(platform: Client, payload: bytes) -> tuple[list[Any], list[str]]:
    """The principals and client ids the plugin stamped on a create the platform received."""
    properties = platform.properties[payload]
    return ([orjson.loads(v) for k, v in properties if k == PRINCIPAL_PROPERTY],
            [v for k, v in properties if k == CLIENT_PROPERTY])


def test_sensor_creates_reach_the_platform_only(mosquitto_server: EmbeddedMosquitto, platform: Client) -> None:
    """Old: the ACL let the sensor account write the create topics, and every reader of v1.1/# (the sensor
    account too) got the device's raw publish. New: the plugin moves each create to citystream/ingest/<topic>,
    stamped with its publisher, and only the platform reads there; everything else is refused."""
    broker = mosquitto_server
    anonymous = Client(broker.host, broker.port)
    device = Client(broker.host, broker.port, username=broker.sensor_username, password=broker.sensor_password)
    sent: list[bytes] = []
    try:
        for reader in (anonymous, device):
            reader.subscribe("#")  # also citystream/ingest/...
        for topic in ("v1.1/Observations", "v1.1/Datastreams(1)/Observations",
                      "v1.1/FeaturesOfInterest(7)/Observations", "v1.0/Datastreams(1)/Observations"):
            payload = b'{"result": "' + _token() + b'"}'
            sent.append(payload)
            result = _sensor_pub(broker, topic, payload)
            assert result.returncode == 0 and not result.stderr, result.stderr
            platform.wait_for(_is(INGEST_PREFIX + topic, payload))
            principals, client_ids = _stamp(platform, payload)
            assert principals == [{"kind": "account", "name": broker.sensor_username, "roles": ["create"],
                                   "auth_id": broker.sensor_username}]
            assert len(client_ids) == 1 and client_ids[0], client_ids
        denied = b"denied-" + _token()
        for topic in ("citystream/errors/v1.1/Observations", "other", f"{INGEST_PREFIX}v1.1/Observations",
                      f"{INGEST_PREFIX}v1.1/Datastreams(1)/Observations"):
            assert "Not authorized" in _sensor_pub(broker, topic, denied).stderr, topic
        platform.assert_nothing(lambda _t, p: p == denied)
        sentinel = b"sentinel-" + _token()
        _platform_pub(broker, "v1.1/Things(1)", sentinel)
        for reader in (anonymous, device):
            got = reader.until(_is("v1.1/Things(1)", sentinel))
            assert not [t for t, p in got if p in sent or p == denied], got
    finally:
        anonymous.close()
        device.close()


def test_a_sensor_publish_that_cannot_create_is_refused_or_reported(
    server_url: str, mosquitto_server: EmbeddedMosquitto
) -> None:
    """A device must learn that its message went nowhere: refused in the PUBACK, or reported on
    citystream/errors/<topic> (with the real bridge running, which reports what it judges)."""
    broker = mosquitto_server
    device = Client(broker.host, broker.port, username=broker.sensor_username, password=broker.sensor_password)
    try:
        device.subscribe(f"{ERROR_PREFIX}#")
        for topic in ("v1.1/Things", "v1.1/Datastreams(1)"):
            result = _sensor_pub(broker, topic, b'{"result": 1}')
            if "Not authorized" not in result.stderr:
                device.wait_for(lambda t, _p, topic=topic: t == ERROR_PREFIX + topic, timeout=3)  # type: ignore[misc]
    finally:
        device.close()


def test_sensor_reads_public_sta_topics_and_only_its_own_error_reports(mosquitto_server: EmbeddedMosquitto) -> None:
    """Old: the sensor account read every error report (citystream/errors/#) of everyone. New: an error
    report is readable only by its publisher (audience r;o=<auth id>; the account's auth id is its name),
    and restricted notifications only by who may read them; $SYS and other topics not at all."""
    broker = mosquitto_server
    sensor = Client(broker.host, broker.port, username=broker.sensor_username, password=broker.sensor_password)
    try:
        sensor.subscribe("v1.1/#", "citystream/errors/#", "$SYS/#", "other/#", f"{INGEST_PREFIX}#")
        own = b"own-error-" + _token()
        shown = {
            "v1.1/Datastreams(1)": (b"entity-" + _token(), None),
            "citystream/errors/v1.1/Datastreams(1)/Observations": (own, f"r;o={broker.sensor_username}"),
        }
        hidden = {
            "other/topic": (b"other-" + _token(), None),
            "citystream/errors/v1.1/Datastreams(2)/Observations": (b"key-error-" + _token(), "r;o=key-abc"),
            "citystream/errors/v1.1/Datastreams(3)/Observations": (b"any-error-" + _token(), "r"),
            "v1.1/Datastreams(4)": (b"project-" + _token(), "r;p=4"),
            "v1.1/Datastreams(5)": (b"odd-" + _token(), "x-unknown-audience"),
        }
        for topic, (payload, audience) in {**hidden, **shown}.items():
            _platform_pub(broker, topic, payload, audience)
        # the plugin's own report of the sensor's refused publish, and of an anonymous one
        assert "Not authorized" in _pub(broker, "v1.1/Things", b"{}").stderr
        assert "Not authorized" in _sensor_pub(broker, "other/x", b"{}").stderr
        sentinel = b"sentinel-" + _token()
        _platform_pub(broker, "v1.1/Things(1)", sentinel)
        got = sensor.until(_is("v1.1/Things(1)", sentinel))
        topics = [t for t, _p in got]
        assert [(t, p) for t, p in got if p in {payload for payload, _a in shown.values()}] == [
            (t, p) for t, (p, _a) in shown.items()]
        assert topics[-2:] == ["citystream/errors/other/x", "v1.1/Things(1)"], topics
        report = orjson.loads(got[-2][1])
        assert report["code"] == 403 and report["topic"] == "other/x", report
        assert not [t for t in topics if t.startswith(("$SYS", "other", INGEST_PREFIX))], topics
        assert "citystream/errors/v1.1/Things" not in topics  # the anonymous client's report
        assert not [p for _t, p in got if p in {payload for payload, _a in hidden.values()}]
        assert all(k != AUDIENCE_PROPERTY for k, _v in sensor.properties[own]), "the audience leaked"
    finally:
        sensor.close()


def test_wrong_password_is_refused(mosquitto_server: EmbeddedMosquitto) -> None:
    for user, password in ((PLATFORM_MQTT_USER, "wrong"), (PLATFORM_MQTT_USER, ""), ("sensor", ""),
                           ("sensor", mosquitto_server.platform_password), ("nobody", "x")):
        with pytest.raises(ConnectionRefusedError):
            Client(mosquitto_server.host, mosquitto_server.port, username=user, password=password)


def test_oversize_packets_are_refused_below_the_limit_delivered(
    mosquitto_server: EmbeddedMosquitto, platform: Client
) -> None:
    """max_packet_size 1 MiB: a 900 kB payload is delivered (for the bridge to judge), 1.1 MB is not."""
    broker = mosquitto_server
    sensor = Client(broker.host, broker.port, username=broker.sensor_username, password=broker.sensor_password)
    try:
        big = b"x" * 900_000 + _token()
        sensor.mqtt.publish("v1.1/Observations", big, qos=1).wait_for_publish(timeout=10)
        platform.wait_for(_is(f"{INGEST_PREFIX}v1.1/Observations", big))
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
    """$SYS (the broker log with every client's subscriptions, the plugin's counters) is the platform's."""
    broker = mosquitto_server
    anonymous = Client(broker.host, broker.port)
    sensor = Client(broker.host, broker.port, username=broker.sensor_username, password=broker.sensor_password)
    log = Client(broker.host, broker.port, username=PLATFORM_MQTT_USER, password=broker.platform_password)
    try:
        for client in (anonymous, sensor):
            client.subscribe("$SYS/#", qos=0)
        log.subscribe("$SYS/#", qos=0)
        Client(broker.host, broker.port).close()  # something to log
        log.wait_for(lambda t, _p: t == "$SYS/broker/log/N")
        log.wait_for(lambda t, _p: t == "$SYS/broker/citystream/plugin")  # every 2 s
        for client in (anonymous, sensor):
            client.assert_nothing(lambda t, _p: t.startswith("$SYS"), within=0.3)
    finally:
        anonymous.close()
        sensor.close()
        log.close()


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
            assert "plugin_opt_account_user meter" in conf
            assert not any(line.startswith("plugin_opt_anonymous_read") for line in conf)
            assert f"plugin_opt_decision_url http://127.0.0.1:{settings.http_port}/internal/mqtt" in conf

            refused = subprocess.run(_sub_argv(probe, "-t", "v1.1/#", "-C", "1", "-W", "5"),
                                     capture_output=True, text=True, timeout=30)
            assert refused.returncode != 0 and "authori" in (refused.stdout + refused.stderr).lower()
            with pytest.raises(ConnectionRefusedError):
                Client("127.0.0.1", settings.mqtt_port)
            Client("127.0.0.1", settings.mqtt_port, username="meter", password="p:ss word%/@").close()
            Client("127.0.0.1", settings.mqtt_port, username=PLATFORM_MQTT_USER, password=platform_password).close()
            with pytest.raises(ConnectionRefusedError):  # no API answers the plugin: fail closed
                Client("127.0.0.1", settings.mqtt_port, username="someone", password="secret")
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
    """deploy/mosquitto/entrypoint.sh writes the password file and the plugin's decision secret; a real
    Mosquitto with the plugin starts on them (the plugin refuses to start on a secret it cannot read)."""
    root = make_service_dir("cs-mqtt-deploy-")
    try:
        env = {**os.environ, "CITYSTREAM_MQTT_AUTH_DIR": str(root / "auth"),
               "CITYSTREAM_MQTT_PLATFORM_PASSWORD": "plat:form pw", "CITYSTREAM_MQTT_SENSOR_PASSWORD": "sens-pw"}
        done = subprocess.run(["sh", str(DEPLOY_MOSQUITTO_DIR / "entrypoint.sh"), "true"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        passwd, secret = root / "auth" / "passwd", root / "auth" / "decision-secret"
        assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
        assert "plat:form" not in passwd.read_text()
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert secret.read_text() == "plat:form pw\n"  # the platform password: what the app expects
        assert sorted(p.name for p in (root / "auth").iterdir()) == ["decision-secret", "passwd"]  # no .new left
        missing = subprocess.run(["sh", str(DEPLOY_MOSQUITTO_DIR / "entrypoint.sh"), "true"],
                                 env={k: v for k, v in env.items() if k != "CITYSTREAM_MQTT_SENSOR_PASSWORD"},
                                 capture_output=True, text=True, timeout=60)
        assert missing.returncode != 0 and "CITYSTREAM_MQTT_SENSOR_PASSWORD" in missing.stderr

        (root / "citystream_auth.so").write_bytes(auth_plugin_library(find_mosquitto()))
        port = find_free_port()
        as_root = os.geteuid() == 0
        conf = render_mosquitto_conf(
            host="127.0.0.1", port=port, websocket_port=None, persistence_location=f"{root}/",
            password_file=str(passwd), log_file=str(root / "log"),
            run_as="mosquitto" if as_root else os.environ.get("USER", "nobody"), header="test",
            auth_plugin=str(root / "citystream_auth.so"),
            decision_url=f"http://127.0.0.1:{find_free_port()}/internal/mqtt", decision_secret_file=str(secret),
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
                sensor.mqtt.publish("citystream/errors/v1.1/Observations", payload + b"!",
                                    qos=1).wait_for_publish(timeout=10)
                sensor.close()
                watcher.wait_for(_is(f"{INGEST_PREFIX}v1.1/Observations", payload))
                watcher.assert_nothing(lambda _t, p: p == payload + b"!", within=0.5)
            finally:
                watcher.close()
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    finally:
        shutil.rmtree(root, ignore_errors=True)
