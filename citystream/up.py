"""`citystream up`: the database and broker (the configured ones, or an embedded PostgreSQL and Mosquitto
for the lifetime of the command), the migrations, the API and the demo as supervised processes of their own,
and the banner that says where everything is. `migrate` uses the same database and migrations, `serve` the
banner.

Apart from cli.py, which parses the command line and runs the other commands: this is the part that starts
and stops the platform's processes (with citystream/supervisor.py); the others run one process against what
already exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import ipaddress
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from citystream.auth.bootstrap import PlatformKey, ensure_platform_keys
from citystream.cli_args import HTTP_PORT_HINT, MQTT_PORT_HINT, MQTT_WS_PORT_HINT, DemoOptions
from citystream.embedded import EmbeddedMosquitto, EmbeddedPostgres, ensure_port_free
from citystream.settings import Settings
from citystream.supervisor import CommandChild, Supervisor
from mqtt_bridge.address import BrokerAddress

log = logging.getLogger("citystream.cli")  # the `citystream` command's records, as docs/configuration.md names them


def _say(message: str) -> None:
    """What the command is doing, as a log record (stdout, the configured format)."""
    log.info(message)


def _migrate(dsn: str) -> list[str]:
    from sensorthings.schema.migrate import apply_migrations

    applied = apply_migrations(dsn)
    for name in applied:
        _say(f"applied migration {name}")
    _say(f"{len(applied)} migration(s) applied" if applied else "database schema is up to date")
    return applied


@contextlib.contextmanager
def _database(settings: Settings, on_started: Callable[[EmbeddedPostgres], None] | None = None
              ) -> Iterator[tuple[str, str]]:
    """The configured database, or the embedded cluster for the lifetime of the block.

    Yields (dsn, what to show): the DSN may carry a password, which must never be printed. `on_started`
    receives the embedded cluster once it runs (`up` supervises it).
    """
    if settings.database_url:
        # An external URL may carry a password: show only where it points.
        yield settings.database_url, settings.database_url.rsplit("@", 1)[-1]
        return
    # The API and broker ports are free now only because their servers start after the database.
    pg = EmbeddedPostgres(settings.data_dir / "postgres",
                          avoid_ports=(settings.http_port, settings.mqtt_port, settings.mqtt_ws_port))
    _say(f"starting PostgreSQL (data in {pg.data_dir})")
    with pg:
        _say(f"PostgreSQL ready at {pg.masked_dsn} (password in {pg.password_file})")
        if on_started is not None:
            on_started(pg)
        try:
            yield pg.dsn, pg.masked_dsn
        finally:
            _say("stopping PostgreSQL")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _masked_url(url: str) -> str:
    """`url` with the password of its userinfo (if any) replaced by `***`."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hostpart}"


