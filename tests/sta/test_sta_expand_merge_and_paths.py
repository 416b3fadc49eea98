"""Two client-compatibility fixes (issue 15, points 4 and 8), over real HTTP against the running app.

(4) The same navigation property named twice in `$expand` is merged, as FROST does, so that pygeoapi's
default request for its Datastreams collection is served; only the same option with two different values is
a 400. The nextLink of a merged expanded collection carries the merged options.
(8) An unknown property or navigation property in a resource path is a 404, like an unknown entity set
(OData 4.01 §11.2.6, FROST); other malformed paths stay 400.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.sta_helpers import (
    HTTP,
    assert_error,
    create_datastream_with_observations,
    create_thing_with_location,
    get,
    ids,
    read,
)

PYGEOAPI_DATASTREAMS_EXPAND = (
    "Thing/Locations,Sensor,ObservedProperty,Observations($select=@iot.id;$orderby=phenomenonTime desc),"
    "Observations/FeatureOfInterest($select=feature)")


def _datastreams(sta: str, n_observations: int = 3, streams: int = 2) -> list[int]:
    thing = create_thing_with_location(sta)
    return [create_datastream_with_observations(sta, n_observations, thing_id=thing, day=f"2024-05-0{i + 1}")
            for i in range(streams)]


def _newest_first(sta: str, datastream: int) -> list[int]:
    return ids(sta, f"Datastreams({datastream})/Observations", **{"$orderby": "phenomenonTime desc"})


# ============================================================================ (4) repeated $expand merged


def test_pygeoapi_datastreams_request_is_served_merged(sta: str) -> None:
    streams = _datastreams(sta)
    body = read(sta, "Datastreams", **{"$expand": PYGEOAPI_DATASTREAMS_EXPAND})
    assert sorted(d["@iot.id"] for d in body["value"]) == sorted(streams)
    for datastream in body["value"]:
        assert datastream["Thing"]["Locations"][0]["location"]["type"] == "Point"
        assert datastream["Sensor"]["name"] and datastream["ObservedProperty"]["name"]
        observations = datastream["Observations"]
        assert [o["@iot.id"] for o in observations] == _newest_first(sta, datastream["@iot.id"])
        for observation in observations:
            assert set(observation) == {"@iot.id", "FeatureOfInterest"}, observation
            assert set(observation["FeatureOfInterest"]) == {"feature"}, observation
            assert observation["FeatureOfInterest"]["feature"]["type"] == "Point"


def test_merged_expand_next_link_carries_the_merged_options(sta: str) -> None:
    (stream,) = _datastreams(sta, n_observations=3, streams=1)
    body = read(sta, f"Datastreams({stream})", **{"$expand": (
        "Observations($select=@iot.id;$orderby=phenomenonTime desc;$top=2),"
        "Observations/FeatureOfInterest($select=feature)")})
    newest = _newest_first(sta, stream)
    assert [o["@iot.id"] for o in body["Observations"]] == newest[:2]
    link = body["Observations@iot.nextLink"]
    query = parse_qs(urlsplit(link).query)
    assert query["$select"] == ["@iot.id"] and query["$orderby"] == ["phenomenonTime desc"], link
    assert query["$expand"] == ["FeatureOfInterest($select=feature)"], link
    page = HTTP.get(link)
    assert page.status_code == 200, page.text
    (last,) = page.json()["value"]
    assert last["@iot.id"] == newest[2]
    assert set(last) == {"@iot.id", "FeatureOfInterest"} and set(last["FeatureOfInterest"]) == {"feature"}


def test_an_option_given_by_either_item_is_taken(sta: str) -> None:
    (stream,) = _datastreams(sta, n_observations=3, streams=1)
    body = read(sta, f"Datastreams({stream})", **{"$expand": (
        "Observations/FeatureOfInterest,Observations($orderby=result desc;$top=1;$select=result)")})
    (observation,) = body["Observations"]
    assert observation["result"] == 2
    assert set(observation) == {"result", "FeatureOfInterest"}
    assert observation["FeatureOfInterest"]["feature"]["type"] == "Point"


def test_the_same_option_with_the_same_value_twice_is_accepted(sta: str) -> None:
    (stream,) = _datastreams(sta, n_observations=3, streams=1)
    body = read(sta, f"Datastreams({stream})", **{"$expand": (
        "Observations($filter=result ge 1;$top=1;$orderby=result),"
        "Observations($filter=result  ge  1;$top=1;$select=result)")})
    assert body["Observations"] == [{"result": 1}]


def test_nested_expand_lists_are_joined_and_merged_one_level_down(sta: str) -> None:
    thing = create_thing_with_location(sta)
    create_datastream_with_observations(sta, 2, thing_id=thing)
    body = read(sta, f"Things({thing})", **{"$expand": (
        "Datastreams($expand=Observations($top=1;$orderby=result desc)),Datastreams($expand=Sensor),"
        "Datastreams/Observations/FeatureOfInterest($select=name)")})
    (datastream,) = body["Datastreams"]
    assert datastream["Sensor"]["name"]
    (observation,) = datastream["Observations"]
    assert observation["result"] == 1
    assert set(observation["FeatureOfInterest"]) == {"name"}


@pytest.mark.parametrize(("expand", "option"), [
    ("Observations($top=1),Observations($top=2)", "$top"),
    ("Observations($filter=result gt 1),Observations/FeatureOfInterest,Observations($filter=result lt 1)",
     "$filter"),
    ("Observations($select=result),Observations($select=@iot.id)", "$select"),
    ("Observations($orderby=result),Observations($orderby=result desc)", "$orderby"),
])
def test_the_same_option_with_different_values_is_a_400_naming_both(sta: str, expand: str, option: str) -> None:
    (stream,) = _datastreams(sta, n_observations=1, streams=1)
    body: dict[str, Any] = assert_error(get(sta, f"Datastreams({stream})", params={"$expand": expand}), 400,
                                        "Observations", option)
    assert body["code"] == 400


def test_a_conflict_one_level_down_is_a_400_naming_that_navigation(sta: str) -> None:
    create_thing_with_location(sta)
    response = get(sta, "Things", params={
        "$expand": "Datastreams($expand=Observations($top=1)),Datastreams($expand=Observations($top=2))"})
    assert_error(response, 400, "Observations", "$top")


# ============================================================================ (8) unknown path property -> 404


@pytest.mark.parametrize("path", ["Things({t})/nosuchprop", "Things({t})/nosuchprop/$value",
                                  "Things({t})/nosuchprop/$ref", "Things({t})/Sensor",
                                  "Things({t})/Datastreams({d})/nosuchprop", "Things({t})/nosuchprop(1)"])
def test_unknown_property_in_a_path_is_a_404_listing_the_properties(sta: str, path: str) -> None:
    thing = create_thing_with_location(sta)
    datastream = create_datastream_with_observations(sta, 1, thing_id=thing)
    response = get(sta, path.format(t=thing, d=datastream))
    name = "Sensor" if path.endswith("/Sensor") else "nosuchprop"
    assert_error(response, 404, name, "has no property or navigation property", "properties:", "navigation:")


def test_unknown_property_in_a_write_path_is_a_404(sta: str) -> None:
    thing = create_thing_with_location(sta)
    assert_error(HTTP.patch(f"{sta}/Things({thing})/nosuchprop", json={"name": "x"}), 404, "nosuchprop")
    assert read(sta, f"Things({thing})")["name"] == "thing"


@pytest.mark.parametrize(("path", "fragment"), [
    ("Things(abc)", "ids are positive integers"), ("Things({t})/name(1)", "drop the (1)"),
    ("Things({t})/na-me", "invalid path segment"), ("Things/name", "follows a collection"),
    ("Things({t})/name/extra", "only $value may follow"),
])
def test_other_malformed_paths_stay_400(sta: str, path: str, fragment: str) -> None:
    thing = create_thing_with_location(sta)
    assert_error(get(sta, path.format(t=thing)), 400, fragment)
