"""Private PostgreSQL and Mosquitto instances for `citystream up` and the test suite.

Why: a developer (and CI) should get a working platform with one command and no system services, no
passwords to invent and nothing listening beyond loopback. Each service lives in its own data directory, which also
keeps its data between runs, and is stopped in order by its owner.

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
import hashlib
import ipaddress
import os
import platform
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import quote

from mqtt_bridge import identity

__all__ = [
    "AUTH_PLUGIN_PACKAGES",
    "AUTH_PLUGIN_SOURCE",
    "DEFAULT_ANONYMOUS_READ",
    "DEFAULT_SENSOR_USER",
    "PLATFORM_MQTT_USER",
    "EmbeddedMosquitto",
    "EmbeddedPostgres",
    "EmbeddedServiceError",
    "PortInUseError",
    "auth_plugin_library",
    "compile_auth_plugin",
    "ensure_port_free",
    "find_free_port",
    "find_mosquitto",
    "find_mosquitto_passwd",
    "find_pg_bindir",
    "port_is_free",
    "render_deploy_mosquitto_files",
    "render_mosquitto_acl",
    "render_mosquitto_conf",
    "write_deploy_mosquitto_files",
]

MIN_PG_MAJOR = 15


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


# ------------------------------------------------------------------------------------------- PostgreSQL


def _pg_major(bin_dir: Path) -> int | None:
    postgres = bin_dir / "postgres"
    if not (postgres.is_file() and (bin_dir / "initdb").is_file()):
        return None
    try:
        out = subprocess.run(
            [str(postgres), "--version"], capture_output=True, text=True, check=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(match.group(1)) if match else None


def find_pg_bindir() -> Path:
    """Directory of `postgres`/`initdb` >= 15: highest /usr/lib/postgresql/N/bin, else pg_config's bindir."""
    candidates: list[Path] = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
        reverse=True,
    )
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
    found: list[str] = []
    for bin_dir in candidates:
        major = _pg_major(bin_dir)
        if major is None:
            continue
        if major >= MIN_PG_MAJOR:
            return bin_dir
        found.append(f"{bin_dir} (PostgreSQL {major})")
    detail = f" Found only: {', '.join(found)}." if found else ""
    raise EmbeddedServiceError(
        f"PostgreSQL >= {MIN_PG_MAJOR} server binaries (postgres, initdb) not found.{detail} Install them "
        "(Debian/Ubuntu: `apt-get install postgresql postgresql-15-postgis-3`, matching the major version), "
        "or point CITYSTREAM_DATABASE_URL at an existing PostgreSQL with PostGIS."
    )


