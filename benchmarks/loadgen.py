"""Lean load generators for benchmarks/ingest.py: an MQTT 5 publisher and HTTP/1.1 POST clients on raw asyncio.

Why: the load generator must not be what the benchmark measures, and on a 2-core machine it shares the CPU with
the platform. Measured per message there, `mosquitto_pub -l` (QoS 1) cost ~16 µs of CPU and the Python that
generated its input lines ~5.5 µs, against ~26 µs for the bridge itself; the httpx AsyncClient cost ~2.8 ms
of CPU per POST (58% of the machine at 32 clients) against ~1.3 ms for the server. These generators frame
packets and requests from bytes templates (`%`-formatting, one clock read per chunk of messages), write many
MQTT packets per `transport.write`, and parse only what they must: PUBACKs; an HTTP status line, headers and
the body's length.

Each generator runs in its own process (`publish`, `post_observations` are the process entry points), measures
its own CPU time there (`time.process_time()`) and returns it with its counts, so the benchmark can report the
load generator's share of the machine next to the figure it measured.

Payloads are byte for byte those of benchmarks/ingest.py:payload(): orjson's rendering of
{"phenomenonTime": <now, ISO 8601, microseconds, Z>, "result": round(20 + (seq % 1000) / 100, 2),
 "Datastream": {"@iot.id": <id>}}.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson

from mqtt_bridge import wire

T = TypeVar("T")

TOPIC = "v1.1/Observations"
CHUNK = 200  # messages per write (and per clock read) when publishing as fast as possible
PACED_TICK = 0.02  # seconds of messages per write when paced (200 at most): short bursts, few wake-ups
MAX_IN_FLIGHT = 5_000  # unacknowledged QoS 1 messages per connection (capped by the broker's Receive Maximum)
ACK_TIMEOUT = 60.0  # at the end of a QoS 1 run, how long to wait for outstanding PUBACKs
READ_EVERY = 0.005  # seconds between reads of PUBACKs while publishing flat out (see _Publisher.read)
KEEPALIVE = 60
REQUEST_TIMEOUT = 60.0

_PACKET_IDS = [i.to_bytes(2, "big") for i in range(65536)]
_PUBACK = wire.PUBACK << 4  # the first byte of every PUBACK


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it is a platform dependency): less CPU per write and per read."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(coro)


def timestamp() -> bytes:
    """Now as payload() writes phenomenonTime: ISO 8601 with microseconds and Z."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z").encode()


class Payloads:
    """Observation bodies from a template: identical to payload(datastreams[index], seq, now), ~10x cheaper."""

    TEMPLATE = b'{"phenomenonTime":"%s","result":%s,"Datastream":{"@iot.id":%s}}'

    def __init__(self, datastreams: Sequence[int]) -> None:
        if not datastreams:
            raise ValueError("no Datastreams to publish to")
        self.datastreams = [b"%d" % d for d in datastreams]
        self.results = [orjson.dumps(round(20 + i / 100, 2)) for i in range(1000)]  # as orjson renders them

    def body(self, index: int, seq: int, at: bytes) -> bytes:
        """The body for Datastream number `index` (mod their count), result number `seq`, phenomenonTime `at`."""
        return self.TEMPLATE % (at, self.results[seq % 1000], self.datastreams[index % len(self.datastreams)])


# ------------------------------------------------------------------ MQTT


