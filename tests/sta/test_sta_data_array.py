"""GET …/Observations?$resultFormat=dataArray (STA 1.1 §14.3; issue 6, part 1, the read half)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sta_helpers import (
    HTTP,
    assert_error,
    create_datastream,
    create_observation,
    create_thing_with_location,
    get,
    read,
)


def data_array(sta: str, path: str, **params: Any) -> dict[str, Any]:
    return read(sta, path, **{"$resultFormat": "dataArray", **params})


@pytest.fixture
def two_datastreams(sta: str) -> tuple[int, int]:
    thing = create_thing_with_location(sta)
    first, second = create_datastream(sta, thing, "first"), create_datastream(sta, thing, "second")
    for minute in range(3):
        create_observation(sta, first, minute * 1.5, f"2024-05-01T00:0{minute}:00Z")
        create_observation(sta, second, f"text {minute}", f"2024-05-01T00:0{minute}:30Z",
                           resultTime=f"2024-05-01T01:0{minute}:00Z")
    return first, second


def test_groups_per_datastream_with_the_default_components(sta: str, two_datastreams: tuple[int, int]) -> None:
    first, second = two_datastreams
    body = data_array(sta, "Observations", **{"$orderby": "phenomenonTime"})
    assert [group["Datastream@iot.navigationLink"] for group in body["value"]] == [
        f"{sta}/Datastreams({first})", f"{sta}/Datastreams({second})"]
    group = body["value"][0]
    assert group["components"] == ["id", "phenomenonTime", "resultTime", "result"]
    assert group["dataArray@iot.count"] == 3
    plain = read(sta, f"Datastreams({first})/Observations", **{"$orderby": "phenomenonTime"})["value"]
    assert group["dataArray"] == [[o["@iot.id"], o["phenomenonTime"], o.get("resultTime"), o["result"]]
                                  for o in plain]  # an absent resultTime (left out of the JSON) is a null here
    assert body["value"][1]["dataArray"][2][2:] == ["2024-05-01T01:02:00Z", "text 2"]


def test_select_chooses_and_orders_the_components(sta: str, two_datastreams: tuple[int, int]) -> None:
    first, _ = two_datastreams
    body = data_array(sta, f"Datastreams({first})/Observations",
                      **{"$select": "result,phenomenonTime", "$orderby": "phenomenonTime desc"})
    (group,) = body["value"]
    assert group["components"] == ["result", "phenomenonTime"]
    assert group["dataArray"] == [[3.0, "2024-05-01T00:02:00Z"], [1.5, "2024-05-01T00:01:00Z"],
                                  [0, "2024-05-01T00:00:00Z"]]


def test_filter_top_count_and_next_link(sta: str, two_datastreams: tuple[int, int]) -> None:
    first, second = two_datastreams
    body = data_array(sta, "Observations", **{"$filter": "phenomenonTime ge 2024-05-01T00:01:00Z",
                                              "$orderby": "phenomenonTime", "$top": "3", "$count": "true"})
    assert body["@iot.count"] == 4
    assert [g["dataArray@iot.count"] for g in body["value"]] == [2, 1]
    following = HTTP.get(body["@iot.nextLink"]).json()
    assert "@iot.nextLink" not in following
    (rest,) = following["value"]
    assert rest["Datastream@iot.navigationLink"].endswith(f"/Datastreams({second})")
    assert rest["dataArray"][0][1] == "2024-05-01T00:02:30Z"
    assert len({first, second}) == 2


def test_an_empty_result_is_an_empty_value(sta: str, two_datastreams: tuple[int, int]) -> None:
    body = data_array(sta, "Observations", **{"$filter": "result eq 99"})
    assert body["value"] == []


@pytest.mark.parametrize(("path", "params", "fragment"), [
    ("Things", {}, "applies to Observations"),
    ("Observations", {"$expand": "Datastream"}, "$expand"),
    ("Observations", {"$select": "Datastream"}, "cannot be a Data Array component"),
    ("Observations(1)", {}, "applies to collections"),
    ("Observations", {"$resultFormat": "XML"}, "not supported"),
    ("Observations", {"$resultFormat": "dataarray"}, "supported: dataArray"),
])
def test_what_a_data_array_cannot_be_is_a_400(sta: str, path: str, params: dict[str, str], fragment: str) -> None:
    assert_error(get(sta, path, params={"$resultFormat": "dataArray", **params}), 400, fragment)
