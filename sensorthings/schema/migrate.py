"""Versioned plain-SQL migrations, applied in order, each in its own transaction, exactly once."""

from __future__ import annotations

from importlib import resources

import psycopg

MIGRATIONS_PACKAGE = "sensorthings.schema"
_LOCK_KEY = 0x5715_C17E  # serialises concurrent migrators (several bridge/app processes starting together)


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) for every bundled migration, in version order."""
    folder = resources.files(MIGRATIONS_PACKAGE).joinpath("migrations")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), folder.joinpath(name).read_text(encoding="utf-8")) for name in names]


def apply_migrations(dsn: str) -> list[str]:
    """Create the extensions and apply pending migrations; return the versions applied now."""
    applied: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            if conn.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
            ).fetchone() and _timescaledb_preloaded(conn):
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS citystream_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM citystream_migrations")}
            for version, script in migration_files():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(script.encode())
                    conn.execute("INSERT INTO citystream_migrations (version) VALUES (%s)", (version,))
                applied.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


def _timescaledb_preloaded(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT current_setting('shared_preload_libraries', true)").fetchone()
    return bool(row and row[0] and "timescaledb" in row[0])
