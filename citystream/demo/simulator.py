"""The running demo: a simulated clock, the MQTT publisher, and `run_demo`, which creates the city and publishes."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from citystream.demo.city import DemoCity, DemoError, create_city
from mqtt_bridge.address import BrokerAddress

log = logging.getLogger("citystream.demo")

DEFAULT_BACKLOG: Final = timedelta(days=1)
"""How far in the past the simulated clock starts when it runs faster than real time."""


# ============================================================================================ MQTT


class SimulatedClock:
    """The demo's time: `min(start + elapsed × speed, real now)`.

    With `speed` > 1 the clock starts `backlog` in the past and runs `speed` times faster than real time
    until it reaches the real now; from then on it is the real clock (speed 1). With `speed` <= 1 it starts
    at the real now (speed 1 is real time). So phenomenonTimes are never in the future.
    """

    def __init__(self, speed: float, backlog: timedelta = DEFAULT_BACKLOG, *, now: datetime | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if not speed > 0 or math.isinf(speed):
            raise ValueError(f"speed must be a positive number, got {speed}")
        self.speed = speed
        self.real_start = now or datetime.now(UTC)
        self.start = self.real_start - backlog if speed > 1 else self.real_start
        self._monotonic = monotonic
        self._mono_start = monotonic()

    def _both(self) -> tuple[datetime, datetime]:
        elapsed = self._monotonic() - self._mono_start
        return (self.start + timedelta(seconds=elapsed * self.speed),
                self.real_start + timedelta(seconds=elapsed))

    def now(self) -> datetime:
        accelerated, real = self._both()
        return min(accelerated, real)

    @property
    def caught_up(self) -> bool:
        accelerated, real = self._both()
        return accelerated >= real

    def seconds_until(self, t: datetime) -> float:
        """Real seconds until `now()` reaches `t` (0 if it has)."""
        accelerated, real = self._both()
        return max(0.0, (t - accelerated).total_seconds() / self.speed, (t - real).total_seconds())


class _Publisher:
    """A paho MQTT 5 client running its network loop in paho's thread; counts broker acknowledgements."""

    def __init__(self, target: BrokerAddress, username: str | None, password: str | None,
                 max_queued: int = 50_000) -> None:
        self.target = target
        self._lock = threading.Lock()
        self.sent = 0
        self.acknowledged = 0
        self.rejected = 0
        self.dropped = 0
        self._warned_rejected = False
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"citystream-demo-{uuid.uuid4().hex[:12]}",
                             protocol=mqtt.MQTTv5)
        if username is not None:
            client.username_pw_set(username, password)
        if target.tls:
            client.tls_set_context(ssl.create_default_context())
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(200)
        client.max_queued_messages_set(max_queued)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_connect_fail = self._on_connect_fail
        self.client = client

    def start(self) -> None:
        self.client.connect_async(self.target.host, self.target.port, keepalive=30, clean_start=True)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("demo publisher: %s:%s refused the connection: %s (check the MQTT credentials)",
                        self.target.host, self.target.port, reason)
        else:
            log.info("demo publisher connected to %s:%s", self.target.host, self.target.port)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        log.warning("demo publisher: cannot reach MQTT broker %s:%s, retrying", self.target.host, self.target.port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.value != 0:
            log.warning("demo publisher: disconnected from %s:%s (%s), reconnecting",
                        self.target.host, self.target.port, reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            if reason.is_failure:
                self.rejected += 1
                warn, self._warned_rejected = not self._warned_rejected, True
            else:
                self.acknowledged += 1
                warn = False
        if warn:
            log.warning("demo publisher: the broker refused an observation (%s); check that the account may "
                        "publish to v1.1/Datastreams(…)/Observations", reason)

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            if self.dropped in (1, 1000) or self.dropped % 100_000 == 0:
                log.warning("demo publisher: %d observations dropped while the broker is unreachable", self.dropped)
        else:
            self.sent += 1

    @property
    def outstanding(self) -> int:
        with self._lock:
            return self.sent - self.acknowledged - self.rejected

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


async def publish_forever(
    city: DemoCity,
    mqtt_url: str,
    *,
    username: str | None,
    password: str | None,
    speed: float = 60.0,
    stop: asyncio.Event | None = None,
    on_published: Callable[[int], None] | None = None,
    backlog: timedelta = DEFAULT_BACKLOG,
) -> None:
    """Publish the city's Observations over MQTT 5 (QoS 1) until `stop` is set (or the task is cancelled).

    Follows a `SimulatedClock(speed, backlog)`: one immediate observation per Datastream (the last one
    due at the clock's start), then every Datastream at its period of simulated time. Explicit
    `username`/`password` win over credentials in `mqtt_url`. paho reconnects by itself after a connection
    loss; observations produced meanwhile are queued (up to 50,000) and sent on reconnect.
    `on_published(total)` is called from this task whenever the number of observations the broker has
    acknowledged (PUBACK) grows, with the running total. On stop, in-flight observations get up to 5 s to
    be acknowledged before the client disconnects.
    """
    target = BrokerAddress.from_url(mqtt_url)
    user = username if username is not None else target.username
    secret = password if password is not None else target.password
    stop = stop or asyncio.Event()
    clock = SimulatedClock(speed, backlog)
    publisher = _Publisher(target, user, secret)
    publisher.start()
    queue: list[tuple[datetime, int]] = [(ds.floor(clock.start), i) for i, ds in enumerate(city.datastreams)]
    heapq.heapify(queue)
    reported = 0
    try:
        while not stop.is_set():
            now = clock.now()
            handled = 0
            while queue and queue[0][0] <= now and handled < 500:
                due, index = heapq.heappop(queue)
                ds = city.datastreams[index]
                observation = ds.observation(due)
                if observation is not None:
                    publisher.publish(ds.topic, orjson.dumps(observation))
                heapq.heappush(queue, (ds.following(due), index))
                handled += 1
            if on_published is not None and publisher.acknowledged != reported:
                reported = publisher.acknowledged
                on_published(reported)
            if handled >= 500:
                await asyncio.sleep(0)  # a long catch-up: let other tasks run between chunks
                continue
            wait = min(0.25, clock.seconds_until(queue[0][0])) if queue else 0.25
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(wait, 0.005))
        deadline = time.monotonic() + 5
        while publisher.outstanding > 0 and publisher.client.is_connected() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if on_published is not None and publisher.acknowledged != reported:
            on_published(publisher.acknowledged)
    finally:
        await asyncio.shield(asyncio.to_thread(publisher.close))


# ============================================================================================ run


async def _wait_for_api(client: httpx.AsyncClient, root: str, stop: asyncio.Event, timeout: float = 60.0) -> bool:
    """Wait until the STA service root answers (the server may still be starting). False if stopped."""
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        try:
            response = await client.get(root)
            if response.status_code < 500:
                return True
        except httpx.TransportError as exc:
            if time.monotonic() > deadline:
                raise DemoError(f"the SensorThings API at {root} is not reachable: {exc}") from exc
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)
    return False


