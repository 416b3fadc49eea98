"""`EmbeddedMosquitto`: a private Mosquitto broker with its accounts and CityStream's plugin in a data directory."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import IO
from urllib.parse import quote

from citystream.embedded.mosquitto_config import (
    DEFAULT_ANONYMOUS_READ,
    DEFAULT_SENSOR_USER,
    PLATFORM_MQTT_USER,
    _check_client_id,
    _check_password,
    auth_plugin_library,
    check_anonymous_read,
    check_sensor_username,
    render_mosquitto_conf,
)
from citystream.embedded.processes import (
    EmbeddedServiceError,
    _Account,
    _DirLock,
    _private_file,
    _proc_alive,
    _proc_cmdline,
    _read_or_create_secret,
    _Service,
    _terminate_foreign,
    _url_host,
    ensure_port_free,
    parent_death_signal,
    stop_child,
)
from mqtt_bridge import identity


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


class EmbeddedMosquitto(_Service):
    """A private Mosquitto broker in `data_dir`, with CityStream's plugin, on `host:port` (+ websockets).

    Listeners: MQTT on `host:port`, MQTT over WebSocket on `host:websocket_port` (when given); `citystream
    up` binds both to loopback unless --mqtt-host says otherwise, whatever --host is.

    Who may do what, the citystream_auth plugin decides (AUTH_PLUGIN_SOURCE, compiled on first use and cached,
    see `auth_plugin_library`; docs/mqtt.md):
      - `citystream` (PLATFORM_MQTT_USER), the platform: everything. Its password is generated once and kept
        in `platform-password`; connect with `platform_url`.
      - the shared device account (`sensor_username`, default `sensor`): creates Observations anywhere, reads
        public data. Its password is the one given, or generated once and kept in `sensor-password`.
      - API keys, users and OIDC tokens, as over HTTP: the plugin asks the platform at `decision_url`.
      - anonymous clients: read public data on `anonymous_read` (default `v1.0/# v1.1/#`); "" refuses them.
    Only the platform account may connect with a client id starting with `bridge_client_id` or subscribe in
    the bridge's shared subscription group (`$share/citystream/...`).
    Secrets are 0600 files owned by whoever runs citystream; `mosquitto.conf`, `mosquitto.passwd` (hashes)
    and `decision-secret` (the platform password, for the plugin) are rewritten on every start, 0600, owned by
    the broker account. Changing a password: edit or delete its file (or the variable), restart.

    Layout of `data_dir`: `mosquitto.conf` (generated on every start), `mosquitto.passwd`, `decision-secret`,
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
          options such as no-local are not shown). Logged for every filter, also those the plugin will never
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
        decision_url: str | None = None,
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
        check_sensor_username(sensor_username)  # validate now, before anything starts
        check_anonymous_read(anonymous_read)
        _check_client_id(bridge_client_id)
        self.decision_url = decision_url
        """Where the plugin asks the platform about logins and publishes (the API's /internal/mqtt); None:
        only the platform, the sensor account and anonymous clients can connect."""
        self.bridge_client_id = bridge_client_id
        self.conf_path = self.data_dir / "mosquitto.conf"
        self.log_path = self.data_dir / "mosquitto.log"
        self.password_file = self.data_dir / "mosquitto.passwd"
        """Mosquitto's password file (hashes); rewritten on every start."""
        self.decision_secret_path = self.data_dir / "decision-secret"
        """The platform password again, readable by the broker account: the plugin's secret for the platform."""
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
            _private_file(self.decision_secret_path, f"{self.platform_password}\n".encode(), self._account)
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
            log_file=str(self.log_path),
            run_as=run_as,
            header="generated by citystream on every start; edits are overwritten",
            auth_plugin=str(self.plugin_path),
            bridge_client_id=self.bridge_client_id,
            sensor_username=self.sensor_username,
            anonymous_read=self.anonymous_read,
            decision_url=self.decision_url,
            decision_secret_file=str(self.decision_secret_path),
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
