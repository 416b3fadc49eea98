"""@iot.nextLink as FROST writes it (issue 15.5): `$skip` = what has been delivered so far, `$top` only where
the request (or the `$expand` item) gave one, plus the keyset `$skiptoken` where the order allows it.
Walkers such as Masterportal stop at a link whose `$top` is not above its `$skip`, so both matter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from citystream.embedded import find_free_port
from citystream.settings import Settings
from tests.conftest import running_app
from tests.sta_helpers import (
    HTTP,
    create,
    create_datastream_with_observations,
    create_thing_with_location,
    datastream_body,
    ids,
    observed_property_body,
    read,
    sensor_body,
)


def query_of(link: str) -> dict[str, str]:
    """The query options of a link, one value each."""
    return {key: value for key, (value,) in parse_qs(urlsplit(link).query).items()}


def paging_of(link: str) -> tuple[str | None, str | None, bool]:
    """($top, $skip, has a $skiptoken) of a link."""
    query = query_of(link)
    return query.get("$top"), query.get("$skip"), "$skiptoken" in query


def walk(url: str, params: dict[str, str] | None = None, key: str = "@iot.id"
         ) -> tuple[list[Any], list[str], list[dict[str, Any]]]:
    """Every page from `url` by @iot.nextLink: the `key` of each entity, the links followed, the bodies."""
    response = HTTP.get(url, params=params)
    seen: list[Any] = []
    links: list[str] = []
    bodies: list[dict[str, Any]] = []
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        bodies.append(body)
        seen += [entity[key] for entity in body["value"]]
        link = body.get("@iot.nextLink")
        if link is None:
            return seen, links, bodies
        assert len(links) < 200, "the nextLinks never end"
        links.append(link)
        response = HTTP.get(link)


def newest_first(sta: str, datastream: int) -> list[int]:
    return ids(sta, f"Datastreams({datastream})/Observations", **{"$orderby": "phenomenonTime desc", "$top": "1000"})


# ------------------------------------------------------------------ root and navigation collections


def test_top_1_fallback_link_has_top_1_and_skip_1(sta: str) -> None:
    """(a) Masterportal's latest-value fallback: FROST's link is `$top=1&$skip=1`, so the walker stops."""
    datastream = create_datastream_with_observations(sta, 5)
    body = read(sta, f"Datastreams({datastream})/Observations", **{"$orderby": "phenomenonTime desc", "$top": "1"})
    link = body["@iot.nextLink"]
    assert paging_of(link) == ("1", "1", True), link
    assert query_of(link)["$orderby"] == "phenomenonTime desc"
    second = read(sta, f"Datastreams({datastream})/Observations?{urlsplit(link).query}")
    assert [o["@iot.id"] for o in second["value"]] == newest_first(sta, datastream)[1:2]
    assert paging_of(second["@iot.nextLink"]) == ("1", "2", True)


def test_default_top_link_has_no_top_and_skip_counts_the_pages(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 250)
    seen, links, bodies = walk(f"{sta}/Datastreams({datastream})/Observations")
    assert [len(b["value"]) for b in bodies] == [100, 100, 50]
    assert [paging_of(link) for link in links] == [(None, "100", True), (None, "200", True)]
    assert sorted(seen) == sorted(newest_first(sta, datastream)) and len(set(seen)) == 250


def test_explicit_top_is_carried_with_the_delivered_count(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 100)
    seen, links, _ = walk(f"{sta}/Datastreams({datastream})/Observations", {"$top": "40", "$count": "true"})
    assert [paging_of(link) for link in links] == [("40", "40", True), ("40", "80", True)]
    assert all(query_of(link)["$count"] == "true" for link in links)
    assert seen == ids(sta, f"Datastreams({datastream})/Observations", **{"$top": "1000"})


def test_count_is_the_same_on_every_page(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 25)
    _, _, bodies = walk(f"{sta}/Datastreams({datastream})/Observations", {"$top": "10", "$count": "true"})
    assert [b["@iot.count"] for b in bodies] == [25, 25, 25]


def test_request_skip_is_added_to_the_delivered_count(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 30)
    every = ids(sta, f"Datastreams({datastream})/Observations", **{"$top": "1000"})
    seen, links, _ = walk(f"{sta}/Datastreams({datastream})/Observations", {"$skip": "5", "$top": "10"})
    assert [paging_of(link) for link in links] == [("10", "15", True), ("10", "25", True)]
    assert seen == every[5:]


def test_skip_without_a_token_is_an_offset_and_beside_a_token_only_a_count(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 30)
    path = f"{sta}/Datastreams({datastream})/Observations"
    every = ids(sta, f"Datastreams({datastream})/Observations", **{"$top": "1000"})
    assert [o["@iot.id"] for o in HTTP.get(path, params={"$skip": "15", "$top": "10"}).json()["value"]] == every[15:25]
    link = HTTP.get(path, params={"$top": "10"}).json()["@iot.nextLink"]
    token = query_of(link)["$skiptoken"]
    for skip in ("0", "10", "27"):  # the token gives the position; $skip is not applied again
        page = HTTP.get(path, params={"$top": "10", "$skip": skip, "$skiptoken": token}).json()
        assert [o["@iot.id"] for o in page["value"]] == every[10:20], skip
        assert paging_of(page["@iot.nextLink"])[:2] == ("10", str(int(skip) + 10))
    alone = HTTP.get(path, params={"$top": "10", "$skiptoken": token}).json()  # no $skip: none delivered before
    assert [o["@iot.id"] for o in alone["value"]] == every[10:20]
    assert paging_of(alone["@iot.nextLink"])[:2] == ("10", "10")


def test_orderby_desc_with_ties_walks_every_entity_once_in_order(sta: str) -> None:
    thing = create_thing_with_location(sta)
    observations = [{"result": i, "phenomenonTime": f"2024-05-01T00:0{i % 3}:00Z"} for i in range(23)]
    datastream = create(sta, f"Things({thing})/Datastreams", datastream_body(
        Sensor=sensor_body(), ObservedProperty=observed_property_body(), Observations=observations))
    path = f"{sta}/Datastreams({datastream})/Observations"
    params = {"$orderby": "phenomenonTime desc", "$top": "4"}
    seen, links, _ = walk(path, params)
    assert seen == ids(sta, f"Datastreams({datastream})/Observations", **{**params, "$top": "100"})
    assert len(set(seen)) == 23
    assert [paging_of(link) for link in links] == [("4", str(4 * n), True) for n in range(1, 6)]


def test_an_order_without_keyset_continues_by_skip_alone(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 12)
    seen, links, _ = walk(f"{sta}/Datastreams({datastream})/Observations", {"$orderby": "resultTime desc", "$top": "5"})
    assert sorted(seen) == sorted(newest_first(sta, datastream)) and len(set(seen)) == 12
    assert [paging_of(link) for link in links] == [("5", "5", False), ("5", "10", False)]


def test_root_collection_links(sta: str) -> None:
    for n in range(7):
        create_thing_with_location(sta, f"thing {n}")
    seen, links, _ = walk(f"{sta}/Things", {"$top": "3", "$orderby": "name desc"})
    assert seen == ids(sta, "Things", **{"$orderby": "name desc"})
    assert [paging_of(link) for link in links] == [("3", "3", True), ("3", "6", True)]


def test_ref_collection_links(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 130)
    seen, links, _ = walk(f"{sta}/Datastreams({datastream})/Observations/$ref", key="@iot.selfLink")
    assert [paging_of(link) for link in links] == [(None, "100", True)]
    assert all(urlsplit(link).path.endswith("/Observations/$ref") for link in links)
    assert sorted(seen) == sorted(f"{sta}/Observations({o})" for o in newest_first(sta, datastream))


@pytest.mark.parametrize(("params", "expected"), [
    ({"$top": "30"}, [("30", "30", True), ("30", "60", True)]),
    ({}, []),
    ({"$orderby": "phenomenonTime desc", "$top": "1"}, [("1", "1", True)]),
])
def test_data_array_links(sta: str, params: dict[str, str], expected: list[tuple[str | None, str, bool]]) -> None:
    datastream = create_datastream_with_observations(sta, 70)
    url = f"{sta}/Datastreams({datastream})/Observations"
    rows: list[int] = []
    links: list[str] = []
    response = HTTP.get(url, params={"$resultFormat": "dataArray", **params})
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        rows += [row[0] for group in body["value"] for row in group["dataArray"]]
        if "@iot.nextLink" not in body or len(links) == len(expected):
            break
        links.append(body["@iot.nextLink"])
        assert query_of(links[-1])["$resultFormat"] == "dataArray"
        response = HTTP.get(links[-1])
    assert [paging_of(link) for link in links] == expected
    everything = ids(sta, f"Datastreams({datastream})/Observations", **{**params, "$top": "1000"})
    assert rows == everything[:len(rows)] and (len(rows) == 70 or params.get("$top") == "1")


# ------------------------------------------------------------------ $expand


def test_nested_link_without_top_has_skip_only(sta: str) -> None:
    """(b) 250 Observations expanded by default: the nested link is `$skip=100` without a `$top`."""
    datastream = create_datastream_with_observations(sta, 250)
    body = read(sta, f"Datastreams({datastream})", **{"$expand": "Observations"})
    assert len(body["Observations"]) == 100
    link = body["Observations@iot.nextLink"]
    assert urlsplit(link).path.endswith(f"/Datastreams({datastream})/Observations")
    assert paging_of(link) == (None, "100", False), link
    rest, links, _ = walk(link)
    assert [paging_of(following) for following in links] == [(None, "200", True)]
    got = [o["@iot.id"] for o in body["Observations"]] + rest
    assert sorted(got) == sorted(newest_first(sta, datastream)) and len(set(got)) == 250


def test_nested_link_with_top_and_skip(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 9)
    body = read(sta, f"Datastreams({datastream})", **{"$expand": (
        "Observations($orderby=phenomenonTime desc;$top=2;$skip=1;$select=result)")})
    link = body["Observations@iot.nextLink"]
    assert paging_of(link) == ("2", "3", False), link
    assert query_of(link)["$select"] == "result" and query_of(link)["$orderby"] == "phenomenonTime desc"
    seen, links, _ = walk(link, key="result")
    assert [r["result"] for r in body["Observations"]] + seen == [7, 6, 5, 4, 3, 2, 1, 0]
    assert [paging_of(following) for following in links] == [("2", "5", True), ("2", "7", True)]


def test_nested_links_at_depth_two(sta: str) -> None:
    thing = create_thing_with_location(sta)
    streams = [create_datastream_with_observations(sta, n, thing) for n in (3, 120)]
    body = read(sta, f"Things({thing})", **{"$expand": (
        "Datastreams($top=1;$orderby=id;$expand=Observations($orderby=phenomenonTime desc;$top=2))")})
    (first,) = body["Datastreams"]
    assert paging_of(body["Datastreams@iot.nextLink"]) == ("1", "1", False)
    link = first["Observations@iot.nextLink"]
    assert urlsplit(link).path.endswith(f"/Datastreams({streams[0]})/Observations")
    assert paging_of(link) == ("2", "2", False), link
    # without $top at either level: no $top in the links, $skip = the default page
    body = read(sta, f"Things({thing})", **{"$expand": "Datastreams($orderby=id;$expand=Observations)"})
    assert "Datastreams@iot.nextLink" not in body
    small, big = body["Datastreams"]
    assert "Observations@iot.nextLink" not in small and len(small["Observations"]) == 3
    link = big["Observations@iot.nextLink"]
    assert urlsplit(link).path.endswith(f"/Datastreams({streams[1]})/Observations")
    assert paging_of(link) == (None, "100", False), link
    rest, _, _ = walk(link)
    got = [o["@iot.id"] for o in big["Observations"]] + rest
    assert sorted(got) == sorted(newest_first(sta, streams[1]))


# ------------------------------------------------------------------ configured page sizes


@pytest.fixture
def small_pages(database_url: str, sta: str) -> Iterator[str]:
    """The app with CITYSTREAM default_top 7 and max_top 20, on the same (cleaned) database as `sta`."""
    settings = Settings(database_url=database_url, host="127.0.0.1", http_port=find_free_port(), default_top=7,
                        max_top=20)
    with running_app(settings, database_url) as url:
        yield f"{url}/v1.1"


def test_configured_default_top_and_clamped_max_top(sta: str, small_pages: str) -> None:
    datastream = create_datastream_with_observations(sta, 45)
    url = f"{small_pages}/Datastreams({datastream})/Observations"
    seen, links, bodies = walk(url)
    assert [len(b["value"]) for b in bodies] == [7] * 6 + [3]
    assert [paging_of(link)[:2] for link in links] == [(None, str(7 * n)) for n in range(1, 7)]
    assert len(set(seen)) == 45
    # above the maximum: a page of the maximum, and the link carries the clamped $top (as FROST's does)
    seen, links, bodies = walk(url, {"$top": "500"})
    assert [len(b["value"]) for b in bodies] == [20, 20, 5]
    assert [paging_of(link) for link in links] == [("20", "20", True), ("20", "40", True)]
    body = httpx.get(f"{small_pages}/Datastreams({datastream})", params={"$expand": "Observations($top=500)"}).json()
    assert len(body["Observations"]) == 20
    assert paging_of(body["Observations@iot.nextLink"]) == ("20", "20", False)
    body = httpx.get(f"{small_pages}/Datastreams({datastream})", params={"$expand": "Observations"}).json()
    assert len(body["Observations"]) == 7
    assert paging_of(body["Observations@iot.nextLink"]) == (None, "7", False)
