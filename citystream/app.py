"""ASGI application factory: wires the STA REST surface to a PostgreSQL pool with the configured limits."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from citystream.access_log import AccessLog
from citystream.admin import admin_router
from citystream.audit import AuditLog
from citystream.auth.authenticate import Authentication, Authenticator
from citystream.auth.oidc import OidcVerifier
from citystream.auth.store import CredentialStore
from citystream.broker_decisions import BrokerDecisions
from citystream.logs import request_id
from citystream.mqtt_websocket import PATH as MQTT_WEBSOCKET_PATH
from citystream.mqtt_websocket import MqttWebSocketRelay, RelayConfig
from citystream.restrictions import RestrictionWatch
from citystream.retention import RetentionJob
from citystream.rollup_finalizer import RollupFinalizer
from citystream.services import WritePath, mqtt_endpoints
from citystream.settings import Settings
from geo.api import OgcConfig, create_ogc_app
from mqtt_bridge.address import BrokerAddress
from sensorthings.http.common import error_response, service_url
from sensorthings.http.openapi import OPENAPI_MEDIA_TYPE
from sensorthings.http.routes import StaApi, StaConfig
from sensorthings.model.errors import StaError
from sensorthings.query.visibility import Restrictions

log = logging.getLogger("citystream")


SLOW_STOP_SECONDS = 2.0
"""Parts still stopping after this long are named in the log, and again when they are done (a slow
shutdown says where it waited)."""


async def stop_all(parts: dict[str, Callable[[], Awaitable[None]]]) -> None:
    """Stop `parts` concurrently; one that fails is logged and does not keep the others from stopping."""

    async def stop(name: str, part: Callable[[], Awaitable[None]]) -> None:
        started = time.monotonic()
        try:
            await part()
        except Exception:
            log.exception("stopping the %s failed", name)
        if (seconds := time.monotonic() - started) > SLOW_STOP_SECONDS:
            log.warning("stopping the %s took %.1f s", name, seconds)

    tasks = {asyncio.create_task(stop(name, part)): name for name, part in parts.items()}
    _, pending = await asyncio.wait(tasks, timeout=SLOW_STOP_SECONDS)
    if pending:
        log.warning("still stopping after %.0f s: %s", SLOW_STOP_SECONDS, ", ".join(tasks[t] for t in pending))
        await asyncio.wait(pending)


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def create_app(settings: Settings, database_url: str) -> FastAPI:
    services = WritePath.build(settings, database_url)
    pool, ingest, notifier = services.pool, services.ingest, services.notifier
    credentials = CredentialStore(database_url, settings.auth_reload_seconds)
    audit = AuditLog(pool, retention_days=settings.audit_retention_days)
    restrictions = Restrictions()
    restriction_watch = RestrictionWatch(database_url, restrictions)
    finalizer = RollupFinalizer(pool, notifier, settings.rollup_finalize_seconds)
    retention = RetentionJob(pool, settings.retention_interval_seconds, settings.retention_batch_rows)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await services.start()
        try:
            await credentials.start()
            await audit.start()
            await restriction_watch.start()
            await finalizer.start()
            await retention.start()
            yield
        finally:
            # Side by side, not one after another: each may wait (the audit log writes what is buffered,
            # a retention pass ends its batch), and a SIGTERM's grace period is not their sum. The pool
            # they use closes after all of them.
            await stop_all({"retention": retention.stop, "rollup finalizer": finalizer.stop,
                            "restriction watch": restriction_watch.stop, "audit log": audit.stop,
                            "credentials": credentials.stop, "OGC API": ogc.state.close})
            await stop_all({"write path": services.stop})

    app = FastAPI(title="CityStream", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    # Added first, so it runs inside the access log (which then records the 401s it answers).
    authenticator = Authenticator(credentials, OidcVerifier(settings.oidc) if settings.oidc else None,
                                  settings.admin_token)
    app.add_middleware(Authentication, authenticator=authenticator, anonymous_read=settings.anonymous_read,
                       audit=audit)
    app.add_middleware(AccessLog, mode=settings.access_log)
    sta = StaApi(pool, StaConfig(
        default_top=settings.default_top,
        max_top=settings.max_top,
        max_body_bytes=settings.max_body_bytes,
        statement_timeout_ms=settings.statement_timeout_ms,
        public_url=settings.public_url,
        max_expand_depth=settings.max_expand_depth,
        exact_count_limit=settings.exact_count_limit,
        mqtt_endpoints=mqtt_endpoints(settings),
    ), observations=ingest, listener=notifier, audit=audit, restrictions=restrictions)
    app.include_router(sta.router)
    app.include_router(admin_router(pool, notifier.registry))
    broker_secret = BrokerAddress.from_url(settings.mqtt_url).password if settings.mqtt_url else None
    if broker_secret:  # the broker's plugin asks who its clients are and what they may do
        app.include_router(BrokerDecisions(authenticator, pool, broker_secret, settings.anonymous_read).router())
    ogc = create_ogc_app(pool, OgcConfig(public_url=settings.public_url,
                                         statement_timeout_ms=settings.statement_timeout_ms), audit, restrictions)
    app.add_route("/ogcapi", ogc.state.landing, include_in_schema=False)
    app.mount("/ogcapi", ogc)
    # MQTT over WebSocket on the HTTP port (Masterportal's default wss://<host>/mqtt), relayed to the broker.
    mqtt_ws = MqttWebSocketRelay(RelayConfig(settings.mqtt_ws_url, settings.mqtt_ws_max_message_bytes))
    # An ASGI app, not a `func(websocket)` endpoint: Starlette runs it as one (FastAPI's annotation says otherwise).
    app.router.add_websocket_route(MQTT_WEBSOCKET_PATH, mqtt_ws)  # type: ignore[arg-type]
    app.add_route(MQTT_WEBSOCKET_PATH, mqtt_ws.http, methods=["GET", "HEAD"], include_in_schema=False)
    if not mqtt_ws.enabled:
        log.info("MQTT over WebSocket at %s is disabled: no broker WebSocket URL (CITYSTREAM_MQTT_WS_URL)",
                 MQTT_WEBSOCKET_PATH)

    @app.get("/", include_in_schema=False)
    async def landing(request: Request) -> Response:
        sta_root = service_url(request, settings.public_url)
        return _json({
            "title": "CityStream",
            "description": "Real-time urban IoT data: OGC SensorThings API 1.1 and OGC API – Features",
            "links": [
                {"rel": "self", "href": sta_root.rsplit("/", 1)[0] + "/", "type": "application/json"},
                {"rel": "service", "href": sta_root, "type": "application/json",
                 "title": "OGC SensorThings API 1.1"},
                {"rel": "service-desc", "href": f"{sta_root}/api", "type": OPENAPI_MEDIA_TYPE,
                 "title": "The SensorThings API's definition (OpenAPI 3.0)"},
                {"rel": "data", "href": sta_root.rsplit("/", 1)[0] + "/ogcapi", "type": "application/json",
                 "title": "OGC API – Features"},
                {"rel": "status", "href": sta_root.rsplit("/", 1)[0] + "/health", "type": "application/json"},
            ],
        })

    @app.get("/health", include_in_schema=False)
    async def health() -> Response:
        """503 when the database cannot be reached now, or when the pool's connections have been failing
        (connection lost, prepared statements out of step, internal errors: see citystream/pool.py) even
        though a fresh probe succeeds."""
        stats = pool.get_stats()
        state: dict[str, Any] = {"size": stats.get("pool_size", 0), "idle": stats.get("pool_available", 0),
                                 "waiting": stats.get("requests_waiting", 0)}
        failures = pool.recent_failures()
        if failures:
            state["recentFailures"] = len(failures)
            state["lastFailure"] = failures[-1]
        try:
            async with pool.connection(timeout=5) as conn:
                await conn.execute("SELECT 1")
        except Exception as exc:  # any failure means "not healthy"; the reason goes into the body
            return _json({"status": "unavailable", "database": str(exc), "pool": state}, 503)
        if not pool.healthy:
            return _json({"status": "degraded", "database": "ok", "pool": state}, 503)
        return _json({"status": "ok", "database": "ok", "pool": state})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(StaError)
    async def sta_error(_: Request, exc: StaError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        return _json({"code": 400, "type": "error", "message": f"invalid request: {exc.errors()}"}, 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        message = ("no such resource; the SensorThings API is at /v1.1 (and, for 1.0 clients, /v1.0)"
                   if exc.status_code == 404 else exc.detail)
        return _json({"code": exc.status_code, "type": "error", "message": message}, exc.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error for %s %s", request.method, request.url.path)
        response = _json({"code": 500, "type": "error", "message": "internal server error; see the server log"},
                         500)
        rid = request_id.get()  # the access log leaves it set for us: the record above carries it too
        if rid is not None:
            response.headers["X-Request-ID"] = rid
        return response

    return app
