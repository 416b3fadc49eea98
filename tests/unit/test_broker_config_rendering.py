"""The generated Mosquitto set-up without a broker: the deploy/ copy is the rendered file, and the broker
settings (flags, environment, account names, the plugin's decision URL) are read and checked before anything
starts.

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
    render_mosquitto_conf,
)
from citystream.embedded.mosquitto_config import DEPLOY_DECISION_URL
from citystream.settings import Settings

COMPOSE = DEPLOY_MOSQUITTO_DIR.parent.parent / "docker-compose.yml"


def test_deploy_files_are_the_rendered_ones() -> None:
    """deploy/mosquitto/mosquitto.conf is what the code renders: no hand-kept second copy. There is no ACL
    file any more (the plugin decides everything), neither beside it nor mounted by docker-compose."""
    regen = (
        "regenerate with: .venv/bin/python -c 'from citystream.embedded import write_deploy_mosquitto_files; "
        "write_deploy_mosquitto_files()'"
    )
    rendered = render_deploy_mosquitto_files()
    assert set(rendered) == {"mosquitto.conf"}
    for name, text in rendered.items():
        assert (DEPLOY_MOSQUITTO_DIR / name).read_text() == text, f"deploy/mosquitto/{name} is stale; {regen}"
    assert not (DEPLOY_MOSQUITTO_DIR / "acl").exists(), "deploy/mosquitto/acl is no longer used: delete it"
    conf = rendered["mosquitto.conf"].splitlines()
    assert not any(line.startswith("acl_file") for line in conf)
    compose = COMPOSE.read_text()
    assert "dockerfile: deploy/mosquitto/Dockerfile" in compose  # the image with the plugin
    for mount in ("mosquitto.conf:/mosquitto/config/mosquitto.conf", "entrypoint.sh:/citystream/entrypoint.sh"):
        assert f"./deploy/mosquitto/{mount}:ro" in compose
    assert "/mosquitto/config/acl" not in compose


def test_deploy_broker_asks_the_compose_app() -> None:
    """Compose's broker asks the `app` service, on the port the app listens on, with the secret file that
    entrypoint.sh writes beside the password file."""
    conf = render_deploy_mosquitto_files()["mosquitto.conf"].splitlines()
    assert f"plugin_opt_decision_url {DEPLOY_DECISION_URL}" in conf
    assert "plugin_opt_decision_secret_file /mosquitto/auth/decision-secret" in conf
    assert "password_file /mosquitto/auth/passwd" in conf
    assert DEPLOY_DECISION_URL.startswith("http://app:")
    port = DEPLOY_DECISION_URL.removeprefix("http://app:").split("/", 1)[0]
    compose = COMPOSE.read_text()
    assert f'CITYSTREAM_HTTP_PORT: "{port}"' in compose
    entrypoint = (DEPLOY_MOSQUITTO_DIR / "entrypoint.sh").read_text()
    assert '"$auth_dir/decision-secret"' in entrypoint


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
     ("sensor", "v1.1/a+"), ("sensor", "v1.1/#\ntopic readwrite #"), ('se"nsor', "v1.1/#"),
     ("sensor", "v1.1/# \nplugin_opt_readable #")],
)
def test_bad_account_settings_are_refused_before_start(tmp_path: Path, sensor: str, anonymous: str) -> None:
    """The account name goes unescaped into the principal the plugin stamps (JSON) and, like the anonymous
    filters, into plugin_opt_ lines: anything that could break out of either is refused."""
    with pytest.raises(EmbeddedServiceError):
        EmbeddedMosquitto(tmp_path, find_free_port(), sensor_username=sensor, anonymous_read=anonymous)
    with pytest.raises(EmbeddedServiceError):
        EmbeddedMosquitto(tmp_path, find_free_port(), sensor_password="two\nlines")


def _conf(**options: object) -> list[str]:
    base: dict[str, object] = dict(
        host="127.0.0.1", port=1883, websocket_port=None, persistence_location="/x/", password_file="/x/p",
        log_file=None, run_as="mosquitto", header="h", auth_plugin="/x/citystream_auth.so")
    return render_mosquitto_conf(**{**base, **options}).splitlines()  # type: ignore[arg-type]


@pytest.mark.parametrize(("options", "what"), [
    ({"decision_url": "http://127.0.0.1:1/internal/mqtt"}, "without a secret file"),
    ({"decision_url": "http://127.0.0.1:1/internal/mqtt", "decision_secret_file": ""}, "empty secret file"),
    ({"decision_url": "http://x/ y", "decision_secret_file": "/x/s"}, "a space"),
    ({"decision_url": "http://x/\nplugin_opt_platform_user sensor", "decision_secret_file": "/x/s"}, "a line break"),
    ({"sensor_username": "citystream"}, "the platform's name as the device account"),
    ({"sensor_username": 'a"b'}, "a quote in the device account"),
    ({"anonymous_read": "v1.1/#\nplugin_opt_readable #"}, "a line break in anonymous_read"),
    ({"bridge_client_id": "two words"}, "a bad bridge client id"),
])
def test_render_refuses_what_would_break_the_plugins_options(options: dict[str, object], what: str) -> None:
    with pytest.raises(EmbeddedServiceError):
        _conf(**options)


def test_rendered_conf_leaves_every_decision_to_the_plugin() -> None:
    """No acl_file: Mosquitto would check it besides the plugin. Anonymous clients are let in exactly when
    they may read something, and the device account and the decision URL are optional."""
    conf = _conf(decision_url="http://127.0.0.1:8080/internal/mqtt", decision_secret_file="/x/secret")
    assert not any(line.startswith(("acl_file", "plugin_opt_acl")) for line in conf)
    assert "allow_anonymous true" in conf and "plugin_opt_anonymous_read v1.0/# v1.1/#" in conf
    assert "plugin_opt_account_user sensor" in conf
    assert "plugin_opt_decision_url http://127.0.0.1:8080/internal/mqtt" in conf
    assert "plugin_opt_decision_secret_file /x/secret" in conf
    closed = _conf(anonymous_read="", sensor_username=None)
    assert "allow_anonymous false" in closed
    assert not any(line.startswith(("plugin_opt_anonymous_read", "plugin_opt_account_user",
                                    "plugin_opt_decision_")) for line in closed)
