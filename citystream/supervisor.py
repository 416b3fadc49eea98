"""The supervisor of `citystream up`: PostgreSQL, Mosquitto, the API (with the MQTT bridge inside) and the
demo each run in a process of their own, and one that dies is logged with how it died and started again
after a back-off, the others left alone (issue 13: a segfault in the API process used to take PostgreSQL
and Mosquitto down with it, and nothing but the kernel log said why).

Process tree: `citystream up` (this supervisor, main thread only) -> postgres, mosquitto (EmbeddedPostgres,
EmbeddedMosquitto), `citystream serve --supervised` and, with --demo, `citystream demo`. Every child has a
session of its own (a Ctrl-C in the terminal reaches only the supervisor, which stops them in order) and a
parent-death signal (none outlives a SIGKILLed supervisor).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from citystream import logs
from citystream.embedded import (
    EmbeddedMosquitto,
    EmbeddedPostgres,
    EmbeddedServiceError,
    parent_death_signal,
    stop_child,
)

log = logging.getLogger("citystream.supervisor")


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    """When a child that died is started again.

    The delay doubles with each consecutive short run (1 s, 2 s, 4 s, ... `cap`); a run of `stable` seconds
    or more starts the count again. On top, at most `burst` restarts in any `window` seconds: a child that
    dies at once on every start costs a start every minute or so, not a busy loop. No child is given up on:
    the others keep serving, and the log says what happens.
    """

    first: float = 1.0
    cap: float = 30.0
    stable: float = 60.0
    burst: int = 10
    window: float = 600.0
    probe_every: float = 10.0
    """Seconds between liveness probes of a child that has one."""
    unresponsive_probes: int = 3
    """Probes in a row without an answer after which the child is killed (and so restarted)."""

    def delay(self, failures: int, restarts: list[float], now: float) -> tuple[float, bool]:
        """(seconds until the next start, whether the rate limit set it) after `failures` short runs in a
        row, with `restarts` the monotonic times of the last `burst` restarts."""
        delay = min(self.first * 2 ** max(failures - 1, 0), self.cap)
        if len(restarts) >= self.burst and now - restarts[-self.burst] < self.window:
            return max(delay, restarts[-self.burst] + self.window - now), True
        return delay, False


class Child:
    """A supervised component: `spawn` (re)starts it; `process` is its current process (None: none yet)."""

    name: str
    log_file: Path | None = None

    def spawn(self) -> None:
        raise NotImplementedError

    def process(self) -> subprocess.Popen[bytes] | None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop it for good (the embedded services are left to their context managers, which stop them in
        order after everything that uses them)."""


class CommandChild(Child):
    """A `citystream` subcommand in a process of its own.

    Secrets travel in its environment only (argv is readable by every local user in /proc). It gets SIGTERM
    when the thread that forked it - our main thread - dies, so it never outlives a SIGKILLed supervisor,
    and a session of its own, so a Ctrl-C in the terminal reaches only us and we stop it in order.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], stop_timeout: float = 30.0) -> None:
        self.name, self.argv, self.env, self.stop_timeout = name, argv, env, stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        self._proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True,
                                      preexec_fn=parent_death_signal(signal.SIGTERM))

    def process(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    def stop(self) -> None:
        """SIGTERM: the API drains its requests and the bridge commits and acknowledges what is in flight."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        fields = {"component": self.name, "child_pid": proc.pid}
        log.info("stopping %s process %d", self.name, proc.pid, extra=fields)
        stop_child(proc, [(signal.SIGTERM, self.stop_timeout)])
        log.info("%s process %d %s", self.name, proc.pid, logs.describe_exit(proc.returncode),
                 extra={**fields, **logs.exit_fields(proc.returncode)})


class ServiceChild(Child):
    """An embedded PostgreSQL or Mosquitto, restarted through its own stop() and start() (configuration,
    secrets, port checks and the wait until it is ready included)."""

    def __init__(self, service: EmbeddedPostgres | EmbeddedMosquitto) -> None:
        self.service = service
        self.name = "PostgreSQL" if isinstance(service, EmbeddedPostgres) else "Mosquitto"
        self.log_file = service.log_path

    def spawn(self) -> None:
        self.service.stop()  # what is left of the dead one: its lock, its log file
        if isinstance(self.service, EmbeddedPostgres):
            _wait_for_orphans(self.service.pgdata)
            self.service.keep_port()  # the API's pool has its address: a taken port is retried, not changed
        self.service.start()

    def process(self) -> subprocess.Popen[bytes] | None:
        return self.service.process


