"""The command line of `citystream`: its commands, flags and help texts, and the Settings and demo options
they give (environment first, flags over it).

Apart from cli.py, which runs the commands: what a user can type is read in one place, without the
machinery behind it, and tests build the parser without starting anything.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from citystream.settings import Settings
from sensorthings.model.access import ROLES

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
                            topic filters anonymous MQTT clients may read, separated by spaces (default
                            "v1.0/# v1.1/#"; empty: refused)
  CITYSTREAM_MQTT_WS_URL    the broker's WebSocket listener that /mqtt on the HTTP port relays to (ws:// or
                            wss://; `up` sets it to the embedded broker's); unset: /mqtt is off
  CITYSTREAM_HOST, CITYSTREAM_HTTP_PORT, CITYSTREAM_MQTT_PORT, CITYSTREAM_MQTT_WS_PORT, CITYSTREAM_DATA_DIR,
  CITYSTREAM_PUBLIC_URL,
  CITYSTREAM_DEFAULT_TOP, CITYSTREAM_MAX_TOP, CITYSTREAM_MAX_BODY_BYTES, CITYSTREAM_STATEMENT_TIMEOUT_MS,
  CITYSTREAM_DB_POOL_SIZE
  CITYSTREAM_ADMIN_TOKEN    an operator bearer token with the admin role (beside `citystream keys`)
  CITYSTREAM_ANONYMOUS_READ true (default): anyone may read public data; false: reading needs a credential
  CITYSTREAM_OIDC_JWKS_URL, CITYSTREAM_OIDC_ISSUER, CITYSTREAM_OIDC_AUDIENCE (and _ROLES_CLAIM, _ROLE_MAP,
                            _PROJECT_ROLES_CLAIM)
                            take OIDC bearer tokens (Keycloak, Azure AD, ...) of that issuer
  CITYSTREAM_LOG_FORMAT     json (default: one object per line on stdout) or text
  CITYSTREAM_LOG_LEVEL      debug, info (default), warning or error
  CITYSTREAM_ACCESS_LOG     HTTP access records: all (default), writes (not GET/HEAD, and errors) or off
"""


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
    demo.add_argument("--api-key", help=argparse.SUPPRESS)  # `up` hands its demo key over in CITYSTREAM_API_KEY

    roles = ", ".join(ROLES)
    keys = sub.add_parser(
        "keys", help="create, list and revoke API keys",
        description=("API keys for the STA and OGC API (Authorization: Bearer <key>, X-API-Key: <key>, or HTTP "
                     "Basic with the key's id and secret), against CITYSTREAM_DATABASE_URL or the embedded "
                     "cluster in DATA_DIR (running or not). Only a hash of the secret is stored: "
                     "`create` prints it once."),
        epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="{create,list,revoke}")
    create_key = keys_sub.add_parser("create", help="create a key and print its secret (once)")
    create_key.add_argument("--name", required=True, help="what the key is for (shown in `keys list` and logs)")
    create_key.add_argument("--role", action="append", required=True,
                            help=f"a role it holds, repeatable or comma-separated: {roles}")
    create_key.add_argument("--project", action="append", metavar="ID",
                            help="hold the roles only for this STAplus Project's data, repeatable or "
                                 "comma-separated (default: everywhere)")
    create_key.add_argument("--expires", help="30d, 12h, 90m or an ISO 8601 time (default: never)")
    keys_sub.add_parser("list", help="every key: id, name, roles, projects, when created, expires, was revoked")
    revoke = keys_sub.add_parser("revoke", help="revoke a key: every API process refuses it within seconds")
    revoke.add_argument("id", help="the key's id (the 12 characters after cs_)")
    users = sub.add_parser(
        "users", help="create, list and disable HTTP Basic users (for FROST clients)",
        description=("Users for HTTP Basic (frost-sta-client's auth handler), stored with salted scrypt hashes. "
                     "`create` reads the password from CITYSTREAM_USER_PASSWORD, else from standard input "
                     "(asked twice on a terminal), never from the command line."),
        epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="{create,list,disable}")
    create_user = users_sub.add_parser("create", help="create a user")
    create_user.add_argument("--name", required=True, help="the user name (letters, digits and . _ @ -)")
    create_user.add_argument("--role", action="append", required=True,
                             help=f"a role the user holds, repeatable or comma-separated: {roles}")
    create_user.add_argument("--project", action="append", metavar="ID",
                             help="hold the roles only for this STAplus Project's data, repeatable or "
                                  "comma-separated (default: everywhere)")
    users_sub.add_parser("list", help="every user: name, roles, projects, when created, disabled")
    disable = users_sub.add_parser("disable", help="disable a user: refused within seconds")
    disable.add_argument("name")
    for p in (keys, users):
        add_data_dir(p)
    add_data_dir(add_rollups(sub))
    add_data_dir(add_retention(sub))
    return parser


