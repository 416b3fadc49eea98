"""What CityStream's Mosquitto runs with: mosquitto.conf and the citystream_auth plugin, which decides every
login, publish, subscription and delivery (there is no ACL file).

Renders the config (for the embedded broker and, with the defaults, deploy/mosquitto for docker-compose),
validates account names, passwords, topic filters and the bridge's client id, and compiles the plugin
(cached per source, flags and broker binary). Starts nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import platform
import re
import shlex
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

from citystream.embedded.processes import EmbeddedServiceError
from mqtt_bridge import identity
from mqtt_bridge.topics import CREATE_FILTERS, ERROR_PREFIX, INGEST_PREFIX
from sensorthings.model import VERSIONS

PLATFORM_MQTT_USER = "citystream"
"""The platform's own Mosquitto account (MQTT bridge, notifications, $SYS log reader)."""
DEFAULT_SENSOR_USER = "sensor"
STA_TOPIC_TREES = tuple(f"{version}/#" for version in VERSIONS)
"""The STA topics of every version served (`v1.0/#`, `v1.1/#`)."""
DEFAULT_ANONYMOUS_READ = " ".join(STA_TOPIC_TREES)
"""What anonymous clients may read: topic filters separated by single spaces."""
READABLE = " ".join([*STA_TOPIC_TREES, f"{ERROR_PREFIX}#"])
"""What clients may read at all (each delivery is then checked against its audience)."""

DEPLOY_MOSQUITTO_DIR = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
"""deploy/mosquitto in a source checkout: the docker-compose copy of the generated config."""


_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")


# ------------------------------------------------------------------------------ the broker plugin

AUTH_PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / "mosquitto_plugin" / "citystream_auth.c"
"""CityStream's Mosquitto plugin: logins, publishes and deliveries decided by the platform's rules, creates
moved to the bridge's internal topics (the header comment says why)."""
AUTH_PLUGIN_PACKAGES = "gcc libc6-dev mosquitto-dev libmosquitto-dev libcurl4-openssl-dev libcjson-dev uthash-dev"
"""The Debian/Ubuntu packages building the plugin needs (scripts/quickstart.sh installs them)."""
DEPLOY_AUTH_PLUGIN_PATH = "/usr/local/lib/citystream/citystream_auth.so"
"""Where deploy/mosquitto/Dockerfile installs the plugin for docker-compose."""

_PLUGIN_CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra")
_PLUGIN_LIBS = ("-lcurl", "-lcjson")
"""libcurl asks the platform, cJSON reads its answers (the broker's own functions need no linking)."""
_HEADER_PACKAGES = {"mosquitto_broker.h": "mosquitto-dev", "mosquitto_plugin.h": "mosquitto-dev",
                    "mosquitto.h": "libmosquitto-dev", "mqtt_protocol.h": "libmosquitto-dev",
                    "curl.h": "libcurl4-openssl-dev", "cJSON.h": "libcjson-dev", "uthash.h": "uthash-dev"}
_MISSING_LIBRARY = re.compile(r"cannot find -l(curl|cjson)\b")
_LIBRARY_PACKAGES = {"curl": "libcurl4-openssl-dev", "cjson": "libcjson-dev"}
_MISSING_HEADER = re.compile(r"fatal error: '?([\w./+-]+\.h)'?(?::| file not found)")
_MISSING_LIBC = re.compile(r"cannot find (?:crt\w*\.o|-lc\b)")


def _plugin_error(reason: str) -> EmbeddedServiceError:
    return EmbeddedServiceError(
        "cannot build CityStream's Mosquitto plugin citystream_auth (it decides who may log in, publish and "
        f"read on the broker): {reason}"
    )


