"""The write path of one platform process, composed once for the API process and for bridge processes:
database pool -> ingest pipeline -> MQTT bridge and notifier, started and stopped in that order."""

from __future__ import annotations

from dataclasses import dataclass

from citystream.pool import GuardedPool
from citystream.runtime import tune_garbage_collector
from citystream.settings import Settings
from ingest.pipeline import IngestConfig, IngestPipeline
from mqtt_bridge.address import BrokerAddress
from mqtt_bridge.bridge import Bridge, BridgeConfig
from mqtt_bridge.notifier import Notifier
from mqtt_bridge.subscriptions import SubscriptionRegistry
from sensorthings.model import VERSION
from sensorthings.query.entity_json import Limits


def ingest_config(settings: Settings) -> IngestConfig:
    return IngestConfig(batch_rows=settings.ingest_batch_rows, batch_wait_ms=settings.ingest_batch_wait_ms,
                        queue_rows=settings.ingest_queue_rows, writers=settings.ingest_writers)


def notification_base(settings: Settings) -> str:
    """Service root for selfLinks in MQTT notifications (no request to take it from)."""
    if settings.public_url:
        return f"{settings.public_url.rstrip('/')}/{VERSION}"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.http_port}/{VERSION}"


def mqtt_endpoints(settings: Settings) -> tuple[str, ...]:
    """The MQTT endpoints clients are told about: configured, or the broker's address without credentials."""
    if not settings.mqtt_url:
        return ()
    if settings.mqtt_public_urls:
        return settings.mqtt_public_urls
    return (BrokerAddress.from_url(settings.mqtt_url).url,)


def make_bridge(settings: Settings, ingest: IngestPipeline, notifier: Notifier, client_id: str | None = None
                ) -> Bridge | None:
    if not settings.mqtt_url:
        return None
    return Bridge(BrokerAddress.from_url(settings.mqtt_url), ingest, notifier, BridgeConfig(
        client_id=client_id or settings.mqtt_client_id, ingest=settings.mqtt_ingest,
        max_payload_bytes=settings.mqtt_max_payload_bytes, receive_maximum=settings.mqtt_receive_maximum))


def make_pool(settings: Settings, database_url: str) -> GuardedPool:
    return GuardedPool(
        database_url,
        min_size=1,
        max_size=settings.db_pool_size,
        kwargs={"autocommit": True, "options": f"-c statement_timeout={settings.statement_timeout_ms}"},
        open=False,
    )


@dataclass
class WritePath:
    pool: GuardedPool
    ingest: IngestPipeline
    notifier: Notifier
    bridge: Bridge | None

    @classmethod
    def build(cls, settings: Settings, database_url: str, client_id: str | None = None) -> WritePath:
        pool = make_pool(settings, database_url)
        limits = Limits(settings.default_top, settings.max_top, settings.max_expand_depth, settings.exact_count_limit)
        notifier = Notifier(pool, SubscriptionRegistry(), notification_base(settings), limits)
        ingest = IngestPipeline(pool, ingest_config(settings), listener=notifier)
        return cls(pool, ingest, notifier, make_bridge(settings, ingest, notifier, client_id))

    async def start(self) -> None:
        await self.pool.open(wait=True, timeout=30)
        tune_garbage_collector()
        await self.ingest.start()
        if self.bridge is not None:
            await self.bridge.start()

    async def stop(self) -> None:
        """The bridge stops taking messages and lets the pipeline drain; then the pool closes."""
        if self.bridge is not None:
            await self.bridge.stop()
        else:
            await self.ingest.stop()
        await self.pool.close()
