"""Paging: keyset continuations inside @iot.nextLink, and @iot.count that stays cheap on large sets."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from citystream.app import create_app
from citystream.embedded import find_free_port
from citystream.settings import Settings
from tests.sta_helpers import assert_error, create_datastream, create_observation


def _walk(first_url: str, params: dict[str, str]) -> tuple[list[int], list[str]]:
    """Follow @iot.nextLink from the first page; return the ids seen and the links followed."""
    ids: list[int] = []
    links: list[str] = []
    response = httpx.get(first_url, params=params)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        ids += [entity["@iot.id"] for entity in body["value"]]
        link = body.get("@iot.nextLink")
        if link is None:
            return ids, links
        links.append(link)
        response = httpx.get(link)


@pytest.fixture
def observations(sta: str) -> list[int]:
    datastream = create_datastream(sta)
    return [create_observation(sta, datastream, i % 7, f"2024-05-{1 + i % 3:02d}T00:00:{i:02d}Z") for i in range(23)]


@pytest.mark.parametrize("params", [
    {"$top": "4"},
    {"$top": "4", "$orderby": "phenomenonTime desc"},
    {"$top": "5", "$orderby": "phenomenonTime, id desc"},
    {"$top": "3", "$filter": "result gt 2", "$orderby": "phenomenonTime"},
])
def test_keyset_next_links_return_every_entity_once_in_order(sta: str, observations: list[int],
                                                            params: dict[str, str]) -> None:
    seen, links = _walk(f"{sta}/Observations", params)
    everything = httpx.get(f"{sta}/Observations", params={**params, "$top": "1000"}).json()["value"]
    assert seen == [o["@iot.id"] for o in everything]
    # a keyset $skiptoken gives the position; $skip counts what was delivered, as FROST's links do
    assert links and all("$skiptoken=" in link for link in links)
    assert [link.split("$skip=")[1].split("&")[0] for link in links] == [
        str(int(params["$top"]) * n) for n in range(1, len(links) + 1)]
    assert all(f"$top={params['$top']}" in link for link in links)


def test_orders_that_may_contain_nulls_page_by_skip(sta: str, observations: list[int]) -> None:
    seen, links = _walk(f"{sta}/Observations", {"$top": "6", "$orderby": "resultTime desc"})
    assert sorted(seen) == sorted(observations) and len(seen) == len(set(seen))
    assert links and all("$skip=" in link for link in links)


def test_tampered_skiptoken_is_400(sta: str, observations: list[int]) -> None:
    assert_error(httpx.get(f"{sta}/Observations", params={"$skiptoken": "garbage"}), 400, "$skiptoken")
    link = httpx.get(f"{sta}/Observations", params={"$top": "2"}).json()["@iot.nextLink"]
    token = link.split("$skiptoken=")[1]
    reordered = httpx.get(f"{sta}/Observations", params={"$orderby": "phenomenonTime", "$skiptoken": token})
    assert_error(reordered, 400, "$skiptoken")
    # beside a $skiptoken, $skip is only the count delivered: another value does not move the page
    moved = link.replace("$skip=2&", "$skip=3&")
    assert moved != link and httpx.get(moved).json()["value"] == httpx.get(link).json()["value"]


@pytest.fixture
def small_count_limit_app(database_url: str, sta: str) -> Iterator[str]:
    """The app with an exact-count limit of 5 rows, on the same (cleaned) database as `sta`."""
    port = find_free_port()
    settings = Settings(database_url=database_url, http_port=port, exact_count_limit=5)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, database_url), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/v1.1"
    server.should_exit = True
    thread.join(timeout=15)


def test_count_is_exact_up_to_the_limit_and_estimated_above(sta: str, small_count_limit_app: str) -> None:
    datastream = create_datastream(sta)
    for i in range(12):
        create_observation(sta, datastream, i, f"2024-05-01T00:00:{i:02d}Z")
    limited = small_count_limit_app

    def count(**params: Any) -> int:
        response = httpx.get(f"{limited}/Observations", params={"$count": "true", "$top": "1", **params})
        assert response.status_code == 200, response.text
        return int(response.json()["@iot.count"])

    assert count(**{"$filter": "result lt 4"}) == 4  # exact below the limit
    assert count() >= 6  # above the limit: an estimate, never less than what was counted
    assert httpx.get(f"{sta}/Observations", params={"$count": "true"}).json()["@iot.count"] == 12