def compile_auth_plugin(output: Path, *, cc: str | None = None, extra_flags: tuple[str, ...] = ()) -> None:
    """Compile AUTH_PLUGIN_SOURCE into `output` with `cc` (default $CC, else `cc`; may carry flags).

    A missing compiler or header is an EmbeddedServiceError naming the Debian package to install. Nothing is
    linked: the broker provides the mosquitto_* functions when it loads the plugin.
    """
    compiler = shlex.split(cc if cc is not None else os.environ.get("CC") or "cc")
    if not compiler:
        raise _plugin_error("CC is empty")
    argv = [*compiler, *_PLUGIN_CFLAGS, *extra_flags, "-o", str(output), str(AUTH_PLUGIN_SOURCE), *_PLUGIN_LIBS]
    install = f"Debian/Ubuntu: `apt-get install {AUTH_PLUGIN_PACKAGES}`"
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        raise _plugin_error(f"no C compiler {compiler[0]!r} (set CC to use another); install one ({install})") from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise _plugin_error(f"could not run {compiler[0]}: {exc}") from exc
    if result.returncode == 0:
        return
    if header := _MISSING_HEADER.search(result.stderr):
        package = _HEADER_PACKAGES.get(os.path.basename(header.group(1)), "libc6-dev")
        raise _plugin_error(f"the C header {header.group(1)} is missing: install {package} ({install})")
    if library := _MISSING_LIBRARY.search(result.stderr):
        package = _LIBRARY_PACKAGES[library.group(1)]
        raise _plugin_error(f"the library lib{library.group(1)} is missing: install {package} ({install})")
    if _MISSING_LIBC.search(result.stderr):
        raise _plugin_error(f"the C library's development files are missing: install libc6-dev ({install})")
    detail = "\n".join(result.stderr.strip().splitlines()[-15:])
    raise _plugin_error(f"{shlex.join(argv)} failed with exit code {result.returncode}:\n{detail}")


def _plugin_cache_dir() -> Path:
    """The user's cache, shared by every data directory and test broker (not the data directory: as root, that
    belongs to the broker account, and the compiler must not write where that account could plant links)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "citystream"


def _only_ours(path: Path) -> bool:
    """Owned by us and writable by nobody else: the broker runs what the cache holds (a planted library
    would run inside it), so a cache someone else could have written to is not used (HOME kept by sudo, a
    shared XDG_CACHE_HOME)."""
    info = path.lstat()
    return (not stat.S_ISLNK(info.st_mode) and info.st_uid == os.geteuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def auth_plugin_library(broker: Path, cache_dir: Path | None = None) -> bytes:
    """The compiled plugin for this exact source, compiled once and then taken from `cache_dir` (default: the
    user's cache), since every start of a broker needs it and the tests start many.

    The cache key is the source, the flags, the machine and the broker binary's size and mtime, so an edited
    plugin or an upgraded Mosquitto gets a fresh build. Without a usable cache it is compiled every time.
    """
    cache = cache_dir if cache_dir is not None else _plugin_cache_dir()
    try:
        key = hashlib.sha256(AUTH_PLUGIN_SOURCE.read_bytes())
    except OSError as exc:
        raise _plugin_error(f"its source {AUTH_PLUGIN_SOURCE} cannot be read ({exc}); reinstall CityStream") from exc
    info = os.stat(broker)
    key.update("\0".join([*_PLUGIN_CFLAGS, *_PLUGIN_LIBS, platform.machine(), str(info.st_size),
                          str(info.st_mtime_ns)]).encode())
    cached = cache / f"citystream_auth-{key.hexdigest()[:16]}.so"
    with contextlib.suppress(OSError):
        if _only_ours(cache) and _only_ours(cached):
            library = cached.read_bytes()
            if library.startswith(b"\x7fELF"):
                return library
    with tempfile.TemporaryDirectory(prefix="citystream-plugin-") as private:
        built = Path(private) / "citystream_auth.so"
        compile_auth_plugin(built)
        library = built.read_bytes()
    with contextlib.suppress(OSError):  # a read-only home: compiled again next time
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".citystream_auth-", suffix=".tmp", dir=cache)  # unique: parallel runs
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(library)
            os.replace(tmp, cached)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return library


def _check_client_id(client_id: str) -> None:
    """One word on one config line (plugin_opt_bridge_client_id)."""
    if not client_id or len(client_id) > 1024 or any(ch.isspace() or not ch.isprintable() for ch in client_id):
        raise EmbeddedServiceError(
            f"MQTT bridge client id {client_id!r} must be 1 to 1024 printable characters without spaces "
            "(CITYSTREAM_MQTT_CLIENT_ID)"
        )

def _check_topic_filter(topic_filter: str, what: str) -> None:
    """A valid MQTT topic filter that fits on one ACL line ("" is allowed: nothing)."""
    if topic_filter == "":
        return
    levels = topic_filter.split("/")
    bad = (
        topic_filter != topic_filter.strip()
        or any(ch in topic_filter for ch in "\0\r\n")
        or any(("#" in level and (level != "#" or i != len(levels) - 1)) for i, level in enumerate(levels))
        or any(("+" in level and level != "+") for level in levels)
    )
    if bad:
        raise EmbeddedServiceError(f"{what} {topic_filter!r} is not a valid MQTT topic filter")


def _check_password(password: str, what: str) -> None:
    if not password or any(ch in password for ch in "\0\r\n"):
        raise EmbeddedServiceError(f"{what} must be non-empty and on one line")


def check_sensor_username(sensor_username: str) -> None:
    """The shared device account's name: one plain word (it goes into the config and, unescaped, into the
    principal the plugin stamps on its messages), never the platform's."""
    if not _USERNAME.fullmatch(sensor_username) or sensor_username == PLATFORM_MQTT_USER:
        raise EmbeddedServiceError(
            f"MQTT sensor user name {sensor_username!r} must be letters, digits, . _ @ - and not "
            f"{PLATFORM_MQTT_USER!r} (CITYSTREAM_MQTT_SENSOR_USER)"
        )