@contextlib.contextmanager
def _broker(settings: Settings, on_started: Callable[[EmbeddedMosquitto], None] | None = None
            ) -> Iterator[tuple[str, list[str], BrokerAddress]]:
    """The configured broker, or the embedded Mosquitto for the lifetime of the block.

    Yields (URL the platform connects with, banner lines, the account a sensor - the demo - publishes
    with): the URL carries the platform account's password, which must never be printed. `on_started`
    receives the embedded broker once it runs (`up` supervises it).
    """
    if settings.mqtt_url:
        yield (settings.mqtt_url, [f"  MQTT broker       {_masked_url(settings.mqtt_url)}"],
               BrokerAddress.from_url(settings.mqtt_url))
        return
    # Loopback unless explicitly asked otherwise, even when the API is exposed (--host).
    broker = EmbeddedMosquitto(
        settings.data_dir / "mosquitto",
        settings.mqtt_port,
        host=settings.mqtt_host,
        websocket_port=settings.mqtt_ws_port,
        sensor_username=settings.mqtt_sensor_user,
        sensor_password=settings.mqtt_sensor_password,
        anonymous_read=settings.mqtt_anonymous_read,
        bridge_client_id=settings.mqtt_client_id,
        decision_url=_decision_url(settings),
    )
    _say(f"starting Mosquitto (data in {broker.data_dir})")
    if not _is_loopback(settings.mqtt_host):
        log.warning(
            f"the embedded Mosquitto listens on {settings.mqtt_host} without TLS"
            + (f"; anonymous clients may read {settings.mqtt_anonymous_read}" if settings.mqtt_anonymous_read else "")
        )
    with broker:
        where = (
            f"password in {broker.sensor_password_file}"
            if broker.sensor_password_generated
            else "password from CITYSTREAM_MQTT_SENSOR_PASSWORD"
        )
        anonymous = (
            f"may read {settings.mqtt_anonymous_read}" if settings.mqtt_anonymous_read else "refused"
        )
        lines = [
            f"  MQTT broker       {broker.url}",
            f"  MQTT WebSocket    {broker.websocket_url}",
            f"  MQTT sensors      user {broker.sensor_username!r}, {where}",
            f"  MQTT anonymous    {anonymous}",
        ]
        _say(f"Mosquitto ready at {broker.url} (platform account {broker.platform_username!r}, password in "
             f"{broker.platform_password_file})")
        if on_started is not None:
            on_started(broker)
        try:
            sensor = BrokerAddress(broker.host, broker.port, broker.sensor_username, broker.sensor_password)
            yield broker.platform_url, lines, sensor
        finally:
            _say("stopping Mosquitto")


def _banner(lines: list[str]) -> None:
    """Where things are, for the person who started us (plain text on stdout, not a log record)."""
    print("\n".join(["", "CityStream is up:", *lines, "Press Ctrl-C to stop.", ""]), flush=True)


def _http_base(settings: Settings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.http_port}"


def _self_command() -> list[str]:
    """How to run `citystream` again: the script next to our interpreter, else `python -m`."""
    script = Path(sys.executable).with_name("citystream")
    return [str(script)] if script.exists() else [sys.executable, "-m", "citystream.cli"]


def _child_env(values: dict[str, str | None]) -> dict[str, str]:
    """Our environment with `values` set (None: removed): how settings, secrets included, reach a child."""
    env = dict(os.environ)
    for name, value in values.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _api_child(settings: Settings) -> CommandChild:
    """`citystream serve` with what `up` worked out: the URLs (with their passwords), where to listen and the
    MQTT endpoints to announce. Everything else it reads from the same CITYSTREAM_* variables as we did."""
    env = _child_env({
        "CITYSTREAM_DATABASE_URL": settings.database_url,
        "CITYSTREAM_MQTT_URL": settings.mqtt_url,
        "CITYSTREAM_HOST": settings.host,
        "CITYSTREAM_HTTP_PORT": str(settings.http_port),
        "CITYSTREAM_MQTT_PUBLIC_URLS": ",".join(settings.mqtt_public_urls),
        "CITYSTREAM_MQTT_WS_URL": settings.mqtt_ws_url,
    })
    return CommandChild("API", [*_self_command(), "serve", "--supervised"], env)


def _demo_child(sta_url: str, account: BrokerAddress, options: DemoOptions, api_key: str) -> CommandChild:
    """`citystream demo` against our API, publishing as the sensor account and creating the city with the
    demo sensor key (the secrets in the env)."""
    env = _child_env({"CITYSTREAM_MQTT_SENSOR_USER": account.username,
                      "CITYSTREAM_MQTT_SENSOR_PASSWORD": account.password, "CITYSTREAM_API_KEY": api_key})
    argv = [*_self_command(), "demo", "--url", sta_url, "--mqtt-url", account.url,
            "--demo-speed", repr(options.speed), "--demo-seed", str(options.seed)]
    return CommandChild("demo", argv, env, stop_timeout=10.0)


