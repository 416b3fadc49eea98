"""Structured logs (citystream/logs.py) and the HTTP access log (citystream/access_log.py), without services.

The set-up is tested in a subprocess of its own (a plain Python, no server), as each CityStream process
configures it; the middleware on a small Starlette app (its branches). Moved here from
tests/platform/test_logs.py, which keeps the middleware on the real app (its wiring) and imports _access from
here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from citystream import logs
from citystream.access_log import AccessLog, new_request_id

_EMIT = """
import logging, sys
from citystream import logs
logs.configure(sys.argv[1], sys.argv[2])
print("before", flush=True)
logging.getLogger("citystream.bridge").warning("batch failed", extra={"topic": "v1.1/Observations", "rows": 3})
logging.getLogger("citystream.ingest").info("stored %d", 5)
logging.getLogger("citystream.geo").debug("not at info")
logging.getLogger("uvicorn.error").info("Uvicorn running", extra={"color_message": "in colour"})
logging.getLogger("psycopg.pool").warning("discarding closed connection")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("citystream.mqtt").exception("reader crashed")
logs.log_fields(logging.getLogger("citystream.access"), logging.INFO, "GET / 200", {"status": 200})
logs.log_fields(logging.getLogger("citystream.access"), logging.DEBUG, "not at info", {})
"""


def _emit(level: str, fmt: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", _EMIT, level, fmt], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_json_lines_carry_time_level_logger_message_and_extra_fields() -> None:
    lines = _emit("info", "json")
    assert lines[0] == "before"  # what was printed first stays first
    records = [orjson.loads(line) for line in lines[1:] if line.startswith("{")]
    assert [r["logger"] for r in records] == ["citystream.bridge", "citystream.ingest", "uvicorn.error",
                                              "psycopg.pool", "citystream.mqtt", "citystream.access"]
    bridge = records[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", bridge["time"])
    assert bridge["level"] == "WARNING" and bridge["message"] == "batch failed"
    assert bridge["topic"] == "v1.1/Observations" and bridge["rows"] == 3 and isinstance(bridge["pid"], int)
    assert list(bridge)[:5] == ["time", "level", "logger", "message", "pid"]
    assert records[1]["message"] == "stored 5"
    assert "color_message" not in records[2]
    assert "ZeroDivisionError" in records[4]["exception"] and records[4]["level"] == "ERROR"
    assert len(lines) == 7  # the traceback stays inside its record: one record, one line
    direct = records[5]  # the access log's direct path writes the same shape
    assert list(direct) == ["time", "level", "logger", "message", "pid", "status"]
    assert (direct["level"], direct["message"], direct["pid"]) == ("INFO", "GET / 200", bridge["pid"])


def test_text_format_and_level() -> None:
    lines = _emit("warning", "text")
    assert re.fullmatch(r"\S+Z WARNING citystream\.bridge: batch failed topic=v1\.1/Observations rows=3", lines[1])
    assert not any("stored 5" in line or "Uvicorn running" in line for line in lines)
    assert any(line.endswith("ZeroDivisionError: division by zero") for line in lines)
    assert not any("GET / 200" in line for line in lines)


def test_bad_log_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from citystream.settings import Settings

    monkeypatch.setenv("CITYSTREAM_LOG_FORMAT", "xml")
    with pytest.raises(SystemExit, match="CITYSTREAM_LOG_FORMAT must be one of json, text"):
        Settings.from_env()
    monkeypatch.setenv("CITYSTREAM_LOG_FORMAT", "TEXT")
    monkeypatch.setenv("CITYSTREAM_ACCESS_LOG", "writes")
    monkeypatch.setenv("CITYSTREAM_LOG_LEVEL", "Warning")
    settings = Settings.from_env()
    assert (settings.log_format, settings.access_log, settings.log_level) == ("text", "writes", "warning")


def test_exit_descriptions() -> None:
    assert logs.describe_exit(-11) == "died from SIGSEGV"
    assert logs.describe_exit(3) == "exited with code 3"
    assert logs.exit_fields(-9) == {"signal": "SIGKILL"} and logs.exit_fields(0) == {"exit_code": 0}


# ------------------------------------------------------------------------------------------ access log


async def _ok(request: Request) -> Response:
    """Also shows that the request's other records carry its id."""
    record = logging.LogRecord("citystream.geo", logging.INFO, "", 0, "inside", (), None)
    return PlainTextResponse(logs.JsonFormatter().format(record))


