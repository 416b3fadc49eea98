"""The generated Mosquitto set-up without a broker: the deploy/ copies are the rendered files, and the broker
settings (flags, environment, account names) are read and checked before anything starts.

Moved here from tests/mqtt/test_broker_config.py, which keeps the tests that run a real Mosquitto.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from citystream.cli import build_parser, settings_from
from citystream.embedded import (
    DEPLOY_MOSQUITTO_DIR,
    EmbeddedMosquitto,
    EmbeddedServiceError,
    find_free_port,
    render_deploy_mosquitto_files,
)
from citystream.settings import Settings


def test_deploy_files_are_the_rendered_ones() -> None:
    """deploy/mosquitto/{mosquitto.conf,acl} are what the code renders: no hand-kept second copy."""
    regen = (
        "regenerate with: .venv/bin/python -c 'from citystream.embedded import write_deploy_mosquitto_files; "
        "write_deploy_mosquitto_files()'"
    )
    for name, text in render_deploy_mosquitto_files().items():
        assert (DEPLOY_MOSQUITTO_DIR / name).read_text() == text, f"deploy/mosquitto/{name} is stale; {regen}"
    compose = (DEPLOY_MOSQUITTO_DIR.parent.parent / "docker-compose.yml").read_text()
    assert "dockerfile: deploy/mosquitto/Dockerfile" in compose  # the image with the plugin
    for mount in ("mosquitto.conf:/mosquitto/config/mosquitto.conf", "acl:/mosquitto/config/acl",
                  "entrypoint.sh:/citystream/entrypoint.sh"):
        assert f"./deploy/mosquitto/{mount}:ro" in compose


def test_settings_and_flags() -> None:
    parser = build_parser()
    with pytest.MonkeyPatch.context() as mp:
        for name in ("CITYSTREAM_MQTT_WS_PORT", "CITYSTREAM_MQTT_SENSOR_USER", "CITYSTREAM_MQTT_SENSOR_PASSWORD",
                     "CITYSTREAM_MQTT_ANONYMOUS_READ"):
            mp.delenv(name, raising=False)
        default = settings_from(parser.parse_args(["up"]))
        assert (default.mqtt_ws_port, default.mqtt_sensor_user, default.mqtt_sensor_password,
                default.mqtt_anonymous_read) == (9001, "sensor", None, "v1.0/# v1.1/#")
        assert settings_from(parser.parse_args(["up", "--mqtt-ws-port", "9100"])).mqtt_ws_port == 9100
        mp.setenv("CITYSTREAM_MQTT_WS_PORT", "9200")
        mp.setenv("CITYSTREAM_MQTT_SENSOR_USER", "meter")
        mp.setenv("CITYSTREAM_MQTT_SENSOR_PASSWORD", "s3cret")
        mp.setenv("CITYSTREAM_MQTT_ANONYMOUS_READ", "")
        env = Settings.from_env()
        assert (env.mqtt_ws_port, env.mqtt_sensor_user, env.mqtt_sensor_password, env.mqtt_anonymous_read) == (
            9200, "meter", "s3cret", "")
        assert "s3cret" not in repr(env)


@pytest.mark.parametrize(
    ("sensor", "anonymous"),
    [("citystream", "v1.1/#"), ("has space", "v1.1/#"), ("", "v1.1/#"), ("sensor", "v1.1/#/x"),
     ("sensor", "v1.1/a+"), ("sensor", "v1.1/#\ntopic readwrite #")],
)
def test_bad_account_settings_are_refused_before_start(tmp_path: Path, sensor: str, anonymous: str) -> None:
    with pytest.raises(EmbeddedServiceError):
        EmbeddedMosquitto(tmp_path, find_free_port(), sensor_username=sensor, anonymous_read=anonymous)
    with pytest.raises(EmbeddedServiceError):
        EmbeddedMosquitto(tmp_path, find_free_port(), sensor_password="two\nlines")
