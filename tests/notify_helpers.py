"""Driving the STA notifier (mqtt_bridge.notifier.Notifier) without a broker: a real pool on the test database,
subscriptions added to its registry by hand, and a publish callable that records (topic, payload, audience).

The data is made over HTTP by an app of its own that has no MQTT at all (`app_without_mqtt`), so that these
tests depend on PostgreSQL and the app, never on the broker or the bridge."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from psycopg_pool import AsyncConnectionPool

from citystream.embedded import find_free_port
from citystream.settings import Settings
from mqtt_bridge.notifier import Notifier
from mqtt_bridge.subscriptions import SubscriptionRegistry
from sensorthings.write.ports import Change
from tests.conftest import running_app

CLIENT = "subscriber-under-test"


@contextmanager
def app_without_mqtt(database_url: str) -> Iterator[str]:
    """The real app, without a broker or bridge; yields its v1.1 service root."""
    settings = Settings(database_url=database_url, mqtt_url=None, host="127.0.0.1", http_port=find_free_port())
    with running_app(settings, database_url) as url:
        yield f"{url}/v1.1"


@dataclass
class Published:
    topic: str
    payload: bytes
    audience: str | None

    def json(self) -> Any:
        return orjson.loads(self.payload)


@dataclass
class Recorder:
    """The notifier's `publish`, recording what it is given."""

    messages: list[Published] = field(default_factory=list)

    def __call__(self, topic: str, payload: bytes, audience: str | None) -> None:
        self.messages.append(Published(topic, payload, audience))

    def on(self, topic: str) -> list[Published]:
        return [m for m in self.messages if m.topic == topic]


@dataclass
class Run:
    """What one `notify` published, and how many statements the notifier ran for it."""

    published: Recorder
    statements: int


class CountingNotifier(Notifier):
    """A Notifier that counts its statements (the cost the notifier promises to keep low)."""

    statements = 0

    async def _rows(self, *args: Any, **kwargs: Any) -> list[Any]:
        self.statements += 1
        return await super()._rows(*args, **kwargs)


def notify(database_url: str, sta: str, topics: Sequence[str], changes: Sequence[Change], *,
           enforced: bool = False) -> Run:
    """Subscribe `topics` (by hand, as the broker log would tell the registry), let a fresh notifier (links
    under `sta`) publish `changes` once, and return what it published."""
    registry = SubscriptionRegistry()
    for topic in topics:
        registry.add(CLIENT, topic)
    recorder = Recorder()

    async def run() -> int:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False,
                                                             kwargs={"autocommit": True})
        await pool.open(wait=True)
        try:
            notifier = CountingNotifier(pool, registry, sta)
            notifier.publish = recorder
            notifier.audiences_enforced = lambda: enforced
            await notifier.notify(changes)
            return notifier.statements
        finally:
            await pool.close()

    statements = asyncio.run(run())
    return Run(recorder, statements)