def _processes_in(directory: Path) -> list[int]:
    """PostgreSQL server processes working in `directory`: the `postgres` binary, of the account that owns the
    directory (not an operator's shell or psql that happens to stand there)."""
    target = str(directory.resolve())
    owner = directory.stat().st_uid
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (os.readlink(entry / "cwd") == target and entry.stat().st_uid == owner
                        and (entry / "comm").read_text().strip() == "postgres"):
                    found.append(int(entry.name))
    return found


def _still_in(directory: Path, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _processes_in(directory)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _wait_for_orphans(pgdata: Path, timeout: float = 15.0) -> None:
    """Let the processes of a dead postmaster finish before a new one starts on `pgdata`: two sets of server
    processes on one data directory corrupt it, and PostgreSQL's own guard (postmaster.pid) is removed as
    stale by EmbeddedPostgres.start(). They notice the postmaster's death and exit by themselves, at the
    latest after the statement they are running; all of them work in pgdata."""
    left = _still_in(pgdata, timeout)
    if not left:
        return
    log.warning("killing %d PostgreSQL processes the dead postmaster left behind", len(left),
                extra={"component": "PostgreSQL", "pids": left})
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if _still_in(pgdata, 5.0):
        raise EmbeddedServiceError(f"processes of the dead PostgreSQL still run in {pgdata}")


def _seconds(value: float) -> str:
    return f"{value:.3g} s" if value < 100 else f"{value:.0f} s"


@dataclasses.dataclass
class _Watched:
    """A child and its restart bookkeeping (monotonic times)."""

    child: Child
    ready: Callable[[], bool] | None = None
    alive: Callable[[], bool] | None = None
    started: float = dataclasses.field(default_factory=time.monotonic)
    failures: int = 0
    restarts: list[float] = dataclasses.field(default_factory=list)
    restart_at: float | None = None
    awaiting_ready: bool = False
    next_probe: float = 0.0
    unanswered: int = 0
    """Liveness probes in a row that got no answer."""


class Supervisor:
    """Keeps the parts of `citystream up` running: one that dies is logged with how it died and started
    again after a back-off (RestartPolicy); the others are left alone, pids and connections intact.

    Single-threaded by design: every child is forked by the main thread, which the parent-death signal
    needs (it fires when the forking thread ends), and a stop signal interrupts whatever the loop is doing
    (`_Shutdown`), a restart included.
    """

    def __init__(self, policy: RestartPolicy | None = None, interval: float = 0.1) -> None:
        self.policy = policy or RestartPolicy()
        self.interval = interval
        self._watched: list[_Watched] = []

    def adopt(self, service: EmbeddedPostgres | EmbeddedMosquitto) -> None:
        """Watch an embedded service that its context manager has started (and will stop)."""
        child = ServiceChild(service)
        self._watched.append(_Watched(child))
        self._log_started(child, "supervising")

    def start(self, child: Child, ready: Callable[[], bool] | None = None, timeout: float = 120.0,
              alive: Callable[[], bool] | None = None) -> None:
        """Start `child` and watch it; with `ready`, first wait until it is ready. A child that dies before
        it was ever ready is a start-up failure (a configuration error, say), not something to retry. With
        `alive`, a probe that must keep answering: a child that stops answering for
        `policy.unresponsive_probes` probes in a row is killed, and so restarted (a process can stall
        without dying: an event loop held by native code)."""
        child.spawn()
        self._log_started(child, "started")
        self._watched.append(_Watched(child, ready, alive, next_probe=time.monotonic() + self.policy.probe_every))
        deadline = time.monotonic() + timeout
        while ready is not None and not ready():
            proc = child.process()
            assert proc is not None
            if proc.poll() is not None:
                raise EmbeddedServiceError(f"{child.name} process {proc.pid} {logs.describe_exit(proc.returncode)} "
                                           "before it was ready; its log is above")
            if time.monotonic() > deadline:
                raise EmbeddedServiceError(f"{child.name} process {proc.pid} was not ready within {timeout:.0f} s")
            time.sleep(0.05)

    def run(self) -> NoReturn:
        """Watch until a stop signal (`_Shutdown`) ends the loop."""
        while True:
            now = time.monotonic()
            for watched in self._watched:
                self._check(watched, now)
            time.sleep(self.interval)

    def stop(self) -> None:
        """Stop the command children, the last started first: the demo, then the API."""
        for watched in reversed(self._watched):
            watched.restart_at = None
            watched.child.stop()

    def _check(self, watched: _Watched, now: float) -> None:
        if watched.restart_at is not None:
            if now >= watched.restart_at:
                self._restart(watched)
            return
        proc = watched.child.process()
        if proc is not None and proc.poll() is not None:
            self._died(watched, proc, now)
        elif proc is not None and watched.awaiting_ready and watched.ready is not None and watched.ready():
            watched.awaiting_ready = False
            watched.next_probe = now + self.policy.probe_every
            log.info("%s process %d is ready again", watched.child.name, proc.pid,
                     extra={"component": watched.child.name, "child_pid": proc.pid})
        elif proc is not None and watched.alive is not None and not watched.awaiting_ready \
                and now >= watched.next_probe:
            self._probe(watched, proc)

    def _probe(self, watched: _Watched, proc: subprocess.Popen[bytes]) -> None:
        assert watched.alive is not None
        answered = watched.alive()
        watched.next_probe = time.monotonic() + self.policy.probe_every
        watched.unanswered = 0 if answered else watched.unanswered + 1
        if answered or watched.unanswered < self.policy.unresponsive_probes:
            return
        name = watched.child.name
        log.error("%s process %d has not answered %d probes in a row; killing it", name, proc.pid,
                  watched.unanswered, extra={"component": name, "child_pid": proc.pid})
        watched.unanswered = 0
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # the next check sees it dead and restarts it

    def _died(self, watched: _Watched, proc: subprocess.Popen[bytes], now: float) -> None:
        ran = now - watched.started
        watched.failures = 1 if ran >= self.policy.stable else watched.failures + 1
        delay = self._schedule(watched, now)
        child, code = watched.child, proc.returncode
        where = f" (its log: {child.log_file})" if child.log_file else ""
        log.log(
            logging.WARNING if code == 0 else logging.ERROR,
            "%s process %d %s after %s; restarting in %s%s", child.name, proc.pid, logs.describe_exit(code),
            _seconds(ran), _seconds(delay), where,
            extra={"component": child.name, "child_pid": proc.pid, **logs.exit_fields(code),
                   "uptime_s": round(ran, 3), "restart_in_s": round(delay, 3),
                   "consecutive_failures": watched.failures,
                   **({"log_file": str(child.log_file)} if child.log_file else {})})

    def _schedule(self, watched: _Watched, now: float) -> float:
        delay, limited = self.policy.delay(watched.failures, watched.restarts, now)
        if limited:
            log.warning("%s restarted %d times within %s: holding off", watched.child.name,
                        self.policy.burst, _seconds(self.policy.window),
                        extra={"component": watched.child.name, "restart_in_s": round(delay, 3)})
        watched.restart_at = now + delay
        return delay

    def _restart(self, watched: _Watched) -> None:
        now = time.monotonic()
        watched.restart_at = None
        watched.restarts = [*watched.restarts, now][-self.policy.burst:]
        child = watched.child
        try:
            child.spawn()
        except Exception as exc:  # whatever a restart runs into (a port taken, a database dying again while
            watched.failures += 1  # it boots): try again later; it must never end the supervisor
            delay = self._schedule(watched, time.monotonic())
            log.error("could not restart %s: %s; trying again in %s", child.name, exc, _seconds(delay),
                      extra={"component": child.name, "restart_in_s": round(delay, 3),
                             "consecutive_failures": watched.failures})
            return
        watched.started = time.monotonic()
        watched.awaiting_ready = watched.ready is not None
        self._log_started(child, "restarted", restarts=len(watched.restarts))

    @staticmethod
    def _log_started(child: Child, what: str, **fields: Any) -> None:
        proc = child.process()
        pid = proc.pid if proc is not None else None
        log.info("%s %s process %s", what, child.name, pid,
                 extra={"component": child.name, "child_pid": pid, **fields})
