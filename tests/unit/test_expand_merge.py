"""Repeated navigation properties in `$expand` merged into one item (`merge_expands`), with the option texts
their nextLinks are built from; and which resource paths are 404 rather than 400 (`parse_path`). No services.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from mqtt_bridge.topics import create_target
from sensorthings.model import LATEST
from sensorthings.model.entities import ENTITIES
from sensorthings.model.errors import BadRequest, NotFound
from sensorthings.query import odata
from sensorthings.query.entity_json import _expand_query, _property_segments, merge_expands
from sensorthings.query.options import parse_query
from sensorthings.query.path import parse_path


def merged(text: str) -> dict[str, odata.ExpandItem]:
    items = merge_expands(odata.parse("expand", text))
    assert len({item.path for item in items}) == len(items)
    return {item.path: item for item in items}


def next_query(item: odata.ExpandItem) -> dict[str, list[str]]:
    return parse_qs(_expand_query(item, 100))


def test_pygeoapi_datastreams_expand_merges_into_one_observations_item() -> None:
    items = merged("Thing/Locations,Sensor,ObservedProperty,"
                   "Observations($select=@iot.id;$orderby=phenomenonTime desc),"
                   "Observations/FeatureOfInterest($select=feature)")
    assert list(items) == ["Thing", "Sensor", "ObservedProperty", "Observations"]
    observations = items["Observations"]
    assert observations.select == ("@iot.id",)
    assert observations.orderby == (odata.OrderItem(odata.Path(("phenomenonTime",)), descending=True),)
    (feature,) = observations.expand
    assert (feature.path, feature.select) == ("FeatureOfInterest", ("feature",))
    assert next_query(observations) == {"$select": ["@iot.id"], "$orderby": ["phenomenonTime desc"],
                                        "$expand": ["FeatureOfInterest($select=feature)"],
                                        "$skip": ["100"]}  # no $top: the item gave none


def test_options_are_taken_from_whichever_item_gives_them() -> None:
    item = merged("Datastreams($top=2),Datastreams($select=name;$count=true),Datastreams($skip=1)")["Datastreams"]
    assert (item.top, item.select, item.count, item.skip) == (2, ("name",), True, 1)
    assert next_query(item) == {"$select": ["name"], "$top": ["100"], "$skip": ["101"], "$count": ["true"]}


def test_a_path_item_first_then_the_options() -> None:
    item = merged("Observations/FeatureOfInterest,Observations($top=1;$filter=result gt 2)")["Observations"]
    assert item.top == 1 and item.filter is not None
    assert next_query(item)["$expand"] == ["FeatureOfInterest"]
    assert next_query(item)["$filter"] == ["result gt 2"]


def test_the_same_value_twice_is_one_value_even_written_differently() -> None:
    item = merged("Datastreams($filter=name eq 'a';$top=3),Datastreams($filter=name  eq 'a';$top=3)")["Datastreams"]
    assert item.top == 3
    assert next_query(item)["$filter"] == ["name eq 'a'"]


@pytest.mark.parametrize(("text", "option", "values"), [
    ("Datastreams($top=1),Datastreams($top=2)", "$top", ("'1'", "'2'")),
    ("Datastreams($skip=1),Datastreams($skip=2)", "$skip", ("'1'", "'2'")),
    ("Datastreams($filter=name eq 'a'),Datastreams($filter=name eq 'b')", "$filter", ("name eq 'a'", "name eq 'b'")),
    ("Datastreams($filter=result eq 1),Datastreams($filter=result eq true)", "$filter", ("eq 1", "eq true")),
    ("Datastreams($select=name),Datastreams($select=id)", "$select", ("name", "id")),
    ("Datastreams($orderby=name),Datastreams/Sensor,Datastreams($orderby=name desc)", "$orderby",
     ("name", "name desc")),
])
def test_the_same_option_with_different_values_is_refused(text: str, option: str, values: tuple[str, str]) -> None:
    with pytest.raises(BadRequest) as raised:
        merge_expands(odata.parse("expand", text))
    message = raised.value.message
    assert "Datastreams" in message and f"different {option} " in message, message
    assert all(value in message for value in values), message


def test_nested_lists_are_joined_and_merge_one_level_down() -> None:
    item = merged("Datastreams($expand=Observations($top=1)),Datastreams($expand=Sensor),"
                  "Datastreams/Observations/FeatureOfInterest($select=name)")["Datastreams"]
    assert [nested.path for nested in item.expand] == ["Observations", "Sensor", "Observations"]
    assert next_query(item)["$expand"] == [
        "Observations($top=1),Sensor,Observations($expand=FeatureOfInterest($select=name))"]
    observations = {nested.path: nested for nested in merge_expands(item.expand)}["Observations"]
    assert observations.top == 1 and [n.path for n in observations.expand] == ["FeatureOfInterest"]
    assert next_query(observations)["$expand"] == ["FeatureOfInterest($select=name)"]
    with pytest.raises(BadRequest, match="Observations twice with different \\$top"):
        (again,) = merge_expands(odata.parse(
            "expand", "Datastreams($expand=Observations($top=1)),Datastreams($expand=Observations($top=2))"))
        merge_expands(again.expand)


def test_a_path_item_alone_keeps_its_nested_expand_in_the_next_link() -> None:
    item = merged("Datastreams/Observations($top=2;$select=result)")["Datastreams"]
    assert next_query(item)["$expand"] == ["Observations($select=result;$top=2)"]


# ============================================================================ resource paths


@pytest.mark.parametrize("path", ["Things(1)/nosuchprop", "Things(1)/nosuchprop/$value", "Things(1)/nosuchprop(2)",
                                  "Things(1)/Sensor", "Datastreams(1)/Observations(2)/nosuchprop", "Thingies"])
def test_unknown_names_in_a_path_are_not_found(path: str) -> None:
    with pytest.raises(NotFound) as raised:
        parse_path(path)
    assert raised.value.status == 404


def test_the_not_found_message_lists_the_properties_and_navigation() -> None:
    with pytest.raises(NotFound) as raised:
        parse_path("Things(1)/nosuchprop")
    assert raised.value.message == (
        "Thing has no property or navigation property 'nosuchprop'; properties: name, description, properties; "
        "navigation: Locations, HistoricalLocations, Datastreams, MultiDatastreams, Party")
    with pytest.raises(NotFound) as raised:  # STAplus's Party is a v1.1 navigation property (Entity.since)
        parse_path("Things(1)/nosuchprop", "v1.0")
    assert raised.value.message.endswith("navigation: Locations, HistoricalLocations, Datastreams, MultiDatastreams")


@pytest.mark.parametrize("path", ["Things(abc)", "Things(1)/name(1)", "Things(1)/na-me", "Things/name",
                                  "Things(1)/name/extra", "Things(1)/$value", "", "Things(1)/Thing(1)x"])
def test_other_malformed_paths_are_bad_requests(path: str) -> None:
    with pytest.raises(BadRequest):
        parse_path(path)


@pytest.mark.parametrize("topic", ["v1.1/Things(1)/nosuchprop", "v1.1/Things(1)/Observations",
                                   "v1.1/Datastreams(1)/nosuchprop/Observations"])
def test_create_topics_with_unknown_names_are_still_refused_as_bad_requests(topic: str) -> None:
    """The MQTT create-topic grammar reuses parse_path and turns any StaError into 'not a create topic'."""
    create_target.cache_clear()
    with pytest.raises(BadRequest, match="is not a create topic"):
        create_target(topic)


def test_a_system_option_repeated_with_the_same_value_is_taken_once() -> None:
    """pygeoapi follows a nextLink with its $expand appended again; a different value is still refused."""
    same = parse_query([("$expand", "Datastream"), ("$top", "5"), ("$expand", "Datastream")], default_top=100,
                       max_top=1000)
    assert [item.path for item in same.expand] == ["Datastream"] and same.top == 5
    with pytest.raises(BadRequest, match=r"\$top is given twice with different values"):
        parse_query([("$top", "5"), ("$top", "6")], default_top=100, max_top=1000)


def test_expand_path_ending_in_a_property_selects_it() -> None:
    """Masterportal's `Thing/Locations/location`: the last segment is a property of Location, read as
    `Locations($select=location)`; with a $select already there the property is added to it."""
    location = ENTITIES["Location"]
    (thing,) = odata.parse("expand", "Thing/Locations/location")
    (locations,) = thing.expand
    assert _property_segments(location, locations.select, locations.expand, LATEST) == (("location",), ())
    (named,) = odata.parse("expand", "Locations($select=name;$expand=location,Things)")
    select, expand = _property_segments(location, named.select, named.expand, LATEST)
    assert select == ("name", "location") and [item.path for item in expand] == ["Things"]
    (optioned,) = odata.parse("expand", "location($top=1)")
    with pytest.raises(BadRequest, match="is a property of Location, not a relation"):
        _property_segments(location, (), (optioned,), LATEST)
