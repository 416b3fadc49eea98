"""The citystream_auth plugin's configuration without a broker: what the rendered mosquitto.conf passes the
plugin, that its names are the bridge's and the platform's (ingest prefix, readable topics, the decision
endpoint), that a bad bridge client id is refused before anything starts, and that the source ships with the
package and builds for docker-compose.

Moved here from tests/mqtt/test_broker_security.py, which keeps the tests that compile the plugin or run a
real Mosquitto (and imports BRIDGE_FILTER from here).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from citystream.broker_decisions import PREFIX as DECISION_PREFIX
from citystream.embedded import (
    AUTH_PLUGIN_PACKAGES,
    AUTH_PLUGIN_SOURCE,
    DEPLOY_AUTH_PLUGIN_PATH,
    DEPLOY_MOSQUITTO_DIR,
    PLATFORM_MQTT_USER,
    EmbeddedMosquitto,
    EmbeddedServiceError,
    find_free_port,
    render_mosquitto_conf,
)
from citystream.embedded.mosquitto_config import DEPLOY_DECISION_URL
from citystream.settings import Settings
from citystream.up import _decision_url
from mqtt_bridge import identity
from mqtt_bridge.bridge import PLUGIN_TOPIC, BridgeConfig
from mqtt_bridge.topics import CREATE_FILTERS, ERROR_PREFIX, INGEST_FILTERS, INGEST_PREFIX

REPO = Path(__file__).resolve().parents[2]
BRIDGE_FILTER = "$share/citystream/citystream/ingest/v1.1/+/Observations"
"""What the bridge subscribes to (one of its filters): the plugin moves every create under the ingest prefix."""


def test_the_source_ships_and_quickstart_installs_the_build_packages() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["citystream"]
    source = AUTH_PLUGIN_SOURCE.relative_to(REPO / "citystream")
    assert any(source.match(pattern) for pattern in patterns), patterns
    assert {"libcurl4-openssl-dev", "libcjson-dev", "uthash-dev"} <= set(AUTH_PLUGIN_PACKAGES.split())
    quickstart = (REPO / "scripts" / "quickstart.sh").read_text()
    for package in AUTH_PLUGIN_PACKAGES.split():
        assert f" {package}" in quickstart, package
    for header in ("mosquitto_broker.h", "cJSON.h", "uthash.h", "curl.h"):
        assert header in quickstart, header  # system_ready checks the headers too


def test_names_match_the_bridge() -> None:
    assert BridgeConfig().shared_group == identity.SHARED_GROUP
    assert BridgeConfig().client_id == Settings().mqtt_client_id == identity.CLIENT_ID
    assert BRIDGE_FILTER.startswith(f"$share/{identity.SHARED_GROUP}/{INGEST_PREFIX}")
    assert BRIDGE_FILTER.removeprefix(f"$share/{identity.SHARED_GROUP}/") in INGEST_FILTERS
    assert PLUGIN_TOPIC == "$SYS/broker/citystream/plugin"  # the plugin's heartbeat (citystream_auth.c)
    assert f'"{PLUGIN_TOPIC}"' in AUTH_PLUGIN_SOURCE.read_text()


def _conf(**options: object) -> list[str]:
    base: dict[str, object] = dict(
        host="127.0.0.1", port=1883, websocket_port=None, persistence_location="/x/", password_file="/x/p",
        log_file=None, run_as="mosquitto", header="h", auth_plugin="/x/citystream_auth.so")
    return render_mosquitto_conf(**{**base, **options}).splitlines()  # type: ignore[arg-type]


def test_conf_loads_the_plugin_with_its_options() -> None:
    conf = _conf(bridge_client_id="meter-bridge", sensor_username="meter", anonymous_read="v1.1/#",
                 decision_url="http://127.0.0.1:8080/internal/mqtt", decision_secret_file="/x/decision-secret")
    start = conf.index("plugin /x/citystream_auth.so")
    options = [line for line in conf[start + 1:] if line.startswith("plugin_opt_")]
    assert options[:8] == [f"plugin_opt_platform_user {PLATFORM_MQTT_USER}",
                           "plugin_opt_bridge_client_id meter-bridge",
                           f"plugin_opt_bridge_group {identity.SHARED_GROUP}",
                           f"plugin_opt_ingest_prefix {INGEST_PREFIX}",
                           f"plugin_opt_readable v1.0/# v1.1/# {ERROR_PREFIX}#",
                           "plugin_opt_anonymous_read v1.1/#",
                           "plugin_opt_account_user meter",
                           f"plugin_opt_account_write {' '.join(CREATE_FILTERS)}"]
    assert "plugin_opt_decision_url http://127.0.0.1:8080/internal/mqtt" in options
    assert "plugin_opt_decision_secret_file /x/decision-secret" in options
    assert start < conf.index("listener 1883 127.0.0.1")
    assert "password_file /x/p" in conf  # the platform's and the device account's passwords
    deploy = (DEPLOY_MOSQUITTO_DIR / "mosquitto.conf").read_text().splitlines()
    assert f"plugin {DEPLOY_AUTH_PLUGIN_PATH}" in deploy
    assert f"plugin_opt_bridge_client_id {identity.CLIENT_ID}" in deploy
    assert f"plugin_opt_ingest_prefix {INGEST_PREFIX}" in deploy


def test_decision_urls_point_at_the_platforms_endpoints() -> None:
    """The plugin appends /connect, /publish and /revalidate to its decision_url: it must be the API's
    /internal/mqtt, for `citystream up` (loopback, whatever --host) and for docker-compose alike."""
    assert DEPLOY_DECISION_URL.endswith(DECISION_PREFIX)
    for host, reached in (("0.0.0.0", "127.0.0.1"), ("127.0.0.1", "127.0.0.1"), ("::", "[::1]")):
        settings = Settings(host=host, http_port=8123)
        assert _decision_url(settings) == f"http://{reached}:8123{DECISION_PREFIX}"


@pytest.mark.parametrize("client_id", ["", "two words", "line\nbreak", "tab\t", "x" * 1025])
def test_a_bad_bridge_client_id_is_refused_before_start(tmp_path: Path, client_id: str) -> None:
    with pytest.raises(EmbeddedServiceError, match="CITYSTREAM_MQTT_CLIENT_ID"):
        EmbeddedMosquitto(tmp_path, find_free_port(), bridge_client_id=client_id)


def test_compose_builds_its_broker_with_the_plugin() -> None:
    """docker-compose's mqtt service is built from deploy/mosquitto/Dockerfile, which compiles the same source
    with the libraries it links (libcurl, cJSON) and installs it where deploy/mosquitto/mosquitto.conf loads
    it from; the runtime image has those libraries. (No Docker engine runs here.)"""
    compose = (REPO / "docker-compose.yml").read_text()
    assert "dockerfile: deploy/mosquitto/Dockerfile" in compose
    dockerfile = (DEPLOY_MOSQUITTO_DIR / "Dockerfile").read_text()
    assert AUTH_PLUGIN_SOURCE.relative_to(REPO).as_posix() in dockerfile
    assert DEPLOY_AUTH_PLUGIN_PATH in dockerfile
    for package in AUTH_PLUGIN_PACKAGES.split():
        assert package in dockerfile, package
    [build] = [line for line in dockerfile.splitlines() if "citystream_auth.c" in line and line.startswith("RUN")]
    assert build.split()[-2:] == ["-lcurl", "-lcjson"]  # after the source, or the linker drops them
    runtime = dockerfile.rsplit("FROM ", 1)[1]
    for library in ("mosquitto", "libcurl4", "libcjson1"):
        assert f" {library}" in runtime, library
