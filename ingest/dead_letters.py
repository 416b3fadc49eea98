"""Dead letters: the evidence of MQTT payloads that could not be stored (migrations/0003_ingest.sql).

Written in the transaction of the batch the payload arrived in, so that acknowledging a message to the
broker always means it is either stored or on record here; listed at GET /admin/dead-letters.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from ingest.rows import Origin

PAYLOAD_KEPT_BYTES = 2048


def dead_letter_text(payload: bytes) -> str:
    """The first PAYLOAD_KEPT_BYTES of a payload as text (invalid UTF-8 replaced, NUL made visible)."""
    return _text(payload[:PAYLOAD_KEPT_BYTES].decode("utf-8", "replace"))


async def record_dead_letters(conn: AsyncConnection[Any], letters: Sequence[tuple[Origin, str]], now: datetime
                              ) -> None:
    if not letters:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO dead_letters (received_at, topic, client_id, payload, payload_bytes, reason) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            [(now, _text(origin.topic), None if origin.client_id is None else _text(origin.client_id),
              dead_letter_text(origin.payload), len(origin.payload), _text(reason))
             for origin, reason in letters])


def _text(value: str) -> str:
    """A string PostgreSQL can store: a client's topic or user property may carry NUL or lone surrogates."""
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\\u0000")


async def list_dead_letters(conn: AsyncConnection[Any], limit: int, before: int | None) -> list[dict[str, Any]]:
    """Newest first; `before` (an id) continues a previous page."""
    cursor = await conn.execute(
        "SELECT id, received_at, topic, client_id, payload, payload_bytes, reason FROM dead_letters "
        "WHERE %(before)s::bigint IS NULL OR id < %(before)s ORDER BY id DESC LIMIT %(limit)s",
        {"before": before, "limit": limit})
    names = ("id", "receivedAt", "topic", "clientId", "payload", "payloadBytes", "reason")
    return [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]