async def _created(request: Request) -> Response:
    return PlainTextResponse("made", status_code=201)


async def _boom(request: Request) -> Response:
    raise RuntimeError("boom")


def _app(mode: str) -> Starlette:
    routes = [Route("/ok", _ok), Route("/things", _created, methods=["POST"]), Route("/boom", _boom)]
    return Starlette(routes=routes, middleware=[Middleware(AccessLog, mode=mode)])


def _requests(mode: str, *calls: tuple[str, str, dict[str, str]]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=_app(mode), raise_app_exceptions=False, client=("192.0.2.7", 4711))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.request(method, path, headers=headers) for method, path, headers in calls]

    return asyncio.run(go())


def _access(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "citystream.access"]


def test_one_record_per_request_with_what_an_operator_needs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="citystream.access")
    ok, created, boom = _requests("all", ("GET", "/ok?$top=1", {"user-agent": "QGIS/3.34"}),
                                  ("POST", "/things", {"x-request-id": "proxy-42"}), ("GET", "/boom", {}))
    first, second, third = _access(caplog)
    assert first.getMessage() == "GET /ok 200" and first.levelno == logging.INFO
    fields: dict[str, Any] = first.__dict__
    assert (fields["method"], fields["path"], fields["query"], fields["status"]) == ("GET", "/ok", "$top=1", 200)
    assert fields["response_bytes"] == len(ok.content) and fields["duration_ms"] >= 0
    assert (fields["client"], fields["user_agent"]) == ("192.0.2.7", "QGIS/3.34")
    assert fields["request_id"] == ok.headers["x-request-id"]
    assert orjson.loads(ok.content)["request_id"] == ok.headers["x-request-id"]  # inside the request too
    assert created.headers["x-request-id"] == "proxy-42" and second.__dict__["request_id"] == "proxy-42"
    assert boom.status_code == 500 and third.__dict__["status"] == 500


def test_request_ids_generated_unless_a_well_formed_one_comes_in(caplog: pytest.LogCaptureFixture) -> None:
    responses = _requests("off", ("GET", "/ok", {}), ("GET", "/ok", {}), ("GET", "/ok", {"x-request-id": "a b"}),
                          ("GET", "/ok", {"x-request-id": "x" * 129}),
                          ("GET", "/ok", {"x-request-id": "0f8fad5b-d9cb-469f-a165-70867728950e"}))
    ids = [r.headers["x-request-id"] for r in responses]
    assert len(set(ids)) == 5 and all(re.fullmatch(r"[0-9a-f]{20}", i) for i in ids[:4])
    assert ids[4] == "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert new_request_id() != new_request_id()
    assert not _access(caplog)  # off: no records, ids still


def test_writes_mode_logs_writes_and_errors_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="citystream.access")
    _requests("writes", ("GET", "/ok", {}), ("HEAD", "/ok", {}), ("POST", "/things", {}), ("GET", "/nope", {}),
              ("GET", "/boom", {}))
    assert [r.getMessage() for r in _access(caplog)] == ["POST /things 201", "GET /nope 404", "GET /boom 500"]


def test_text_records_cannot_be_forged_by_what_a_client_sends() -> None:
    record = logging.LogRecord("citystream.access", logging.INFO, "", 0,
                               "GET /x\n2026-01-01T00:00:00.000Z ERROR citystream.supervisor: forged\x1b[31m", (),
                               None)
    record.__dict__["user_agent"] = "evil\r\nagent"
    line = logs.TextFormatter().format(record)
    assert "\n" not in line and "\x1b" not in line and "\r" not in line
    assert "\\n2026-01-01" in line and "\\x1b[31m" in line and "evil\\r\\nagent" in line


def test_access_records_bound_what_they_keep(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="citystream.access")
    _requests("all", ("GET", "/ok?" + "q" * 10_000, {"user-agent": "u" * 5000}), ("GET", "/" + "p" * 9000, {}))
    first, second = _access(caplog)
    assert len(first.__dict__["query"]) < 2100 and len(first.__dict__["user_agent"]) == 512
    assert len(second.__dict__["path"]) < 2100 and second.getMessage().endswith("404")
