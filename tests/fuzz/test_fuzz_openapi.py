"""Fuzz tier, HTTP (issue 13): schemathesis, a client we did not write, against every OpenAPI document the
server publishes (`/v1.1/api`, generated from the entity model, and `/ogcapi/api`). The check is the one
the issue asks for: no request may get a 5xx, and the server process must survive the whole run.

The server is `citystream serve` in a process of its own on a private PostgreSQL cluster with the tests'
small city in it (the fuzzer creates, changes and deletes: it must not share the session database).
Bounded in time: CITYSTREAM_FUZZ_HTTP_EXAMPLES cases per operation and phase (default 5) and
CITYSTREAM_FUZZ_HTTP_SECONDS per document (default 150). The reports (JUnit, NDJSON) stay in pytest's temp
dir."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from citystream.embedded import EmbeddedPostgres, find_free_port
from sensorthings.schema.migrate import apply_migrations
from tests import fuzz_report
from tests.conftest import make_service_dir
from tests.ogc_city import build_city
from tests.sta_helpers import ADMIN_TOKEN

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
EXAMPLES = os.environ.get("CITYSTREAM_FUZZ_HTTP_EXAMPLES", "5")
SECONDS = os.environ.get("CITYSTREAM_FUZZ_HTTP_SECONDS", "150")
CONFIG = """\
# Real ids for a share of the path parameters, so that the fuzzer reaches entities and not only 404s.
[dictionaries.ids]
values = [1, 2, 3, 4, 5, 6]

[parameters]
"path.id" = { dictionary = "ids", probability = 0.7 }
"path.featureId" = { dictionary = "ids", probability = 0.7 }
"""


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`citystream serve` on a private cluster; the fixture fails if the process did not live to the end."""
    root = make_service_dir("cs-fuzz-")
    postgres = EmbeddedPostgres(root / "postgres")
    postgres.start()
    log_path = tmp_path_factory.mktemp("fuzz") / "serve.log"
    port = find_free_port()
    try:
        apply_migrations(postgres.dsn)
        env = {**os.environ, "CITYSTREAM_DATABASE_URL": postgres.dsn, "CITYSTREAM_HTTP_PORT": str(port),
               "CITYSTREAM_HOST": "127.0.0.1", "CITYSTREAM_ACCESS_LOG": "off", "CITYSTREAM_ADMIN_TOKEN": ADMIN_TOKEN}
        with open(log_path, "wb") as log:
            server = subprocess.Popen([str(Path(sys.executable).parent / "citystream"), "serve"], env=env,
                                      stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
            build_city(f"{base}/v1.1")
            yield base
            assert server.poll() is None, f"the server died during the fuzzing:\n{log_path.read_text()[-5000:]}"
            assert httpx.get(f"{base}/health", timeout=10).status_code == 200
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
                    pytest.fail(f"`citystream serve` did not stop within 30 s of SIGTERM:\n"
                                f"{log_path.read_text()[-5000:]}")
    finally:
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("document", ["/v1.1/api", "/ogcapi/api"])
def test_no_request_gets_a_server_error(fuzz_server: str, document: str, tmp_path: Path) -> None:
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    argv = [str(SCHEMATHESIS), "--config-file", str(tmp_path / "schemathesis.toml"), "--no-color", "run",
            fuzz_server + document, "--checks", "not_a_server_error", "--phases", "examples,coverage,fuzzing",
            "--max-examples", EXAMPLES, "--max-time", SECONDS, "--seed", "13", "--generation-database", "none",
            "--request-timeout", "60", "--report", "junit,ndjson",
            "--header", f"Authorization: Bearer {ADMIN_TOKEN}",  # writes are fuzzed too, not only their 401
            "--report-dir", str(tmp_path / "reports")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=int(SECONDS) * 3 + 300, check=False)
    output = result.stdout + result.stderr
    cases = re.search(r"(\d+) generated, (.*)", output)
    assert cases is not None, output[-5000:]
    failures = re.search(r"(\d+) found (\d+) unique failures", cases.group(2))
    fuzz_report.add("http " + document, cases=int(cases.group(1)),
                    server_errors=int(failures.group(2)) if failures else 0,
                    crashes=0 if httpx.get(f"{fuzz_server}/health", timeout=10).status_code == 200 else 1)
    assert result.returncode == 0 and failures is None, output[-20000:]
