"""Process, port, account and lock plumbing shared by the embedded PostgreSQL and Mosquitto.

Free ports and port checks, the unprivileged account a service runs as, stopping children and orphans of
a crashed run, private secret files, the data-directory lock, and `_Service`, the base class with the
context-manager and readiness polling. The underscore names are internal to `citystream.embedded`.

Running as root: PostgreSQL refuses to run as root and Mosquitto would drop to its own user anyway, so when
the effective uid is 0 each service is started as its unprivileged system account (`postgres`,
`mosquitto`) and its data directory is handed to that account. Every directory above the data directory
must then be traversable by that account.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import os
import pwd
import secrets
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Collection
from pathlib import Path
from types import TracebackType
from typing import Any, Self


class EmbeddedServiceError(RuntimeError):
    """An embedded service could not be started or stopped; the message says what to do."""


class PortInUseError(EmbeddedServiceError):
    """A port we were asked to listen on is taken; raised before anything is started."""

    def __init__(self, port: int, host: str, what: str, hint: str) -> None:
        self.port = port
        self.host = host
        super().__init__(f"{what} port {port} on {host} is already in use; {hint}")


# ---------------------------------------------------------------------------------------------- ports


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def port_is_free(host: str, port: int) -> bool:
    """True if a server could listen on host:port now.

    SO_REUSEADDR mirrors what PostgreSQL, Mosquitto and uvicorn set, so lingering TIME_WAIT connections do
    not count as "taken" while a live listener does.
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


_handed_out: set[int] = set()
"""Ports find_free_port has returned in this process."""


def find_free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel considers free on host, never one this process was given before: the kernel may
    hand a just-released port out again, and two callers who each asked for "a free port" (HTTP and MQTT,
    say) must not both get it before either server listens."""
    while True:
        with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def ensure_port_free(host: str, port: int, what: str, hint: str) -> None:
    """Raise PortInUseError naming the port and how to change it, before anything is started."""
    if not port_is_free(host, port):
        raise PortInUseError(port, host, what, hint)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ---------------------------------------------------------------------------------- processes and users


_libc: Any = None


def parent_death_signal(sig: signal.Signals) -> Callable[[], None]:
    """preexec_fn: the child gets `sig` if we die, so a killed `citystream up` leaves no orphans.

    Runs after Popen's setuid (which would clear the setting), right before exec.
    """
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    libc = _libc

    def _set() -> None:
        libc.prctl(1, int(sig))  # PR_SET_PDEATHSIG

    return _set


class _Account:
    """The unprivileged account a service runs as when we are root (None fields: run as ourselves)."""

    def __init__(self, name: str | None) -> None:
        self.name = name
        if name is None:
            self.uid: int | None = None
            self.gid: int | None = None
            return
        try:
            entry = pwd.getpwnam(name)
        except KeyError as exc:
            raise EmbeddedServiceError(
                f"running as root, but the system user {name!r} does not exist; the service must not run as "
                f"root. Install the distribution package (it creates {name!r}) or run as a normal user."
            ) from exc
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    @classmethod
    def for_service(cls, name: str) -> _Account:
        return cls(name if os.geteuid() == 0 else None)

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, *paths: Path) -> None:
        if self.uid is None or self.gid is None:
            return
        for path in paths:
            os.chown(path, self.uid, self.gid)

    def chown_tree(self, root: Path, keep: Collection[Path] = ()) -> None:
        """Hand `root` and everything below it to the account, except the files in `keep` (our secrets)."""
        if self.uid is None:
            return
        self.chown(root)
        kept = {os.path.abspath(path) for path in keep}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                if os.path.abspath(path) not in kept:
                    os.chown(path, self.uid, self.gid or 0, follow_symlinks=False)

    def check_reachable(self, path: Path) -> None:
        """Fail early, with the fix, when the account cannot traverse to `path` (e.g. under /root)."""
        if self.uid is None or self.name is None:
            return
        groups = set(os.getgrouplist(self.name, self.gid or 0))
        for ancestor in reversed(path.resolve().parents):
            st = os.stat(ancestor)
            if st.st_uid == self.uid:
                ok = bool(st.st_mode & stat.S_IXUSR)
            elif st.st_gid in groups:
                ok = bool(st.st_mode & stat.S_IXGRP)
            else:
                ok = bool(st.st_mode & stat.S_IXOTH)
            if not ok:
                raise EmbeddedServiceError(
                    f"running as root, so the service runs as user {self.name!r}, which cannot enter "
                    f"{ancestor} (mode {stat.filemode(st.st_mode)}). Use a --data-dir it can reach "
                    f"(e.g. /var/lib/citystream or /tmp/citystream) or run as a normal user."
                )


def _proc_alive(pid: int) -> bool:
    """Alive and not a zombie (containers whose PID 1 never reaps keep zombies around)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _proc_alive(pid):
            return True
        time.sleep(0.05)
    return not _proc_alive(pid)


