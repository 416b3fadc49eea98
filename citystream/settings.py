"""Platform settings: the one place that reads the environment.

Every other package receives the values it needs as arguments (DESIGN.md: only `citystream/` reads the
environment). Secrets arrive only through `CITYSTREAM_DATABASE_URL`, `CITYSTREAM_MQTT_URL`,
`CITYSTREAM_MQTT_SENSOR_PASSWORD` and `CITYSTREAM_ADMIN_TOKEN`, and are kept out of the repr.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from citystream import logs
from citystream.access_log import MODES as ACCESS_LOG_MODES
from citystream.auth.oidc import OidcConfig
from mqtt_bridge import identity
from sensorthings.model import VERSIONS
from sensorthings.model.access import Role, parse_roles


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from exc


def _choice_env(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (os.environ.get(name) or default).strip().lower()
    if value not in choices:
        raise SystemExit(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _bool_env(name: str, default: bool) -> bool:
    raw = (os.environ.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise SystemExit(f"{name} must be true or false, got {raw!r}")
    return raw in ("1", "true", "yes", "on")


def _oidc_env() -> OidcConfig | None:
    """CITYSTREAM_OIDC_JWKS_URL, CITYSTREAM_OIDC_ISSUER and CITYSTREAM_OIDC_AUDIENCE: all three, or none (no OIDC)."""
    env = os.environ
    names = ("CITYSTREAM_OIDC_JWKS_URL", "CITYSTREAM_OIDC_ISSUER", "CITYSTREAM_OIDC_AUDIENCE")
    jwks_url, issuer, audience = given = [(env.get(name) or "").strip() for name in names]
    if not any(given):
        return None
    missing = [name for name, value in zip(names, given, strict=True) if not value]
    if missing:
        raise SystemExit(f"OIDC needs {', '.join(missing)} too (or none of these variables)")
    role_map: list[tuple[str, Role]] = []
    for pair in (env.get("CITYSTREAM_OIDC_ROLE_MAP") or "").split():
        claim_value, sep, role = pair.partition("=")
        try:
            roles = parse_roles(role)
        except ValueError as exc:
            raise SystemExit(f"CITYSTREAM_OIDC_ROLE_MAP: {exc}") from exc
        if not sep or not claim_value or len(roles) != 1:
            raise SystemExit(f"CITYSTREAM_OIDC_ROLE_MAP takes claim-value=role pairs, got {pair!r}")
        role_map.append((claim_value, next(iter(roles))))
    return OidcConfig(jwks_url, issuer, audience,
                      roles_claim=(env.get("CITYSTREAM_OIDC_ROLES_CLAIM") or "realm_access.roles").strip(),
                      role_map=tuple(role_map),
                      project_roles_claim=(env.get("CITYSTREAM_OIDC_PROJECT_ROLES_CLAIM") or "").strip() or None)


def _ws_url_env(name: str) -> str | None:
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return None
    from citystream.mqtt_websocket import check_upstream_url  # here: settings load without websockets

    try:
        return check_upstream_url(raw)
    except ValueError as exc:
        raise SystemExit(f"{name}: {exc}") from exc


@dataclass(frozen=True)
class Settings:
    """Everything the platform can be told. Defaults are the embedded, loopback-only set-up."""

    database_url: str | None = field(default=None, repr=False)
    """External PostgreSQL (with PostGIS). None: `citystream up` starts a private cluster."""
    mqtt_url: str | None = field(default=None, repr=False)
    """External MQTT broker, e.g. mqtt://user:password@127.0.0.1:1883. None: `citystream up` starts Mosquitto
    (and then holds the URL of its platform account, with the password)."""
    host: str = "127.0.0.1"
    http_port: int = 8080
    mqtt_port: int = 1883
    mqtt_host: str = "127.0.0.1"
    mqtt_ws_port: int = 9001
    """MQTT over WebSocket port of the embedded Mosquitto (same address as mqtt_host)."""
    mqtt_ws_url: str | None = None
    """The broker's MQTT-over-WebSocket listener that `/mqtt` on the HTTP port relays to (ws:// or wss://).
    None: `/mqtt` is disabled and says so. `citystream up` sets it to its private broker's listener."""
    mqtt_ws_max_message_bytes: int = 1024 * 1024
    """Largest WebSocket message `/mqtt` relays either way; a larger one closes its connection (1009)."""
    mqtt_sensor_user: str = "sensor"
    """Account of the embedded Mosquitto that sensors publish Observations with."""
    mqtt_sensor_password: str | None = field(default=None, repr=False)
    """Its password. None: generated once and kept in DATA_DIR/mosquitto/sensor-password."""
    mqtt_anonymous_read: str = " ".join(f"{version}/#" for version in VERSIONS)
    """Topic filters (separated by single spaces) anonymous MQTT clients may read, by default the STA topics
    of every version ("v1.0/# v1.1/#"); "" refuses anonymous clients."""
    data_dir: Path = field(default_factory=lambda: Path(".citystream"))
    public_url: str | None = None
    """External base URL (e.g. https://iot.example.org) used in selfLinks. None: taken from the request,
    honouring X-Forwarded-Proto / X-Forwarded-Host."""
    default_top: int = 100
    max_top: int = 10_000
    max_body_bytes: int = 10 * 1024 * 1024
    statement_timeout_ms: int = 30_000
    max_expand_depth: int = 5
    exact_count_limit: int = 100_000
    """`@iot.count` is exact up to this many rows and the planner's estimate above it."""
    db_pool_size: int = 10
    ingest_batch_rows: int = 5000
    """Most Observations written by one COPY + commit."""
    ingest_batch_wait_ms: int = 0
    """How long a free writer waits for a partial batch to fill; 0 = group commit (write what is queued)."""
    ingest_queue_rows: int = 50_000
    """Observations that may wait for a writer before submitters are held back (bounded memory)."""
    ingest_writers: int = 2
    """Concurrent COPY connections."""
    mqtt_public_urls: tuple[str, ...] = ()
    """MQTT endpoints announced in the STA service root; empty: the broker address without credentials."""
    mqtt_client_id: str = identity.CLIENT_ID
    """MQTT client id of the bridge (its persistent session); `citystream bridge --workers N` appends -wN."""
    mqtt_ingest: bool = True
    """Create Observations from MQTT in this process (False: only publish notifications)."""
    mqtt_max_payload_bytes: int = 64 * 1024
    admin_token: str | None = field(default=None, repr=False)
    """The operator's bearer token (CITYSTREAM_ADMIN_TOKEN): admin, beside the API keys and users in the
    database. None: none."""
    api_key: str | None = field(default=None, repr=False)
    """The API key `citystream demo` creates its city with (CITYSTREAM_API_KEY); None: the demo sensor key
    that `citystream up` keeps in DATA_DIR/keys."""
    anonymous_read: bool = True
    """Anonymous callers may read public data (CITYSTREAM_ANONYMOUS_READ); writes always need a credential."""
    auth_reload_seconds: float = 2.0
    """How often each API process reloads the API keys and users: the bound on how long a revoked key works."""
    oidc: OidcConfig | None = None
    """Bearer JWTs of this OIDC issuer are taken (CITYSTREAM_OIDC_JWKS_URL, _ISSUER, _AUDIENCE, _ROLES_CLAIM,
    _ROLE_MAP, _PROJECT_ROLES_CLAIM)."""
    mqtt_receive_maximum: int = 20_000
    """QoS 1 messages the broker may have in flight to one bridge; size it for the batch (REFERENCE.md)."""
    log_format: str = "json"
    """`json` (one object per line) or `text` (for a terminal); see citystream/logs.py."""
    log_level: str = "info"
    access_log: str = "all"
    """HTTP access records: `all`, `writes` (not GET/HEAD, and every response >= 400) or `off`."""
    audit_retention_days: int = 365
    """Days the audit log keeps (whole day partitions are dropped after that); 0 = keep everything."""
    retention_interval_seconds: int = 3600
    """Seconds between the retention passes of the API process (the first at start) that delete Observations
    older than their stream's `retention` (citystream/retention.py); 0 = off."""
    retention_batch_rows: int = 10_000
    """Most Observations one retention transaction deletes (outside whole emptied partitions)."""
    rollup_finalize_seconds: int = 60
    """Seconds between passes that make rollup buckets final once their `finalAfter` has passed (0 = off:
    buckets then become final only when they are written again)."""

    @classmethod
    def from_env(cls) -> Settings:
        """Build settings from CITYSTREAM_* environment variables (CLI flags override them later)."""
        env = os.environ
        base = cls()
        return replace(
            base,
            database_url=env.get("CITYSTREAM_DATABASE_URL") or None,
            mqtt_url=env.get("CITYSTREAM_MQTT_URL") or None,
            host=env.get("CITYSTREAM_HOST", base.host),
            http_port=_int_env("CITYSTREAM_HTTP_PORT", base.http_port),
            mqtt_port=_int_env("CITYSTREAM_MQTT_PORT", base.mqtt_port),
            mqtt_host=env.get("CITYSTREAM_MQTT_HOST", base.mqtt_host),
            mqtt_ws_port=_int_env("CITYSTREAM_MQTT_WS_PORT", base.mqtt_ws_port),
            mqtt_ws_url=_ws_url_env("CITYSTREAM_MQTT_WS_URL"),
            mqtt_ws_max_message_bytes=_int_env("CITYSTREAM_MQTT_WS_MAX_MESSAGE_BYTES",
                                               base.mqtt_ws_max_message_bytes),
            mqtt_sensor_user=env.get("CITYSTREAM_MQTT_SENSOR_USER") or base.mqtt_sensor_user,
            mqtt_sensor_password=env.get("CITYSTREAM_MQTT_SENSOR_PASSWORD") or None,
            mqtt_anonymous_read=env.get("CITYSTREAM_MQTT_ANONYMOUS_READ", base.mqtt_anonymous_read),
            data_dir=Path(env.get("CITYSTREAM_DATA_DIR", str(base.data_dir))),
            public_url=env.get("CITYSTREAM_PUBLIC_URL") or None,
            default_top=_int_env("CITYSTREAM_DEFAULT_TOP", base.default_top),
            max_top=_int_env("CITYSTREAM_MAX_TOP", base.max_top),
            max_body_bytes=_int_env("CITYSTREAM_MAX_BODY_BYTES", base.max_body_bytes),
            statement_timeout_ms=_int_env("CITYSTREAM_STATEMENT_TIMEOUT_MS", base.statement_timeout_ms),
            max_expand_depth=_int_env("CITYSTREAM_MAX_EXPAND_DEPTH", base.max_expand_depth),
            exact_count_limit=_int_env("CITYSTREAM_EXACT_COUNT_LIMIT", base.exact_count_limit),
            db_pool_size=_int_env("CITYSTREAM_DB_POOL_SIZE", base.db_pool_size),
            ingest_batch_rows=_int_env("CITYSTREAM_INGEST_BATCH_ROWS", base.ingest_batch_rows),
            ingest_batch_wait_ms=_int_env("CITYSTREAM_INGEST_BATCH_WAIT_MS", base.ingest_batch_wait_ms),
            ingest_queue_rows=_int_env("CITYSTREAM_INGEST_QUEUE_ROWS", base.ingest_queue_rows),
            ingest_writers=_int_env("CITYSTREAM_INGEST_WRITERS", base.ingest_writers),
            admin_token=env.get("CITYSTREAM_ADMIN_TOKEN") or None,
            api_key=env.get("CITYSTREAM_API_KEY") or None,
            anonymous_read=_bool_env("CITYSTREAM_ANONYMOUS_READ", base.anonymous_read),
            auth_reload_seconds=_int_env("CITYSTREAM_AUTH_RELOAD_SECONDS", int(base.auth_reload_seconds)),
            oidc=_oidc_env(),
            mqtt_public_urls=tuple(u.strip() for u in env.get("CITYSTREAM_MQTT_PUBLIC_URLS", "").split(",")
                                   if u.strip()),
            mqtt_client_id=env.get("CITYSTREAM_MQTT_CLIENT_ID") or base.mqtt_client_id,
            mqtt_ingest=env.get("CITYSTREAM_MQTT_INGEST", "true").lower() not in ("0", "false", "no"),
            mqtt_max_payload_bytes=_int_env("CITYSTREAM_MQTT_MAX_PAYLOAD_BYTES", base.mqtt_max_payload_bytes),
            mqtt_receive_maximum=_int_env("CITYSTREAM_MQTT_RECEIVE_MAXIMUM", base.mqtt_receive_maximum),
            log_format=_choice_env("CITYSTREAM_LOG_FORMAT", base.log_format, logs.FORMATS),
            log_level=_choice_env("CITYSTREAM_LOG_LEVEL", base.log_level, tuple(v.lower() for v in logs.LEVELS)),
            access_log=_choice_env("CITYSTREAM_ACCESS_LOG", base.access_log, ACCESS_LOG_MODES),
            audit_retention_days=_int_env("CITYSTREAM_AUDIT_RETENTION_DAYS", base.audit_retention_days),
            retention_interval_seconds=_int_env("CITYSTREAM_RETENTION_INTERVAL_SECONDS",
                                                base.retention_interval_seconds),
            retention_batch_rows=_int_env("CITYSTREAM_RETENTION_BATCH_ROWS", base.retention_batch_rows),
            rollup_finalize_seconds=_int_env("CITYSTREAM_ROLLUP_FINALIZE_SECONDS", base.rollup_finalize_seconds),
        )