def add_retention(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """`citystream retention run [--dry-run]` (citystream/retention.py)."""
    retention = sub.add_parser(
        "retention", help="delete the Observations older than their Datastream's retention, now",
        description=("Retention (docs/retention.md): a Datastream or MultiDatastream with a `retention` (P90D, "
                     "P6M, ...) keeps its raw Observations that long; the API process deletes older ones every "
                     "CITYSTREAM_RETENTION_INTERVAL_SECONDS. Against CITYSTREAM_DATABASE_URL or the embedded "
                     "cluster in DATA_DIR (running or not)."),
        epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    retention_sub = retention.add_subparsers(dest="retention_command", required=True, metavar="{run}")
    run = retention_sub.add_parser("run", help="run one pass now and print what it deleted per stream",
                                   description="Run one retention pass now (unless another process is running "
                                               "one) and print, per stream with a retention, its horizon and how "
                                               "many Observations were deleted.")
    run.add_argument("--dry-run", action="store_true",
                     help="delete nothing: print what a pass would delete per stream, and which partitions it "
                          "would empty")
    run.add_argument("--batch-rows", type=int,
                     help="most Observations deleted per transaction (default CITYSTREAM_RETENTION_BATCH_ROWS, "
                          "10000)")
    return retention


def add_rollups(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """`citystream rollups add|list|remove` (citystream/rollup_commands.py)."""
    rollups = sub.add_parser(
        "rollups", help="add, list and remove rollup Datastreams (e.g. the sum per hour of a counter)",
        description=("Rollup Datastreams (docs/rollups.md): Datastreams whose Observations the platform computes "
                     "from another's, one per bucket (the mean per hour, the sum per local day, ...). Against "
                     "CITYSTREAM_DATABASE_URL or the embedded cluster in DATA_DIR (running or not), through the "
                     "same checks as POST /v1.1/Datastreams with RollupOf and rollup; a running API needs no "
                     "restart."),
        epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    rollups_sub = rollups.add_subparsers(dest="rollups_command", required=True, metavar="{add,list,remove}")
    add = rollups_sub.add_parser("add", help="create a rollup of a Datastream and print its id",
                                 description="Create a rollup of SOURCE_ID, computed at once from all of its "
                                             "Observations and kept up to date by every later write.")
    add.add_argument("source", metavar="SOURCE_ID", type=_datastream_id, help="the Datastream to roll up")
    add.add_argument("--width", required=True,
                     help="bucket width: PT1M ... PT12H (whole minutes dividing a day), P1D, P1W or P1M")
    add.add_argument("--function", required=True,
                     help="count, sum (counts and totals only), mean, min, max, first or last")
    add.add_argument("--time-zone", help="IANA zone the buckets follow, e.g. Europe/Berlin (default UTC)")
    add.add_argument("--name", help="its name (default: the source's, e.g. 'Bicycles (sum per PT1H)')")
    add.add_argument("--final-after", help="how long after its end a bucket stays provisional (default PT1H)")
    listing = rollups_sub.add_parser("list", help="rollups: id, source, width, function, zone, buckets, name")
    listing.add_argument("source", metavar="SOURCE_ID", type=_datastream_id, nargs="?",
                         help="only the rollups of this Datastream")
    listing.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    remove = rollups_sub.add_parser("remove", help="delete a rollup Datastream and its Observations (its source "
                                                   "stays); refuses a Datastream that is not a rollup")
    remove.add_argument("rollup", metavar="ROLLUP_ID", type=_datastream_id)
    return rollups


def _datastream_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 2**63:
        raise argparse.ArgumentTypeError(f"a Datastream id is a positive integer, not {text!r}")
    return int(text)


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


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    speed: float
    seed: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoOptions:
        return cls(args.demo_speed, args.demo_seed)