def check_anonymous_read(anonymous_read: str) -> None:
    for topic_filter in anonymous_read.split(" ") if anonymous_read else ():
        _check_topic_filter(topic_filter, "CITYSTREAM_MQTT_ANONYMOUS_READ")


def _websocket_bind(host: str) -> tuple[str, str]:
    """(IP address, socket_domain) for a websockets listener.

    Mosquitto hands websockets listeners to libwebsockets, which takes only an IP address and, unless
    `socket_domain` names the family, listens on every interface (`::`) whatever address was given
    (observed with Mosquitto 2.0.11): so the domain is always set.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
        except (OSError, IndexError, ValueError) as exc:
            raise EmbeddedServiceError(f"cannot resolve the MQTT host {host!r} for the websocket listener") from exc
    return str(ip), "ipv6" if ip.version == 6 else "ipv4"


def render_mosquitto_conf(
    *,
    host: str,
    port: int,
    websocket_port: int | None,
    persistence_location: str,
    password_file: str,
    log_file: str | None,
    run_as: str,
    header: str,
    auth_plugin: str,
    bridge_client_id: str = identity.CLIENT_ID,
    sensor_username: str | None = DEFAULT_SENSOR_USER,
    anonymous_read: str = DEFAULT_ANONYMOUS_READ,
    decision_url: str | None = None,
    decision_secret_file: str | None = None,
) -> str:
    """mosquitto.conf for CityStream's broker (embedded, and deploy/mosquitto/mosquitto.conf for compose).

    `log_file` None logs to stdout (containers). `auth_plugin`: path of the compiled citystream_auth plugin,
    which decides every login, publish, subscription and delivery: the platform's account and the shared
    device account `sensor_username` (None: none) are checked against `password_file`; everyone else is
    asked of the platform at `decision_url` (None: nobody else can log in), authenticating with the secret
    in `decision_secret_file`; anonymous clients may read `anonymous_read` ("" refuses them).
    """
    _check_client_id(bridge_client_id)
    if sensor_username is not None:
        check_sensor_username(sensor_username)
    check_anonymous_read(anonymous_read)
    if decision_url is not None and (any(ch.isspace() for ch in decision_url) or not decision_secret_file):
        raise EmbeddedServiceError(f"the broker's decision URL {decision_url!r} must be one word, with a secret file")
    lines = [
        *(f"# {line}" if line else "#" for line in header.splitlines()),
        f"user {run_as}",
        "# Accounts and the plugin apply to every listener alike.",
        "per_listener_settings false",
        "",
        "# -- authentication and access control: CityStream's plugin decides everything",
        "# (citystream/mosquitto_plugin/citystream_auth.c; docs/mqtt.md, 'Who may do what over MQTT').",
        "# - Logins: the platform's account" + (" and the shared device account" if sensor_username else "")
        + " by the password file below;",
        "#   anyone else (API keys, users, OIDC tokens) by asking the platform at decision_url, cached.",
        "# - Publishing: only Observation creates where the platform says the principal may create; they are",
        f"#   moved to {INGEST_PREFIX}<topic>, which only the platform reads, with the publisher stamped on them.",
        "# - Reading: the STA topics and error reports, each notification only by whom its audience allows.",
        "# - Only the platform may use the bridge's client ids (bridge_client_id, and -w1, -w2, ...) and its",
        "#   shared subscription group ($share/<bridge_group>/...).",
        f"password_file {password_file}",
        "# Clients without a user name: " + ("the plugin lets them read public data." if anonymous_read
                                              else "refused."),
        f"allow_anonymous {'true' if anonymous_read else 'false'}",
        f"plugin {auth_plugin}",
        f"plugin_opt_platform_user {PLATFORM_MQTT_USER}",
        f"plugin_opt_bridge_client_id {bridge_client_id}",
        f"plugin_opt_bridge_group {identity.SHARED_GROUP}",
        f"plugin_opt_ingest_prefix {INGEST_PREFIX}",
        f"plugin_opt_readable {READABLE}",
        *([f"plugin_opt_anonymous_read {anonymous_read}"] if anonymous_read else []),
        *([f"plugin_opt_account_user {sensor_username}", f"plugin_opt_account_write {' '.join(CREATE_FILTERS)}"]
          if sensor_username else []),
        *([f"plugin_opt_decision_url {decision_url}", f"plugin_opt_decision_secret_file {decision_secret_file}"]
          if decision_url else []),
        "# Decisions are reused for 10 s; connected credentials are revalidated every 2 s.",
        "plugin_opt_cache_seconds 10",
        "plugin_opt_revalidate_seconds 2",
        "plugin_opt_timeout_ms 2000",
        "# Uncached logins asked of the platform per second at most (more are refused at once; clients retry).",
        "plugin_opt_logins_per_second 50",
        "",
        "# -- persistence: sessions, subscriptions and queued QoS 1/2 messages survive a broker restart",
        "persistence true",
        f"persistence_location {persistence_location}",
        "# Write the in-memory state to disk every 60 s and on a clean stop. A broker crash loses what arrived",
        "# since the last save and was not yet delivered; what the bridge has acknowledged is already",
        "# committed in PostgreSQL (it acknowledges a message only after its batch is committed).",
        "autosave_interval 60",
        "# Forget persistent sessions whose client has not come back for 7 days (default: never), so",
        "# abandoned client ids do not pile up queued messages for ever.",
        "persistent_client_expiration 7d",
        "",
        "# -- limits, sized for the MQTT bridge",
        "# Per-client queue of QoS 1/2 messages beyond those in flight (default 1000). The bridge's persistent",
        "# session must hold everything published while it is away: 40 s offline at 25,000 msg/s = 1,000,000.",
        "# Past this limit Mosquitto silently drops messages for that client. (QoS 0 is not queued for",
        "# offline clients: the bridge subscribes with QoS 1.)",
        "max_queued_messages 1000000",
        "# Outgoing QoS 1/2 messages unacknowledged at once per client (default 20). The bridge acknowledges",
        "# only after the batch is committed, so its window must hold whole batches. MQTT 5 clients override",
        "# this with the Receive Maximum they send in CONNECT (the bridge should send one); 65535 is the most",
        "# MQTT 5 allows and is also what the broker then advertises for messages clients send it (the",
        "# default, so Mosquitto sends no Receive Maximum in CONNACK). 0 would mean unlimited, which lets a",
        "# stalled MQTT 3.1.1 subscriber grow the broker's memory without bound, bypassing max_queued_messages.",
        "max_inflight_messages 65535",
        "# Largest MQTT packet accepted (default: no limit). Larger ones disconnect the client ('disconnected",
        "# due to oversize packet'). The bridge's own payload limit is lower, so a payload between the two",
        "# reaches the bridge and is dead-lettered with a reason instead of vanishing. MQTT 5 clients learn",
        "# the limit from CONNACK (Maximum Packet Size). A client's own Maximum Packet Size must not be",
        "# lower, or Mosquitto silently skips larger messages for it.",
        "max_packet_size 1048576",
        "# Send small packets (PUBACKs, notifications) at once instead of waiting for Nagle's algorithm.",
        "set_tcp_nodelay true",
        "",
        "# -- logging: to the log and to $SYS/broker/log/<E|W|N|I|M>/..., where the platform (the only",
        "# account allowed to read $SYS) follows connects, disconnects, subscribes and unsubscribes.",
        f"log_dest file {log_file}" if log_file else "log_dest stdout",
        "log_dest topic",
        "log_type error",
        "log_type warning",
        "# notice: connect and disconnect lines (with connection_messages true)",
        "log_type notice",
        "log_type information",
        "# subscribe/unsubscribe: $SYS/broker/log/M/subscribe and $SYS/broker/log/M/unsubscribe",
        "log_type subscribe",
        "log_type unsubscribe",
        "connection_messages true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S%z",
        "",
        "# -- listeners",
        f"listener {port} {host}",
        "protocol mqtt",
    ]
    if websocket_port is not None:
        address, domain = _websocket_bind(host)
        lines += [
            f"listener {websocket_port} {address}",
            "protocol websockets",
            "# without it libwebsockets listens on every interface, whatever the address above says",
            f"socket_domain {domain}",
        ]
    return "\n".join(lines) + "\n"


DEPLOY_DECISION_URL = "http://app:8080/internal/mqtt"
"""Where Compose's broker asks the platform (the `app` service)."""


