"""Structured logs (citystream/logs.py) and the HTTP access log (citystream/access_log.py) of the real app.

The middleware on the real app (its wiring); the set-up, in a subprocess of its own, and the middleware on a
small Starlette app (its branches) need no services and are tested in tests/unit/test_logs.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import orjson
import pytest

from citystream import logs
from tests.sta_helpers import HTTP
from tests.unit.test_logs import _access


def test_the_app_logs_its_requests(server_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="citystream.access")
    response = HTTP.post(f"{server_url}/v1.1/Things", json={"name": "logged", "description": "d"}, timeout=10)
    assert response.status_code == 201
    deleted = HTTP.delete(response.headers["location"], headers={"x-request-id": "delete-1"}, timeout=10)
    assert deleted.status_code == 200 and deleted.headers["x-request-id"] == "delete-1"
    records = {r.getMessage(): r.__dict__ for r in _access(caplog)}
    assert records["POST /v1.1/Things 201"]["request_id"] == response.headers["x-request-id"]
    path = response.headers["location"].split(server_url, 1)[1]
    assert records[f"DELETE {path} 200"]["request_id"] == "delete-1"


def test_a_500_carries_its_request_id_in_the_header_and_the_traceback_record(
        database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The records of exactly the requests that say "see the server log" must be findable by their id."""
    from citystream.app import create_app
    from citystream.settings import Settings

    app = create_app(Settings(database_url=database_url), database_url)

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/boom", headers={"x-request-id": "trace-me"})

    lines: list[dict[str, Any]] = []

    class Formatted(logging.Handler):  # formats as the records are written, in the request's context
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(orjson.loads(logs.JsonFormatter().format(record)))

    handler = Formatted()
    logging.getLogger("citystream").addHandler(handler)
    try:
        caplog.set_level(logging.INFO)
        response = asyncio.run(go())
    finally:
        logging.getLogger("citystream").removeHandler(handler)
    assert response.status_code == 500 and response.headers["x-request-id"] == "trace-me"
    failed = [line for line in lines if line["message"] == "unhandled error for GET /boom"]
    assert failed and failed[0]["request_id"] == "trace-me" and "a bug" in failed[0]["exception"]
    assert any(line["logger"] == "citystream.access" and line["status"] == 500 for line in lines)
