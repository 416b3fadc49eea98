"""The citystream_auth Mosquitto plugin: only the platform account may use the bridge's client ids and its
shared subscription group (issue 13, item 5).

Without it, any client could join `$share/citystream/...` and be handed part of the sensors' Observations
(never stored, although the sensors were told they were delivered), or connect as `citystream-bridge` and
take over the bridge's persistent session. Everything runs against a real Mosquitto with the real plugin;
clients are paho-mqtt (MQTT 5 and 3.1.1) and mosquitto_sub/mosquitto_pub. The rest of the broker's rules
(password file, ACL) are covered by tests/mqtt/test_broker_config.py, which runs with the plugin loaded too.
The plugin's configuration, which needs no broker, is checked in tests/unit/test_broker_plugin_config.py.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shlex
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citystream.embedded import (
    AUTH_PLUGIN_PACKAGES,
    PLATFORM_MQTT_USER,
    EmbeddedMosquitto,
    EmbeddedServiceError,
    auth_plugin_library,
    compile_auth_plugin,
    find_free_port,
    find_mosquitto,
)
from mqtt_bridge import identity
from tests.conftest import make_service_dir, private_broker
from tests.mqtt_helpers import wait_for
from tests.sta_helpers import create_datastream
from tests.unit.test_broker_plugin_config import BRIDGE_FILTER

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None or shutil.which("mosquitto_sub") is None,
    reason="mosquitto-clients (mosquitto_pub, mosquitto_sub) not installed",
)

NOT_AUTHORIZED_V5 = 0x87
FAILURE_V311 = 0x80
V5, V311 = mqtt.MQTTv5, mqtt.MQTTv311


# ------------------------------------------------------------------------------------------ clients


class Probe:
    """A paho client that records its CONNACK, SUBACK reason codes, messages and being disconnected."""

    def __init__(self, broker: EmbeddedMosquitto, account: str, *, client_id: str | None = None,
                 protocol: int = V5, port: int | None = None, transport: str = "tcp") -> None:
        self.client_id = client_id or f"probe-{uuid.uuid4().hex[:10]}"
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.disconnected = threading.Event()
        self._connack: queue.Queue[Any] = queue.Queue()
        self._suback: queue.Queue[tuple[int, list[int]]] = queue.Queue()
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                protocol=protocol, transport=transport)  # type: ignore[arg-type]
        user, password = credentials(broker, account)
        if user is not None:
            self.mqtt.username_pw_set(user, password)
        self.mqtt.on_connect = lambda _c, _u, _f, reason, _p: self._connack.put(reason)
        self.mqtt.on_disconnect = lambda *_args: self.disconnected.set()
        self.mqtt.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, bytes(msg.payload)))
        self.mqtt.on_subscribe = lambda _c, _u, mid, codes, _p: self._suback.put((mid, [int(c.value) for c in codes]))
        self.mqtt.connect(broker.host, port or broker.port, keepalive=60)
        self.mqtt.loop_start()
        self.connack = self._connack.get(timeout=10)
        if self.connack.is_failure:
            self.close()

    @property
    def connected(self) -> bool:
        return not self.connack.is_failure

    def subscribe(self, *filters: str, qos: int = 1) -> list[int]:
        """The SUBACK's reason code for each filter (the granted QoS, or a failure code)."""
        _, mid = self.mqtt.subscribe([(f, qos) for f in filters])
        got, codes = self._suback.get(timeout=10)
        assert got == mid
        return codes

    def drain(self) -> list[tuple[str, bytes]]:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def credentials(broker: EmbeddedMosquitto, account: str) -> tuple[str | None, str | None]:
    return {
        "anonymous": (None, None),
        "sensor": (broker.sensor_username, broker.sensor_password),
        "platform": (PLATFORM_MQTT_USER, broker.platform_password),
    }[account]


def cli_auth(broker: EmbeddedMosquitto, account: str) -> list[str]:
    user, password = credentials(broker, account)
    return [] if user is None else ["-u", user, "-P", password or ""]


def sensor_publish(broker: EmbeddedMosquitto, topic: str, payloads: list[bytes]) -> None:
    """One mosquitto_pub connection, QoS 1, one message per line: returns once the broker has PUBACKed all."""
    argv = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5", "-q", "1",
            *cli_auth(broker, "sensor"), "-t", topic, "-l"]
    subprocess.run(argv, input=b"\n".join(payloads) + b"\n", check=True, timeout=60)


