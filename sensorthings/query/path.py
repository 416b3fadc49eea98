"""Resource paths: `Things(1)/Datastreams(2)/Observations`, `Things(1)/name/$value`, `…/$ref`.

The parser turns the URL path under `/v1.1` into a typed, model-checked `ResourcePath`; everything after it
(SQL compiler, writer) works on that object, never on the raw string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sensorthings.model import LATEST
from sensorthings.model.entities import ENTITY_SETS, Entity, Relation, entity_sets_in
from sensorthings.model.errors import BadRequest, NotFound
from sensorthings.model.kinds import Field
from sensorthings.model.times import is_ascii_digits

_SEGMENT = re.compile(r"^(?P<name>[A-Za-z]+)(?:\((?P<key>[^()]*)\))?$")
MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class Step:
    """One entity-valued step of a path. `relation` is None for the first step (an entity set)."""

    entity: Entity
    relation: Relation | None
    id: int | None

    @property
    def is_collection(self) -> bool:
        return self.id is None and (self.relation is None or self.relation.to_many)


@dataclass(frozen=True)
class ResourcePath:
    steps: tuple[Step, ...]
    prop: Field | None = None
    value: bool = False  # `$value` after a property
    members: tuple[str, ...] = ()  # a path into a JSON property (`properties/owner`)
    ref: bool = False  # `$ref` after an entity or collection
    version: str = LATEST  # the API version the path was addressed under (model.VERSIONS)

    @property
    def last(self) -> Step:
        return self.steps[-1]

    @property
    def entity(self) -> Entity:
        return self.last.entity

    @property
    def is_collection(self) -> bool:
        return self.prop is None and self.last.is_collection


def parse_id(key: str, where: str) -> int:
    if not is_ascii_digits(key):
        raise BadRequest(f"{where}: ids are positive integers, e.g. Things(1); got ({key})")
    value = int(key)
    if value > MAX_ID:
        raise NotFound(f"{where}: no entity with id {key}")
    return value


def parse_path(path: str, version: str = LATEST) -> ResourcePath:
    """Parse and check a resource path relative to the service root of `version` (no leading version
    segment); a property that `version` does not have is unknown there."""
    segments = [s for s in path.strip("/").split("/")]
    if not segments or segments == [""]:
        raise BadRequest("empty resource path")
    steps: list[Step] = []
    index = 0
    for index, segment in enumerate(segments):
        if segment in ("$ref", "$value"):
            break
        match = _SEGMENT.match(segment)
        if match is None:
            raise BadRequest(f"invalid path segment {segment!r}; expected e.g. Things, Things(1) or name")
        name, key = match.group("name"), match.group("key")
        if not steps:
            entity = entity_sets_in(version).get(name)
            if entity is None:
                newer = ENTITY_SETS.get(name)
                hint = f"; {name} is a {newer.since} entity set, use /{newer.since}" if newer is not None else ""
                raise NotFound(f"unknown entity set {name!r}{hint}; known: {', '.join(entity_sets_in(version))}")
            steps.append(Step(entity, None, None if key is None else parse_id(key, segment)))
            continue
        previous = steps[-1]
        if previous.is_collection:
            raise BadRequest(f"{segment!r} follows a collection; address one entity first, e.g. "
                             f"{previous.entity.set_name}(1)/{name}")
        relation = previous.entity.relations_in(version).get(name)
        if relation is None:
            field = previous.entity.field_in(name, version)
            if previous.entity.newer_field(name, version) or previous.entity.newer_relation(name, version):
                raise NotFound(str(previous.entity.too_new(name, version, segment).message))
            if field is None:  # an unknown resource, as OData 4.01 §11.2.6 (and FROST) answer it
                raise NotFound(
                    f"{previous.entity.name} has no property or navigation property {name!r}; "
                    f"properties: {', '.join(previous.entity.property_names_in(version))}; "
                    f"navigation: {', '.join(previous.entity.relations_in(version))}"
                )
            if key is not None:
                raise BadRequest(f"{name} is a property of {previous.entity.name}, not a collection; "
                                 f"drop the ({key})")
            return _after_property(steps, field, segments[index + 1 :], version)
        if key is not None and not relation.to_many:
            raise BadRequest(f"{name} is a single entity; drop the ({key})")
        steps.append(Step(relation.target_entity, relation, None if key is None else parse_id(key, segment)))
    else:
        return ResourcePath(tuple(steps), version=version)
    rest = segments[index:]
    if not steps:
        raise BadRequest(f"{rest[0]} must follow an entity or collection")
    if rest == ["$ref"]:
        return ResourcePath(tuple(steps), ref=True, version=version)
    raise BadRequest(f"unexpected {'/'.join(rest)!r}; $value follows a property, $ref an entity or collection")


def _after_property(steps: list[Step], field: Field, rest: list[str], version: str) -> ResourcePath:
    """`name`, `name/$value`, and for JSON properties a member path such as `properties/owner/$value`."""
    value = bool(rest) and rest[-1] == "$value"
    members = tuple(rest[:-1] if value else rest)
    if members and not field.is_object_value:
        raise BadRequest(f"unexpected {'/'.join(rest)!r} after the property {field.name}; only $value may follow")
    if any(not m or m.startswith("$") for m in members):
        raise BadRequest(f"unexpected {'/'.join(rest)!r} after the property {field.name}")
    return ResourcePath(tuple(steps), prop=field, value=value, members=members, version=version)
