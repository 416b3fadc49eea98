"""The STA MQTT topic grammar (STA §14), read off the entity model and the REST path grammar.

Create topics (§14.2): `v1.1/Observations`, `v1.1/Datastreams(1)/Observations`,
`v1.1/MultiDatastreams(1)/Observations`, `v1.1/FeaturesOfInterest(1)/Observations`.
Subscription topics (§14.1): an entity set
(`v1.1/Observations`, `v1.1/Datastreams(1)/Observations`), an entity (`v1.1/Things(1)`), a property
(`v1.1/Things(1)/name`) and an entity set with `$select` (`v1.1/Observations?$select=result,phenomenonTime`).
Every topic exists under each version served (model.VERSIONS: `v1.0/…` as well), over the same store.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

from sensorthings.model import LATEST, VERSIONS, version_of
from sensorthings.model.entities import ENTITIES, Entity, Relation
from sensorthings.model.errors import BadRequest, StaError
from sensorthings.query import odata
from sensorthings.query.path import parse_path

PREFIX = LATEST + "/"
PREFIXES = tuple(f"{v}/" for v in VERSIONS)
OBSERVATION = ENTITIES["Observation"]
SELECT_MARK = "?$select="
ERROR_PREFIX = "citystream/errors/"
CREATE_FILTERS = tuple(f for prefix in PREFIXES
                       for f in (f"{prefix}{OBSERVATION.set_name}", f"{prefix}+/{OBSERVATION.set_name}"))
"""What the bridge subscribes to; the second also matches entity sets that cannot create, which are
rejected with a reason (and a dead letter) rather than ignored."""


@functools.lru_cache(maxsize=4096)
def create_target(topic: str) -> Mapping[str, int]:
    """The parent a create topic names, by the Observation's relation to it (`v1.1/Datastreams(1)/
    Observations` -> {"Datastream": 1}); empty for `v1.1/Observations`. BadRequest for any other topic."""
    hint = (f"publish Observations to {PREFIX}Observations or {PREFIX}<parent>(id)/Observations (or the same "
            f"under {', '.join(PREFIXES[:-1])}), where the parent is one of "
            f"{', '.join(r.target_entity.set_name for r in OBSERVATION.relations.values())}")
    version = version_of(topic)
    if version is None:
        raise BadRequest(f"topic {topic!r} is not a create topic; {hint}")
    try:
        path = parse_path(topic[len(version) + 1:], version)
    except StaError:
        raise BadRequest(f"topic {topic!r} is not a create topic; {hint}") from None
    if path.entity is not OBSERVATION or not path.is_collection or path.ref or len(path.steps) > 2:
        raise BadRequest(f"topic {topic!r} is not a create topic; {hint}")
    if len(path.steps) == 1:
        return MappingProxyType({})
    parent = path.steps[0]
    relation = path.last.relation
    assert relation is not None and parent.id is not None
    return MappingProxyType({relation.inverse_name: parent.id})


def entity_topics(entity: Entity, entity_id: int, related: Mapping[Relation, Iterable[int]],
                  version: str = LATEST) -> Iterator[str]:
    """Topics of `version` on which a created or updated entity is published: its entity set, itself, and
    every collection it belongs to (`related` holds the ids of the entities at the other end) that `version`
    has (no `v1.0/Parties(1)/Datastreams`: Entity.since)."""
    prefix = f"{version}/"
    yield f"{prefix}{entity.set_name}"
    yield f"{prefix}{entity.set_name}({entity_id})"
    for relation, ids in related.items():
        if relation.name not in entity.relations_in(version):
            continue
        target = relation.target_entity.set_name
        for other in ids:
            yield f"{prefix}{target}({other})/{relation.inverse_name}"


def property_topic(entity: Entity, entity_id: int, name: str, version: str = LATEST) -> str:
    return f"{version}/{entity.set_name}({entity_id})/{name}"


def collection_topic(topic: str) -> bool:
    """True for an entity-set topic (`…/Observations`), the only kind that takes `$select`."""
    last = topic.rsplit("/", 1)[-1]
    return "(" not in last and last in {e.set_name for e in ENTITIES.values()} | {
        r.name for e in ENTITIES.values() for r in e.relations.values() if r.to_many}


def split_select(topic_filter: str) -> tuple[str, tuple[str, ...] | None]:
    """`v1.1/Observations?$select=result,phenomenonTime` -> ('v1.1/Observations', ('result', 'phenomenonTime')).
    Raises BadRequest for a `$select` that the query grammar rejects."""
    base, mark, select = topic_filter.partition(SELECT_MARK)
    if not mark:
        return topic_filter, None
    items: tuple[str, ...] = odata.parse("select", select)
    return base, items


def error_topic(topic: str) -> str:
    """Where the bridge reports a payload sent to `topic` that could not be stored."""
    return ERROR_PREFIX + topic
