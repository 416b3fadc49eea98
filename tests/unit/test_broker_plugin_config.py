"""The citystream_auth plugin's configuration without a broker: what the rendered mosquitto.conf passes the
plugin, that its names are the bridge's, that a bad bridge client id is refused before anything starts, and
that the source ships with the package and builds for docker-compose.

Moved here from tests/mqtt/test_broker_security.py, which keeps the tests that compile the plugin or run a
real Mosquitto (and imports BRIDGE_FILTER from here).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

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
from citystream.settings import Settings
from mqtt_bridge import identity
from mqtt_bridge.bridge import BridgeConfig

REPO = Path(__file__).resolve().parents[2]
BRIDGE_FILTER = "$share/citystream/v1.1/+/Observations"  # what the bridge subscribes to (one of its filters)


def test_the_source_ships_and_quickstart_installs_the_build_packages() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["citystream"]
    source = AUTH_PLUGIN_SOURCE.relative_to(REPO / "citystream")
    assert any(source.match(pattern) for pattern in patterns), patterns
    quickstart = (REPO / "scripts" / "quickstart.sh").read_text()
    for package in AUTH_PLUGIN_PACKAGES.split():
        assert f" {package}" in quickstart, package
    assert "mosquitto_broker.h" in quickstart  # system_ready checks the headers too


def test_names_match_the_bridge() -> None:
    assert BridgeConfig().shared_group == identity.SHARED_GROUP
    assert BridgeConfig().client_id == Settings().mqtt_client_id == identity.CLIENT_ID
    assert BRIDGE_FILTER.startswith(f"$share/{identity.SHARED_GROUP}/")


def test_conf_loads_the_plugin_with_its_options() -> None:
    conf = render_mosquitto_conf(
        host="127.0.0.1", port=1883, websocket_port=None, persistence_location="/x/", password_file="/x/p",
        acl_file="/x/a", log_file=None, run_as="mosquitto", anonymous=True, header="h",
        auth_plugin="/x/citystream_auth.so", bridge_client_id="meter-bridge").splitlines()
    start = conf.index("plugin /x/citystream_auth.so")
    assert conf[start + 1:start + 4] == [f"plugin_opt_platform_user {PLATFORM_MQTT_USER}",
                                         "plugin_opt_bridge_client_id meter-bridge",
                                         f"plugin_opt_bridge_group {identity.SHARED_GROUP}"]
    assert start < conf.index("listener 1883 127.0.0.1")
    deploy = (DEPLOY_MOSQUITTO_DIR / "mosquitto.conf").read_text().splitlines()
    assert f"plugin {DEPLOY_AUTH_PLUGIN_PATH}" in deploy
    assert f"plugin_opt_bridge_client_id {identity.CLIENT_ID}" in deploy


@pytest.mark.parametrize("client_id", ["", "two words", "line\nbreak", "tab\t", "x" * 1025])
def test_a_bad_bridge_client_id_is_refused_before_start(tmp_path: Path, client_id: str) -> None:
    with pytest.raises(EmbeddedServiceError, match="CITYSTREAM_MQTT_CLIENT_ID"):
        EmbeddedMosquitto(tmp_path, find_free_port(), bridge_client_id=client_id)


def test_compose_builds_its_broker_with_the_plugin() -> None:
    """docker-compose's mqtt service is built from deploy/mosquitto/Dockerfile, which compiles the same source
    and installs it where deploy/mosquitto/mosquitto.conf loads it from. (No Docker engine runs here.)"""
    compose = (REPO / "docker-compose.yml").read_text()
    assert "dockerfile: deploy/mosquitto/Dockerfile" in compose
    dockerfile = (DEPLOY_MOSQUITTO_DIR / "Dockerfile").read_text()
    assert AUTH_PLUGIN_SOURCE.relative_to(REPO).as_posix() in dockerfile
    assert DEPLOY_AUTH_PLUGIN_PATH in dockerfile
    for package in ("mosquitto-dev", "libmosquitto-dev", "gcc", "libc6-dev"):
        assert package in dockerfile
