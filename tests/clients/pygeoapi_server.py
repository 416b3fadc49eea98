"""pygeoapi (from PyPI) as its own server with its SensorThings provider over a CityStream STA root: the
configuration (pygeoapi's default provider settings plus what a collection strictly needs, see
test_pygeoapi's docstring) and a client for its OGC API – Features answers. Used by test_pygeoapi (a
synthetic city) and test_demo_city (`citystream up --demo`)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from citystream.embedded import find_free_port

COLLECTIONS = ("Things", "Datastreams", "Observations", "Locations", "FeaturesOfInterest", "ObservedProperties")
STRICTLY_NEEDED = {
    "Locations": {"expand": "Things"},
    "FeaturesOfInterest": {"expand": "Observations($select=@iot.id)"},
    "Observations": {"time_field": "phenomenonTime"},
}
HAMBURG = [9.7, 53.3, 10.4, 53.8]
MAX_ITEMS = 1000


def pygeoapi_config(port: int, sta: str) -> dict[str, Any]:
    """pygeoapi's configuration: one collection per entity set of COLLECTIONS, default provider settings."""
    resources = {}
    for entity in COLLECTIONS:
        provider = {"type": "feature", "name": "SensorThings", "data": sta, "entity": entity,
                    **STRICTLY_NEEDED.get(entity, {})}
        resources[entity] = {"type": "collection", "title": entity, "description": f"CityStream's {entity}",
                             "keywords": [entity], "extents": {"spatial": {"bbox": HAMBURG}},
                             "providers": [provider]}
    return {
        "server": {"bind": {"host": "127.0.0.1", "port": port}, "url": f"http://127.0.0.1:{port}",
                   "mimetype": "application/json; charset=UTF-8", "encoding": "utf-8", "languages": ["en-US"],
                   "pretty_print": False, "limits": {"default_items": 10, "max_items": MAX_ITEMS},
                   "map": {"url": "https://tile.openstreetmap.org/{z}/{x}/{y}.png", "attribution": "OSM"}},
        "logging": {"level": "WARNING"},
        "metadata": {  # pygeoapi reads every one of these when it writes the OpenAPI document and pages
            "identification": {"title": "CityStream through pygeoapi", "description": "test",
                               "keywords": ["sensorthings"], "keywords_type": "theme",
                               "terms_of_service": "https://example.org/terms", "url": "https://example.org"},
            "license": {"name": "CC-BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
            "provider": {"name": "CityStream", "url": "https://example.org"},
            "contact": {key: "test" for key in ("name", "position", "address", "city", "stateorprovince",
                                                 "postalcode", "country", "phone", "fax", "email", "url", "hours",
                                                 "instructions", "role")},
        },
        "resources": resources,
    }


class Pygeoapi:
    """A running pygeoapi server: its URL, its log, and GETs that fail with both in the message."""

    def __init__(self, url: str, log: Path, openapi_log: str, page: int) -> None:
        self.url = url
        self.page = page
        self.log = log
        self.openapi_log = openapi_log
        self.http = httpx.Client(timeout=60)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def get(self, path: str, status: int = 200, **params: Any) -> Any:
        # httpx drops the query of a URL given with params: a link's own query goes without them
        response = self.http.get(f"{self.url}/{path}", params={"f": "json", **params} if "?" not in path else None)
        assert response.status_code == status, (
            f"pygeoapi GET {response.url} -> {response.status_code} {response.text[:1000]}\n{self.log_tail()}")
        return response.json()

    def items(self, collection: str, **params: Any) -> list[dict[str, Any]]:
        return self.get(f"collections/{collection}/items", **params)["features"]

    def all_items(self, collection: str, **params: Any) -> list[dict[str, Any]]:
        """Every item, page by page along pygeoapi's `next` links (`limit` = self.page)."""
        page = self.page
        body = self.get(f"collections/{collection}/items", limit=page, **params)
        features = list(body["features"])
        while nexts := [link["href"] for link in body["links"] if link["rel"] == "next"]:
            assert len(body["features"]) == page, nexts
            body = self.get(nexts[0].removeprefix(f"{self.url}/") + "&f=json")
            features.extend(body["features"])
        return features


def pygeoapi_command() -> list[str]:
    script = Path(sys.executable).with_name("pygeoapi")
    return [str(script)] if script.exists() else [shutil.which("pygeoapi") or "pygeoapi"]


@contextmanager
def running_pygeoapi(sta: str, root: Path, page: int = 50) -> Iterator[Pygeoapi]:
    """pygeoapi over the STA service root `sta`, as its own Flask server on a random port, configured in
    `root`. Its provider reads the fields from STA when the OpenAPI document is generated, so the data must
    exist first. Without `--no-fail-on-invalid-collection` a failing collection stops the generation; with it
    pygeoapi drops the /items paths (which test_pygeoapi checks). `page`: the `limit` of `all_items`."""
    assert importlib.util.find_spec("pygeoapi"), "pygeoapi is in the `test` extras: pip install -e '.[test]'"
    port = find_free_port()
    config, openapi, log = root / "pygeoapi-config.yml", root / "pygeoapi-openapi.yml", root / "pygeoapi.log"
    config.write_text(yaml.safe_dump(pygeoapi_config(port, sta), sort_keys=False))
    env = {**os.environ, "PYGEOAPI_CONFIG": str(config), "PYGEOAPI_OPENAPI": str(openapi)}
    generated = subprocess.run([*pygeoapi_command(), "openapi", "generate", str(config), "--output-file",
                                str(openapi), "--no-fail-on-invalid-collection"],
                               env=env, capture_output=True, text=True, timeout=120)
    assert generated.returncode == 0, generated.stderr
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "pygeoapi.flask_app", "run",
                                    "--host", "127.0.0.1", "--port", str(port), "--no-reload", "--no-debugger"],
                                   env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    server = Pygeoapi(f"http://127.0.0.1:{port}", log, generated.stderr, page)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"pygeoapi exited {process.returncode}:\n{server.log_tail()}"
            try:
                if httpx.get(f"{server.url}/?f=json", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"pygeoapi did not start:\n{server.log_tail()}"
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def sta_all(sta: str, entity: str, **params: Any) -> list[dict[str, Any]]:
    """Every entity of a set in STA's default order (by id), following nextLinks; read anonymously, as
    pygeoapi reads."""
    response = httpx.get(f"{sta}/{entity}", params=params or None, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    out = list(body["value"])
    while "@iot.nextLink" in body:
        response = httpx.get(body["@iot.nextLink"], timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        out.extend(body["value"])
    return out
