"""`citystream bridge`: MQTT bridge processes without the HTTP API.

Each process holds one database pool, one ingest pipeline and one bridge (its own MQTT client id and
persistent session, all in the same shared subscription group as the bridge inside `citystream up`), so
`--workers N` spreads one stream over N processes and N cores.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

from citystream import logs
from citystream.services import WritePath
from citystream.settings import Settings

log = logging.getLogger("citystream.bridge_process")


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
    log.info("bridge %s connected", client_id, extra={"client_id": client_id})
    try:
        await stop.wait()
    finally:
        await services.stop()
        stored = services.ingest.stored
        log.info("bridge %s stopped after storing %d observations", client_id, stored,
                 extra={"client_id": client_id, "stored": stored})


def run_workers(workers: int) -> int:
    """Start `workers` bridge processes (`citystream bridge --worker k`) and wait; a stop signal is passed
    on to each of them."""
    executable = Path(sys.executable).parent / "citystream"
    children = [subprocess.Popen([str(executable), "bridge", "--worker", str(k)]) for k in range(1, workers + 1)]
    for k, child in enumerate(children, 1):
        log.info("started bridge worker %d process %d", k, child.pid, extra={"worker": k, "child_pid": child.pid})

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    running = dict(enumerate(children, 1))
    codes = []
    while running:  # log each exit as it happens, not in worker order
        for k, child in list(running.items()):
            if child.poll() is not None:
                del running[k]
                codes.append(child.returncode)
                log.log(logging.INFO if child.returncode == 0 else logging.ERROR, "bridge worker %d process %d %s",
                        k, child.pid, logs.describe_exit(child.returncode),
                        extra={"worker": k, "child_pid": child.pid, **logs.exit_fields(child.returncode)})
        time.sleep(0.2)
    return max(codes, default=0)