def _pkglibdir(bin_dir: Path) -> Path:
    pg_config = bin_dir / "pg_config"
    if pg_config.is_file():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([str(pg_config), "--pkglibdir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return Path(out.stdout.strip())
    return bin_dir.parent / "lib"


class EmbeddedPostgres(_Service):
    """A private PostgreSQL cluster in `data_dir`, listening on `host` only, password auth over TCP.

    Layout: `pgdata/` (the cluster), `password` (the superuser's password, mode 0600, owned by whoever runs
    citystream; the service account cannot read it), `port` (the remembered port), `postgres.log`, `lock`.
    With `port=None` a free port is chosen on first start and reused on later starts while it is free,
    so a DSN someone copied keeps working. It is never one of `avoid_ports`: the ports the rest of the
    platform was told to listen on, which are free now only because their servers start later.

    Authentication: TCP needs the password (scram-sha-256), because on a shared host any local user can
    reach a loopback port. The unix socket lives inside pgdata (mode 0700), and there `peer` admits only
    the OS account that owns the cluster, as `citystream`. Clusters created by older versions with `trust`
    and no password file keep working without a password.
    """

    DATABASE = "citystream"
    USER = "citystream"
    name = "PostgreSQL"

    def __init__(
        self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1", bin_dir: Path | None = None,
        avoid_ports: Collection[int] = (),
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self._requested_port = port
        self._avoid_ports = frozenset(avoid_ports)
        self._port: int | None = port
        self._bin_dir = bin_dir
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self._port_file = self.data_dir / "port"
        self.password_file = self.data_dir / "password"
        self._password: str | None = None
        self._lock = _DirLock(self.data_dir / "lock")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._account = _Account.for_service("postgres")

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedServiceError("EmbeddedPostgres has no port before start()")
        return self._port

    @property
    def dsn(self) -> str:
        """libpq URL of the `citystream` database as superuser `citystream`, with its password (a secret:
        show `masked_dsn` instead). No password only for an old trust cluster without a password file."""
        return self._url(self.DATABASE, self._password)

    @property
    def masked_dsn(self) -> str:
        """`dsn` with the password replaced by `***`, for banners and logs."""
        return self._url(self.DATABASE, None if self._password is None else "***", quote_password=False)

    def _admin_dsn(self) -> str:
        return self._url("postgres", self._password)

    def _url(self, database: str, password: str | None, quote_password: bool = True) -> str:
        userinfo = self.USER
        if password is not None:
            userinfo += ":" + (quote(password, safe="") if quote_password else password)
        return f"postgresql://{userinfo}@{_url_host(self.host)}:{self.port}/{database}"

    # -- start

    def start(self) -> None:
        if self.running:
            return
        bin_dir = self._bin_dir or find_pg_bindir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._account.check_reachable(self.data_dir)
        self._lock.acquire("PostgreSQL")
        try:
            self._stop_orphan()
            self._port = self._choose_port()
            self._log = open(self.log_path, "ab")  # kept open for the child's lifetime
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb(bin_dir)
            self._password = self._read_password()
            preload = (_pkglibdir(bin_dir) / "timescaledb.so").exists()
            self._write_config(preload)
            self._spawn(bin_dir)
            self._wait_ready()
            self._bootstrap(preload)
        except BaseException:
            self.stop()
            raise

    def keep_port(self) -> None:
        """Start on the port it runs on now, or fail (PortInUseError) rather than take another: for a
        supervisor restarting the cluster under clients that know its address."""
        if self._port is not None:
            self._requested_port = self._port

    def _choose_port(self) -> int:
        if self._requested_port is not None:
            ensure_port_free(
                self.host,
                self._requested_port,
                "embedded PostgreSQL",
                "free it, pick another port, or set CITYSTREAM_DATABASE_URL to use an external PostgreSQL",
            )
            return self._requested_port
        with contextlib.suppress(OSError, ValueError):
            remembered = int(self._port_file.read_text().strip())
            if remembered not in self._avoid_ports and port_is_free(self.host, remembered):
                return remembered
        port = find_free_port(self.host)
        while port in self._avoid_ports:  # the kernel may hand out a port that was just released
            port = find_free_port(self.host)
        self._port_file.write_text(f"{port}\n")
        return port

    def _stop_orphan(self) -> None:
        """Deal with postmaster.pid left by a run that died: stop its postmaster, or drop a stale file.

        We hold the data-dir lock, so a live postmaster on this pgdata cannot belong to a live citystream.
        """
        pid_file = self.pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        cmdline = _proc_cmdline(pid)
        ours = (
            _proc_alive(pid) and any(Path(a).name == "postgres" for a in cmdline[:1]) and (str(self.pgdata) in cmdline)
        )
        if ours:
            print(f"citystream: stopping PostgreSQL (pid {pid}) left running by an earlier run", flush=True)
            _terminate_foreign(pid, signal.SIGINT, 60.0)
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()

    def _run_as_owner(self, argv: list[str]) -> None:
        assert self._log is not None
        self._log.write(f"\n$ {' '.join(argv)}\n".encode())
        self._log.flush()
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            timeout=300,
            check=False,
            **self._account.popen_kwargs(),
        )
        if result.returncode != 0:
            raise EmbeddedServiceError(
                f"{Path(argv[0]).name} failed (exit {result.returncode}); log {self.log_path}:\n"
                f"{_log_tail(self.log_path)}"
            )

    def _read_password(self) -> str | None:
        """The superuser password, or None for a cluster created (with trust) before password files."""
        try:
            password = self.password_file.read_text().strip()
        except FileNotFoundError:
            print(
                f"citystream: note: {self.pgdata} was created by an older citystream with passwordless "
                "(trust) login on loopback; any local user can connect to it as superuser. To get password "
                "authentication, dump the data and start with a fresh data directory.",
                flush=True,
            )
            return None
        except OSError as exc:
            raise EmbeddedServiceError(f"cannot read the PostgreSQL password file {self.password_file}: {exc}") from exc
        if not password:
            raise EmbeddedServiceError(f"the PostgreSQL password file {self.password_file} is empty")
        return password

    def _initdb(self, bin_dir: Path) -> None:
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedServiceError(
                f"{self.pgdata} is not empty but is no PostgreSQL cluster (no PG_VERSION); move it away"
            )
        self.pgdata.mkdir(exist_ok=True)
        self.pgdata.chmod(0o700)
        self._account.chown(self.pgdata)
        # The password file is written before the cluster exists, so a cluster never lacks one; a failed
        # initdb is simply repeated on the next start with a new password. initdb (running as the service
        # account) reads its own short-lived copy, removed right after.
        password = secrets.token_urlsafe(32)
        _write_secret(self.password_file, password)
        pwfile = self.data_dir / "initdb-pwfile"
        _write_secret(pwfile, password, owner=self._account)
        try:
            self._run_as_owner(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    self.USER,
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--auth-host=scram-sha-256",
                    "--auth-local=peer",
                    "--no-instructions",
                ]
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                pwfile.unlink()
        os_user = self._account.name or pwd.getpwuid(os.geteuid()).pw_name
        # The socket directory is pgdata itself (mode 0700): only the cluster's owner reaches it, and peer
        # maps that OS account to `citystream`. TCP: loopback only, always with the password.
        (self.pgdata / "pg_ident.conf").write_text(
            "# generated by citystream: the cluster's OS account may log in as citystream over the socket\n"
            f"citystream {os_user} {self.USER}\n"
        )
        (self.pgdata / "pg_hba.conf").write_text(
            "# generated by citystream: peer on the private socket, password (scram) on loopback only\n"
            "local all all peer map=citystream\n"
            "host  all all 127.0.0.1/32 scram-sha-256\n"
            "host  all all ::1/128 scram-sha-256\n"
        )
        with open(self.pgdata / "postgresql.conf", "a") as conf:
            conf.write("\ninclude_if_exists = 'citystream.conf'\n")
        self._account.chown(self.pgdata / "pg_hba.conf", self.pgdata / "pg_ident.conf")

    def _write_config(self, timescaledb: bool) -> None:
        """Rewritten on every start so tuning changes in new releases apply to existing clusters."""
        lines = [
            "# generated by citystream on every start; edits are overwritten",
            "shared_buffers = 256MB",
            "effective_cache_size = 1GB",
            "work_mem = 16MB",
            "maintenance_work_mem = 128MB",
            "max_connections = 100",
            "fsync = on",
            "synchronous_commit = on",
            "track_commit_timestamp = on",  # Last-Modified of OGC API responses (pg_last_committed_xact)
            "full_page_writes = on",
            "wal_compression = on",
            "max_wal_size = 1GB",
            "checkpoint_timeout = 10min",
            "random_page_cost = 1.1",
            "max_parallel_workers_per_gather = 1",
            "timezone = 'UTC'",
            "log_timezone = 'UTC'",
            "logging_collector = off",
            "log_line_prefix = '%m [%p] %q%u@%d '",
            "log_min_duration_statement = 2000",
        ]
        if timescaledb:
            lines += ["shared_preload_libraries = 'timescaledb'", "timescaledb.telemetry_level = off"]
        path = self.pgdata / "citystream.conf"
        path.write_text("\n".join(lines) + "\n")
        self._account.chown(path)

    def _spawn(self, bin_dir: Path) -> None:
        assert self._log is not None
        socket_path = self.pgdata / f".s.PGSQL.{self.port}"
        socket_dir = str(self.pgdata) if len(str(socket_path)) < 100 else ""  # sun_path limit
        argv = [
            str(bin_dir / "postgres"),
            "-D",
            str(self.pgdata),
            "-c",
            f"port={self.port}",
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            f"unix_socket_directories={socket_dir}",
        ]
        self._log.write(f"\n$ {' '.join(argv)}\n".encode())
        self._log.flush()
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.pgdata,
            start_new_session=True,  # a Ctrl-C in the terminal goes to us; we stop it in order
            preexec_fn=parent_death_signal(signal.SIGINT),
            **self._account.popen_kwargs(),
        )

    def _wait_ready(self, timeout: float = 120.0) -> None:
        import psycopg

        def accepts_connections() -> bool:
            try:
                with psycopg.connect(self._admin_dsn(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.OperationalError as exc:
                if "password" in str(exc):  # up, but rejects us: waiting will not help
                    raise EmbeddedServiceError(
                        f"PostgreSQL in {self.pgdata} rejected the password in {self.password_file} ({exc}); "
                        "restore that file or use a fresh data directory"
                    ) from exc
                return False

        self._wait_until(accepts_connections, "accept connections", timeout, 0.1)

    def _bootstrap(self, timescaledb: bool) -> None:
        import psycopg

        with psycopg.connect(self._admin_dsn(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.DATABASE,)).fetchone()
            if exists is None:
                conn.execute(f"CREATE DATABASE {self.DATABASE}")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            except psycopg.Error as exc:
                raise EmbeddedServiceError(
                    f"PostGIS is not installed for this PostgreSQL ({exc}); install postgresql-N-postgis-3 "
                    "for your major version N"
                ) from exc
            available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
            if timescaledb and available is not None:
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")

    # -- stop

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back sessions, checkpoint), escalating only if it hangs."""
        if self._proc is not None:
            stop_child(self._proc, [(signal.SIGINT, 60.0), (signal.SIGQUIT, 10.0)])
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self._lock.release()


# -------------------------------------------------------------------------------------------- Mosquitto

PLATFORM_MQTT_USER = "citystream"
"""The platform's own Mosquitto account (MQTT bridge, notifications, $SYS log reader)."""
DEFAULT_SENSOR_USER = "sensor"
DEFAULT_ANONYMOUS_READ = "v1.1/#"

DEPLOY_MOSQUITTO_DIR = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"
"""deploy/mosquitto in a source checkout: the docker-compose copies of the generated config and ACL."""


_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")


# ------------------------------------------------------------------------------ the broker plugin

AUTH_PLUGIN_SOURCE = Path(__file__).resolve().parent / "mosquitto_plugin" / "citystream_auth.c"
"""CityStream's Mosquitto plugin: only the platform account may use the bridge's client ids and shared
subscription group, which the password file and the ACL file cannot express (the header comment says why)."""
AUTH_PLUGIN_PACKAGES = "gcc libc6-dev mosquitto-dev libmosquitto-dev"
"""The Debian/Ubuntu packages building the plugin needs (scripts/quickstart.sh installs them)."""
DEPLOY_AUTH_PLUGIN_PATH = "/usr/local/lib/citystream/citystream_auth.so"
"""Where deploy/mosquitto/Dockerfile installs the plugin for docker-compose."""

_PLUGIN_CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra")
_HEADER_PACKAGES = {"mosquitto_broker.h": "mosquitto-dev", "mosquitto_plugin.h": "mosquitto-dev",
                    "mosquitto.h": "libmosquitto-dev"}
_MISSING_HEADER = re.compile(r"fatal error: '?([\w./+-]+\.h)'?(?::| file not found)")
_MISSING_LIBC = re.compile(r"cannot find (?:crt\w*\.o|-lc\b)")


def _plugin_error(reason: str) -> EmbeddedServiceError:
    return EmbeddedServiceError(
        "cannot build CityStream's Mosquitto plugin citystream_auth (it keeps the bridge's client id and shared "
        f"subscription to the platform account): {reason}"
    )


def compile_auth_plugin(output: Path, *, cc: str | None = None, extra_flags: tuple[str, ...] = ()) -> None:
    """Compile AUTH_PLUGIN_SOURCE into `output` with `cc` (default $CC, else `cc`; may carry flags).

    A missing compiler or header is an EmbeddedServiceError naming the Debian package to install. Nothing is
    linked: the broker provides the mosquitto_* functions when it loads the plugin.
    """
    compiler = shlex.split(cc if cc is not None else os.environ.get("CC") or "cc")
    if not compiler:
        raise _plugin_error("CC is empty")
    argv = [*compiler, *_PLUGIN_CFLAGS, *extra_flags, "-o", str(output), str(AUTH_PLUGIN_SOURCE)]
    install = f"Debian/Ubuntu: `apt-get install {AUTH_PLUGIN_PACKAGES}`"
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        raise _plugin_error(f"no C compiler {compiler[0]!r} (set CC to use another); install one ({install})") from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise _plugin_error(f"could not run {compiler[0]}: {exc}") from exc
    if result.returncode == 0:
        return
    if header := _MISSING_HEADER.search(result.stderr):
        package = _HEADER_PACKAGES.get(os.path.basename(header.group(1)), "libc6-dev")
        raise _plugin_error(f"the C header {header.group(1)} is missing: install {package} ({install})")
    if _MISSING_LIBC.search(result.stderr):
        raise _plugin_error(f"the C library's development files are missing: install libc6-dev ({install})")
    detail = "\n".join(result.stderr.strip().splitlines()[-15:])
    raise _plugin_error(f"{shlex.join(argv)} failed with exit code {result.returncode}:\n{detail}")


def _plugin_cache_dir() -> Path:
    """The user's cache, shared by every data directory and test broker (not the data directory: as root, that
    belongs to the broker account, and the compiler must not write where that account could plant links)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "citystream"


def _only_ours(path: Path) -> bool:
    """Owned by us and writable by nobody else: the broker runs what the cache holds (a planted library
    would run inside it), so a cache someone else could have written to is not used (HOME kept by sudo, a
    shared XDG_CACHE_HOME)."""
    info = path.lstat()
    return (not stat.S_ISLNK(info.st_mode) and info.st_uid == os.geteuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def auth_plugin_library(broker: Path, cache_dir: Path | None = None) -> bytes:
    """The compiled plugin for this exact source, compiled once and then taken from `cache_dir` (default: the
    user's cache), since every start of a broker needs it and the tests start many.

    The cache key is the source, the flags, the machine and the broker binary's size and mtime, so an edited
    plugin or an upgraded Mosquitto gets a fresh build. Without a usable cache it is compiled every time.
    """
    cache = cache_dir if cache_dir is not None else _plugin_cache_dir()
    try:
        key = hashlib.sha256(AUTH_PLUGIN_SOURCE.read_bytes())
    except OSError as exc:
        raise _plugin_error(f"its source {AUTH_PLUGIN_SOURCE} cannot be read ({exc}); reinstall CityStream") from exc
    info = os.stat(broker)
    key.update("\0".join([*_PLUGIN_CFLAGS, platform.machine(), str(info.st_size), str(info.st_mtime_ns)]).encode())
    cached = cache / f"citystream_auth-{key.hexdigest()[:16]}.so"
    with contextlib.suppress(OSError):
        if _only_ours(cache) and _only_ours(cached):
            library = cached.read_bytes()
            if library.startswith(b"\x7fELF"):
                return library
    with tempfile.TemporaryDirectory(prefix="citystream-plugin-") as private:
        built = Path(private) / "citystream_auth.so"
        compile_auth_plugin(built)
        library = built.read_bytes()
    with contextlib.suppress(OSError):  # a read-only home: compiled again next time
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".citystream_auth-", suffix=".tmp", dir=cache)  # unique: parallel runs
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(library)
            os.replace(tmp, cached)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return library


def _check_client_id(client_id: str) -> None:
    """One word on one config line (plugin_opt_bridge_client_id)."""
    if not client_id or len(client_id) > 1024 or any(ch.isspace() or not ch.isprintable() for ch in client_id):
        raise EmbeddedServiceError(
            f"MQTT bridge client id {client_id!r} must be 1 to 1024 printable characters without spaces "
            "(CITYSTREAM_MQTT_CLIENT_ID)"
        )


def _find_binary(name: str) -> Path:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin")
    if not found:
        raise EmbeddedServiceError(
            f"{name} not found; install Mosquitto (Debian/Ubuntu: `apt-get install mosquitto`) or point "
            "CITYSTREAM_MQTT_URL at an existing MQTT broker"
        )
    return Path(found)


def find_mosquitto() -> Path:
    """The mosquitto broker binary (it lives in /usr/sbin on Debian, often not on a user's PATH)."""
    return _find_binary("mosquitto")


def find_mosquitto_passwd() -> Path:
    """mosquitto_passwd, which hashes the password file (Debian: /usr/bin, package `mosquitto`)."""
    return _find_binary("mosquitto_passwd")


def _check_topic_filter(topic_filter: str, what: str) -> None:
    """A valid MQTT topic filter that fits on one ACL line ("" is allowed: nothing)."""
    if topic_filter == "":
        return
    levels = topic_filter.split("/")
    bad = (
        topic_filter != topic_filter.strip()
        or any(ch in topic_filter for ch in "\0\r\n")
        or any(("#" in level and (level != "#" or i != len(levels) - 1)) for i, level in enumerate(levels))
        or any(("+" in level and level != "+") for level in levels)
    )
    if bad:
        raise EmbeddedServiceError(f"{what} {topic_filter!r} is not a valid MQTT topic filter")


def _check_password(password: str, what: str) -> None:
    if not password or any(ch in password for ch in "\0\r\n"):
        raise EmbeddedServiceError(f"{what} must be non-empty and on one line")


def render_mosquitto_acl(
    sensor_username: str = DEFAULT_SENSOR_USER, anonymous_read: str = DEFAULT_ANONYMOUS_READ
) -> str:
    """The ACL file: the one definition of who may read and write which topics.

    Used for the embedded broker and, rendered with the defaults, kept in deploy/mosquitto/acl for
    docker-compose (a test compares the two). `anonymous_read` "" leaves anonymous clients no access;
    the config then refuses them altogether (`allow_anonymous false`).
    """
    if not _USERNAME.fullmatch(sensor_username) or sensor_username == PLATFORM_MQTT_USER:
        raise EmbeddedServiceError(
            f"MQTT sensor user name {sensor_username!r} must be letters, digits, . _ @ - and not "
            f"{PLATFORM_MQTT_USER!r} (CITYSTREAM_MQTT_SENSOR_USER)"
        )
    _check_topic_filter(anonymous_read, "CITYSTREAM_MQTT_ANONYMOUS_READ")
    lines = [
        "# Mosquitto ACL of CityStream, rendered by citystream.embedded.render_mosquitto_acl: change it there",
        "# (tests/test_broker_config.py checks that deploy/mosquitto/acl is up to date).",
        "# Nothing is allowed that no line below grants. Read rules apply on delivery: a subscription to a",
        "# topic filter is always granted, but only messages the subscriber may read reach it.",
        "",
    ]
    if anonymous_read:
        lines += [
            "# Anonymous clients (no user name): read only.",
            f"topic read {anonymous_read}",
        ]
    else:
        lines += ["# Anonymous clients are refused (allow_anonymous false), so there is no rule for them."]
    lines += [
        "",
        "# The platform (MQTT bridge, STA notifications): everything, and the broker's $SYS tree, where",
        "# $SYS/broker/log/M/subscribe and .../unsubscribe tell it which topics clients subscribe to.",
        f"user {PLATFORM_MQTT_USER}",
        "topic readwrite #",
        "topic read $SYS/#",
        "",
        "# Sensors: create Observations (v1.1/+/Observations covers Datastreams(id)/Observations and",
        "# FeaturesOfInterest(id)/Observations), read the STA topics and the bridge's error reports, which it",
        "# publishes under citystream/errors/<the topic the bad message was sent to>.",
        f"user {sensor_username}",
        "topic write v1.1/Observations",
        "topic write v1.1/+/Observations",
        "topic read v1.1/#",
        "topic read citystream/errors/#",
    ]
    return "\n".join(lines) + "\n"


def _websocket_bind(host: str) -> tuple[str, str]:
    """(IP address, socket_domain) for a websockets listener.

    Mosquitto hands websockets listeners to libwebsockets, which takes only an IP address and, unless
    `socket_domain` names the family, listens on every interface (`::`) whatever address was given
    (observed with Mosquitto 2.0.11): so the domain is always set.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
        except (OSError, IndexError, ValueError) as exc:
            raise EmbeddedServiceError(f"cannot resolve the MQTT host {host!r} for the websocket listener") from exc
    return str(ip), "ipv6" if ip.version == 6 else "ipv4"


def render_mosquitto_conf(
    *,
    host: str,
    port: int,
    websocket_port: int | None,
    persistence_location: str,
    password_file: str,
    acl_file: str,
    log_file: str | None,
    run_as: str,
    anonymous: bool,
    header: str,
    auth_plugin: str,
    bridge_client_id: str = identity.CLIENT_ID,
) -> str:
    """mosquitto.conf for CityStream's broker (embedded, and deploy/mosquitto/mosquitto.conf for compose).

    `log_file` None logs to stdout (containers). `anonymous`: allow clients without a user name (the ACL
    then lets them read only). `auth_plugin`: path of the compiled citystream_auth plugin, which reserves
    `bridge_client_id` (as a prefix) and the bridge's shared subscription group to the platform account.
    """
    _check_client_id(bridge_client_id)
    lines = [
        *(f"# {line}" if line else "#" for line in header.splitlines()),
        f"user {run_as}",
        "# Accounts, ACL and the anonymous switch apply to every listener alike.",
        "per_listener_settings false",
        "",
        "# -- authentication and access control",
        "# Accounts (the platform and the sensors), hashed with mosquitto_passwd.",
        f"password_file {password_file}",
        "# Who may read/write which topic (rendered by citystream.embedded.render_mosquitto_acl).",
        f"acl_file {acl_file}",
        "# Clients without a user name: " + ("read only, as the ACL says." if anonymous else "refused."),
        f"allow_anonymous {'true' if anonymous else 'false'}",
        "# CityStream's plugin (citystream/mosquitto_plugin/citystream_auth.c). Mosquitto asks it first, before",
        "# the password file and the ACL, about every CONNECT and SUBSCRIBE; it refuses what those two cannot",
        "# express and leaves everything else to them. Only the platform account may",
        "# - connect with a client id starting with the bridge's (bridge_client_id; workers add -w1, -w2, ...):",
        "#   anyone else would take over the bridge's persistent session, and its queued messages;",
        "# - subscribe in the bridge's shared subscription group ($share/<bridge_group>/...): anyone else would",
        "#   be handed part of the sensors' Observations, which would then never be stored. (The ACL file",
        "#   never checks subscriptions.) Other groups stay open: their members get their own copy.",
        f"plugin {auth_plugin}",
        f"plugin_opt_platform_user {PLATFORM_MQTT_USER}",
        f"plugin_opt_bridge_client_id {bridge_client_id}",
        f"plugin_opt_bridge_group {identity.SHARED_GROUP}",
        "",
        "# -- persistence: sessions, subscriptions and queued QoS 1/2 messages survive a broker restart",
        "persistence true",
        f"persistence_location {persistence_location}",
        "# Write the in-memory state to disk every 60 s and on a clean stop. A broker crash loses what arrived",
        "# since the last save and was not yet delivered; what the bridge has acknowledged is already",
        "# committed in PostgreSQL (it acknowledges a message only after its batch is committed).",
        "autosave_interval 60",
        "# Forget persistent sessions whose client has not come back for 7 days (default: never), so",
        "# abandoned client ids do not pile up queued messages for ever.",
        "persistent_client_expiration 7d",
        "",
        "# -- limits, sized for the MQTT bridge",
        "# Per-client queue of QoS 1/2 messages beyond those in flight (default 1000). The bridge's persistent",
        "# session must hold everything published while it is away: 40 s offline at 25,000 msg/s = 1,000,000.",
        "# Past this limit Mosquitto silently drops messages for that client. (QoS 0 is not queued for",
        "# offline clients: the bridge subscribes with QoS 1.)",
        "max_queued_messages 1000000",
        "# Outgoing QoS 1/2 messages unacknowledged at once per client (default 20). The bridge acknowledges",
        "# only after the batch is committed, so its window must hold whole batches. MQTT 5 clients override",
        "# this with the Receive Maximum they send in CONNECT (the bridge should send one); 65535 is the most",
        "# MQTT 5 allows and is also what the broker then advertises for messages clients send it (the",
        "# default, so Mosquitto sends no Receive Maximum in CONNACK). 0 would mean unlimited, which lets a",
        "# stalled MQTT 3.1.1 subscriber grow the broker's memory without bound, bypassing max_queued_messages.",
        "max_inflight_messages 65535",
        "# Largest MQTT packet accepted (default: no limit). Larger ones disconnect the client ('disconnected",
        "# due to oversize packet'). The bridge's own payload limit is lower, so a payload between the two",
        "# reaches the bridge and is dead-lettered with a reason instead of vanishing. MQTT 5 clients learn",
        "# the limit from CONNACK (Maximum Packet Size). A client's own Maximum Packet Size must not be",
        "# lower, or Mosquitto silently skips larger messages for it.",
        "max_packet_size 1048576",
        "# Send small packets (PUBACKs, notifications) at once instead of waiting for Nagle's algorithm.",
        "set_tcp_nodelay true",
        "",
        "# -- logging: to the log and to $SYS/broker/log/<E|W|N|I|M>/..., where the platform (the only",
        "# account allowed to read $SYS) follows connects, disconnects, subscribes and unsubscribes.",
        f"log_dest file {log_file}" if log_file else "log_dest stdout",
        "log_dest topic",
        "log_type error",
        "log_type warning",
        "# notice: connect and disconnect lines (with connection_messages true)",
        "log_type notice",
        "log_type information",
        "# subscribe/unsubscribe: $SYS/broker/log/M/subscribe and $SYS/broker/log/M/unsubscribe",
        "log_type subscribe",
        "log_type unsubscribe",
        "connection_messages true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S%z",
        "",
        "# -- listeners",
        f"listener {port} {host}",
        "protocol mqtt",
    ]
    if websocket_port is not None:
        address, domain = _websocket_bind(host)
        lines += [
            f"listener {websocket_port} {address}",
            "protocol websockets",
            "# without it libwebsockets listens on every interface, whatever the address above says",
            f"socket_domain {domain}",
        ]
    return "\n".join(lines) + "\n"


def render_deploy_mosquitto_files() -> dict[str, str]:
    """deploy/mosquitto/{mosquitto.conf,acl} for docker-compose (deploy/mosquitto/Dockerfile), from the same code.

    The password file is created when the container starts (deploy/mosquitto/entrypoint.sh) from
    CITYSTREAM_MQTT_PLATFORM_PASSWORD and CITYSTREAM_MQTT_SENSOR_PASSWORD.
    """
    conf = render_mosquitto_conf(
        host="0.0.0.0",
        port=1883,
        websocket_port=9001,
        persistence_location="/mosquitto/data/",
        password_file="/mosquitto/auth/passwd",
        acl_file="/mosquitto/config/acl",
        log_file=None,
        run_as="mosquitto",
        anonymous=True,
        header=(
            "Mosquitto for docker-compose.yml (the image deploy/mosquitto/Dockerfile builds, which has the\n"
            "plugin), rendered by citystream.embedded.render_deploy_mosquitto_files();\n"
            "tests/test_broker_config.py checks that this file is up to date. The password file is created at\n"
            "container start by entrypoint.sh. The ports are published on 127.0.0.1 only (see docker-compose.yml)."
        ),
        auth_plugin=DEPLOY_AUTH_PLUGIN_PATH,
    )
    return {"mosquitto.conf": conf, "acl": render_mosquitto_acl()}


def write_deploy_mosquitto_files(directory: Path = DEPLOY_MOSQUITTO_DIR) -> None:
    """Regenerate deploy/mosquitto/{mosquitto.conf,acl} after changing the rendering code."""
    for name, text in render_deploy_mosquitto_files().items():
        (directory / name).write_text(text)


class EmbeddedMosquitto(_Service):
    """A private Mosquitto broker in `data_dir`, with accounts and an ACL, on `host:port` (+ websockets).

    Listeners: MQTT on `host:port`, MQTT over WebSocket on `host:websocket_port` (when given); `citystream
    up` binds both to loopback unless --mqtt-host says otherwise, whatever --host is.

    Accounts (the ACL is `render_mosquitto_acl`, the same text as deploy/mosquitto/acl):
      - `citystream` (PLATFORM_MQTT_USER), the platform: readwrite `#`, read `$SYS/#`. Its password is
        generated once and kept in `platform-password`; connect with `platform_url`.
      - the sensor account (`sensor_username`, default `sensor`): write `v1.1/Observations` and
        `v1.1/+/Observations`, read `v1.1/#` and `citystream/errors/#`. Its password is the one given, or
        generated once and kept in `sensor-password`.
      - anonymous clients: read `anonymous_read` (default `v1.1/#`) and nothing else; "" refuses them.
    Only the platform account may connect with a client id starting with `bridge_client_id` (the bridge's,
    default `citystream-bridge`, whose workers add `-w1`...) or subscribe in the bridge's shared subscription
    group (`$share/citystream/...`): the citystream_auth plugin (AUTH_PLUGIN_SOURCE, compiled on first use and
    cached, see `auth_plugin_library`) refuses the CONNECT ("not authorised") or the SUBSCRIBE (SUBACK failure).
    Secrets are 0600 files owned by whoever runs citystream (the broker account cannot read them);
    `mosquitto.conf`, `mosquitto.passwd` (hashes) and `mosquitto.acl` are rewritten on every start, 0600,
    owned by the broker account. Changing a password: edit or delete its file (or the variable), restart.

    Layout of `data_dir`: `mosquitto.conf` (generated on every start), `mosquitto.passwd`, `mosquitto.acl`,
    `citystream_auth.so` (the plugin, copied in on every start), `platform-password`, `sensor-password`,
    `mosquitto.log`, `mosquitto.db` (persistence), `mosquitto.pid`, `lock`.

    The broker's log on topics (`log_dest topic`), readable by the platform account only. Observed with
    Mosquitto 2.0.11 (Debian 12). Each log line is one message, QoS 0, not retained; payload
    "<ts>: <text>", <ts> formatted by log_timestamp_format `%Y-%m-%dT%H:%M:%S%z` (broker local time, e.g.
    `2026-11-22T08:30:14+0000`); <client id> is the MQTT client id (`auto-XXXXXXXX-...` when the broker
    assigned one), which may itself contain spaces; <filter> is the rest of the line, verbatim (it may
    contain spaces, `$share/<group>/...`, `?$select=...`):

      $SYS/broker/log/M/subscribe    "<ts>: <client id> <qos> <filter>"
          one message per filter of a SUBSCRIBE; <qos> is the requested maximum QoS 0|1|2 only (MQTT 5
          options such as no-local are not shown). Logged for every filter, also those the ACL will never
          deliver anything on (read rules apply on delivery; the SUBACK grants the QoS).
      $SYS/broker/log/M/unsubscribe  "<ts>: <client id> <filter>"   one message per filter
      $SYS/broker/log/N   connect, TCP listener, two lines:
          "<ts>: New connection from <ip>:<port> on port <listener port>."
          "<ts>: New client connected from <ip>:<port> as <client id> (p<v>, c<0|1>, k<keepalive>[, u'<user>'])."
          websocket listener: only the second line. p2 = MQTT 3.1.1, p5 = MQTT 5; c1 = clean start / clean
          session, c0 = resume the persistent session; `, u'<user>'` only when a user name was given.
      $SYS/broker/log/N   disconnect, one of:
          "<ts>: Client <client id> disconnected."                        (client sent DISCONNECT)
          "<ts>: Client <client id> closed its connection."               (socket closed without DISCONNECT)
          "<ts>: Client <client id> has exceeded timeout, disconnecting." (keepalive expired)
          "<ts>: Client <client id> disconnected due to oversize packet." (> max_packet_size)
          "<ts>: Client <unknown> disconnected, not authorised."          (bad user name/password; no id)
      $SYS/broker/log/E   "<ts>: Client <client id> already connected, closing old connection."
          (session take-over: no disconnect line for the old connection; a "New client connected" follows)
    """

    name = "mosquitto"

    def __init__(
        self,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        websocket_port: int | None = None,
        *,
        sensor_username: str = DEFAULT_SENSOR_USER,
        sensor_password: str | None = None,
        anonymous_read: str = DEFAULT_ANONYMOUS_READ,
        bridge_client_id: str = identity.CLIENT_ID,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.host = host
        self.websocket_port = websocket_port
        self.sensor_username = sensor_username
        self.anonymous_read = anonymous_read
        if sensor_password is not None:
            _check_password(sensor_password, "CITYSTREAM_MQTT_SENSOR_PASSWORD")
        self._given_sensor_password = sensor_password
        render_mosquitto_acl(sensor_username, anonymous_read)  # validate now, before anything starts
        _check_client_id(bridge_client_id)
        self.bridge_client_id = bridge_client_id
        self.conf_path = self.data_dir / "mosquitto.conf"
        self.log_path = self.data_dir / "mosquitto.log"
        self.password_file = self.data_dir / "mosquitto.passwd"
        """Mosquitto's password file (hashes); rewritten on every start."""
        self.acl_path = self.data_dir / "mosquitto.acl"
        self.plugin_path = self.data_dir / "citystream_auth.so"
        """The compiled citystream_auth plugin the broker loads; copied from the cache on every start."""
        self.platform_password_file = self.data_dir / "platform-password"
        self.sensor_password_file = self.data_dir / "sensor-password"
        """Where a generated sensor password is kept (unused when a sensor_password is given)."""
        self._pid_file = self.data_dir / "mosquitto.pid"
        self._lock = _DirLock(self.data_dir / "lock")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._account = _Account.for_service("mosquitto")
        self._platform_password: str | None = None
        self._sensor_password: str | None = sensor_password

    # -- addresses and credentials

    @property
    def url(self) -> str:
        """mqtt://host:port, without credentials (what anonymous clients connect to)."""
        return f"mqtt://{_url_host(self.host)}:{self.port}"

    @property
    def websocket_url(self) -> str | None:
        return None if self.websocket_port is None else f"ws://{_url_host(self.host)}:{self.websocket_port}"

    @property
    def platform_username(self) -> str:
        return PLATFORM_MQTT_USER

    @property
    def platform_password(self) -> str:
        """A secret: never print it."""
        if self._platform_password is None:
            raise EmbeddedServiceError("EmbeddedMosquitto has no platform password before start()")
        return self._platform_password

    @property
    def platform_url(self) -> str:
        """mqtt://citystream:<password>@host:port, for the platform's own connections (a secret)."""
        password = quote(self.platform_password, safe="")
        return f"mqtt://{PLATFORM_MQTT_USER}:{password}@{_url_host(self.host)}:{self.port}"

    @property
    def sensor_password(self) -> str:
        if self._sensor_password is None:
            raise EmbeddedServiceError("EmbeddedMosquitto has no generated sensor password before start()")
        return self._sensor_password

    @property
    def sensor_password_generated(self) -> bool:
        """True when the sensor password is the generated one in `sensor_password_file`."""
        return self._given_sensor_password is None

    # -- start

    def start(self) -> None:
        if self.running:
            return
        binary = find_mosquitto()
        passwd_binary = find_mosquitto_passwd()
        plugin = auth_plugin_library(binary)  # before anything else: a missing compiler is reported first
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._account.check_reachable(self.data_dir)
        self._lock.acquire("Mosquitto")
        try:
            self._stop_orphan()
            ensure_port_free(self.host, self.port, "MQTT", "choose another with --mqtt-port (or CITYSTREAM_MQTT_PORT)")
            if self.websocket_port is not None:
                ensure_port_free(
                    self.host,
                    self.websocket_port,
                    "MQTT websocket",
                    "choose another with --mqtt-ws-port (or CITYSTREAM_MQTT_WS_PORT)",
                )
            self._platform_password = _read_or_create_secret(self.platform_password_file, "MQTT platform password")
            if self._given_sensor_password is None:
                self._sensor_password = _read_or_create_secret(self.sensor_password_file, "MQTT sensor password")
            self._write_password_file(passwd_binary)
            _private_file(
                self.acl_path, render_mosquitto_acl(self.sensor_username, self.anonymous_read).encode(), self._account
            )
            _private_file(self.plugin_path, plugin, self._account)  # the broker loads it as its own account
            self._write_config()
            # O_NOFOLLOW: as root, do not append to whatever a link planted by the broker account points to
            log_fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            self._log = os.fdopen(log_fd, "ab")  # kept open for the child's lifetime
            self._account.chown_tree(self.data_dir, keep=[self.platform_password_file, self.sensor_password_file])
            self._proc = subprocess.Popen(
                [str(binary), "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                preexec_fn=parent_death_signal(signal.SIGTERM),
                **self._account.popen_kwargs(),
            )
            _private_file(self._pid_file, f"{self._proc.pid}\n".encode())
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _stop_orphan(self) -> None:
        try:
            pid = int(self._pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if _proc_alive(pid) and str(self.conf_path) in _proc_cmdline(pid):
            print(f"citystream: stopping Mosquitto (pid {pid}) left running by an earlier run", flush=True)
            _terminate_foreign(pid, signal.SIGTERM, 10.0)
        with contextlib.suppress(FileNotFoundError):
            self._pid_file.unlink()

    def _write_password_file(self, passwd_binary: Path) -> None:
        """Hash both accounts into `password_file` with mosquitto_passwd.

        Each password reaches mosquitto_passwd on stdin (it reads the prompt's answer from there when stdin
        is no terminal), never in argv, where other local users could see it; `-U` on a plain file is no
        option either, as it cuts a password at its first ':'. mosquitto_passwd works in a private temporary
        directory, not in the data directory, which the broker account owns (as root we must not follow
        links it could plant there); the result replaces the old file atomically.
        """
        accounts = [(PLATFORM_MQTT_USER, self.platform_password), (self.sensor_username, self.sensor_password)]
        with tempfile.TemporaryDirectory(prefix="citystream-passwd-") as private:
            tmp = Path(private) / "passwd"
            for index, (user, password) in enumerate(accounts):
                argv = [str(passwd_binary), *(["-c"] if index == 0 else []), str(tmp), user]
                try:
                    result = subprocess.run(
                        argv, input=f"{password}\n{password}\n".encode(), capture_output=True, timeout=60, check=False
                    )
                except (OSError, subprocess.SubprocessError) as exc:
                    raise EmbeddedServiceError(f"could not run {passwd_binary}: {exc}") from exc
                if result.returncode != 0:
                    detail = (result.stderr or result.stdout).decode(errors="replace").strip()
                    raise EmbeddedServiceError(
                        f"mosquitto_passwd failed for account {user!r} (exit {result.returncode}): {detail}"
                    )
            hashed = tmp.read_bytes()
        _private_file(self.password_file, hashed, self._account)

    def _write_config(self) -> None:
        run_as = self._account.name or pwd.getpwuid(os.geteuid()).pw_name
        text = render_mosquitto_conf(
            host=self.host,
            port=self.port,
            websocket_port=self.websocket_port,
            persistence_location=f"{self.data_dir}/",
            password_file=str(self.password_file),
            acl_file=str(self.acl_path),
            log_file=str(self.log_path),
            run_as=run_as,
            anonymous=bool(self.anonymous_read),
            header="generated by citystream on every start; edits are overwritten",
            auth_plugin=str(self.plugin_path),
            bridge_client_id=self.bridge_client_id,
        )
        _private_file(self.conf_path, text.encode(), self._account)

    def _wait_ready(self, timeout: float = 20.0) -> None:
        ports = [self.port] if self.websocket_port is None else [self.port, self.websocket_port]

        def listens() -> bool:
            for port in ports:
                try:
                    with socket.create_connection((self.host, port), timeout=1):
                        pass
                except OSError:
                    return False
            return True

        where = " and ".join(f"{self.host}:{port}" for port in ports)
        self._wait_until(listens, f"listen on {where}", timeout, 0.05)

    def stop(self) -> None:
        """SIGTERM makes Mosquitto save its persistence file and exit."""
        if self._proc is not None:
            stop_child(self._proc, [(signal.SIGTERM, 15.0)])
            self._proc = None
            with contextlib.suppress(FileNotFoundError):
                self._pid_file.unlink()
        if self._log is not None:
            self._log.close()
            self._log = None
        self._lock.release()