class PublishEncoder:
    """PUBLISH packets to TOPIC with `Payloads` bodies, message `seq` to Datastream `seq % n` as the publishers
    of ingest.py did: fixed header + topic + [packet id] + empty properties + body from one template. The
    framing is wire.publish_packet's (checked once here); only the remaining length varies, with the lengths
    of the result and the Datastream id, so its fixed headers are precomputed."""

    def __init__(self, payloads: Payloads, qos: int) -> None:
        self.payloads, self.qos = payloads, qos
        topic = wire._string(TOPIC).replace(b"%", b"%%")
        self.template = b"%s" + topic + (b"%s" if qos else b"") + b"\x00" + Payloads.TEMPLATE
        self.result_sizes = [len(r) for r in payloads.results]
        self.datastream_sizes = [len(d) for d in payloads.datastreams]
        fixed = len(wire._string(TOPIC)) + (2 if qos else 0) + 1 + len(Payloads.TEMPLATE % (b"", b"", b""))
        fixed += len(timestamp())  # always 27 characters
        longest = max(self.result_sizes) + max(self.datastream_sizes)
        self.headers = [bytes([wire.PUBLISH << 4 | qos << 1]) + wire._varint(fixed + n) for n in range(longest + 1)]
        at, ids = timestamp(), list(range(1, 1101))
        sample = self.chunk(0, len(ids), at, [_PACKET_IDS[i] for i in ids] if qos else [])
        expected = b"".join(wire.publish_packet(TOPIC, payloads.body(i - 1, i - 1, at), qos=qos,
                                                packet_id=i if qos else 0) for i in ids)
        if sample != expected:
            raise AssertionError("the PUBLISH template frames differently from wire.publish_packet")

    def chunk(self, seq: int, n: int, at: bytes, packet_ids: Sequence[bytes]) -> bytes:
        """Messages seq..seq+n-1, all with phenomenonTime `at`; `packet_ids` (2 bytes each) only for QoS 1."""
        template, headers = self.template, self.headers
        results, result_sizes = self.payloads.results, self.result_sizes
        datastreams, datastream_sizes = self.payloads.datastreams, self.datastream_sizes
        count = len(datastreams)
        if self.qos:
            return b"".join([
                template % (headers[result_sizes[s % 1000] + datastream_sizes[s % count]], pid, at, results[s % 1000],
                            datastreams[s % count])
                for s, pid in zip(range(seq, seq + n), packet_ids, strict=True)])
        return b"".join([
            template % (headers[result_sizes[s % 1000] + datastream_sizes[s % count]], at, results[s % 1000],
                        datastreams[s % count])
            for s in range(seq, seq + n)])


@dataclass(frozen=True, slots=True)
class PublisherResult:
    """What one publisher connection did. For QoS 1 only `acknowledged` messages are the broker's (PUBACK with
    a success reason): written is not received. `refused` counts PUBACKs with an error reason, by reason."""

    qos: int
    sent: int
    acknowledged: int
    refused: dict[int, int]
    unacknowledged: int
    cpu_seconds: float
    seconds: float

    @property
    def published(self) -> int:
        """Messages the broker has taken: acknowledged ones at QoS 1, written ones at QoS 0."""
        return self.acknowledged if self.qos else self.sent

    @property
    def cpu_us_per_message(self) -> float:
        return self.cpu_seconds / self.sent * 1e6 if self.sent else 0.0


