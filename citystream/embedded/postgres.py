"""`EmbeddedPostgres`: a private PostgreSQL cluster (with PostGIS) in a data directory, and finding its binaries."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Collection
from pathlib import Path
from typing import IO
from urllib.parse import quote

from citystream.embedded.processes import (
    EmbeddedServiceError,
    _Account,
    _DirLock,
    _log_tail,
    _proc_alive,
    _proc_cmdline,
    _Service,
    _terminate_foreign,
    _url_host,
    _write_secret,
    ensure_port_free,
    find_free_port,
    parent_death_signal,
    port_is_free,
    stop_child,
)

MIN_PG_MAJOR = 15


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

    def running_dsn(self) -> str | None:
        """The DSN of this data directory's cluster while another process (`citystream up`) runs it, else
        None: for commands such as `citystream keys` that work on the platform's database while it runs."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
            self._port = int(self._port_file.read_text().strip())
            self._password = self.password_file.read_text().strip() or None
        except (OSError, ValueError, IndexError):
            return None
        return self.dsn if _proc_alive(pid) else None

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
