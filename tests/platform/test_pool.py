"""The database pool after failures (issue 13, item 3): a statement that fails first in an autocommit
pipeline used to leave psycopg believing a later statement was prepared, so every later OGC request on that
connection failed with `prepared statement "_pg3_N" does not exist` while /health said ok."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg
import pytest

from citystream.embedded import find_free_port
from citystream.pool import GuardedPool
from citystream.settings import Settings
from tests.conftest import running_app

LAST_COMMIT = "SELECT pg_backend_pid()"
FAILING = "SELECT ST_Segmentize(ST_MakeEnvelope(0, 0, 1, 1, 4326), %(d)s::float8)"  # d = 0: XX000


async def pipelined(pool: GuardedPool, fail: bool) -> str:
    """The OGC API's pattern: its query and a second one in one round trip, no transaction."""
    try:
        async with pool.connection() as conn, conn.pipeline():
            first = await conn.execute(FAILING, {"d": 0.0 if fail else 1.0})
            second = await conn.execute(LAST_COMMIT)
            await first.fetchall()
            await second.fetchone()
        return "ok"
    except psycopg.Error as exc:
        return type(exc).__name__


@pytest.mark.parametrize("failing_at", range(8))
def test_a_failed_pipeline_leaves_no_broken_connection(database_url: str, failing_at: int) -> None:
    async def run() -> list[str]:
        async with GuardedPool(database_url, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
            return [await pipelined(pool, n == failing_at) for n in range(14)]

    outcomes = asyncio.run(run())
    assert outcomes[failing_at] == "InternalError_"
    assert [o for n, o in enumerate(outcomes) if n != failing_at] == ["ok"] * 13  # failed at 5 before


def test_failures_inside_transactions_keep_the_connection(database_url: str) -> None:
    async def run() -> tuple[int, int, list[str]]:
        async with GuardedPool(database_url, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
            async with pool.connection() as conn:
                before = (await (await conn.execute(LAST_COMMIT)).fetchone() or (0,))[0]
            with pytest.raises(psycopg.errors.DivisionByZero):
                async with pool.connection() as conn, conn.transaction(), conn.pipeline():
                    await conn.execute("SELECT 1 / 0")
            async with pool.connection() as conn:
                after = (await (await conn.execute(LAST_COMMIT)).fetchone() or (0,))[0]
            return before, after, pool.recent_failures()

    before, after, failures = asyncio.run(run())
    assert before == after  # the rollback resets psycopg's record: nothing to replace
    assert failures == []  # a division by zero is the request's fault, not the pool's


def test_health_notices_failing_connections(database_url: str) -> None:
    """After connection-level failures (here: the server ends the app's connections, so their next uses
    fail) /health is 503 "degraded", although a fresh probe succeeds."""
    tagged = f"{database_url}?application_name=health-test"  # to end this app's connections and no others
    settings = Settings(database_url=tagged, host="127.0.0.1", http_port=find_free_port(), db_pool_size=2)
    with running_app(settings, tagged) as base:
        healthy = httpx.get(f"{base}/health", timeout=10)
        assert healthy.status_code == 200 and healthy.json()["status"] == "ok"
        assert {"size", "idle", "waiting"} <= set(healthy.json()["pool"])
        ended: set[Any] = set()
        with psycopg.connect(database_url, autocommit=True) as admin:
            for _ in range(3):
                for _, pid in admin.execute("SELECT pg_terminate_backend(pid), pid FROM pg_stat_activity "
                                            "WHERE application_name = 'health-test'").fetchall():
                    ended.add(pid)
                for _ in range(2):
                    httpx.get(f"{base}/ogcapi/collections", timeout=10)
        health = httpx.get(f"{base}/health", timeout=10)
        assert health.status_code == 503, health.text
        body = health.json()
        assert body["status"] == "degraded" and body["database"] == "ok" and body["pool"]["recentFailures"] >= 3
        assert ended
