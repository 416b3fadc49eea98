"""The benchmark's lean load generators (benchmarks/loadgen.py): what they send must be what the old clients
sent, and what they read must be framed right; benchmarks/ingest.py runs them against the real services."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from benchmarks import loadgen
from benchmarks.ingest import payload
from mqtt_bridge import wire


@pytest.mark.parametrize("at", [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 11, 22, 8, 30, 14, 123, tzinfo=UTC)])
def test_bodies_are_those_of_the_old_payload_function(at: datetime) -> None:
    datastreams = [1, 42, 12345]
    payloads = loadgen.Payloads(datastreams)
    stamp = at.isoformat(timespec="microseconds").replace("+00:00", "Z").encode()
    for seq in range(0, 2000, 7):
        assert payloads.body(seq, seq, stamp) == payload(datastreams[seq % 3], seq, at)


@pytest.mark.parametrize("qos", [0, 1])
def test_publish_chunks_are_read_back_by_the_bridges_reader(qos: int) -> None:
    encoder = loadgen.PublishEncoder(loadgen.Payloads([3, 1000]), qos)  # also checks against wire.publish_packet
    stream = encoder.chunk(10, 3, b"2026-01-01T00:00:00.000000Z", [b"\x00\x07", b"\x00\x08", b"\x00\x09"])
    messages, at = [], 0
    while at < len(stream):
        length, start = wire._read_varint(stream, at + 1)
        messages.append(wire.read_publish(stream[at] & 0x0F, stream[start:start + length]))
        at = start + length
    assert [(m.topic, m.qos, m.packet_id) for m in messages] == [
        ("v1.1/Observations", qos, (7 + i) if qos else 0) for i in range(3)]
    assert messages[1].payload == (b'{"phenomenonTime":"2026-01-01T00:00:00.000000Z","result":20.11,'
                                   b'"Datastream":{"@iot.id":1000}}')


def test_pubacks_are_counted_by_reason_and_strangers_are_errors() -> None:
    async def run() -> loadgen._Publisher:
        publisher = loadgen._Publisher(1, 100)
        ids = publisher.take_ids(4)
        assert ids == [b"\x00\x01", b"\x00\x02", b"\x00\x03", b"\x00\x04"]
        # short form; long form with 0x10 (no matching subscribers: a success); 0x87 (refused); split reads
        stream = b"\x40\x02\x00\x01" + b"\x40\x03\x00\x02\x10" + b"\x40\x03\x00\x03\x87" + b"\xd0\x00"
        publisher.data_received(stream[:6])
        publisher.data_received(stream[6:])
        assert (publisher.acknowledged, dict(publisher.refused), publisher.outstanding) == (2, {0x87: 1}, 1)
        assert publisher.error is None
        publisher.data_received(b"\x40\x02\x00\x01")  # id 1 is no longer in flight
        assert isinstance(publisher.error, wire.ProtocolError)
        return publisher

    asyncio.run(run())


def test_packet_ids_still_in_flight_are_skipped() -> None:
    async def run() -> None:
        publisher = loadgen._Publisher(1, 65535)
        publisher.next_id = 65534
        publisher.in_flight[1] = 1
        assert publisher.take_ids(3) == [b"\xff\xfe", b"\xff\xff", b"\x00\x02"]

    asyncio.run(run())


def test_http_responses_are_framed_by_length_or_chunks() -> None:
    created = b"HTTP/1.1 201 Created\r\ncontent-length: 3\r\nlocation: x\r\n\r\n"
    assert loadgen.response_end(created + b"ab") is None
    assert loadgen.response_end(created + b"abc") == (201, True, len(created) + 3)
    chunked = b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    body = b"3;ext=1\r\nabc\r\n0\r\ntrailer: y\r\n\r\n"
    assert loadgen.response_end(chunked + body[:-2]) is None
    assert loadgen.response_end(chunked + body) == (400, False, len(chunked) + len(body))
    with pytest.raises(ValueError, match="neither Content-Length nor chunked"):
        loadgen.response_end(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