def mosquitto_sub(broker: EmbeddedMosquitto, account: str, *args: str, version: str = "mqttv5"
                  ) -> tuple[subprocess.Popen[str], str]:
    """mosquitto_sub -d, line-buffered, started and waited for until its SUBACK is in: (process, SUBACK line)."""
    if shutil.which("stdbuf") is None:
        pytest.skip("stdbuf (coreutils) not installed")
    argv = ["stdbuf", "-oL", "mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V", version, "-d", "-v",
            *cli_auth(broker, account), *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Subscribed (mid:"):
            return proc, line.strip()
    pytest.fail(f"mosquitto_sub exited before subscribing (exit {proc.wait()})")


def collect(reader: Probe, n: int) -> list[bytes]:
    """The payloads `reader` receives: at least n, and whatever else arrives shortly after."""
    got: list[bytes] = []
    deadline = time.monotonic() + 15
    while len(got) < n and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            got.append(reader.messages.get(timeout=0.2)[1])
    time.sleep(0.3)
    return got + [payload for _topic, payload in reader.drain()]


def stop(proc: subprocess.Popen[str]) -> str:
    """Stop mosquitto_sub and return what it printed (nothing when it was stopped before)."""
    if proc.returncode is not None:
        return ""
    proc.terminate()
    out, _ = proc.communicate(timeout=15)
    return out


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedMosquitto]:
    """A broker of its own, with no bridge attached: these tests use the bridge's client id and group."""
    with private_broker("cs-mqtt-security-") as server:
        yield server


@pytest.fixture
def bridge(broker: EmbeddedMosquitto) -> Iterator[Probe]:
    """The platform holding the bridge's client id and shared subscription, as the real bridge does."""
    holder = Probe(broker, "platform", client_id=identity.CLIENT_ID)
    assert holder.connected
    assert holder.subscribe(BRIDGE_FILTER) == [1]
    yield holder
    holder.close()


def assert_still_the_bridge(broker: EmbeddedMosquitto, holder: Probe) -> None:
    """Not disconnected, and still receiving on its session."""
    payload = b'{"result": "' + uuid.uuid4().hex.encode() + b'"}'
    sensor_publish(broker, "v1.1/Datastreams(1)/Observations", [payload])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if holder.messages.get(timeout=0.2)[1] == payload:
                break
        except queue.Empty:
            continue
    else:
        pytest.fail("the bridge's session no longer receives")
    assert not holder.disconnected.is_set(), "the bridge was disconnected"


# ----------------------------------------------------------------------------- reserved client ids


@pytest.mark.parametrize("protocol", [V5, V311], ids=["mqtt5", "mqtt311"])
@pytest.mark.parametrize("account", ["anonymous", "sensor"])
def test_others_cannot_connect_with_the_bridges_client_ids(
    broker: EmbeddedMosquitto, bridge: Probe, account: str, protocol: int
) -> None:
    for client_id in (identity.CLIENT_ID, f"{identity.CLIENT_ID}-w2"):
        thief = Probe(broker, account, client_id=client_id, protocol=protocol)
        assert not thief.connected and "authori" in str(thief.connack).lower(), (client_id, str(thief.connack))
    assert_still_the_bridge(broker, bridge)


def test_mosquitto_sub_cannot_take_over_the_bridge_session(broker: EmbeddedMosquitto, bridge: Probe) -> None:
    """The attack as reported: `mosquitto_sub -i citystream-bridge ...`; also over WebSocket."""
    for account in ("anonymous", "sensor"):
        result = subprocess.run(
            ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-i", identity.CLIENT_ID,
             *cli_auth(broker, account), "-t", "v1.1/#", "-C", "1", "-W", "5"],
            capture_output=True, text=True, timeout=30)
        assert result.returncode != 0 and "not authorised" in result.stderr, result
    assert broker.websocket_port is not None
    web = Probe(broker, "anonymous", client_id=identity.CLIENT_ID, port=broker.websocket_port,
                transport="websockets")
    assert not web.connected
    log = broker.log_path.read_text()
    assert f"Client {identity.CLIENT_ID} already connected" not in log
    assert f"citystream_auth: refused client id {identity.CLIENT_ID} to an anonymous client" in log
    assert_still_the_bridge(broker, bridge)


