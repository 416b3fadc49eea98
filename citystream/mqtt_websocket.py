"""MQTT over WebSocket at `/mqtt` on the HTTP port: a relay to the broker's own WebSocket listener.

Why: Masterportal (and other browser apps) connect to `wss://<STA host>/mqtt` by default, the HTTP port of
the SensorThings server. Behind nginx that location is proxied to the broker (docs/deployment.md); this
module gives `citystream up` and `citystream serve` the same endpoint without a reverse proxy.

What it is: a WebSocket relay, not an MQTT broker or parser. Each client connection gets one upstream
WebSocket connection to the broker (the `websockets` client library), opened before the client's handshake
is answered, so the client sees the broker's subprotocol choice and a broker that cannot be reached is an
HTTP 502 instead of a socket that opens and dies. Then every WebSocket message is passed on unchanged, in
both directions, binary as binary (MQTT over WebSocket uses binary messages only; a text message is passed
on as text and the broker judges it). The MQTT CONNECT with its credentials goes to the broker like
everything else: authentication and the ACL stay the broker's.

Bounds, per connection: uvicorn reads the client socket no further while a message waits for us (its
receive queue holds one), and we take the next one only when the broker's socket has taken the last
(`websockets` waits for its write buffer to drain below 32 KiB). From the broker, at most
`UPSTREAM_QUEUE` messages wait in `websockets` before it stops reading the broker's socket, and we send to
the client only as fast as uvicorn's transport drains. A message larger than `max_message_bytes` (from the
broker: `BROKER_HEADROOM` more) closes that connection with 1009; the broker's own limit on packets applies
as well.

Closing: when either side closes (cleanly or not), the other is closed with the same close code where one
may be sent (a vanished client: 1001 to the broker, which then publishes the client's Will as for any
dropped connection; a vanished broker: 1014 to the client). Every failure stays inside its connection's
task: it is logged and both sides are closed; other connections and the HTTP server go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import orjson
from prometheus_client import Counter, Gauge
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.frames import EXTERNAL_CLOSE_CODES, CloseCode
from websockets.typing import Subprotocol

log = logging.getLogger("citystream.mqtt_websocket")

PATH = "/mqtt"
MQTT_SUBPROTOCOLS = ("mqtt", "mqttv3.1")
"""WebSocket subprotocols of MQTT: `mqtt` (MQTT 3.1.1 and 5, what MQTT.js and browsers' clients send) and
`mqttv3.1` (old MQTT 3.1 clients)."""
UPSTREAM_QUEUE = 16
"""Messages from the broker that may wait for a slow client before the broker's socket is read no further."""
OPEN_TIMEOUT = 10.0
"""Seconds to connect to the broker's WebSocket listener (TCP, TLS and handshake)."""
CLOSE_TIMEOUT = 5.0
"""Seconds to wait for the broker's answer to our close frame before the socket is dropped."""
BROKER_HEADROOM = 4096
"""Bytes a message from the broker may exceed the limit by: a broker forwards a PUBLISH it accepted at its own
limit with properties of the subscriber's added (subscription identifiers, one per matching subscription)."""
WARNING_INTERVAL = 10.0
"""Seconds between two warnings that the broker cannot be reached (the rest are counted into the next)."""
USER_AGENT = "CityStream-mqtt-websocket-relay"
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's body is at most 125 bytes, two of which are the code

OPEN = Gauge("citystream_mqtt_websocket_connections", "MQTT over WebSocket connections relayed by /mqtt now")
OPENED = Counter("citystream_mqtt_websocket_handshakes", "WebSocket handshakes at /mqtt, by outcome",
                 ["outcome"])
"""Outcomes: `relayed` (the broker accepted the WebSocket), `refused` (no MQTT subprotocol offered),
`disabled` (no broker WebSocket URL), `broker_unavailable` (502)."""

_NOT_CONFIGURED = (
    "MQTT over WebSocket is not available at /mqtt on this server: it knows no WebSocket listener of the "
    "MQTT broker. Set CITYSTREAM_MQTT_WS_URL (e.g. ws://broker:9001; `citystream up` sets it for its own "
    "broker), or connect to the broker directly."
)
_NO_UPGRADE = (
    "/mqtt is MQTT over WebSocket: open it with a WebSocket client (an HTTP GET with `Upgrade: websocket` and "
    "`Sec-WebSocket-Protocol: mqtt`), e.g. MQTT.js mqtt.connect('ws://HOST:PORT/mqtt')"
)
_NO_MQTT_SUBPROTOCOL = (
    "/mqtt speaks MQTT over WebSocket: offer the WebSocket subprotocol `mqtt` (MQTT 3.1.1 and 5) or `mqttv3.1` "
    "(MQTT 3.1); offered: {offered}"
)
_BROKER_UNAVAILABLE = "the MQTT broker behind /mqtt cannot be reached now; try again later"


@dataclass(frozen=True)
class RelayConfig:
    upstream_url: str | None
    """The broker's WebSocket listener (ws:// or wss://); None: /mqtt is disabled and says so."""
    max_message_bytes: int = 1024 * 1024
    """Largest WebSocket message relayed either way (default: the private broker's max_packet_size)."""

    def __post_init__(self) -> None:
        if self.upstream_url is not None:
            check_upstream_url(self.upstream_url)
        if self.max_message_bytes < 2:  # an MQTT packet takes at least 2 bytes
            raise ValueError(f"the largest /mqtt message must be at least 2 bytes, not {self.max_message_bytes}")


def check_upstream_url(url: str) -> str:
    """`url` when it is a ws:// or wss:// URL with a host; ValueError (with what to write) otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"the broker's WebSocket URL must look like ws://host:port or wss://host/path, not {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the broker's WebSocket URL must not carry credentials: MQTT clients log in with their "
                         "own CONNECT, which /mqtt passes on")
    return url


def _error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"code": status, "type": "error", "message": message})


def _sendable(code: int | None, fallback: int) -> int:
    """`code` when a close frame may carry it (RFC 6455 7.4), else `fallback` (1005/1006 are never sent)."""
    if code is not None and (code in EXTERNAL_CLOSE_CODES or 3000 <= code <= 4999):
        return code
    return fallback


def _reason(text: str | None) -> str:
    data = (text or "").encode()
    if len(data) <= MAX_REASON_BYTES:
        return text or ""
    return data[:MAX_REASON_BYTES].decode(errors="ignore")


class _TooBig(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class MqttWebSocketRelay:
    """The ASGI app at `/mqtt` for WebSocket requests (`relay`), and its HTTP answer (`http`)."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self._warned_at = -WARNING_INTERVAL
        self._unwarned = 0

    @property
    def enabled(self) -> bool:
        return self.config.upstream_url is not None

    # ---------------------------------------------------------------------------------------- HTTP

    async def http(self, request: Request) -> Response:
        """A plain GET (no `Upgrade: websocket`): 426 with what to do instead, or 404 when disabled."""
        if not self.enabled:
            return Response(_error_body(404, _NOT_CONFIGURED), 404, media_type="application/json")
        return Response(_error_body(426, _NO_UPGRADE), 426, media_type="application/json",
                        headers={"Upgrade": "websocket", "Connection": "Upgrade"})

    # ------------------------------------------------------------------------------------ WebSocket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":  # only routed here for WebSocket requests
            raise RuntimeError(f"{PATH} relay called for a {scope['type']} request")
        try:
            await self._serve(scope, receive, send)
        except Exception:  # a fault of ours stays with this connection; the HTTP server goes on
            log.exception("MQTT WebSocket relay failed for %s", _client(scope))

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        url = self.config.upstream_url
        if url is None:
            OPENED.labels("disabled").inc()
            await _deny(scope, send, 404, _NOT_CONFIGURED)
            return
        offered = [str(p) for p in scope.get("subprotocols", ())]
        wanted = [p for p in offered if p in MQTT_SUBPROTOCOLS]
        if offered and not wanted:
            OPENED.labels("refused").inc()
            await _deny(scope, send, 400, _NO_MQTT_SUBPROTOCOL.format(offered=", ".join(offered)[:200]))
            return
        try:
            # A client that offers no subprotocol at all still gets MQTT: Mosquitto (libwebsockets) would
            # treat such a connection as plain HTTP. proxy=None: never through an HTTP proxy from the env.
            upstream = await connect(
                url, subprotocols=[Subprotocol(p) for p in wanted or MQTT_SUBPROTOCOLS[:1]], compression=None,
                proxy=None, open_timeout=OPEN_TIMEOUT, close_timeout=CLOSE_TIMEOUT,
                max_size=self.config.max_message_bytes + BROKER_HEADROOM, max_queue=UPSTREAM_QUEUE,
                user_agent_header=USER_AGENT)
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            OPENED.labels("broker_unavailable").inc()
            self._broker_unavailable(url, scope, exc)
            await _deny(scope, send, 502, _BROKER_UNAVAILABLE)
            return
        OPENED.labels("relayed").inc()
        OPEN.inc()
        try:
            await self._relay(scope, receive, send, upstream, accept=upstream.subprotocol if offered else None)
        finally:
            OPEN.dec()

    def _broker_unavailable(self, url: str, scope: Scope, exc: Exception) -> None:
        """A warning, at most one per WARNING_INTERVAL: clients retry every second or so while the broker is
        down, each of them, and one line says it all."""
        now = time.monotonic()
        if now - self._warned_at < WARNING_INTERVAL:
            self._unwarned += 1
            return
        more = f" ({self._unwarned} more since the last warning)" if self._unwarned else ""
        log.warning("MQTT WebSocket relay: the broker at %s refused or did not answer the connection for %s: %s%s",
                    url, _client(scope), str(exc) or type(exc).__name__, more)
        self._warned_at, self._unwarned = now, 0

    async def _relay(self, scope: Scope, receive: Receive, send: Send, upstream: ClientConnection,
                     accept: str | None) -> None:
        started = time.monotonic()
        to_broker = to_client = None
        try:
            try:
                await send({"type": "websocket.accept", "subprotocol": accept})
            except Exception:  # the client left during the handshake
                return
            to_broker = asyncio.create_task(self._client_to_broker(receive, upstream))
            to_client = asyncio.create_task(self._broker_to_client(upstream, send))
            await asyncio.wait((to_broker, to_client), return_when=asyncio.FIRST_COMPLETED)
            if to_broker.done():
                to_client.cancel()
                await self._client_finished(to_broker, upstream, send)
            else:
                to_broker.cancel()
                await self._broker_finished(to_client, send)
        finally:
            for task in (to_broker, to_client):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            await upstream.close()  # a no-op once closed; else bounded by CLOSE_TIMEOUT
            if log.isEnabledFor(logging.DEBUG):
                log.debug("MQTT WebSocket relay for %s ended after %.1f s (broker close %s)", _client(scope),
                          time.monotonic() - started, upstream.close_code)

    async def _client_finished(self, task: asyncio.Task[tuple[int, str]], upstream: ClientConnection,
                               send: Send) -> None:
        """The client closed (or sent too much): close the broker's side with its code."""
        try:
            code, reason = task.result()
        except _TooBig as exc:
            limit = self.config.max_message_bytes
            await _close_client(send, CloseCode.MESSAGE_TOO_BIG, f"message of {exc.size} bytes; at most {limit}")
            code, reason = CloseCode.GOING_AWAY, "client sent a message above the relay's limit"
        except ConnectionClosed:  # the broker went away while we were passing the client's message on
            await _close_client(send, _closed_code(upstream), _reason(_closed_reason(upstream)))
            return
        await upstream.close(_sendable(code, CloseCode.GOING_AWAY), _reason(reason))

    async def _broker_finished(self, task: asyncio.Task[None], send: Send) -> None:
        """The broker closed (or the client could not be written to): close the client's side."""
        exc = task.exception()
        if isinstance(exc, ConnectionClosed):
            frame = exc.rcvd or exc.sent
            code = _sendable(frame.code if frame is not None else None, CloseCode.BAD_GATEWAY)
            reason = frame.reason if frame is not None else "the broker closed the connection"
            await _close_client(send, code, _reason(reason))
        elif exc is not None and not isinstance(exc, OSError):  # OSError: the client left while we wrote to it
            raise exc                                            # (uvicorn's ClientDisconnected is one)

    async def _client_to_broker(self, receive: Receive, upstream: ClientConnection) -> tuple[int, str]:
        limit = self.config.max_message_bytes
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                data: bytes | str | None = message.get("bytes")
                if data is not None:
                    if len(data) > limit:
                        raise _TooBig(len(data))
                else:  # not MQTT (binary only), but passed on for the broker to judge
                    data = cast(str, message.get("text") or "")
                    if len(data) * 4 > limit and len(data.encode()) > limit:  # UTF-8: at most 4 bytes a char
                        raise _TooBig(len(data.encode()))
                await upstream.send(data)
            elif kind == "websocket.disconnect":
                return int(message.get("code", CloseCode.NO_STATUS_RCVD)), str(message.get("reason") or "")

    async def _broker_to_client(self, upstream: ClientConnection, send: Send) -> None:
        while True:
            data = await upstream.recv()  # ConnectionClosed when the broker closes, after what it sent
            if isinstance(data, bytes):
                await send({"type": "websocket.send", "bytes": data})
            else:
                await send({"type": "websocket.send", "text": data})


def _closed_code(upstream: ClientConnection) -> int:
    return _sendable(upstream.close_code, CloseCode.BAD_GATEWAY)


def _closed_reason(upstream: ClientConnection) -> str:
    return upstream.close_reason or "the broker closed the connection"


async def _close_client(send: Send, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):  # the client may be gone already
        await send({"type": "websocket.close", "code": code, "reason": reason})


async def _deny(scope: Scope, send: Send, status: int, message: str) -> None:
    """Answer the handshake with an HTTP error and a JSON body (ASGI's WebSocket Denial Response), or, on a
    server without that extension, refuse it (uvicorn then answers 403). A client already gone is no error."""
    with contextlib.suppress(OSError):
        if "websocket.http.response" in scope.get("extensions", {}):
            body = _error_body(status, message)
            start: Message = {"type": "websocket.http.response.start", "status": status,
                              "headers": [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(body)).encode())]}
            await send(start)
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION, "reason": _reason(message)})


def _client(scope: Scope) -> str:
    client: Any = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "a client"