class _Publisher(asyncio.Protocol):
    """One MQTT 5 connection that publishes: reads CONNACK, PUBACKs, PINGRESP and DISCONNECT, nothing else.

    QoS 1 bookkeeping: `in_flight[id]` is 1 while packet id `id` awaits its PUBACK; ids are taken cyclically
    from 1..65535, skipping those still in flight, so an id is never reused before the broker released it."""

    def __init__(self, qos: int, max_in_flight: int) -> None:
        loop = asyncio.get_running_loop()
        self.qos = qos
        self.window = max_in_flight
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[tuple[int, dict[str, Any]]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.error: Exception | None = None
        self.in_flight = bytearray(65536)
        self.outstanding = 0
        self.acknowledged = 0
        self.refused: Counter[int] = Counter()
        self.next_id = 1
        self.writable = True
        self.disconnecting = False
        self.reading = True
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None

    # -------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is no subclass)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.disconnecting and self.error is None:
            self.error = ConnectionError(f"the broker closed the connection ({exc or 'no error given'})")
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.connack.done():
            self.connack.set_exception(self.error or ConnectionError("connection lost before CONNACK"))
        self._notify()

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self._notify()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        size, at, acknowledged = len(buffer), 0, 0
        in_flight = self.in_flight
        try:
            while size - at >= 2:
                if buffer[at] == _PUBACK and buffer[at + 1] in (2, 3):  # PUBACK without properties: inline
                    if size - at < 2 + buffer[at + 1]:
                        break
                    packet_id = buffer[at + 2] << 8 | buffer[at + 3]
                    if not in_flight[packet_id]:
                        raise wire.ProtocolError(f"PUBACK for packet id {packet_id}, which is not in flight")
                    in_flight[packet_id] = 0
                    if buffer[at + 1] == 2:  # reason Success, short form
                        acknowledged += 1
                        at += 4
                        continue
                    self._acknowledged(buffer[at + 4])
                    at += 5
                    continue
                try:
                    length, start = wire._read_varint(buffer, at + 1)
                except IndexError:
                    break
                end = start + length
                if end > size:
                    break
                self._packet(buffer[at] >> 4, bytes(buffer[start:end]))
                at = end
        except (wire.ProtocolError, IndexError, UnicodeDecodeError) as exc:
            self._fail(exc)
        finally:
            del buffer[:at]
            self.acknowledged += acknowledged
            self.outstanding -= acknowledged
            self._notify()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()  # until the sender is awake anyway: see read()
            self.reading = False

    def read(self) -> None:
        """Read what has arrived (PUBACKs) at the next turn of the loop, then pause reading again.

        Why: the broker writes each PUBACK by itself, so reading whenever one arrives wakes this process up
        once or more per PUBACK, and a wake-up costs ~25-65 µs of CPU on the benchmark's VM (more than
        framing and writing 100 messages). The sender calls this whenever it is awake anyway."""
        if not self.reading and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self.reading = True

    def _acknowledged(self, reason: int) -> None:
        self.outstanding -= 1
        if reason < 0x80:  # 0x10 "no matching subscribers" is a success too
            self.acknowledged += 1
        else:
            self.refused[reason] += 1

    def _packet(self, kind: int, body: bytes) -> None:
        if kind == wire.PUBACK:  # the long form: a reason code, maybe properties
            packet_id = body[0] << 8 | body[1]
            reason = body[2] if len(body) > 2 else 0
            if not self.in_flight[packet_id]:
                raise wire.ProtocolError(f"PUBACK for packet id {packet_id}, which is not in flight")
            self.in_flight[packet_id] = 0
            self._acknowledged(reason)
        elif kind == wire.CONNACK:
            props, _ = wire.read_properties(body, 2) if len(body) > 2 else ({}, 2)
            if not self.connack.done():
                self.connack.set_result((body[1], props))
        elif kind == wire.PINGRESP:
            pass
        elif kind == wire.DISCONNECT:
            reason = body[0] if body else 0
            self._fail(ConnectionError(f"the broker sent DISCONNECT (reason 0x{reason:02x})"))
        else:
            raise wire.ProtocolError(f"unexpected MQTT packet type {kind} from the broker")

    # -------------------------------------------------- for the sender

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        if self.transport is not None:
            self.transport.close()

    def _notify(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def changed(self, timeout: float) -> None:
        """Until the transport becomes writable again, something is read, the connection ends, or `timeout` s."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(max(0.0, timeout), self._notify)
        try:
            await waiter
        finally:
            timer.cancel()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def take_ids(self, n: int) -> list[bytes]:
        """`n` free packet ids (2 bytes each), now in flight."""
        in_flight, packet_id, ids = self.in_flight, self.next_id, []
        for _ in range(n):
            while in_flight[packet_id]:
                packet_id = packet_id % 65535 + 1
            in_flight[packet_id] = 1
            ids.append(_PACKET_IDS[packet_id])
            packet_id = packet_id % 65535 + 1
        self.next_id = packet_id
        self.outstanding += n
        return ids


async def _publish(host: str, port: int, username: str | None, password: str | None, client_id: str, qos: int,
                   datastreams: Sequence[int], seconds: float, rate: float | None, max_in_flight: int,
                   ack_timeout: float) -> PublisherResult:
    cpu_started = time.process_time()
    loop = asyncio.get_running_loop()
    encoder = PublishEncoder(Payloads(datastreams), qos)
    transport, protocol = await loop.create_connection(lambda: _Publisher(qos, max_in_flight), host, port)
    transport.set_write_buffer_limits(high=1 << 20)
    transport.write(wire.connect_packet(client_id, username=username, password=password, clean_start=True,
                                        keepalive=KEEPALIVE, session_expiry=0, receive_maximum=65535))
    reason, props = await asyncio.wait_for(protocol.connack, 30)
    if reason != 0:
        transport.close()
        raise ConnectionRefusedError(f"the broker refused the connection: "
                                     f"{wire.CONNACK_REASONS.get(reason, hex(reason))}")
    if qos > props.get("maximum_qos", 2):
        raise ConnectionRefusedError(f"the broker allows QoS {props['maximum_qos']} at most")
    protocol.window = min(max_in_flight, props.get("receive_maximum", 65535))
    keepalive = props.get("server_keep_alive", KEEPALIVE)
    pinger = asyncio.create_task(_ping(transport, keepalive / 2)) if keepalive else None

    started = loop.time()
    batch = CHUNK if rate is None else max(1, min(CHUNK, round(rate * PACED_TICK)))
    least_room = max(1, min(batch, protocol.window // 4))  # don't write dribbles as single PUBACKs come in
    sent = 0
    try:
        next_read = 0.0
        while (elapsed := loop.time() - started) < seconds:
            protocol.check()
            if elapsed >= next_read:  # paced, every write; flat out, PUBACKs in batches of 5 ms
                protocol.read()
                next_read = elapsed + READ_EVERY
            n = batch
            if rate is not None:
                due = int(elapsed * rate) - sent
                if due < batch:  # (at least 1 ms: uvloop's timers have millisecond resolution)
                    await asyncio.sleep(max(0.001, (sent + batch) / rate - elapsed))
                    continue
                n = min(due, CHUNK)  # catching up after a stall: as fast as possible, in full chunks
            if qos:
                room = protocol.window - protocol.outstanding
                if room < min(n, least_room):  # the window is full: let PUBACKs gather in the socket, then read
                    await asyncio.sleep(READ_EVERY / 2)
                    next_read = 0.0
                    continue
                n = min(n, room)
            if not protocol.writable:
                await protocol.changed(seconds - elapsed)
                continue
            transport.write(encoder.chunk(sent, n, timestamp(), protocol.take_ids(n) if qos else ()))
            sent += n
            if rate is None:
                await asyncio.sleep(0)  # let PUBACKs in (paced, the sleep until the next write does)
        deadline = loop.time() + ack_timeout
        while qos and protocol.outstanding and loop.time() < deadline:
            protocol.check()
            protocol.read()
            await asyncio.sleep(READ_EVERY)
        protocol.check()
        protocol.disconnecting = True
        transport.write(wire.DISCONNECT_PACKET)  # reason 0, normal disconnection: flushed before the close
        transport.close()
        await asyncio.wait_for(asyncio.shield(protocol.closed), 10)
    finally:
        if pinger is not None:
            pinger.cancel()
        transport.close()
    wall = loop.time() - started
    return PublisherResult(qos=qos, sent=sent, acknowledged=protocol.acknowledged if qos else 0,
                           refused=dict(protocol.refused), unacknowledged=protocol.outstanding if qos else 0,
                           cpu_seconds=time.process_time() - cpu_started, seconds=wall)


async def _ping(transport: asyncio.Transport, interval: float) -> None:
    while not transport.is_closing():
        await asyncio.sleep(interval)
        transport.write(wire.PINGREQ_PACKET)


def publish(host: str, port: int, *, username: str | None, password: str | None, qos: int,
            datastreams: Sequence[int], seconds: float, rate: float | None = None, client_id: str = "loadgen",
            max_in_flight: int = MAX_IN_FLIGHT, ack_timeout: float = ACK_TIMEOUT) -> PublisherResult:
    """Process entry point: publish Observations to TOPIC for `seconds`, at `rate` messages/s (None: as fast as
    the connection takes them; at QoS 1 at most `max_in_flight` unacknowledged), then (QoS 1) wait up to
    `ack_timeout` for the outstanding PUBACKs and disconnect. Raises if the broker refuses or drops us."""
    if qos not in (0, 1):
        raise ValueError("QoS 0 or 1")
    return _run(_publish(host, port, username, password, client_id, qos, datastreams, seconds, rate,
                         max_in_flight, ack_timeout))


# ------------------------------------------------------------------ HTTP


@dataclass(frozen=True, slots=True)
class HttpResult:
    """What `clients` sequential HTTP clients did; `statuses` counts every response by status code."""

    clients: int
    statuses: dict[int, int]
    cpu_seconds: float
    seconds: float

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def created(self) -> int:
        return self.statuses.get(201, 0)

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / self.requests * 1e6 if self.requests else 0.0


def response_end(buffer: bytes | bytearray) -> tuple[int, bool, int] | None:
    """(status, keep-alive, end of the response) for the HTTP/1.1 response at the start of `buffer`, or None
    while it is incomplete. The body is framed by Content-Length or chunked transfer coding; anything else
    (a body up to the connection's close) cannot be framed on a kept-alive connection and raises ValueError."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buffer) > 65536:
            raise ValueError("response headers longer than 64 KiB")
        return None
    lines = bytes(buffer[:head_end]).split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    if not version.startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP/1.x status line: {lines[0]!r}")
    status = int(rest[:3])
    if status < 200:
        raise ValueError(f"unexpected interim response {status} (we send no Expect)")
    keep_alive, length, chunked = version == b"HTTP/1.1", None, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            if value.rsplit(b",", 1)[-1].strip() != b"chunked":
                raise ValueError(f"unsupported Transfer-Encoding {value!r}")
            chunked = True
        elif name == b"connection":
            tokens = {t.strip() for t in value.split(b",")}
            keep_alive = b"close" not in tokens and (keep_alive or b"keep-alive" in tokens)
    start = head_end + 4
    if chunked:
        end = _chunked_end(buffer, start)
        return None if end is None else (status, keep_alive, end)
    if status in (204, 304):
        length = 0
    if length is None:
        raise ValueError(f"response {status} has neither Content-Length nor chunked transfer coding")
    return None if len(buffer) < start + length else (status, keep_alive, start + length)


def _chunked_end(buffer: bytes | bytearray, at: int) -> int | None:
    """Where a chunked body starting at `at` ends (after its trailer section), or None if incomplete."""
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buffer[at:line_end]).split(b";", 1)[0].strip(), 16)
        at = line_end + 2
        if size == 0:
            while True:  # trailer fields, then an empty line
                line_end = buffer.find(b"\r\n", at)
                if line_end < 0:
                    return None
                if line_end == at:
                    return at + 2
                at = line_end + 2
        if len(buffer) < at + size + 2:
            return None
        if buffer[at + size:at + size + 2] != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        at += size + 2


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight (no pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bool]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exception=ConnectionError(f"the server closed the connection ({exc or 'no error given'})"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            parsed = response_end(self._buffer)
        except ValueError as exc:
            self._finish(exception=exc)
            return
        if parsed is None:
            return
        status, keep_alive, end = parsed
        if self._waiter is None or end != len(self._buffer):
            self._finish(exception=ValueError("data from the server beyond the response to our request"))
            return
        self._buffer.clear()
        self._finish(result=(status, keep_alive))

    def _finish(self, result: tuple[int, bool] | None = None, exception: Exception | None = None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        if exception is not None:
            waiter.set_exception(exception)
        else:
            assert result is not None
            waiter.set_result(result)

    async def request(self, data: bytes) -> tuple[int, bool]:
        """Send one request and wait for its response: (status, whether the connection stays open)."""
        assert self.transport is not None and self._waiter is None
        if self.transport.is_closing():
            raise ConnectionError("the server closed the kept-alive connection")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self._waiter


async def _post(url: str, datastreams: Sequence[int], clients: int, seconds: float, first_client: int,
                authorization: str | None) -> HttpResult:
    cpu_started = time.process_time()
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    credential = f"Authorization: {authorization}\r\n" if authorization else ""
    head = (f"POST {parts.path.rstrip('/')}/Observations HTTP/1.1\r\nHost: {parts.netloc}\r\n{credential}"
            f"Content-Type: application/json\r\nContent-Length: ").encode()
    payloads = Payloads(datastreams)
    statuses: Counter[int] = Counter()

    async def connect() -> _HttpConnection:
        _, connection = await loop.create_connection(_HttpConnection, host, port)
        return connection

    async def client(n: int, deadline: float) -> None:
        connection, done = await connect(), 0
        try:
            while loop.time() < deadline:
                body = payloads.body(n + done, done, timestamp())
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    status, keep_alive = await connection.request(b"%s%d\r\n\r\n%s" % (head, len(body), body))
                statuses[status] += 1
                done += 1
                if not keep_alive:
                    assert connection.transport is not None
                    connection.transport.close()
                    connection = await connect()
        finally:
            if connection.transport is not None:
                connection.transport.close()

    started = loop.time()
    await asyncio.gather(*(client(first_client + i, started + seconds) for i in range(clients)))
    return HttpResult(clients=clients, statuses=dict(statuses), cpu_seconds=time.process_time() - cpu_started,
                      seconds=loop.time() - started)


def post_observations(url: str, datastreams: Sequence[int], *, clients: int, seconds: float,
                      first_client: int = 0, authorization: str | None = None) -> HttpResult:
    """Process entry point: `clients` concurrent sequential clients, each on its own keep-alive connection,
    POST Observations to `url`/Observations (`url` is the service root, e.g. http://host:port/v1.1) for
    `seconds`. Client n sends to Datastreams n, n+1, ... (mod their count), like ingest.py's old clients.
    `authorization`: the Authorization header value of a key that may create."""
    return _run(_post(url, datastreams, clients, seconds, first_client, authorization))