def test_extended_authentication_is_no_way_around(broker: EmbeddedMosquitto, bridge: Probe) -> None:
    """MQTT 5 extended authentication skips the basic-auth check the plugin hooks into; without a plugin that
    implements a method, Mosquitto refuses every such CONNECT ("Bad authentication method")."""
    sneaky = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=identity.CLIENT_ID, protocol=V5)
    properties = Properties(PacketTypes.CONNECT)
    properties.AuthenticationMethod = "SCRAM-SHA-256"
    answer: queue.Queue[Any] = queue.Queue()
    sneaky.on_connect = lambda _c, _u, _f, reason, _p: answer.put(reason)
    sneaky.connect(broker.host, broker.port, properties=properties)
    sneaky.loop_start()
    try:
        reason = answer.get(timeout=10)
        assert reason.is_failure and "authentication method" in str(reason).lower(), str(reason)
    finally:
        sneaky.disconnect()
        sneaky.loop_stop()
    assert_still_the_bridge(broker, bridge)


def test_the_platform_may_use_them_with_its_password(broker: EmbeddedMosquitto, bridge: Probe) -> None:
    """The plugin only refuses: the password file still checks the platform's password."""
    worker = Probe(broker, "platform", client_id=f"{identity.CLIENT_ID}-w2")
    assert worker.connected
    worker.close()
    impostor = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{identity.CLIENT_ID}-w3",
                           protocol=V5)
    impostor.username_pw_set(PLATFORM_MQTT_USER, "wrong")
    refused: queue.Queue[Any] = queue.Queue()
    impostor.on_connect = lambda _c, _u, _f, reason, _p: refused.put(reason)
    impostor.connect(broker.host, broker.port)
    impostor.loop_start()
    try:
        assert refused.get(timeout=10).is_failure
    finally:
        impostor.disconnect()
        impostor.loop_stop()
    other = Probe(broker, "anonymous", client_id="citystream-brid")  # not the prefix: an ordinary client id
    assert other.connected
    other.close()
    assert_still_the_bridge(broker, bridge)


def test_the_configured_bridge_client_id_is_the_one_reserved() -> None:
    root = make_service_dir("cs-mqtt-client-id-")
    try:
        with EmbeddedMosquitto(root / "mosquitto", find_free_port(), bridge_client_id="meter-bridge") as custom:
            assert not Probe(custom, "anonymous", client_id="meter-bridge-w1").connected
            assert Probe(custom, "platform", client_id="meter-bridge").connected
            free = Probe(custom, "anonymous", client_id=identity.CLIENT_ID)
            assert free.connected
            free.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -------------------------------------------------------------------------------- the shared group


@pytest.mark.parametrize(("protocol", "failure"), [(V5, NOT_AUTHORIZED_V5), (V311, FAILURE_V311)],
                         ids=["mqtt5", "mqtt311"])
@pytest.mark.parametrize("account", ["anonymous", "sensor"])
def test_others_cannot_subscribe_in_the_bridges_group(
    broker: EmbeddedMosquitto, account: str, protocol: int, failure: int
) -> None:
    """Per filter of one SUBSCRIBE: the bridge's group is refused, other groups and plain filters are not."""
    client = Probe(broker, account, protocol=protocol)
    try:
        codes = client.subscribe(BRIDGE_FILTER, "$share/citystream/#", "$share/citystream/v1.1/Observations",
                                 "$share/citystream2/v1.1/#", "$share/mine/v1.1/#", "v1.1/Things")
        assert codes == [failure, failure, failure, 1, 1, 1]
    finally:
        client.close()