def _terminate_foreign(pid: int, first: signal.Signals, timeout: float) -> None:
    """Stop a process that is not our child (an orphan of a crashed run): polite first, then SIGKILL."""
    for sig, wait in ((first, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_gone(pid, wait):
            return
    raise EmbeddedServiceError(f"could not stop process {pid} left over from an earlier run")


def stop_child(proc: subprocess.Popen[bytes], signals: list[tuple[signal.Signals, float]]) -> None:
    """Send each signal in turn until the child has exited (last resort: SIGKILL)."""
    for sig, timeout in [*signals, (signal.SIGKILL, 10.0)]:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def _private_file(path: Path, content: bytes, owner: _Account | None = None) -> None:
    """Write `content` to `path` atomically, mode 0600, owned by us (or by `owner`'s account)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        if owner is not None and owner.uid is not None:
            os.fchown(fd, owner.uid, owner.gid if owner.gid is not None else -1)
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_secret(path: Path, secret: str, owner: _Account | None = None) -> None:
    """Keep `secret` in `path`: one line, mode 0600, owned by us (or by `owner`'s account)."""
    _private_file(path, f"{secret}\n".encode(), owner)


def _read_or_create_secret(path: Path, what: str) -> str:
    """The secret kept in `path`; on first use a random one is generated and kept there (0600, ours).

    Reused on every later start, so URLs and client configurations that carry it keep working.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # the directory may belong to a service account
        with os.fdopen(fd, "rb") as file:
            secret = file.read().decode().strip()
    except FileNotFoundError:
        secret = secrets.token_urlsafe(32)
        _write_secret(path, secret)
        return secret
    except OSError as exc:
        raise EmbeddedServiceError(f"cannot read the {what} file {path}: {exc}") from exc
    if not secret:
        raise EmbeddedServiceError(f"the {what} file {path} is empty; delete it to have a new password generated")
    return secret


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


class _DirLock:
    """flock on a file in the data dir: one live owner per data dir; released by the kernel if we die."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, what: str) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise EmbeddedServiceError(
                f"{what} data directory {self.path.parent} is in use by another running citystream process; "
                "stop it or use another --data-dir"
            ) from exc
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _Service:
    """Context-manager plumbing and readiness polling shared by both services."""

    name = "service"
    _proc: subprocess.Popen[bytes] | None
    log_path: Path

    def start(self) -> None:
        raise NotImplementedError

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The server's process while it runs (None before start() and after stop()), for a supervisor."""
        return self._proc

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _wait_until(self, ready: Callable[[], bool], promise: str, timeout: float, interval: float) -> None:
        """Poll `ready` until it is true; fail with the log tail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise EmbeddedServiceError(
                    f"{self.name} exited with code {self._proc.returncode}; log {self.log_path}:\n"
                    f"{_log_tail(self.log_path)}"
                )
            if ready():
                return
            if time.monotonic() > deadline:
                raise EmbeddedServiceError(
                    f"{self.name} did not {promise} within {timeout:.0f}s; log {self.log_path}:\n"
                    f"{_log_tail(self.log_path)}"
                )
            time.sleep(interval)

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
