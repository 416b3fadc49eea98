"""HTTP helpers shared by the STA routes and the OGC API: the public service URL (behind proxies),
bounded body reading, JSON responses, and how a database error becomes a client-facing StaError."""

from __future__ import annotations

import functools
import re
from collections.abc import MutableMapping
from typing import Any

import orjson
import psycopg
from fastapi import Request, Response
from psycopg import errors

from sensorthings.model import LATEST
from sensorthings.model.errors import (
    BadRequest,
    Conflict,
    PayloadTooLarge,
    ServiceUnavailable,
    StaError,
)
from sensorthings.model.json_values import parse_observation_json, parse_request_json

RETRYABLE = ("40001", "40P01")  # serialization failure, deadlock: the transaction is safe to run again


def service_url(request: Request, public_url: str | None, version: str = LATEST) -> str:
    """Absolute URL of the service root of `version`, honouring a configured public URL or X-Forwarded-*
    headers."""
    return f"{platform_url(request, public_url)}/{version}"


def platform_url(request: Request, public_url: str | None) -> str:
    """Absolute URL under which the versions of the service are (`…/v1.0`, `…/v1.1`)."""
    if public_url:
        return public_url.rstrip("/")
    headers = request.headers
    return _service_url(request.scope["scheme"], headers.get("host"), _server_netloc(request.scope),
                        headers.get("x-forwarded-proto"), headers.get("x-forwarded-host"),
                        headers.get("x-forwarded-prefix"))


def _server_netloc(scope: MutableMapping[str, Any]) -> str:
    """host[:port] of the listening socket, as Starlette's request.url gives it when there is no Host header."""
    server = scope.get("server")
    if not server:
        return ""
    host, port = server
    return host if port in (None, _DEFAULT_PORTS.get(scope["scheme"])) else f"{host}:{port}"


_DEFAULT_PORTS = {"http": 80, "https": 443}


@functools.lru_cache(maxsize=1024)
def _service_url(scheme: str, host_header: str | None, server: str, forwarded_proto: str | None,
                 forwarded_host: str | None, forwarded_prefix: str | None) -> str:
    """Cached: every request computes it, and a service sees few distinct header combinations."""
    proto = _forwarded(forwarded_proto, _PROTO) or scheme
    host = _forwarded(forwarded_host, _HOST) or host_header or server
    if not _HOST.fullmatch(host):
        host = server
    prefix = _forwarded(forwarded_prefix, _PREFIX) or ""
    return f"{proto}://{host}{prefix.rstrip('/')}"


_PROTO = re.compile(r"https?")
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_PREFIX = re.compile(r"(/[A-Za-z0-9._~\-]+)*/?")


def _forwarded(raw: str | None, valid: re.Pattern[str]) -> str | None:
    """The first value of a forwarding header, ignored unless it is well-formed (it ends up in every link)."""
    if raw is None:
        return None
    value = raw.split(",")[0].strip()
    return value if valid.fullmatch(value) else None


def parse_json(raw: bytes, *, observation: bool = False) -> Any:
    """The request body; an Observation's through the fast reader the MQTT bridge uses too."""
    if not raw.strip():
        raise BadRequest("the request body is empty; send a JSON document")
    return parse_observation_json(raw) if observation else parse_request_json(raw)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def json_response(body: bytes | str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(content=body, status_code=status, media_type="application/json", headers=headers)


def error_response(error: StaError) -> Response:
    response = json_response(orjson.dumps(error.to_json()), error.status)
    if error.headers:
        response.headers.update(error.headers)
    return response


def database_error(exc: psycopg.Error, timeout_ms: int) -> StaError:
    """Map a database error caused by a request to a client-facing error (never a traceback)."""
    if exc.sqlstate in RETRYABLE:
        return ServiceUnavailable("the change collided with a concurrent one and was rolled back; send it again")
    if isinstance(exc, errors.QueryCanceled):
        return ServiceUnavailable(f"the query ran longer than the limit of {timeout_ms} ms; "
                                  f"narrow it (smaller $top, fewer entities)")
    if isinstance(exc, errors.ForeignKeyViolation | errors.UniqueViolation):
        return Conflict(f"the change conflicts with the current data: {exc.diag.message_primary}")
    if isinstance(exc, psycopg.IntegrityError):
        return BadRequest(f"invalid value: {exc.diag.message_primary}")
    if isinstance(exc, psycopg.DataError):
        return BadRequest(f"a value in the request cannot be used: {exc.diag.message_primary or exc}; "
                          f"check the numbers, times and ranges it contains")
    if (exc.sqlstate or "").startswith("54"):  # program limit exceeded: too many arguments, too complex
        return BadRequest("the request exceeds what the database can evaluate in one query (too many keys, "
                          "values or nested terms); simplify it")
    if isinstance(exc, psycopg.OperationalError):
        return ServiceUnavailable("the database is not reachable right now; try again shortly")
    raise exc
