"""The SensorThings API 1.1 entity model, as data (with the MultiDatastream extension and STAplus's Party,
Project and License, which only /v1.1 has: Entity.since).

This is the single description of the entity types: their JSON properties (with storage and kind), their
tables and their relations. The path parser, the query compiler, the writer, the service root and (later)
OpenAPI, MQTT topics and OGC collections all read it. Nothing here is repeated elsewhere.

Relations are declared once per pair (`_one_to_many`, `_many_to_many`) and both navigation properties are
derived from that declaration, so the two ends can never disagree.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

from sensorthings.model import VERSIONS, in_version
from sensorthings.model.errors import BadRequest
from sensorthings.model.kinds import (
    EffectivePrivacy,
    Field,
    GeoJson,
    Geometry,
    Instant,
    Interval,
    Json,
    JsonList,
    PlatformInstant,
    Privacy,
    Result,
    RetentionPeriod,
    Rollup,
    Text,
)


class Storage(Enum):
    FK_ON_SOURCE = "fk_on_source"  # this entity's table holds the foreign key (to-one)
    FK_ON_TARGET = "fk_on_target"  # the target table holds a foreign key to this entity (to-many)
    LINK_TABLE = "link_table"  # many-to-many through a link table


@dataclass(frozen=True, eq=False)
class Relation:
    """A navigation property from `source` to `target`. Relations and entities are the model's singletons:
    identity is equality, and hashing one (the ingest path does per row) costs nothing."""

    name: str
    source: str
    target: str
    storage: Storage
    column: str = ""  # FK column (on source for FK_ON_SOURCE, on target for FK_ON_TARGET)
    link_table: str = ""
    link_source_column: str = ""
    link_target_column: str = ""
    required: bool = False  # the source cannot exist without it (checked on create)
    generated: bool = False
    """A required target the writer generates when a create leaves it out (an Observation's
    FeatureOfInterest, from its Thing's Location)."""
    delete_targets: bool = False  # deleting the source deletes the linked targets (link-table cascades)
    inverse_name: str = ""
    rank_column: str = ""
    """Link-table column holding each target's position: the relation is an ordered list (a
    MultiDatastream's ObservedProperties, one per component), set when the source is created."""
    added_in: str = "v1.0"
    """The STA version that has this navigation property even where both entity types are older (a
    Datastream's RollupOf: a CityStream extension served under /v1.1 only)."""

    @property
    def fixed(self) -> bool:
        """Links that only the creation of the ranked side sets: adding or removing one would break the
        order that other properties follow (multiObservationDataTypes, unitOfMeasurements)."""
        return bool(self.rank_column or self.inverse.rank_column)

    @property
    def to_many(self) -> bool:
        return self.storage is not Storage.FK_ON_SOURCE

    @property
    def optional(self) -> bool:
        """A to-one link the source may be without, on its own (a STAplus Party, Project, License): an update
        may clear it with null. Not a stream of an Observation, which must have exactly one of them."""
        return not (self.to_many or self.required or self.name in self.source_entity.exactly_one_of)

    @property
    def target_entity(self) -> Entity:
        return ENTITIES[self.target]

    @property
    def source_entity(self) -> Entity:
        return ENTITIES[self.source]

    @property
    def inverse(self) -> Relation:
        return ENTITIES[self.target].relation(self.inverse_name)

    @property
    def since(self) -> str:
        """The STA version that has both ends (Entity.since): a relation to a STAplus entity is a v1.1 one."""
        return max(self.source_entity.since, self.target_entity.since, self.added_in, key=VERSIONS.index)


@dataclass(frozen=True, eq=False)
class Entity:
    name: str  # "Thing"
    set_name: str  # "Things"
    table: str
    fields: tuple[Field, ...]
    relations: dict[str, Relation] = field(default_factory=dict, compare=False)
    id_sequence: str = ""  # ids allocated by the application from this sequence (see observation_ids)
    partition_column: str = ""  # time-partitioned table: ids encode this column's day (see observation_ids)
    exactly_one_of: tuple[str, ...] = ()
    """To-one relations of which a create must give exactly one (an Observation's Datastream or
    MultiDatastream: its stream)."""
    result_types_field: str = ""
    """On a stream: the property that says which results its Observations may have (observationType, or
    multiObservationDataTypes with one type per component)."""
    generated_from_column: str = ""
    """On an entity the writer generates (FeatureOfInterest): the column holding the id of the Location it
    was generated from, unique, so that concurrent writers share one (not an STA property)."""
    since: str = "v1.0"
    """The STA version that has this entity type (model.VERSIONS): older versions have neither its entity
    set nor the navigation properties to it (STAplus's Party, Project, License: v1.1 only)."""

    def field(self, name: str) -> Field | None:
        for candidate in self.fields:
            if candidate.name == name:
                return candidate
        return None

    def relation(self, name: str) -> Relation:
        return self.relations[name]

    def link_to(self, target: str) -> Relation | None:
        """The foreign key link of this entity to an entity of type `target` (a stream's Project), if any."""
        return next((r for r in self.relations.values()
                     if r.storage is Storage.FK_ON_SOURCE and r.target_entity.name == target), None)

    def exists_in(self, version: str) -> bool:
        return in_version(self.since, version)

    @functools.cache  # noqa: B019 - entities are the model's singletons, versions a handful of strings
    def relations_in(self, version: str) -> Mapping[str, Relation]:
        """The navigation properties that `version` of the API has: those to entity types it has (read
        after the model is complete)."""
        return MappingProxyType({name: r for name, r in self.relations.items() if in_version(r.since, version)})

    @functools.cached_property
    def absent_optional_columns(self) -> dict[str, Any]:
        """Columns of the optional fields, all None: what a create stores for those it was not given."""
        return {c: None for f in self.fields
                if not (f.required or f.defaults_to_now or f.server_maintained or f.set_on_create)
                for c in f.columns}

    @functools.cached_property
    def fields_by_name(self) -> dict[str, Field]:
        return {f.name: f for f in self.fields}

    @functools.cached_property
    def needed_on_create(self) -> tuple[Field, ...]:
        """Fields a create must give, or whose absence the server fills in (phenomenonTime: now)."""
        return tuple(f for f in self.fields if (f.required or f.defaults_to_now) and not f.server_maintained)

    @functools.cached_property
    def has_geojson_encoding(self) -> bool:
        """An entity with GeoJSON geometry and an encodingType, which must then name GeoJSON."""
        return self.field("encodingType") is not None and any(isinstance(f, GeoJson) for f in self.fields)

    @functools.cached_property
    def json_keys(self) -> frozenset[str]:
        """Property and relation names a request body may use (read after the model is complete)."""
        return frozenset(self.property_names) | frozenset(self.relations)

    @property
    def property_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @functools.cache  # noqa: B019 - entities are the model's singletons, versions a handful of strings
    def fields_in(self, version: str) -> tuple[Field, ...]:
        """The fields that `version` of the API has (Field.since)."""
        return tuple(f for f in self.fields if in_version(f.since, version))

    def field_in(self, name: str, version: str) -> Field | None:
        """The field `name` as `version` has it; None also for one added later (see `newer_field`)."""
        found = self.field(name)
        return found if found is not None and in_version(found.since, version) else None

    def property_names_in(self, version: str) -> list[str]:
        return [f.name for f in self.fields_in(version)]

    def newer_field(self, name: str, version: str) -> Field | None:
        """The field `name` if a version after `version` added it: a client of an older version sent it."""
        found = self.field(name)
        return found if found is not None and not in_version(found.since, version) else None

    def newer_relation(self, name: str, version: str) -> Relation | None:
        """The navigation property `name` if only a version after `version` has it (Relation.since)."""
        found = self.relations.get(name)
        return found if found is not None and not in_version(found.since, version) else None

    def too_new(self, name: str, version: str, where: str) -> BadRequest:
        """The error for a field or navigation property of a later version used under `version`."""
        found = self.fields_by_name.get(name)
        since, kind = (found.since, "property") if found else (self.relations[name].since, "navigation property")
        return BadRequest(f"{where}: {name} of a {self.name} is a {since} {kind}, which {version} does not "
                          f"have; use /{since} (the same entities are served there)")


def _entity(
    name: str, set_name: str, table: str, *fields: Field, id_sequence: str = "", partition_column: str = "",
    exactly_one_of: tuple[str, ...] = (), result_types_field: str = "", generated_from_column: str = "",
    since: str = "v1.0",
) -> Entity:
    return Entity(name, set_name, table, tuple(fields), {}, id_sequence, partition_column, exactly_one_of,
                  result_types_field, generated_from_column, since)


COMPLEX_OBSERVATION = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_ComplexObservation"
_STREAM_SUMMARIES = (
    Geometry("observedArea", "observed_area", server_maintained=True),
    Interval("phenomenonTime", "phenomenon_time", server_maintained=True),
    Interval("resultTime", "result_time", server_maintained=True),
)
"""What a Datastream and a MultiDatastream summarise of their Observations (widened by every write, narrowed
by REST writes that take Observations away: write/summaries.py)."""


def _properties_since_1_1() -> Json:
    """`properties` of every entity but Thing: STA 1.0 (OGC 15-078r6) gives only a Thing properties, 1.1
    (OGC 18-088) gives them to Location, Sensor, ObservedProperty, Datastream, FeatureOfInterest (and, in
    the extension, MultiDatastream)."""
    return Json("properties", "properties", since="v1.1")


ROLLUPS_SINCE = "v1.1"
"""Rollups are a CityStream extension of the 1.1 data model: served under /v1.1 only."""
STAPLUS_SINCE = "v1.1"
"""STAplus (OGC 22-022r1) extends the 1.1 data model: its entity types exist under /v1.1 only."""
PARTY_ROLES = ("individual", "institutional")
"""STAplus's PartyRoleCode: the only values of a Party's role."""
VISIBILITIES = ("public", "restricted")
"""Who may read a Project's data, or a stream's (overriding its Project's; absent: inherited, and public
without a Project): everyone who may read, or only who holds read for it (sensorthings.query.visibility)."""


def _visibility() -> Text:
    return Text("visibility", "visibility", one_of=VISIBILITIES, since="v1.1")


PRIVACY_SINCE = "v1.1"
"""Privacy classes (sensorthings/model/privacy.py) are a CityStream extension of the 1.1 data model."""


def _privacy() -> Privacy:
    """What the public may see of the data (a Project's, or a stream's, overriding its Project's)."""
    return Privacy("privacy", "privacy", since=PRIVACY_SINCE)


def _effective_privacy() -> EffectivePrivacy:
    """A stream's effective class, read-only (migration 0014 keeps it): why the public misses data."""
    return EffectivePrivacy("effectivePrivacy", "effective_privacy", server_maintained=True, since=PRIVACY_SINCE)


RETENTION_SINCE = "v1.1"
"""Retention is a CityStream extension of the 1.1 data model (as visibility is): served under /v1.1 only."""


def _retention() -> tuple[Field, ...]:
    """How long a stream keeps its raw Observations, and how far the platform has deleted older ones (its
    horizon, read-only): citystream/retention.py, docs/retention.md."""
    return (RetentionPeriod("retention", "retention", since=RETENTION_SINCE),
            PlatformInstant("retainedFrom", "retained_from", server_maintained=True, since=RETENTION_SINCE))


ENTITIES: dict[str, Entity] = {
    e.name: e
    for e in (
        _entity(
            "Thing",
            "Things",
            "things",
            Text("name", "name", required=True),
            Text("description", "description", required=True),
            Json("properties", "properties"),
        ),
        _entity(
            "Location",
            "Locations",
            "locations",
            Text("name", "name", required=True),
            Text("description", "description", required=True),
            Text("encodingType", "encoding_type", required=True),
            GeoJson("location", "location", required=True, geometry_column="location_geom"),
            _properties_since_1_1(),
        ),
        _entity(
            "HistoricalLocation",
            "HistoricalLocations",
            "historical_locations",
            Instant("time", "time", required=True),
        ),
        _entity(
            "Datastream",
            "Datastreams",
            "datastreams",
            Text("name", "name", required=True),
            Text("description", "description", required=True),
            Text("observationType", "observation_type", required=True),
            Json("unitOfMeasurement", "unit_of_measurement", required=True),
            *_STREAM_SUMMARIES,
            _properties_since_1_1(),
            _visibility(),
            Rollup("rollup", "rollup", since=ROLLUPS_SINCE, set_on_create=True),
            *_retention(),
            _privacy(),
            _effective_privacy(),
            result_types_field="observationType",
        ),
        _entity(
            "Sensor",
            "Sensors",
            "sensors",
            Text("name", "name", required=True),
            Text("description", "description", required=True),
            Text("encodingType", "encoding_type", required=True),
            Json("metadata", "metadata", required=True, object_only=False),
            _properties_since_1_1(),
        ),
        _entity(
            "ObservedProperty",
            "ObservedProperties",
            "observed_properties",
            Text("name", "name", required=True),
            Text("definition", "definition", required=True),
            Text("description", "description", required=True),
            _properties_since_1_1(),
        ),
        _entity(
            "Observation",
            "Observations",
            "observations",
            Interval("phenomenonTime", "phenomenon_time", defaults_to_now=True, instant_allowed=True),
            Instant("resultTime", "result_time"),
            Result("result", "result", required=True),
            Json("resultQuality", "result_quality", object_only=False),
            Interval("validTime", "valid_time"),
            Json("parameters", "parameters"),
            id_sequence="observation_id_seq",
            partition_column="phenomenon_time_start",
            exactly_one_of=("Datastream", "MultiDatastream"),
        ),
        _entity(
            "FeatureOfInterest",
            "FeaturesOfInterest",
            "features_of_interest",
            Text("name", "name", required=True),
            Text("description", "description", required=True),
            Text("encodingType", "encoding_type", required=True),
            GeoJson("feature", "feature", required=True, geometry_column="feature_geom"),
            _properties_since_1_1(),
            generated_from_column="generated_from_location_id",
        ),
        _entity(
            "MultiDatastream",
            "MultiDatastreams",
            "multi_datastreams",
            Text("name", "name", required=True),
            Text("description", "description", required=True),
            Text("observationType", "observation_type", required=True, one_of=(COMPLEX_OBSERVATION,)),
            JsonList("multiObservationDataTypes", "multi_observation_data_types", required=True, item_type=str),
            JsonList("unitOfMeasurements", "unit_of_measurements", required=True, item_type=dict),
            *_STREAM_SUMMARIES,
            _properties_since_1_1(),
            _visibility(),
            *_retention(),
            _privacy(),
            _effective_privacy(),
            result_types_field="multiObservationDataTypes",
        ),
        # STAplus (OGC 22-022r1): who owns the data (Party), under which project and licence it is shared.
        _entity(
            "Party",
            "Parties",
            "parties",
            Text("description", "description"),
            # the principal's id in the platform's authentication (unique): who may claim an identity is the
            # operator's to say, or anyone could squat another principal's Party
            Text("authId", "auth_id", admin_only=True),
            Text("role", "role", required=True, one_of=PARTY_ROLES),
            Text("displayName", "display_name"),
            since=STAPLUS_SINCE,
        ),
        _entity(
            "Project",
            "Projects",
            "projects",
            Text("name", "name", required=True),
            Text("description", "description"),
            Text("classification", "classification"),
            Text("termsOfUse", "terms_of_use", required=True),
            Text("privacyPolicy", "privacy_policy"),
            Instant("creationTime", "creation_time", defaults_to_now=True),
            Instant("startTime", "start_time"),
            Instant("endTime", "end_time"),
            Text("url", "url"),
            Json("properties", "properties"),
            _visibility(),
            _privacy(),
            since=STAPLUS_SINCE,
        ),
        _entity(
            "License",
            "Licenses",
            "licenses",
            Text("name", "name", required=True),
            Text("definition", "definition", required=True),
            Text("description", "description"),
            Text("logo", "logo"),
            Text("attributionText", "attribution_text"),
            Json("properties", "properties"),
            since=STAPLUS_SINCE,
        ),
    )
}


def _one_to_many(
    parent: str, parent_nav: str, child: str, child_nav: str, column: str, *, child_requires_parent: bool,
    parent_generated: bool = False, added_in: str = "v1.0",
) -> None:
    """Declare a one-to-many relation whose foreign key `column` lives in the child's table;
    `parent_generated`: a child created without its parent gets one generated (Relation.generated)."""
    ENTITIES[parent].relations[parent_nav] = Relation(
        parent_nav, parent, child, Storage.FK_ON_TARGET, column=column, inverse_name=child_nav, added_in=added_in,
    )
    ENTITIES[child].relations[child_nav] = Relation(
        child_nav, child, parent, Storage.FK_ON_SOURCE, column=column, required=child_requires_parent,
        generated=parent_generated, inverse_name=parent_nav, added_in=added_in,
    )


def _many_to_many(
    a: str, a_nav: str, b: str, b_nav: str, table: str, a_column: str, b_column: str,
    *, a_deletes_b: bool = False, b_requires_a: bool = False, a_rank_column: str = "",
) -> None:
    """Declare a many-to-many relation through a link table (a_column -> a.id, b_column -> b.id);
    `a_rank_column` orders each b's list of a."""
    ENTITIES[a].relations[a_nav] = Relation(
        a_nav, a, b, Storage.LINK_TABLE, link_table=table, link_source_column=a_column,
        link_target_column=b_column, delete_targets=a_deletes_b, inverse_name=b_nav,
    )
    ENTITIES[b].relations[b_nav] = Relation(
        b_nav, b, a, Storage.LINK_TABLE, link_table=table, link_source_column=b_column,
        link_target_column=a_column, required=b_requires_a, inverse_name=a_nav, rank_column=a_rank_column,
    )


_many_to_many("Thing", "Locations", "Location", "Things", "thing_locations", "thing_id", "location_id")
_one_to_many("Thing", "HistoricalLocations", "HistoricalLocation", "Thing", "thing_id", child_requires_parent=True)
_many_to_many(
    "Location", "HistoricalLocations", "HistoricalLocation", "Locations", "location_historical_locations",
    "location_id", "historical_location_id", a_deletes_b=True, b_requires_a=True,
)
_one_to_many("Thing", "Datastreams", "Datastream", "Thing", "thing_id", child_requires_parent=True)
_one_to_many("Sensor", "Datastreams", "Datastream", "Sensor", "sensor_id", child_requires_parent=True)
_one_to_many(
    "ObservedProperty", "Datastreams", "Datastream", "ObservedProperty", "observed_property_id",
    child_requires_parent=True,
)
# An Observation belongs to a Datastream or a MultiDatastream (Observation.exactly_one_of).
_one_to_many("Datastream", "Observations", "Observation", "Datastream", "datastream_id", child_requires_parent=False)
_one_to_many(
    "FeatureOfInterest", "Observations", "Observation", "FeatureOfInterest", "feature_id",
    child_requires_parent=True, parent_generated=True,
)

_one_to_many("Thing", "MultiDatastreams", "MultiDatastream", "Thing", "thing_id", child_requires_parent=True)
_one_to_many("Sensor", "MultiDatastreams", "MultiDatastream", "Sensor", "sensor_id", child_requires_parent=True)
_many_to_many(
    "ObservedProperty", "MultiDatastreams", "MultiDatastream", "ObservedProperties",
    "multi_datastream_observed_properties", "observed_property_id", "multi_datastream_id",
    a_deletes_b=True, b_requires_a=True, a_rank_column="rank",
)
_one_to_many(
    "MultiDatastream", "Observations", "Observation", "MultiDatastream", "multi_datastream_id",
    child_requires_parent=False,
)

# STAplus: a Thing, Datastream or MultiDatastream may name its owner (Party), a stream its Project and its
# License. The links are optional: deleting a Party, Project or License leaves the data in place, unlinked
# (the foreign keys are ON DELETE SET NULL). An Observation reaches them through its stream.
_one_to_many("Party", "Things", "Thing", "Party", "party_id", child_requires_parent=False)
_one_to_many("Party", "Datastreams", "Datastream", "Party", "party_id", child_requires_parent=False)
_one_to_many("Party", "MultiDatastreams", "MultiDatastream", "Party", "party_id", child_requires_parent=False)
_one_to_many("Project", "Datastreams", "Datastream", "Project", "project_id", child_requires_parent=False)
_one_to_many("Project", "MultiDatastreams", "MultiDatastream", "Project", "project_id", child_requires_parent=False)
_one_to_many("License", "Datastreams", "Datastream", "License", "license_id", child_requires_parent=False)
_one_to_many("License", "MultiDatastreams", "MultiDatastream", "License", "license_id", child_requires_parent=False)

# CityStream's rollups (sensorthings/model/rollups.py): a rollup is an ordinary Datastream whose Observations
# the platform computes from those of the Datastream it is a RollupOf (deleting that deletes its rollups).
_one_to_many("Datastream", "Rollups", "Datastream", "RollupOf", "rollup_of_id", child_requires_parent=False,
             added_in=ROLLUPS_SINCE)

ENTITY_SETS: dict[str, Entity] = {e.set_name: e for e in ENTITIES.values()}
"""Every entity set by name, in every version (see `entity_sets_in`)."""


@functools.cache
def entity_sets_in(version: str) -> Mapping[str, Entity]:
    """The entity sets that `version` of the API has (Entity.since), in the model's order."""
    return MappingProxyType({name: e for name, e in ENTITY_SETS.items() if e.exists_in(version)})
