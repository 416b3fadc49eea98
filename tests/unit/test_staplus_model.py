"""STAplus in the entity model, without services: Party, Project and License exist from v1.1 on
(Entity.since), and so do the navigation properties to and from them (Relation.since); every surface that
asks the model by version (paths, MQTT topics) leaves them out of v1.0."""

from __future__ import annotations

import pytest

from mqtt_bridge.topics import entity_topics
from sensorthings.model.entities import ENTITIES, ENTITY_SETS, entity_sets_in
from sensorthings.model.errors import NotFound
from sensorthings.query.path import parse_path

STAPLUS = ("Party", "Project", "License")


def test_the_staplus_entity_sets_exist_in_v11_only() -> None:
    assert list(entity_sets_in("v1.1")) == list(ENTITY_SETS)
    assert list(entity_sets_in("v1.1"))[-3:] == ["Parties", "Projects", "Licenses"]
    assert not {"Parties", "Projects", "Licenses"} & set(entity_sets_in("v1.0"))
    assert all(ENTITIES[name].since == "v1.1" for name in STAPLUS)


def test_relations_to_them_are_v11_relations_and_optional() -> None:
    datastream = ENTITIES["Datastream"]
    staplus = [name for name in datastream.relations_in("v1.1") if name in STAPLUS]
    assert staplus == list(STAPLUS)
    assert not set(STAPLUS) & set(datastream.relations_in("v1.0"))
    for name in STAPLUS:
        relation = datastream.relation(name)
        assert relation.since == "v1.1" and relation.inverse.since == "v1.1"
        assert relation.optional and not relation.required and relation.column == f"{name.lower()}_id"
        assert datastream.newer_relation(name, "v1.0") is relation and datastream.newer_relation(name, "v1.1") is None
    assert list(ENTITIES["Party"].relations_in("v1.1")) == ["Things", "Datastreams", "MultiDatastreams"]
    assert not ENTITIES["Datastream"].relation("Thing").optional  # required
    assert not ENTITIES["Observation"].relation("Datastream").optional  # one of its two streams, exactly
    assert "Party" not in ENTITIES["Observation"].relations  # reached through its stream


def test_paths_under_v10_do_not_know_them() -> None:
    with pytest.raises(NotFound) as raised:
        parse_path("Parties", "v1.0")
    assert "Parties is a v1.1 entity set, use /v1.1" in raised.value.message
    assert "Parties" not in raised.value.message.split("known: ")[1]
    with pytest.raises(NotFound) as raised:
        parse_path("Datastreams(1)/Project", "v1.0")
    assert "Project of a Datastream is a v1.1 navigation property" in raised.value.message
    assert parse_path("Datastreams(1)/Project", "v1.1").entity is ENTITIES["Project"]


def test_notification_topics_of_v10_leave_the_staplus_collections_out() -> None:
    datastream = ENTITIES["Datastream"]
    related = {datastream.relation("Thing"): [1], datastream.relation("Party"): [2]}
    assert list(entity_topics(datastream, 5, related, "v1.1")) == [
        "v1.1/Datastreams", "v1.1/Datastreams(5)", "v1.1/Things(1)/Datastreams", "v1.1/Parties(2)/Datastreams"]
    assert list(entity_topics(datastream, 5, related, "v1.0")) == [
        "v1.0/Datastreams", "v1.0/Datastreams(5)", "v1.0/Things(1)/Datastreams"]
