"""The `citystream` command: `up` (everything, one command), `serve` (HTTP only) and `migrate`.

Why a single entry point: a developer gets a complete platform with `citystream up` and nothing else, while
an operator with a managed PostgreSQL and broker runs `citystream migrate` and `citystream serve` against it.
Configuration comes from CITYSTREAM_* environment variables; command-line flags override them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from citystream.embedded import (
    EmbeddedMosquitto,
    EmbeddedPostgres,
    EmbeddedServiceError,
    ensure_port_free,
)
from citystream.settings import Settings

if TYPE_CHECKING:
    import uvicorn

HTTP_PORT_HINT = "choose another with --http-port (or CITYSTREAM_HTTP_PORT)"
MQTT_PORT_HINT = "choose another with --mqtt-port (or CITYSTREAM_MQTT_PORT)"

ENV_HELP = """\
environment (flags override these):
  CITYSTREAM_DATABASE_URL   external PostgreSQL with PostGIS, e.g. postgresql://user:pw@db:5432/citystream;
                            unset: `up` and `migrate` use a private cluster under --data-dir
  CITYSTREAM_MQTT_URL       external MQTT broker, e.g. mqtt://broker:1883; unset: `up` starts Mosquitto
  CITYSTREAM_MQTT_HOST      address the embedded Mosquitto listens on (default 127.0.0.1, whatever --host is;
                            it accepts anonymous clients)
  CITYSTREAM_HOST, CITYSTREAM_HTTP_PORT, CITYSTREAM_MQTT_PORT, CITYSTREAM_DATA_DIR, CITYSTREAM_PUBLIC_URL,
  CITYSTREAM_DEFAULT_TOP, CITYSTREAM_MAX_TOP, CITYSTREAM_MAX_BODY_BYTES, CITYSTREAM_STATEMENT_TIMEOUT_MS,
  CITYSTREAM_DB_POOL_SIZE
"""


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
    print(f"citystream: {message}", flush=True)


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
            "Migrations are applied, then the API is served on --host:--http-port. Ctrl-C or SIGTERM stops "
            "the API, then Mosquitto, then PostgreSQL. Data is kept in DATA_DIR between runs."
        ),
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_http(up)
    up.add_argument("--mqtt-port", type=int, help="port of the embedded Mosquitto (default 1883)")
    up.add_argument(
        "--mqtt-host",
        help=(
            "address the embedded Mosquitto listens on (default 127.0.0.1, independent of --host). It accepts "
            "anonymous clients: expose it only on a trusted network"
        ),
    )
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
    return parser


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
    for name in ("host", "http_port", "mqtt_host", "mqtt_port", "data_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return dataclasses.replace(settings, **overrides)


# ------------------------------------------------------------------------------------------- commands


def _migrate(dsn: str) -> list[str]:
    from sensorthings.migrate import apply_migrations

    applied = apply_migrations(dsn)
    for name in applied:
        _say(f"applied migration {name}")
    _say(f"{len(applied)} migration(s) applied" if applied else "database schema is up to date")
    return applied


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[tuple[str, str]]:
    """The configured database, or the embedded cluster for the lifetime of the block.

    Yields (dsn, what to show): the DSN may carry a password, which must never be printed.
    """
    if settings.database_url:
        # An external URL may carry a password: show only where it points.
        yield settings.database_url, settings.database_url.rsplit("@", 1)[-1]
        return
    pg = EmbeddedPostgres(settings.data_dir / "postgres")
    _say(f"starting PostgreSQL (data in {pg.data_dir})")
    with pg:
        _say(f"PostgreSQL ready at {pg.masked_dsn} (password in {pg.password_file})")
        try:
            yield pg.dsn, pg.masked_dsn
        finally:
            _say("stopping PostgreSQL")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@contextlib.contextmanager
def _broker(settings: Settings) -> Iterator[str]:
    if settings.mqtt_url:
        yield settings.mqtt_url
        return
    # Anonymous broker: loopback unless explicitly asked otherwise, even when the API is exposed (--host).
    broker = EmbeddedMosquitto(settings.data_dir / "mosquitto", settings.mqtt_port, host=settings.mqtt_host)
    _say(f"starting Mosquitto (data in {broker.data_dir})")
    if not _is_loopback(settings.mqtt_host):
        _say(f"warning: the embedded Mosquitto accepts anonymous clients and listens on {settings.mqtt_host}")
    with broker:
        try:
            yield broker.url
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
        log_level="info",
    )
    return uvicorn.Server(config)


def _announce_when_started(server: uvicorn.Server, lines: list[str]) -> None:
    """Print where things are once the socket is listening (not before: the port might still fail)."""

    def watch() -> None:
        while not server.should_exit:
            if server.started:
                print("\n".join(["", "CityStream is up:", *lines, "Press Ctrl-C to stop.", ""]), flush=True)
                return
            time.sleep(0.05)

    threading.Thread(target=watch, name="citystream-announce", daemon=True).start()


def _serve(server: uvicorn.Server) -> int:
    server.run()
    return 0 if server.started else 1


def _http_base(settings: Settings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.http_port}"


def cmd_up(settings: Settings) -> int:
    # Check every port we will need before starting anything, so a clash costs nothing.
    ensure_port_free(settings.host, settings.http_port, "HTTP", HTTP_PORT_HINT)
    if not settings.mqtt_url:
        ensure_port_free(settings.mqtt_host, settings.mqtt_port, "MQTT", MQTT_PORT_HINT)
    with _database(settings) as (database_url, shown_db), _broker(settings) as mqtt_url:
        _migrate(database_url)
        settings = dataclasses.replace(settings, database_url=database_url, mqtt_url=mqtt_url)
        server = _server(settings, database_url)
        base = _http_base(settings)
        _announce_when_started(
            server,
            [
                f"  SensorThings API  {base}/v1.1",
                f"  health            {base}/health",
                f"  MQTT broker       {mqtt_url}",
                f"  PostgreSQL        {shown_db}",
                f"  data directory    {settings.data_dir.absolute()}",
            ],
        )
        try:
            return _serve(server)
        finally:
            _say("HTTP server stopped")


def cmd_serve(settings: Settings) -> int:
    if not settings.database_url:
        print(
            "citystream: error: `serve` needs CITYSTREAM_DATABASE_URL (postgresql://...); "
            "use `citystream up` for the embedded database",
            file=sys.stderr,
        )
        return 2
    ensure_port_free(settings.host, settings.http_port, "HTTP", HTTP_PORT_HINT)
    server = _server(settings, settings.database_url)
    _announce_when_started(server, [f"  SensorThings API  {_http_base(settings)}/v1.1"])
    return _serve(server)


def cmd_migrate(settings: Settings) -> int:
    with _database(settings) as (database_url, _shown):
        _migrate(database_url)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    _install_stop_handlers()
    commands = {"up": cmd_up, "serve": cmd_serve, "migrate": cmd_migrate}
    try:
        return commands[args.command](settings)
    except _Shutdown:
        _say("stopped")
        return 0
    except EmbeddedServiceError as exc:
        print(f"citystream: error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
