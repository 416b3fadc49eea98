"""The `citystream` command: `up` (everything, one command), `serve` (HTTP only), `migrate`, and `keys` and
`users` for credentials; `rollups` for rollup Datastreams (citystream/rollup_commands.py); `retention run`
to delete expired Observations now (citystream/retention.py).

Why a single entry point: a developer gets a complete platform with `citystream up` and nothing else, while
an operator with a managed PostgreSQL and broker runs `citystream migrate` and `citystream serve` against it.
Configuration comes from CITYSTREAM_* environment variables; command-line flags override them.

`up` is a small supervisor: PostgreSQL, Mosquitto, the API (`serve`, with the MQTT bridge inside) and the
demo each run in a process of their own, so a crash of one (a segfault in a native library, say) takes
none of the others with it; the one that died is logged and started again (citystream/supervisor.py).

This module parses (the command line is defined in cli_args.py), dispatches and runs `serve`, `bridge`,
`demo` and `migrate`; `up` and the database and broker it starts live in up.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING

from citystream import logs
from citystream.auth.bootstrap import key_file
from citystream.cli_args import HTTP_PORT_HINT, DemoOptions, build_parser, settings_from
from citystream.embedded import EmbeddedServiceError, ensure_port_free
from citystream.settings import Settings
from citystream.up import _answering, _banner, _broker, _database, _http_base, _migrate, _say, cmd_up
from mqtt_bridge.address import BrokerAddress

if TYPE_CHECKING:
    import uvicorn


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
        ws_max_size=settings.mqtt_ws_max_message_bytes,  # /mqtt: refused before uvicorn buffers more
    )
    return uvicorn.Server(config)


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
    key_path = key_file(settings.data_dir, "demo sensor")
    api_key = args.api_key or settings.api_key or (key_path.read_text().strip() if key_path.exists() else None)
    if api_key is None:
        print(f"citystream: error: no API key to create the city with: set CITYSTREAM_API_KEY (a key with the "
              f"create and read roles) or run `citystream up` with this --data-dir first ({key_path} is missing)",
              file=sys.stderr)
        return 2
    stop = asyncio.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run_demo(sta_url, account.url, username=account.username, password=account.password,
                       speed=args.demo_speed, seed=args.demo_seed, stop=stop, api_key=api_key)

    asyncio.run(main())
    return 0


@contextlib.contextmanager
def _platform_database(settings: Settings) -> Iterator[str]:
    """The configured database; else the embedded cluster of the data directory: the running one (under
    `citystream up`), or started for the command and stopped again."""
    if not settings.database_url:
        from citystream.embedded import EmbeddedPostgres

        running = EmbeddedPostgres(settings.data_dir / "postgres").running_dsn()
        if running is not None:
            yield running
            return
    with _database(settings) as (database_url, _shown):
        yield database_url


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
        if args.command in ("keys", "users"):
            from citystream.auth.commands import cmd_keys, cmd_users

            command = cmd_keys if args.command == "keys" else cmd_users
            return command(args, lambda: _platform_database(settings))
        if args.command == "rollups":
            from citystream.rollup_commands import cmd_rollups

            return cmd_rollups(args, lambda: _platform_database(settings))
        if args.command == "retention":
            from citystream.retention import cmd_retention

            return cmd_retention(args, settings.retention_batch_rows, lambda: _platform_database(settings))
        return commands[args.command](settings)
    except _Shutdown:
        _say("stopped")
        return 0
    except EmbeddedServiceError as exc:
        print(f"citystream: error: {exc}", file=sys.stderr, flush=True)
        return 1


__all__ = ["build_parser", "cmd_bridge", "cmd_demo", "cmd_migrate", "cmd_serve", "cmd_up", "main", "settings_from",
           "_answering", "_broker"]


if __name__ == "__main__":
    sys.exit(main())