def test_only_the_platform_shares_the_bridges_stream(broker: EmbeddedMosquitto, bridge: Probe) -> None:
    """40 QoS 1 Observations: the bridge's group gets every one, whoever else tried to join; readers in their
    own group, or without one, get their own copy; refused subscribers get nothing."""
    attackers = [Probe(broker, account, protocol=protocol) for account in ("anonymous", "sensor")
                 for protocol in (V5, V311)]
    for attacker in attackers:
        assert attacker.subscribe(BRIDGE_FILTER, "v1.1/Things")[0] in (NOT_AUTHORIZED_V5, FAILURE_V311)
    cli = [mosquitto_sub(broker, "anonymous", "-t", BRIDGE_FILTER, "-t", "v1.1/Things", version=v)
           for v in ("mqttv5", "mqttv311")]
    assert [suback for _proc, suback in cli] == ["Subscribed (mid: 1): 135, 0", "Subscribed (mid: 1): 128, 0"]
    own_group = Probe(broker, "anonymous")
    assert own_group.subscribe("$share/mine/v1.1/#") == [1]
    plain = Probe(broker, "anonymous")
    assert plain.subscribe("v1.1/+/Observations") == [1]
    try:
        payloads = [orjson.dumps({"result": i, "run": uuid.uuid4().hex}) for i in range(40)]
        sensor_publish(broker, "v1.1/Datastreams(7)/Observations", payloads)
        for reader in (bridge, own_group, plain):
            assert sorted(collect(reader, len(payloads))) == sorted(payloads)
        for attacker in attackers:
            assert attacker.drain() == []
        for proc, _suback in cli:
            out = stop(proc)
            assert not any(p.decode() in out for p in payloads), out[-2000:]
    finally:
        for client in (*attackers, own_group, plain):
            client.close()
        for proc, _suback in cli:
            stop(proc)


def test_acl_still_applies_to_allowed_shared_subscriptions(broker: EmbeddedMosquitto) -> None:
    """The plugin defers whatever it does not refuse: the ACL's read rules still decide what is delivered."""
    reader = Probe(broker, "anonymous")
    try:
        assert reader.subscribe("$share/mine/#") == [1]
        platform = Probe(broker, "platform")
        for topic in ("other/topic", "citystream/errors/v1.1/Observations", "v1.1/Things(1)"):
            platform.mqtt.publish(topic, topic.encode(), qos=1).wait_for_publish(10)
        platform.close()
        assert reader.messages.get(timeout=10) == ("v1.1/Things(1)", b"v1.1/Things(1)")
        time.sleep(0.3)
        assert reader.drain() == []
    finally:
        reader.close()


# ------------------------------------------------------------------------------------- end to end


def test_an_attacker_in_the_bridges_group_does_not_lose_observations(
    sta: str, mosquitto_server: EmbeddedMosquitto
) -> None:
    """The real app and bridge: every one of N acknowledged QoS 1 Observations is stored, and neither the
    would-be group member nor the would-be session thief gets anything or disturbs the bridge."""
    broker = mosquitto_server
    datastream = create_datastream(sta)
    member = Probe(broker, "anonymous")
    assert member.subscribe(BRIDGE_FILTER, "v1.1/Things(999999)") == [NOT_AUTHORIZED_V5, 1]
    old_member, _ = mosquitto_sub(broker, "anonymous", "-t", BRIDGE_FILTER, "-t", "v1.1/Things(999999)",
                               version="mqttv311")
    thief = Probe(broker, "anonymous", client_id=identity.CLIENT_ID)
    assert not thief.connected
    try:
        n = 60
        payloads = [orjson.dumps({"result": i}) for i in range(n)]
        sensor_publish(broker, f"v1.1/Datastreams({datastream})/Observations", payloads)

        def stored() -> list[int]:
            body = httpx.get(f"{sta}/Datastreams({datastream})/Observations",
                             params={"$top": 1000, "$select": "result"}, timeout=10).json()
            return sorted(o["result"] for o in body["value"])

        wait_for(lambda: len(stored()) >= n, what=f"{n} stored observations")
        assert stored() == list(range(n))
        assert member.drain() == []
        assert '{"result"' not in stop(old_member)
        assert f"Client {identity.CLIENT_ID} already connected" not in broker.log_path.read_text()
    finally:
        member.close()
        stop(old_member)


# -------------------------------------------------------------------------------- building the plugin


def test_plugin_compiles_without_warnings(tmp_path: Path) -> None:
    compile_auth_plugin(tmp_path / "citystream_auth.so", extra_flags=(
        "-Werror", "-Wshadow", "-Wconversion", "-Wstrict-prototypes", "-Wmissing-prototypes", "-Wformat=2"))
    assert (tmp_path / "citystream_auth.so").read_bytes().startswith(b"\x7fELF")


