"""The STA MQTT topic grammar (STA §14), read off the entity model and the REST path grammar.

Create topics (§14.2): `v1.1/Observations`, `v1.1/Datastreams(1)/Observations`,
`v1.1/MultiDatastreams(1)/Observations`, `v1.1/FeaturesOfInterest(1)/Observations`.
Subscription topics (§14.1): an entity set
(`v1.1/Observations`, `v1.1/Datastreams(1)/Observations`), an entity (`v1.1/Things(1)`), a property
(`v1.1/Things(1)/name`) and an entity set with query options: `$select`
(`v1.1/Observations?$select=result,phenomenonTime`), `$filter` and `$expand` (`topic_query`).
Every topic exists under each version served (model.VERSIONS: `v1.0/…` as well), over the same store.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import unquote

from sensorthings.model import LATEST, VERSIONS, version_of
from sensorthings.model.entities import ENTITIES, Entity, Relation
from sensorthings.model.errors import BadRequest, StaError
from sensorthings.query import odata
from sensorthings.query.path import parse_path

PREFIX = LATEST + "/"
PREFIXES = tuple(f"{v}/" for v in VERSIONS)
OBSERVATION = ENTITIES["Observation"]
QUERY_MARK = "?"
ERROR_PREFIX = "citystream/errors/"
CREATE_FILTERS = tuple(f for prefix in PREFIXES
                       for f in (f"{prefix}{OBSERVATION.set_name}", f"{prefix}+/{OBSERVATION.set_name}"))
"""The create topics devices publish to; the second also matches entity sets that cannot create, which are
rejected with a reason (and a dead letter) rather than ignored."""
INGEST_PREFIX = "citystream/ingest/"
"""Where the broker's plugin moves every create it lets through (`citystream/ingest/v1.1/Observations`),
stamped with its publisher: only the platform reads there, so no subscriber ever gets a device's raw publish."""
INGEST_FILTERS = tuple(INGEST_PREFIX + f for f in CREATE_FILTERS)
"""What the bridge subscribes to."""


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
    """True for an entity-set topic (`…/Observations`), the only kind that takes query options."""
    last = topic.rsplit("/", 1)[-1]
    return "(" not in last and last in {e.set_name for e in ENTITIES.values()} | {
        r.name for e in ENTITIES.values() for r in e.relations.values() if r.to_many}


QUERY_OPTIONS = ("$select", "$filter", "$expand")
"""The query options a subscription topic may carry (as FROST-Server takes them since 2.3)."""


@dataclass(frozen=True)
class TopicQuery:
    """The query options of a collection subscription topic, e.g. `$filter=result gt 30&$select=result` of
    `v1.1/Datastreams(5)/Observations?$filter=result gt 30&$select=result`."""

    text: str
    """As written after the `?`: a notification for this query goes to `<collection topic>?<text>` (MQTT
    matches topics literally, so it must be the subscriber's text to the letter)."""
    select: tuple[str, ...] = ()
    filter: str | None = None
    """The `$filter` text (percent-escapes decoded), parsed again where it is compiled."""
    expand: str | None = None
    """The `$expand` text (percent-escapes decoded)."""

    @property
    def public_only(self) -> bool:
        """A `$filter` or `$expand` reads related rows, so such topics are rendered for the public only
        (compile_changed): only `$select` changes nothing but the shape of one row."""
        return self.filter is not None or self.expand is not None

    @property
    def statement_key(self) -> tuple[tuple[str, ...], str | None, str | None]:
        """What the statement depends on: texts that differ only in their order of options share it."""
        return self.select, self.filter, self.expand


def split_query(topic_filter: str) -> tuple[str, TopicQuery | None]:
    """`v1.1/Observations?$select=result,phenomenonTime` -> ('v1.1/Observations', TopicQuery(select=('result',
    'phenomenonTime'), …)); (topic_filter, None) without a `?`. Raises BadRequest for a query `topic_query`
    rejects."""
    base, mark, text = topic_filter.partition(QUERY_MARK)
    if not mark:
        return topic_filter, None
    return base, topic_query(text)


@functools.lru_cache(maxsize=1024)
def topic_query(text: str) -> TopicQuery:
    """The query part of a subscription topic: `$select`, `$filter` and `$expand`, each at most once, joined
    by `&` (one inside a quoted OData string does not separate options), in any order. Percent-escapes are
    decoded as in a URL (`%2B` for `+`, which MQTT reserves for wildcards); `+` is not a space. Each value is
    parsed by the OData grammar (query.odata, with its limits on size and nesting). BadRequest for an
    empty, unknown or repeated option, a value the grammar rejects, or an MQTT wildcard (`+`, `#`): a
    notification cannot be published on a topic that holds one."""
    if "+" in text or "#" in text:
        raise BadRequest(f"subscription query {text[:60]!r} holds an MQTT wildcard; write '+' as %2B")
    given: dict[str, str] = {}
    for part in _split_options(text):
        name, equals, value = part.partition("=")
        name, value = unquote(name), unquote(value)
        if not equals or name not in QUERY_OPTIONS:
            raise BadRequest(f"subscription topics take {', '.join(QUERY_OPTIONS)}, not {name[:40]!r}")
        if name in given:
            raise BadRequest(f"{name} is given twice in a subscription topic")
        if not value.strip():
            raise BadRequest(f"{name} is empty in a subscription topic")
        given[name] = value
    filter_text, expand_text = given.get("$filter"), given.get("$expand")
    if filter_text is not None:
        odata.parse("filter", filter_text)
    if expand_text is not None:
        odata.parse("expand", expand_text)
    select: tuple[str, ...] = odata.parse("select", given["$select"]) if "$select" in given else ()
    return TopicQuery(text, select, filter_text, expand_text)


def _split_options(text: str) -> list[str]:
    """`text` split at each `&` outside a quoted OData literal (`'a&b'`; `''` inside one is a quote)."""
    parts, start, quoted = [], 0, False
    for n, char in enumerate(text):
        if char == "'":
            quoted = not quoted
        elif char == "&" and not quoted:
            parts.append(text[start:n])
            start = n + 1
    parts.append(text[start:])
    return parts


def error_topic(topic: str) -> str:
    """Where the bridge reports a payload sent to `topic` that could not be stored."""
    return ERROR_PREFIX + topic