def render_deploy_mosquitto_files() -> dict[str, str]:
    """deploy/mosquitto/mosquitto.conf for docker-compose (deploy/mosquitto/Dockerfile), from the same code.

    The password file and the decision secret are created when the container starts
    (deploy/mosquitto/entrypoint.sh) from CITYSTREAM_MQTT_PLATFORM_PASSWORD and CITYSTREAM_MQTT_SENSOR_PASSWORD.
    """
    conf = render_mosquitto_conf(
        host="0.0.0.0",
        port=1883,
        websocket_port=9001,
        persistence_location="/mosquitto/data/",
        password_file="/mosquitto/auth/passwd",
        log_file=None,
        run_as="mosquitto",
        header=(
            "Mosquitto for docker-compose.yml (the image deploy/mosquitto/Dockerfile builds, which has the\n"
            "plugin), rendered by citystream.embedded.render_deploy_mosquitto_files();\n"
            "tests/unit/test_broker_config_rendering.py checks that this file is up to date. The password file\n"
            "and the decision secret are created at container start by entrypoint.sh. The ports are published\n"
            "on 127.0.0.1 only (see docker-compose.yml)."
        ),
        auth_plugin=DEPLOY_AUTH_PLUGIN_PATH,
        decision_url=DEPLOY_DECISION_URL,
        decision_secret_file="/mosquitto/auth/decision-secret",
    )
    return {"mosquitto.conf": conf}


def write_deploy_mosquitto_files(directory: Path = DEPLOY_MOSQUITTO_DIR) -> None:
    """Regenerate deploy/mosquitto/mosquitto.conf after changing the rendering code."""
    for name, text in render_deploy_mosquitto_files().items():
        (directory / name).write_text(text)