def _demo_key(keys: list[PlatformKey]) -> PlatformKey:
    return next(key for key in keys if key.label == "demo sensor")


def _answering(host: str, port: int, timeout: float = 3.0) -> Callable[[], bool]:
    """True while the API answers HTTP: `/`, which touches no database (a slow database must not count as
    a stalled API), answered within `timeout`."""
    target = _LOOPBACK_FOR.get(host, host)

    def probe() -> bool:
        connection = http.client.HTTPConnection(target, port, timeout=timeout)
        try:
            connection.request("GET", "/", headers={"User-Agent": "citystream-supervisor"})
            connection.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    return probe


_LOOPBACK_FOR = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
"""Where to reach a server that listens on every address."""


def _decision_url(settings: Settings) -> str:
    """Where the embedded broker's plugin asks the API about logins and publishes (citystream.broker_decisions)."""
    host = _LOOPBACK_FOR.get(settings.host, settings.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.http_port}/internal/mqtt"


def _embedded_ws_url(settings: Settings) -> str:
    """The embedded Mosquitto's WebSocket listener, as the API process reaches it."""
    host = _LOOPBACK_FOR.get(settings.mqtt_host, settings.mqtt_host)
    return f"ws://{f'[{host}]' if ':' in host else host}:{settings.mqtt_ws_port}"


def cmd_up(settings: Settings, demo: DemoOptions | None = None) -> int:
    # Check every port we will need before starting anything, so a clash costs nothing.
    ensure_port_free(settings.host, settings.http_port, "HTTP", HTTP_PORT_HINT)
    if not settings.mqtt_url:
        ensure_port_free(settings.mqtt_host, settings.mqtt_port, "MQTT", MQTT_PORT_HINT)
        ensure_port_free(settings.mqtt_host, settings.mqtt_ws_port, "MQTT websocket", MQTT_WS_PORT_HINT)
    supervisor = Supervisor()
    with _database(settings, supervisor.adopt) as (database_url, shown_db), \
            _broker(settings, supervisor.adopt) as (mqtt_url, shown_mqtt, sensor):
        _migrate(database_url)
        keys = ensure_platform_keys(database_url, settings.data_dir)
        if not settings.mqtt_url and not settings.mqtt_public_urls:  # the embedded broker: announce both listeners
            ws = dataclasses.replace(sensor, port=settings.mqtt_ws_port).url.replace("mqtt://", "ws://", 1)
            settings = dataclasses.replace(settings, mqtt_public_urls=(sensor.url, ws))
        if not settings.mqtt_url:  # /mqtt on the HTTP port relays to the embedded broker's WebSocket listener
            settings = dataclasses.replace(settings, mqtt_ws_url=_embedded_ws_url(settings))
        settings = dataclasses.replace(settings, database_url=database_url, mqtt_url=mqtt_url)
        base = _http_base(settings)
        try:
            # Ready means our API answers HTTP (uvicorn listens only after the app's start-up): a port that
            # merely accepts connections may belong to another program.
            answering = _answering(settings.host, settings.http_port)
            supervisor.start(_api_child(settings), ready=answering, alive=answering)
            _banner([
                f"  SensorThings API  {base}/v1.1",
                f"  health            {base}/health",
                *shown_mqtt,
                f"  MQTT on HTTP port {base.replace('http', 'ws', 1)}/mqtt (relayed to the broker)"
                if settings.mqtt_ws_url else "  MQTT on HTTP port off (set CITYSTREAM_MQTT_WS_URL)",
                *(f"  API key           {key.label} {key.masked} (secret in {key.file})" for key in keys),
                f"  PostgreSQL        {shown_db}",
                f"  data directory    {settings.data_dir.absolute()}",
            ])
            if demo is not None:
                supervisor.start(_demo_child(f"{base}/v1.1", sensor, demo, _demo_key(keys).token))
            supervisor.run()
        finally:
            supervisor.stop()
