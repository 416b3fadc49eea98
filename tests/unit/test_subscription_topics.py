"""Query options on subscription topics (mqtt_bridge.topics.topic_query) and what the registry
(mqtt_bridge.subscriptions) learns from the broker's log, without a broker or a database."""

from __future__ import annotations

import re

import pytest

from mqtt_bridge.subscriptions import SUBSCRIBE_TOPIC, UNSUBSCRIBE_TOPIC, SubscriptionRegistry
from mqtt_bridge.topics import TopicQuery, split_query, topic_query
from sensorthings.model.errors import BadRequest
from sensorthings.query.odata import MAX_EXPRESSION_CHARS


def test_a_topic_without_query_has_none() -> None:
    assert split_query("v1.1/Observations") == ("v1.1/Observations", None)


def test_select_alone_as_before() -> None:
    base, query = split_query("v1.1/Observations?$select=result,phenomenonTime")
    assert base == "v1.1/Observations"
    assert query == TopicQuery("$select=result,phenomenonTime", ("result", "phenomenonTime"))
    assert not query.public_only


@pytest.mark.parametrize("text", [
    "$filter=result gt 30&$expand=FeatureOfInterest($select=name)",
    "$expand=FeatureOfInterest($select=name)&$filter=result gt 30",
])
def test_filter_and_expand_in_any_order(text: str) -> None:
    query = topic_query(text)
    assert (query.text, query.select, query.filter, query.expand) == (
        text, (), "result gt 30", "FeatureOfInterest($select=name)")
    assert query.public_only
    assert query.statement_key == topic_query(
        "$filter=result gt 30&$expand=FeatureOfInterest($select=name)").statement_key


def test_all_three() -> None:
    query = topic_query("$select=result&$filter=result gt 3&$expand=Datastream($select=name)")
    assert (query.select, query.filter, query.expand) == (("result",), "result gt 3", "Datastream($select=name)")


def test_an_ampersand_inside_a_string_does_not_separate_options() -> None:
    query = topic_query("$filter=name eq 'A&B' or name eq 'O''Neil&$select=x'&$select=name")
    assert query.filter == "name eq 'A&B' or name eq 'O''Neil&$select=x'"
    assert query.select == ("name",)


def test_percent_escapes_are_decoded_and_plus_is_not_a_space() -> None:
    query = topic_query("$filter=phenomenonTime%20gt%202024-01-01T00:00:00%2B01:00")
    assert query.filter == "phenomenonTime gt 2024-01-01T00:00:00+01:00"


@pytest.mark.parametrize(("text", "why"), [
    ("$filter=result gt", "syntax error"),
    ("$filter=", "empty"),
    ("$filter=result gt 1&$filter=result lt 2", "twice"),
    ("$top=1", "not '$top'"),
    ("$orderby=result", "not '$orderby'"),
    ("filter=result gt 1", "not 'filter'"),
    ("$select", "not '$select'"),
    ("$filter=phenomenonTime gt 2024-01-01T00:00:00+01:00", "wildcard"),
    ("$filter=result gt 1#", "wildcard"),
    ("$filter=" + "x" * (MAX_EXPRESSION_CHARS + 1), "longer than"),
    ("$select=result;x", "syntax error"),
])
def test_bad_queries_are_refused(text: str, why: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(why)):
        topic_query(text)


def registry_with(*filters: str) -> SubscriptionRegistry:
    registry = SubscriptionRegistry()
    for n, topic_filter in enumerate(filters):
        registry.handle_log(SUBSCRIBE_TOPIC, f"1700000000: client-{n % 2} 1 {topic_filter}".encode())
    return registry


def test_the_registry_learns_query_topics_and_ignores_bad_ones() -> None:
    good = ["v1.1/Observations?$filter=result gt 30", "v1.1/Datastreams(5)/Observations?$expand=FeatureOfInterest",
            "v1.1/+/Observations?$select=result&$filter=result lt 0", "v1.1/Observations"]
    bad = ["v1.1/Observations?$filter=result gt", "v1.1/Things(1)?$select=name", "v1.1/Things(1)/name?$select=x",
           "v1.1/Observations?$top=3", "#?$select=name", "v1.1/Observations?foo"]
    registry = registry_with(*good, *bad)
    assert registry.filters() == sorted(good)
    assert registry.queries("v1.1/Observations") == {None, topic_query("$filter=result gt 30")}
    assert registry.queries("v1.1/Datastreams(5)/Observations") == {
        topic_query("$expand=FeatureOfInterest"), topic_query("$select=result&$filter=result lt 0")}
    assert registry.queries("v1.1/Things(1)") == set()


def test_unsubscribing_from_a_filter_with_spaces() -> None:
    """Mosquitto logs "<client id> <filter>"; the filter of a query topic holds spaces."""
    topic_filter = "v1.1/Observations?$filter=result gt 30 and result lt 40"
    registry = registry_with(topic_filter)
    registry.handle_log(SUBSCRIBE_TOPIC, b"1700000000: client with spaces 0 v1.1/Things")
    assert registry.queries("v1.1/Observations")
    registry.handle_log(UNSUBSCRIBE_TOPIC, f"1700000001: client-0 {topic_filter}".encode())
    assert not registry.queries("v1.1/Observations")
    registry.handle_log(UNSUBSCRIBE_TOPIC, b"1700000001: client with spaces v1.1/Things")
    assert registry.empty
