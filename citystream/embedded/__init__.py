"""Private PostgreSQL and Mosquitto instances for `citystream up` and the test suite.

Why: a developer (and CI) should get a working platform with one command and no system services, no
passwords to invent and nothing listening beyond loopback. Each service lives in its own data directory, which also
keeps its data between runs, and is stopped in order by its owner.

Modules, each importing only those above it:
  processes         ports, accounts (running as root), stopping children and orphans, secret files, locks
  postgres          EmbeddedPostgres
  mosquitto_config  mosquitto.conf and the citystream_auth plugin build (deploy/mosquitto too)
  mosquitto         EmbeddedMosquitto
Import from `citystream.embedded`; the names below are its API.
"""

from citystream.embedded.mosquitto import EmbeddedMosquitto, find_mosquitto, find_mosquitto_passwd
from citystream.embedded.mosquitto_config import (
    AUTH_PLUGIN_PACKAGES,
    AUTH_PLUGIN_SOURCE,
    DEFAULT_ANONYMOUS_READ,
    DEFAULT_SENSOR_USER,
    PLATFORM_MQTT_USER,
    auth_plugin_library,
    compile_auth_plugin,
    render_deploy_mosquitto_files,
    render_mosquitto_conf,
    write_deploy_mosquitto_files,
)
from citystream.embedded.mosquitto_config import DEPLOY_AUTH_PLUGIN_PATH as DEPLOY_AUTH_PLUGIN_PATH
from citystream.embedded.mosquitto_config import DEPLOY_MOSQUITTO_DIR as DEPLOY_MOSQUITTO_DIR
from citystream.embedded.postgres import MIN_PG_MAJOR as MIN_PG_MAJOR
from citystream.embedded.postgres import EmbeddedPostgres, find_pg_bindir
from citystream.embedded.processes import (
    EmbeddedServiceError,
    PortInUseError,
    ensure_port_free,
    find_free_port,
    port_is_free,
)
from citystream.embedded.processes import parent_death_signal as parent_death_signal
from citystream.embedded.processes import stop_child as stop_child

__all__ = [
    "AUTH_PLUGIN_PACKAGES",
    "AUTH_PLUGIN_SOURCE",
    "DEFAULT_ANONYMOUS_READ",
    "DEFAULT_SENSOR_USER",
    "PLATFORM_MQTT_USER",
    "EmbeddedMosquitto",
    "EmbeddedPostgres",
    "EmbeddedServiceError",
    "PortInUseError",
    "auth_plugin_library",
    "compile_auth_plugin",
    "ensure_port_free",
    "find_free_port",
    "find_mosquitto",
    "find_mosquitto_passwd",
    "find_pg_bindir",
    "port_is_free",
    "render_deploy_mosquitto_files",
    "render_mosquitto_conf",
    "write_deploy_mosquitto_files",
]
