"""`citystream bridge`: MQTT bridge processes without the HTTP API.

Each process holds one database pool, one ingest pipeline and one bridge (its own MQTT client id and
persistent session, all in the same shared subscription group as the bridge inside `citystream up`), so
`--workers N` spreads one stream over N processes and N cores.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from citystream.services import WritePath
from citystream.settings import Settings


def worker_client_id(settings: Settings, worker: int) -> str:
    return f"{settings.mqtt_client_id}-w{worker}"


async def run_bridge(settings: Settings, database_url: str, client_id: str) -> None:
    """Run until SIGINT/SIGTERM, then commit and acknowledge what is in flight and disconnect."""
    services = WritePath.build(settings, database_url, client_id)
    assert services.bridge is not None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await services.start()
    print(f"citystream: bridge {client_id} connected", flush=True)
    try:
        await stop.wait()
    finally:
        await services.stop()
        print(f"citystream: bridge {client_id} stopped after storing {services.ingest.stored} observations",
              flush=True)


def run_workers(workers: int) -> int:
    """Start `workers` bridge processes (`citystream bridge --worker k`) and wait; a stop signal is passed
    on to each of them."""
    executable = Path(sys.executable).parent / "citystream"
    children = [subprocess.Popen([str(executable), "bridge", "--worker", str(k)]) for k in range(1, workers + 1)]

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)