def test_plugin_is_compiled_once_per_source_and_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    broker = find_mosquitto()
    first = auth_plugin_library(broker, cache)
    [cached] = cache.iterdir()
    assert cached.name.startswith("citystream_auth-") and cached.read_bytes() == first
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert auth_plugin_library(broker, cache) == first  # from the cache: no compiler needed
    other_broker = tmp_path / "mosquitto"
    shutil.copy(broker, other_broker)  # another broker binary (an upgrade): built again
    with pytest.raises(EmbeddedServiceError, match="no C compiler"):
        auth_plugin_library(other_broker, cache)


@pytest.mark.parametrize("loosen", ["file", "directory"])
def test_a_cache_others_could_write_to_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      loosen: str) -> None:
    """The broker runs what the cache holds: a library someone else could have planted is compiled anew."""
    cache = tmp_path / "cache"
    broker = find_mosquitto()
    genuine = auth_plugin_library(broker, cache)
    [cached] = cache.iterdir()
    cached.write_bytes(b"\x7fELF planted")
    (cached if loosen == "file" else cache).chmod(0o777 if loosen == "directory" else 0o666)
    assert auth_plugin_library(broker, cache) == genuine


def test_a_missing_compiler_is_a_clear_error_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    data_dir = tmp_path / "mosquitto"
    with pytest.raises(EmbeddedServiceError) as raised:
        EmbeddedMosquitto(data_dir, find_free_port()).start()
    message = str(raised.value)
    assert "citystream_auth" in message and "no C compiler" in message
    assert f"apt-get install {AUTH_PLUGIN_PACKAGES}" in message
    assert not data_dir.exists()


def _compiler_hiding(tmp_path: Path, *hidden: str) -> str:
    """A CC that sees the system's headers except `hidden` (as if their package were not installed)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    builtin = subprocess.run([gcc, "-print-file-name=include"], capture_output=True, text=True).stdout.strip()
    multiarch = subprocess.run([gcc, "-print-multiarch"], capture_output=True, text=True).stdout.strip()
    fake = tmp_path / f"include-{uuid.uuid4().hex[:8]}"
    fake.mkdir()
    for entry in Path("/usr/include").iterdir():
        if entry.name not in hidden:
            (fake / entry.name).symlink_to(entry)
    dirs = [builtin, *([str(fake / multiarch)] if multiarch else []), str(fake)]
    return shlex.join([gcc, "-nostdinc", *(arg for d in dirs for arg in ("-isystem", d))])


@pytest.mark.parametrize(("hidden", "header", "package"), [
    ("mosquitto_broker.h", "mosquitto_broker.h", "mosquitto-dev"),
    ("mosquitto_plugin.h", "mosquitto_plugin.h", "mosquitto-dev"),
    ("mosquitto.h", "mosquitto.h", "libmosquitto-dev"),
    ("stdlib.h", "stdlib.h", "libc6-dev"),
])
def test_a_missing_header_names_its_package(tmp_path: Path, hidden: str, header: str, package: str) -> None:
    if not Path("/usr/include/mosquitto_broker.h").is_file():
        pytest.skip("the headers are not in /usr/include")
    compile_auth_plugin(tmp_path / "control.so", cc=_compiler_hiding(tmp_path))  # the simulation itself builds
    with pytest.raises(EmbeddedServiceError) as raised:
        compile_auth_plugin(tmp_path / "x.so", cc=_compiler_hiding(tmp_path, hidden))
    message = str(raised.value)
    assert f"the C header {header} is missing: install {package}" in message, message
    assert f"apt-get install {AUTH_PLUGIN_PACKAGES}" in message


# ----------------------------------------------------------------------------------- configuration


def test_the_plugin_refuses_to_start_without_its_options(tmp_path: Path) -> None:
    """A broker whose plugin lacks an option does not start at all, rather than run unprotected."""
    root = make_service_dir("cs-mqtt-noopt-")
    try:
        library = root / "citystream_auth.so"
        library.write_bytes(auth_plugin_library(find_mosquitto()))
        port = find_free_port()
        conf = root / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nplugin {library}\n"
                        f"plugin_opt_platform_user {PLATFORM_MQTT_USER}\n")
        as_root = os.geteuid() == 0
        if as_root:
            for path in (root, library, conf):
                shutil.chown(path, "mosquitto")
        result = subprocess.run([str(find_mosquitto()), "-c", str(conf)], capture_output=True, text=True,
                                timeout=30, user="mosquitto" if as_root else None)
        assert result.returncode != 0
        assert "citystream_auth: missing option plugin_opt_bridge_client_id" in result.stdout + result.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