async def run_demo(
    base_url: str,
    mqtt_url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    speed: float = 60.0,
    seed: int = 1,
    stop: asyncio.Event | None = None,
    report: Callable[[str], None] | None = None,
    api_key: str | None = None,
) -> None:
    """Create (or reuse) the demo city at `base_url`, then publish observations until `stop` is set (to the
    city's raw Datastreams only: the platform computes the rollups).

    Prints one line with the size of the city and, every 10 s, how many observations were published
    (`report` receives these lines; default: print with a `citystream demo:` prefix). `api_key`: the key the
    city is created with (it needs the create and read roles).
    """
    say = report or (lambda line: print(f"citystream demo: {line}", flush=True))
    stop = stop or asyncio.Event()
    root = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        if not await _wait_for_api(client, root, stop):
            return
        city = await create_city(client, root, seed=seed)
    reused = len(city.thing_ids) - city.created_things
    say(f"{len(city.thing_ids)} Things ({city.created_things} created, {reused} reused) and "
        f"{len(city.datastreams) + len(city.rollups)} Datastreams ({len(city.rollups)} of them rollups the "
        f"platform computes) at {root}; publishing to {mqtt_url} at {speed:g}× speed "
        f"(simulated clock starts {DEFAULT_BACKLOG.days} day back when faster than real time)")
    if city.stale:
        say(f"{len(city.stale)} Datastreams of an older demo are no longer published ({', '.join(city.stale[:4])}"
            f"{', …' if len(city.stale) > 4 else ''}): the platform now computes them as rollups; delete them "
            f"with an admin key (DELETE /v1.1/Datastreams(n)) or start from a new data directory")
    total = 0

    def published(count: int) -> None:
        nonlocal total
        total = count

    async def progress() -> None:
        last = 0
        while True:
            await asyncio.sleep(10)
            say(f"{total} observations published (+{total - last} in the last 10 s)")
            last = total

    reporter = asyncio.create_task(progress())
    try:
        await publish_forever(city, mqtt_url, username=username, password=password, speed=speed, stop=stop,
                              on_published=published)
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
