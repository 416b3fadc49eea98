"""HTTP access log: one structured record per request, and a request id that ties the request's records
together (the client, the proxy and every log line of the request see the same id).

A pure ASGI middleware, because it runs for every request: it only wraps `send` to see the status and
count the body bytes, and costs a few microseconds plus one log record (see docs/configuration.md, Logs).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from citystream import logs
from citystream.logs import request_id

MODES = ("all", "writes", "off")

log = logging.getLogger("citystream.access")

_WELL_FORMED_ID = re.compile(rb"[A-Za-z0-9._:+=/@-]{1,128}")
"""An incoming X-Request-ID we pass on: printable, no spaces, bounded (safe in a header and a log)."""
_READS = frozenset(("GET", "HEAD"))
MAX_QUERY_LOGGED = 2048
"""Bytes of a query string or path kept in its record (hostile ones run to kilobytes: an 8 KiB CQL2 filter)."""
MAX_USER_AGENT_LOGGED = 512

_PREFIX = secrets.token_hex(6)
_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A process-unique id without a syscall per request: a random per-process prefix and a counter."""
    return f"{_PREFIX}{next(_COUNTER) & 0xFFFFFFFF:08x}"


class AccessLog:
    """Logs method, path, query, status, duration, response bytes, client, user agent and request id.

    `mode`: `all` every request; `writes` requests other than GET/HEAD and every response >= 400; `off` no
    records (the request id is still honoured, returned and attached to the request's other records).
    """

    def __init__(self, app: ASGIApp, mode: str = "all") -> None:
        if mode not in MODES:
            raise ValueError(f"access log mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.app = app
        self.mode = mode

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        agent = incoming = b""
        for name, value in scope["headers"]:
            if name == b"user-agent":
                agent = value
            elif name == b"x-request-id":
                incoming = value
        rid = incoming.decode("ascii") if incoming and _WELL_FORMED_ID.fullmatch(incoming) else new_request_id()
        rid_header = (b"x-request-id", rid.encode("ascii"))
        status = 0
        sent = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), rid_header]}
            elif kind == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        token = request_id.set(rid)
        failed = False
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            failed = True
            status = status or 500  # the error handler outside us answers 500
            raise
        finally:
            if not failed:  # else the handler outside us logs the traceback and answers: with this id
                request_id.reset(token)
            if self._wanted(scope["method"], status):
                self._record(scope, status, sent, started, agent, rid)

    def _wanted(self, method: str, status: int) -> bool:
        if self.mode == "all":
            return True
        return self.mode == "writes" and (method not in _READS or status >= 400)

    @staticmethod
    def _record(scope: Scope, status: int, sent: int, started: float, agent: bytes, rid: str) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        client = scope.get("client")
        fields: dict[str, Any] = {
            "method": scope["method"],
            "path": _bounded(scope["path"], MAX_QUERY_LOGGED),
            "query": _bounded(scope["query_string"].decode("latin-1"), MAX_QUERY_LOGGED),
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "response_bytes": sent,
            "client": client[0] if client else None,
            "user_agent": agent[:MAX_USER_AGENT_LOGGED].decode("latin-1"),
            "request_id": rid,
        }
        logs.log_fields(log, logging.INFO, f"{scope['method']} {fields['path']} {status}", fields)


def _bounded(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}…({len(text)} characters)"
