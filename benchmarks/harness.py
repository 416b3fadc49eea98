"""Shared benchmark plumbing: the API as a subprocess, percentiles, machine info, the JSON report."""

from __future__ import annotations

import http.server
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from citystream.auth.credentials import create_key
from citystream.embedded import find_free_port
from sensorthings.model.access import ANONYMOUS, Principal, Role

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@contextmanager
def platform_process(args: list[str], env: dict[str, str], log_path: Path, ready_url: str | None = None
                     ) -> Iterator[subprocess.Popen[bytes]]:
    """`citystream ARGS` in its own process (so the client's GIL does not slow it), stopped with SIGTERM at
    the end; with `ready_url`, only once that URL answers 200."""
    citystream = Path(sys.executable).parent / "citystream"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([str(citystream), *args], env={**os.environ, **env}, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while ready_url is not None:
            if proc.poll() is not None:
                raise RuntimeError(f"citystream {args[0]} exited with {proc.returncode}; see {log_path}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"citystream {args[0]} did not become ready within 60 s; see {log_path}")
            time.sleep(0.2)
        yield proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it has not exited within 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def api_server(dsn: str, log_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """`citystream serve` against `dsn` (with `extra_env`: an OIDC issuer, say); yields the service URL."""
    port = find_free_port()
    env = {"CITYSTREAM_DATABASE_URL": dsn, "CITYSTREAM_HOST": "127.0.0.1", **(extra_env or {})}
    with platform_process(["serve", "--http-port", str(port)], env, log_path, f"http://127.0.0.1:{port}/health"):
        yield f"http://127.0.0.1:{port}/v1.1"


CREDENTIALS = ("none", "key", "jwt")
"""How a read benchmark's client authenticates (--credential): anonymously, with an API key, with a JWT."""



READERS = {"none": ANONYMOUS, "key": Principal("key", "benchmark reader", frozenset({Role.READ})),
           "jwt": Principal("oidc", "benchmark reader", frozenset({Role.READ}))}
"""Whom the server sees for each of CREDENTIALS (reader_credential): SQL-only timings run the statements it
gets (restricted data hidden for the anonymous reader: sensorthings.query.visibility)."""

@contextmanager
def reader_credential(kind: str, dsn: str) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """(client headers, server environment) for reading as `kind`: nothing; a new API key with the read
    role; or an OIDC access token signed by a key pair made here, its JWKS served on loopback for the
    server (the issuer a city's Keycloak would be)."""
    if kind == "none":
        yield {}, {}
        return
    if kind == "key":
        with psycopg.connect(dsn, autocommit=True) as conn:
            token = create_key(conn, "benchmark reader", frozenset({Role.READ})).token
        yield {"Authorization": f"Bearer {token}"}, {}
        return
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": "bench",
           "use": "sig", "alg": "RS256"}
    body = json.dumps({"keys": [jwk]}).encode()

    class Jwks(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server interface
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    issuer = f"http://127.0.0.1:{server.server_port}/realms/bench"
    claims = {"iss": issuer, "aud": "citystream", "sub": "bench", "exp": int(time.time()) + 7200,
              "realm_access": {"roles": ["read"]}}
    token = jwt.encode(claims, private, algorithm="RS256", headers={"kid": "bench"})
    try:
        yield {"Authorization": f"Bearer {token}"}, {
            "CITYSTREAM_OIDC_JWKS_URL": f"http://127.0.0.1:{server.server_port}/jwks",
            "CITYSTREAM_OIDC_ISSUER": issuer, "CITYSTREAM_OIDC_AUDIENCE": "citystream"}
    finally:
        server.shutdown()


def write_headers(dsn: str) -> dict[str, str]:
    """Headers of a new API key that may write (the platform refuses anonymous writes): the key path a
    sensor operator's requests take."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        token = create_key(conn, "benchmark", frozenset({Role.CREATE, Role.READ})).token
    return {"Authorization": f"Bearer {token}"}


def machine_info(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    def first(sql: str) -> Any:
        row = conn.execute(sql).fetchone()
        return None if row is None else row[0]

    cpu = ""
    meminfo = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
        meminfo = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory": meminfo,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": first("SELECT version()"),
        "postgis": first("SELECT postgis_lib_version()"),
        "timescaledb": first("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"),
    }


def write_report(name: str, report: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path
