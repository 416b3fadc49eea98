"""Shared fixtures: a real PostgreSQL/PostGIS, a real Mosquitto and the real app, on random ports.

Why real services: the SQL compiler, migrations and MQTT behaviour are what we test; a mock would test our
assumptions instead. Everything is private to the test session and torn down at its end.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from citystream.embedded import EmbeddedMosquitto, EmbeddedPostgres, find_free_port
from citystream.settings import Settings
from tests.ogc_city import City, build_city
from tests.sta_helpers import ADMIN_TOKEN

MIGRATIONS_TABLE = "citystream_migrations"


def make_service_dir(prefix: str) -> Path:
    """A short temp dir the service accounts can traverse when we run as root (pytest's tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[EmbeddedPostgres]:
    root = make_service_dir("cs-pg-")
    server = EmbeddedPostgres(root / "postgres")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(postgres_server: EmbeddedPostgres) -> str:
    from sensorthings.schema.migrate import apply_migrations

    apply_migrations(postgres_server.dsn)
    return postgres_server.dsn


@contextmanager
def private_broker(prefix: str = "cs-mqtt-", decision_url: str | None = None) -> Iterator[EmbeddedMosquitto]:
    """The generated, secured broker on random ports, in a temp dir of its own; its plugin asks the app at
    `decision_url` (…/internal/mqtt) about API keys, users and tokens (None: only its accounts log in)."""
    root = make_service_dir(prefix)
    broker = EmbeddedMosquitto(root / "mosquitto", find_free_port(), websocket_port=find_free_port(),
                               decision_url=decision_url)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)


SESSION_HTTP_PORT = find_free_port()
"""The port of the session's app (`server_url`), chosen first: the session broker's plugin asks it."""


@pytest.fixture(scope="session")
def mosquitto_server() -> Iterator[EmbeddedMosquitto]:
    """The generated, secured broker: connect as the platform with `platform_url`, as a sensor with
    `sensor_username`/`sensor_password`, with an API key (id as user name, secret as password) once the
    session app runs; anonymous clients (`url`) read public data."""
    with private_broker(decision_url=f"http://127.0.0.1:{SESSION_HTTP_PORT}/internal/mqtt") as broker:
        yield broker


_USER_TABLES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relname <> %s
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
"""
_SEQUENCES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'S'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
"""


@pytest.fixture
def clean_db(database_url: str) -> str:
    """An empty database (see empty_database)."""
    empty_database(database_url)
    return database_url


def empty_database(database_url: str) -> None:
    """Empty every table (except the migrations record and extension tables) and restart every sequence.
    The TRUNCATE locks the tables one by one, so a reader of several (the session app still notifying the
    previous test's changes) can deadlock with it: PostgreSQL then fails one of the two, and it is tried again."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        tables = [row[0] for row in conn.execute(_USER_TABLES, (MIGRATIONS_TABLE,))]
        for attempt in range(5):
            if not tables:
                break
            try:
                conn.execute(
                    sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
                        sql.SQL(", ").join(sql.Identifier("public", t) for t in tables)
                    )
                )
                break
            except psycopg.errors.DeadlockDetected:
                if attempt == 4:
                    raise
                time.sleep(0.1)
        for (seq,) in conn.execute(_SEQUENCES).fetchall():
            conn.execute(sql.SQL("ALTER SEQUENCE {} RESTART").format(sql.Identifier("public", seq)))


@contextmanager
def running_app(settings: Settings, database_url: str) -> Iterator[str]:
    """The real ASGI app under uvicorn in a background thread; yields its base URL. Its operator token is
    ADMIN_TOKEN (tests.sta_helpers.HTTP sends it) unless `settings` gives one."""
    import uvicorn

    from citystream.app import create_app

    settings = dataclasses.replace(settings, admin_token=settings.admin_token or ADMIN_TOKEN)
    config = uvicorn.Config(create_app(settings, database_url), host=settings.host, port=settings.http_port,
                            log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test HTTP server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{settings.host}:{settings.http_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="session")
def server_url(database_url: str, mosquitto_server: EmbeddedMosquitto) -> Iterator[str]:
    """The real app on a random loopback port, with its MQTT bridge connected to the test broker."""
    # Its rollup finalizer is off: tests that make buckets final run passes themselves, and one running
    # every minute underneath them would now and then get there first (tests/sta/test_rollup_final.py).
    settings = Settings(database_url=database_url, mqtt_url=mosquitto_server.platform_url, host="127.0.0.1",
                        http_port=SESSION_HTTP_PORT, rollup_finalize_seconds=0)
    with running_app(settings, database_url) as url:
        yield url


@pytest.fixture(scope="module")
def city(server_url: str, database_url: str) -> Iterator[City]:
    """tests/ogc_city.py's small city, built once per test module on an emptied database."""
    empty_database(database_url)
    yield build_city(f"{server_url}/v1.1")


@pytest.fixture
def sta(server_url: str, clean_db: str) -> str:
    """STA service root of the running app, with an empty database."""
    return f"{server_url}/v1.1"


def pytest_report_header() -> list[str]:
    return [f"citystream tests: euid={os.geteuid()} (services run as their own accounts when root)"]


def _hypothesis_profile() -> None:
    """In CI the property tests run a fixed set of examples, so a run can be repeated exactly."""
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True)
    if os.environ.get("CI"):
        settings.load_profile("ci")


_hypothesis_profile()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fuzz tier's counts (tests/fuzz_report.py), when it ran."""
    from tests import fuzz_report

    if fuzz_report.COUNTS:
        terminalreporter.section("fuzz tier")
        for line in fuzz_report.lines():
            terminalreporter.write_line(line)
