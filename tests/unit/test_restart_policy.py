"""The supervisor's restart policy and its loop, on small Python children (no citystream process, no services):
backoff, the restart rate limit, a child that crashes at once for ever, a child that stops answering.

Moved here from tests/platform/test_supervisor.py, which supervises a real `citystream up`.
"""

from __future__ import annotations

import logging
import sys
import time

import pytest

from citystream.cli import _answering
from citystream.embedded import find_free_port
from citystream.supervisor import CommandChild, RestartPolicy, Supervisor


def test_restart_delays_double_up_to_the_cap_and_the_rate_is_limited() -> None:
    policy = RestartPolicy(first=1, cap=30, burst=3, window=600)
    assert [policy.delay(n, [], 0)[0] for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert policy.delay(1, [100, 200], 300) == (1, False)
    assert policy.delay(1, [100, 200, 300], 400) == (300, True)  # 3 restarts since t=100: wait until t=700
    assert policy.delay(1, [100, 200, 300], 701) == (1, False)


def test_a_child_that_crashes_at_once_forever_does_not_spin(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="citystream.supervisor")
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    crasher = CommandChild("crasher", [sys.executable, "-c", crash], {}, stop_timeout=1)
    supervisor = Supervisor(RestartPolicy(first=0.01, cap=0.02, burst=3, window=60), interval=0.01)
    supervisor.start(crasher)
    deadline = time.monotonic() + 4
    try:
        while time.monotonic() < deadline:
            for watched in supervisor._watched:
                supervisor._check(watched, time.monotonic())
            time.sleep(0.01)
    finally:
        supervisor.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("restarted crasher") for m in messages) == 3, messages
    assert any(m == "crasher restarted 3 times within 60 s: holding off" for m in messages), messages
    crashes = [r for r in caplog.records if "died from SIGSEGV" in r.getMessage()]
    assert len(crashes) == 4 and all(r.levelno == logging.ERROR for r in crashes)
    assert [r.__dict__["consecutive_failures"] for r in crashes] == [1, 2, 3, 4]


def test_a_child_that_stops_answering_is_killed_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    """A process can stall without dying (an event loop held by native code): the liveness probe notices."""
    caplog.set_level(logging.INFO, logger="citystream.supervisor")
    port = find_free_port()
    mute = ("import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(600)")  # accepts, never answers
    stalled = CommandChild("stalled", [sys.executable, "-c", mute], {}, stop_timeout=1)
    supervisor = Supervisor(RestartPolicy(first=0.05, probe_every=0.2, unresponsive_probes=2), interval=0.02)
    supervisor.start(stalled, alive=_answering("127.0.0.1", port, timeout=0.3))
    first = stalled.process()
    assert first is not None
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline and not any("restarted stalled" in r.getMessage() for r in caplog.records):
            for watched in supervisor._watched:
                supervisor._check(watched, time.monotonic())
            time.sleep(0.02)
    finally:
        supervisor.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert f"stalled process {first.pid} has not answered 2 probes in a row; killing it" in messages, messages
    assert any(m.startswith(f"stalled process {first.pid} died from SIGKILL") for m in messages), messages
    assert any(m.startswith("restarted stalled") for m in messages), messages
