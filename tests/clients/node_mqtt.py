"""MQTT.js clients in one node process (tests/clients/js/mqtt_clients.mjs), driven from Python: the JavaScript
MQTT library Masterportal uses, as an external client nobody here wrote. `npm ci` in tests/clients/js installs
it (scripts/quickstart.sh does it when node and npm are installed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.mqtt_helpers import wait_for

JS = Path(__file__).resolve().parent / "js"
NODE = shutil.which("node")
requires_mqtt_js = pytest.mark.skipif(
    NODE is None or not (JS / "node_modules" / "mqtt").is_dir(),
    reason="needs node and MQTT.js: `npm ci` in tests/clients/js (scripts/quickstart.sh does it)")


class NodeClients:
    """One node process running MQTT.js clients (tests/clients/js/mqtt_clients.mjs); its events as dicts."""

    def __init__(self, clients: list[dict[str, Any]]) -> None:
        assert NODE is not None
        self.proc = subprocess.Popen([NODE, str(JS / "mqtt_clients.mjs"), json.dumps({"clients": clients})],
                                     cwd=JS, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.events.append(json.loads(line))

    def of(self, event: str, client: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["event"] == event and (client is None or e["client"] == client)]

    def wait(self, event: str, client: str, n: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]]:
            if self.proc.poll() is not None and len(self.of(event, client)) < n:
                raise AssertionError(f"node exited ({self.proc.returncode}): {self.stderr()}")
            found = self.of(event, client)
            return found if len(found) >= n else []
        return wait_for(enough, timeout, f"{n} {event} event(s) of {client} (events: {self.events[-5:]})")

    def command(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def publish(self, client: str, topic: str, payload: str, qos: int, ident: str) -> dict[str, Any]:
        self.command(op="publish", client=client, topic=topic, payload=payload, qos=qos, id=ident)
        done = wait_for(lambda: [e for e in self.of("published", client) if e["id"] == ident],
                        what=f"{client} to publish {ident}")
        return done[0]

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-2000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.command(op="quit")
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
