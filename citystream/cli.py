"""The `citystream` command: `up` (everything, one command), `serve` (HTTP only) and `migrate`.

Why a single entry point: a developer gets a complete platform with `citystream up` and nothing else, while
an operator with a managed PostgreSQL and broker runs `citystream migrate` and `citystream serve` against it.
Configuration comes from CITYSTREAM_* environment variables; command-line flags override them.

`up` is a small supervisor: PostgreSQL, Mosquitto, the API (`serve`, with the MQTT bridge inside) and the
demo each run in a process of their own, so a crash of one (a segfault in a native library, say) takes
none of the others with it; the one that died is logged and started again (citystream/supervisor.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from citystream import logs
from citystream.embedded import (
    EmbeddedMosquitto,
    EmbeddedPostgres,
    EmbeddedServiceError,
    ensure_port_free,
)
from citystream.settings import Settings
from citystream.supervisor import CommandChild, Supervisor
from mqtt_bridge.address import BrokerAddress

if TYPE_CHECKING:
    import uvicorn

HTTP_PORT_HINT = "choose another with --http-port (or CITYSTREAM_HTTP_PORT)"
MQTT_PORT_HINT = "choose another with --mqtt-port (or CITYSTREAM_MQTT_PORT)"
MQTT_WS_PORT_HINT = "choose another with --mqtt-ws-port (or CITYSTREAM_MQTT_WS_PORT)"

ENV_HELP = """\
environment (flags override these):
  CITYSTREAM_DATABASE_URL   external PostgreSQL with PostGIS, e.g. postgresql://user:pw@db:5432/citystream;
                            unset: `up` and `migrate` use a private cluster under --data-dir
  CITYSTREAM_MQTT_URL       external MQTT broker, e.g. mqtt://user:password@broker:1883; unset: `up` starts
                            Mosquitto with accounts `citystream` (the platform) and a sensor account
  CITYSTREAM_MQTT_HOST      address the embedded Mosquitto listens on (default 127.0.0.1, whatever --host is)
  CITYSTREAM_MQTT_SENSOR_USER, CITYSTREAM_MQTT_SENSOR_PASSWORD
                            the embedded broker's sensor account (default `sensor`, password generated once
                            and kept in DATA_DIR/mosquitto/sensor-password)
  CITYSTREAM_MQTT_ANONYMOUS_READ
                            topic filter anonymous MQTT clients may read (default v1.1/#; empty: refused)
  CITYSTREAM_HOST, CITYSTREAM_HTTP_PORT, CITYSTREAM_MQTT_PORT, CITYSTREAM_MQTT_WS_PORT, CITYSTREAM_DATA_DIR,
  CITYSTREAM_PUBLIC_URL,
  CITYSTREAM_DEFAULT_TOP, CITYSTREAM_MAX_TOP, CITYSTREAM_MAX_BODY_BYTES, CITYSTREAM_STATEMENT_TIMEOUT_MS,
  CITYSTREAM_DB_POOL_SIZE
  CITYSTREAM_LOG_FORMAT     json (default: one object per line on stdout) or text
  CITYSTREAM_LOG_LEVEL      debug, info (default), warning or error
  CITYSTREAM_ACCESS_LOG     HTTP access records: all (default), writes (not GET/HEAD, and errors) or off
"""

log = logging.getLogger("citystream.cli")


class _Shutdown(Exception):
    """Raised by our SIGINT/SIGTERM handler so every `finally` runs and services stop in order."""


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    # Further signals are ignored while we shut down: a second Ctrl-C must not abandon half-stopped children.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Shutdown(signum)


def _install_stop_handlers() -> None:
    """uvicorn replaces these while serving and re-raises the signal it caught afterwards; with ours in
    place that re-raise becomes `_Shutdown` (clean exit 0) instead of death by the default SIGTERM action."""
    signal.signal(signal.SIGINT, _on_stop_signal)
    signal.signal(signal.SIGTERM, _on_stop_signal)


def _say(message: str) -> None:
    """What the command is doing, as a log record (stdout, the configured format)."""
    log.info(message)


# ------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citystream",
        description=(
            "CityStream: OGC SensorThings API 1.1 on PostgreSQL/PostGIS and Mosquitto.\n"
            "Run `citystream up` for a complete local platform; `citystream COMMAND --help` for details."
        ),
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add_http(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes it)")
        p.add_argument("--http-port", type=int, help="HTTP port of the API (default 8080)")

    def add_data_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir",
            type=Path,
            help="where the embedded PostgreSQL and Mosquitto keep their data (default ./.citystream)",
        )

    up = sub.add_parser(
        "up",
        help="start the whole platform: PostgreSQL, Mosquitto, migrations, HTTP API",
        description=(
            "Start everything needed, in the foreground. Without CITYSTREAM_DATABASE_URL a private "
            "PostgreSQL cluster runs under DATA_DIR/postgres (on a free loopback port it remembers); without "
            "CITYSTREAM_MQTT_URL a private Mosquitto runs under DATA_DIR/mosquitto on --mqtt-host:--mqtt-port "
            "(loopback unless --mqtt-host says otherwise). "
            "Migrations are applied, then the API is served on --host:--http-port. Each part runs in a "
            "process of its own and is started again if it dies (logged with the reason), the others "
            "untouched. Ctrl-C or SIGTERM stops the demo, the API, then Mosquitto, then PostgreSQL. Data is "
            "kept in DATA_DIR between runs."
        ),
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_http(up)
    up.add_argument("--mqtt-port", type=int, help="port of the embedded Mosquitto (default 1883)")
    up.add_argument(
        "--mqtt-ws-port", type=int, help="MQTT over WebSocket port of the embedded Mosquitto (default 9001)"
    )
    up.add_argument(
        "--mqtt-host",
        help=(
            "address the embedded Mosquitto listens on (default 127.0.0.1, independent of --host). Anonymous "
            "clients may read v1.1/# there (CITYSTREAM_MQTT_ANONYMOUS_READ) and MQTT is not encrypted: expose "
            "it only on a trusted network"
        ),
    )
    up.add_argument("--demo", action="store_true",
                    help="also run the demo city: create it (once) and publish its observations over MQTT")
    add_demo_options(up)
    add_data_dir(up)

    serve = sub.add_parser(
        "serve",
        help="serve the HTTP API only, against CITYSTREAM_DATABASE_URL",
        description=(
            "Serve the HTTP API against the database in CITYSTREAM_DATABASE_URL (required). Starts nothing "
            "else and does not migrate: run `citystream migrate` first. For containers and managed databases."
        ),
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_http(serve)
    serve.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)  # run by `up`: no banner

    migrate = sub.add_parser(
        "migrate",
        help="apply pending database migrations and exit",
        description=(
            "Apply pending schema migrations to CITYSTREAM_DATABASE_URL, or, when it is unset, to the "
            "embedded cluster in DATA_DIR/postgres (started for the purpose and stopped again). "
            "Safe to run repeatedly."
        ),
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_dir(migrate)

    bridge = sub.add_parser(
        "bridge",
        help="run MQTT bridge processes (create over MQTT, notifications) without the HTTP API",
        description=(
            "Connect to CITYSTREAM_MQTT_URL (the platform account) and CITYSTREAM_DATABASE_URL (both required) "
            "and store the Observations published on the STA create topics; publish STA notifications. "
            "Bridges share the stream through an MQTT 5 shared subscription, also with the bridge inside "
            "`citystream up`/`serve`. Each worker keeps a persistent session (client id "
            "CITYSTREAM_MQTT_CLIENT_ID-wN): run the same number of workers again after a stop, since a "
            "session without its worker holds its share of the stream until the worker returns."
        ),
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bridge.add_argument("--workers", type=int, default=1, help="bridge processes to run (default 1)")
    bridge.add_argument("--worker", type=int, help=argparse.SUPPRESS)

    demo = sub.add_parser(
        "demo",
        help="create the demo city and publish its observations over MQTT to a running platform",
        description=(
            "Create a small Hamburg-like city (bike counters, e-charging and bike-share stations, air quality, "
            "noise, traffic counts) through the STA API at --url and publish its observations over MQTT, with "
            "an accelerated clock. The MQTT account is taken from --mqtt-url (a URL without password: "
            "CITYSTREAM_MQTT_SENSOR_USER and CITYSTREAM_MQTT_SENSOR_PASSWORD), else from the embedded broker "
            "in DATA_DIR (the sensor account of `citystream up`)."
        ),
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--url", help="STA service root (default http://127.0.0.1:HTTP_PORT/v1.1)")
    demo.add_argument("--mqtt-url", help="mqtt://user:password@host:port of a sensor account")
    demo.add_argument("--http-port", type=int, help="port of the running platform (default 8080)")
    demo.add_argument("--mqtt-port", type=int, help="port of the embedded Mosquitto (default 1883)")
    add_demo_options(demo)
    add_data_dir(demo)
    return parser


def add_demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--demo-speed", type=float, default=60.0,
                   help="how much faster than real time the demo clock runs (default 60; 1 = real time)")
    p.add_argument("--demo-seed", type=int, default=1, help="seed of the demo city's values (default 1)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("citystream")
    except PackageNotFoundError:
        return "unknown"


def settings_from(args: argparse.Namespace) -> Settings:
    """Environment first, then every flag that was given."""
    settings = Settings.from_env()
    overrides: dict[str, Any] = {}
    for name in ("host", "http_port", "mqtt_host", "mqtt_port", "mqtt_ws_port", "data_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return dataclasses.replace(settings, **overrides)


# ------------------------------------------------------------------------------------------- commands


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


def _server(settings: Settings, database_url: str) -> uvicorn.Server:
    import uvicorn

    from citystream.app import create_app

    app = create_app(settings, database_url)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        timeout_graceful_shutdown=10,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's records go through citystream.logs like everyone else's
        access_log=False,  # citystream.access_log logs requests, at a fraction of uvicorn's cost per line
    )
    return uvicorn.Server(config)


def _banner(lines: list[str]) -> None:
    """Where things are, for the person who started us (plain text on stdout, not a log record)."""
    print("\n".join(["", "CityStream is up:", *lines, "Press Ctrl-C to stop.", ""]), flush=True)


def _announce_when_started(server: uvicorn.Server, lines: list[str]) -> None:
    """Print where things are once the socket is listening (not before: the port might still fail)."""

    def watch() -> None:
        while not server.should_exit:
            if server.started:
                _banner(lines)
                return
            time.sleep(0.05)

    threading.Thread(target=watch, name="citystream-announce", daemon=True).start()


def _serve(server: uvicorn.Server) -> int:
    server.run()
    return 0 if server.started else 1


def _http_base(settings: Settings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.http_port}"


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    speed: float
    seed: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoOptions:
        return cls(args.demo_speed, args.demo_seed)


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
    })
    return CommandChild("API", [*_self_command(), "serve", "--supervised"], env)


def _demo_child(sta_url: str, account: BrokerAddress, options: DemoOptions) -> CommandChild:
    """`citystream demo` against our API, publishing as the sensor account (its password in the env)."""
    env = _child_env({"CITYSTREAM_MQTT_SENSOR_USER": account.username,
                      "CITYSTREAM_MQTT_SENSOR_PASSWORD": account.password})
    argv = [*_self_command(), "demo", "--url", sta_url, "--mqtt-url", account.url,
            "--demo-speed", repr(options.speed), "--demo-seed", str(options.seed)]
    return CommandChild("demo", argv, env, stop_timeout=10.0)


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
        if not settings.mqtt_url and not settings.mqtt_public_urls:  # the embedded broker: announce both listeners
            ws = dataclasses.replace(sensor, port=settings.mqtt_ws_port).url.replace("mqtt://", "ws://", 1)
            settings = dataclasses.replace(settings, mqtt_public_urls=(sensor.url, ws))
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
                f"  PostgreSQL        {shown_db}",
                f"  data directory    {settings.data_dir.absolute()}",
            ])
            if demo is not None:
                supervisor.start(_demo_child(f"{base}/v1.1", sensor, demo))
            supervisor.run()
        finally:
            supervisor.stop()


def cmd_serve(settings: Settings, supervised: bool = False) -> int:
    if not settings.database_url:
        print(
            "citystream: error: `serve` needs CITYSTREAM_DATABASE_URL (postgresql://...); "
            "use `citystream up` for the embedded database",
            file=sys.stderr,
        )
        return 2
    ensure_port_free(settings.host, settings.http_port, "HTTP", HTTP_PORT_HINT)
    server = _server(settings, settings.database_url)
    if not supervised:  # under `up`, the supervisor announces the whole platform
        _announce_when_started(server, [f"  SensorThings API  {_http_base(settings)}/v1.1"])
    return _serve(server)


def cmd_bridge(settings: Settings, workers: int, worker: int | None) -> int:
    if not settings.database_url or not settings.mqtt_url:
        print("citystream: error: `bridge` needs CITYSTREAM_DATABASE_URL and CITYSTREAM_MQTT_URL "
              "(the platform account, mqtt://citystream:PASSWORD@host:1883)", file=sys.stderr)
        return 2
    if workers < 1:
        print("citystream: error: --workers must be at least 1", file=sys.stderr)
        return 2
    from citystream import bridge_process

    if worker is None and workers > 1:
        return bridge_process.run_workers(workers)
    import uvloop  # the bridge's socket and event-loop overhead, as for the API under uvicorn

    uvloop.install()
    import asyncio

    asyncio.run(bridge_process.run_bridge(settings, settings.database_url,
                                          bridge_process.worker_client_id(settings, worker or 1)))
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """The demo against a running platform; credentials from --mqtt-url or the embedded broker's files."""
    import asyncio

    from citystream.demo import run_demo

    sta_url = args.url or f"{_http_base(settings)}/v1.1"
    if args.mqtt_url:
        account = BrokerAddress.from_url(args.mqtt_url)
        if account.password is None and settings.mqtt_sensor_password:  # how `up` hands over its account
            account = dataclasses.replace(account, username=settings.mqtt_sensor_user,
                                          password=settings.mqtt_sensor_password)
    else:
        password_file = settings.data_dir / "mosquitto" / "sensor-password"
        password = settings.mqtt_sensor_password or (
            password_file.read_text().strip() if password_file.exists() else None)
        if password is None:
            print(f"citystream: error: no sensor password: give --mqtt-url mqtt://user:password@host:port or run "
                  f"`citystream up` with this --data-dir first ({password_file} is missing)", file=sys.stderr)
            return 2
        account = BrokerAddress(settings.mqtt_host, settings.mqtt_port, settings.mqtt_sensor_user, password)
    stop = asyncio.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run_demo(sta_url, account.url, username=account.username, password=account.password,
                       speed=args.demo_speed, seed=args.demo_seed, stop=stop)

    asyncio.run(main())
    return 0


def cmd_migrate(settings: Settings) -> int:
    with _database(settings) as (database_url, _shown):
        _migrate(database_url)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    logs.configure(settings.log_level, settings.log_format)
    _install_stop_handlers()
    commands: dict[str, Callable[[Settings], int]] = {"up": cmd_up, "serve": cmd_serve, "migrate": cmd_migrate}
    try:
        if args.command == "up":
            return cmd_up(settings, DemoOptions.from_args(args) if args.demo else None)
        if args.command == "serve":
            return cmd_serve(settings, args.supervised)
        if args.command == "bridge":
            return cmd_bridge(settings, args.workers, args.worker)
        if args.command == "demo":
            return cmd_demo(settings, args)
        return commands[args.command](settings)
    except _Shutdown:
        _say("stopped")
        return 0
    except EmbeddedServiceError as exc:
        print(f"citystream: error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
