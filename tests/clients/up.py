"""`citystream up` as a user runs it, in a process of its own: embedded PostgreSQL and Mosquitto in a fresh
data directory, random ports, no CITYSTREAM_* variables from the test environment."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from citystream.embedded import find_free_port
from tests.conftest import make_service_dir
from tests.mqtt_helpers import wait_for


@dataclass(frozen=True)
class Up:
    base: str
    """http://127.0.0.1:<port>, the HTTP server (STA under /v1.0 and /v1.1, MQTT over WebSocket at /mqtt)."""
    http_port: int
    log: Path
    data_dir: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def key(self, name: str = "admin-key") -> str:
        """A key `up` made on its first start (DATA_DIR/keys: admin-key, demo-sensor-key)."""
        return (self.data_dir / "keys" / name).read_text().strip()

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key()}"}


@contextmanager
def running_up(*flags: str, timeout: float = 90) -> Iterator[Up]:
    """`citystream up <flags>` until it says it is ready (health answers and "Press Ctrl-C" is logged), then
    SIGTERM at the end, as Ctrl-C would."""
    root = make_service_dir("cs-up-")  # the service accounts must reach it when we run as root
    http_port = find_free_port()
    up = Up(f"http://127.0.0.1:{http_port}", http_port, root / "up.log", root / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYSTREAM_")}  # the embedded services
    argv = [str(Path(sys.executable).with_name("citystream")), "up", "--http-port", str(http_port), "--mqtt-port",
            str(find_free_port()), "--mqtt-ws-port", str(find_free_port()), "--data-dir", str(up.data_dir), *flags]
    with open(up.log, "ab") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"citystream up exited with {process.returncode}:\n{up.log_text()[-3000:]}")
            try:
                return (httpx.get(f"{up.base}/health", timeout=2).status_code == 200
                        and "Press Ctrl-C" in up.log_text())
            except httpx.HTTPError:
                return False
        wait_for(ready, timeout=timeout, what="citystream up")
        yield up
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)
