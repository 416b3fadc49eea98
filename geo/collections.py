"""The feature collections: live views of the SensorThings tables, declared as data.

Each collection is one SQL source (a subquery aliased `c`) with a fixed set of columns: `id` (the STA
@iot.id), `_geom` (EPSG:4326), `_t0`/`_t1` (the feature's time, NULL when it has none), `_flat` (a JSON
object merged into the properties) and one column per declared property, named like the property. The
query builder (geo/query.py), the queryables and sortables, the OpenAPI document and the HTML and CSV
encodings all read these declarations. Entity knowledge (tables, columns, JSON rendering) comes from the
STA entity model; nothing here copies it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

from psycopg import sql

from geo.queryables import Kind, Queryable
from sensorthings.model.entities import ENTITIES, Entity
from sensorthings.model.kinds import Field, Instant, Interval, Json, Result, Text
from sensorthings.query import visibility
from sensorthings.query.visibility import View
from sensorthings.write.derived import CURRENT_LOCATION_ID, current_location_sql

PropertyKind = Kind | Literal["json"]
SOURCE = sql.Identifier("c")


@dataclass(frozen=True)
class Property:
    """One attribute of a collection's features."""

    name: str
    kind: PropertyKind
    select: sql.Composable  # its value in the source query (tables aliased as in the collection's FROM)
    description: str

    @property
    def column(self) -> sql.Composable:
        return sql.SQL("{}.{}").format(SOURCE, sql.Identifier(self.name))

    def json_sql(self) -> sql.Composable:
        """The value as it appears in a feature's `properties`."""
        if self.kind == "datetime":
            return sql.SQL("sta_time({})").format(self.column)
        return self.column

    def text_sql(self) -> sql.Composable:
        """The value as a CSV cell."""
        if self.kind == "datetime":
            return sql.SQL("sta_time({})").format(self.column)
        if self.kind == "json":
            return sql.SQL("CASE json_typeof({0}) WHEN 'string' THEN {0} #>> '{{}}' ELSE {0}::text END").format(
                self.column)
        return sql.SQL("{}::text").format(self.column)

    @property
    def queryable(self) -> Queryable | None:
        if self.kind == "json":
            return None
        return Queryable(self.name, self.kind, self.column, self.description)


@dataclass(frozen=True)
class Collection:
    id: str
    title: str
    description: str
    entity: Entity  # the STA entity whose @iot.id is the feature id
    from_sql: sql.Composable  # FROM clause; the entity's table is aliased `e`
    geometry: sql.Composable
    properties: tuple[Property, ...]
    time_start: sql.Composable | None = None
    time_end: sql.Composable | None = None  # None: the feature's time is an instant
    time_description: str = ""
    flat_properties: sql.Composable | None = None  # a jsonb object flattened into the properties
    countable: bool = True  # an exact count is cheap (a small table); Observations are not
    lean_from: sql.Composable | None = None  # FROM without the lookups that only add properties (same rows)
    extent_from: sql.Composable | None = None  # a cheaper source of the extent (columns geom, t0, t1), if any

    @functools.cached_property
    def source(self) -> sql.Composable:
        """The subquery every request of this collection selects from, aliased `c`."""
        entity_alias = sql.Identifier("e")
        columns = [
            sql.SQL("{}.id AS id").format(entity_alias),
            sql.SQL("{} AS _geom").format(self.geometry),
            sql.SQL("{} AS _t0").format(self.time_start or sql.SQL("NULL::timestamptz")),
            sql.SQL("{} AS _t1").format(self.time_end or sql.SQL("NULL::timestamptz")),
            sql.SQL("{} AS _flat").format(self.flat_properties or sql.SQL("NULL::jsonb")),
        ]
        if self.entity.partition_column:  # lets an id lookup prune partitions (compiler.id_predicate)
            column = sql.Identifier(self.entity.partition_column)
            columns.append(sql.SQL("{}.{} AS {}").format(entity_alias, column, column))
        columns += [sql.SQL("{} AS {}").format(p.select, sql.Identifier(p.name)) for p in self.properties]
        return sql.SQL("(SELECT {} FROM {}) AS {}").format(sql.SQL(", ").join(columns), self.from_sql, SOURCE)

    @functools.cached_property
    def queryables(self) -> dict[str, Queryable]:
        """Everything `filter`, `sortby` and property filters may name."""
        found: dict[str, Queryable] = {
            "id": Queryable("id", "integer", sql.SQL("c.id"), f"the SensorThings @iot.id of the {self.entity.name}"),
            "geometry": Queryable("geometry", "geometry", sql.SQL("c._geom"), "the feature's geometry",
                                  sortable=False),
        }
        if self.time_start is not None:
            found["datetime"] = Queryable("datetime", "datetime", sql.SQL("c._t0"), self.time_description,
                                          end_expression=None if self.time_end is None else sql.SQL("c._t1"))
        for prop in self.properties:
            if prop.queryable is not None:
                found[prop.name] = prop.queryable
        return found

    @property
    def sortables(self) -> dict[str, Queryable]:
        return {name: q for name, q in self.queryables.items() if q.sortable}

    @functools.cached_property
    def lean_source(self) -> sql.Composable:
        """The source's rows with only id, geometry and time: enough to count by bbox and datetime, or to
        compute the extent, without the per-feature lookups (e.g. a Datastream's latest Observation)."""
        if self.lean_from is None:
            return self.source
        return sql.SQL("(SELECT e.id AS id, {} AS _geom, {} AS _t0, {} AS _t1 FROM {}) AS {}").format(
            self.geometry, self.time_start or sql.SQL("NULL::timestamptz"),
            self.time_end or sql.SQL("NULL::timestamptz"), self.lean_from, SOURCE)

    @functools.cached_property
    def extent_source(self) -> sql.Composable:
        """A one-row subquery `x` with the spatial extent (box2d `geom`) and the time extent (`t0`, `t1`)."""
        return self.extent_from or sql.SQL(
            "(SELECT ST_Extent(c._geom) AS geom, min(c._t0) AS t0, max(coalesce(c._t1, c._t0)) AS t1 FROM {}) AS x"
        ).format(self.lean_source)

    def property(self, name: str) -> Property | None:
        return next((p for p in self.properties if p.name == name), None)


# ---------------------------------------------------------------------------------------------- building blocks

THING, LOCATION, DATASTREAM = ENTITIES["Thing"], ENTITIES["Location"], ENTITIES["Datastream"]
OBSERVATION, FEATURE, OBSERVED_PROPERTY = ENTITIES["Observation"], ENTITIES["FeatureOfInterest"], \
    ENTITIES["ObservedProperty"]


def _table(entity: Entity, alias: str, view: View) -> sql.Composable:
    """`entity`'s rows aliased `alias`, as `view` has them (sensorthings.query.visibility.source)."""
    return sql.SQL("{} AS {}").format(visibility.source(entity, view), sql.Identifier(alias))


def _key(entity: Entity, relation: str, alias: str) -> sql.Composable:
    """`alias.<foreign key>` of a to-one relation of `entity` (Datastream.Thing: `e.thing_id`)."""
    return sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(entity.relation(relation).column))


def _column(entity: Entity, name: str, alias: str, part: int = 0) -> sql.Composable:
    """`alias.<column>` of a property; `part` picks one of several columns (an interval's end: 1)."""
    field = _field(entity, name)
    return field.col(sql.Identifier(alias), field.columns[part])


def _field(entity: Entity, name: str) -> Field:
    return entity.fields_by_name[name]


def _geometry(entity: Entity, name: str, alias: str) -> sql.Composable:
    """The PostGIS column behind a GeoJSON property (Location.location, FeatureOfInterest.feature)."""
    column = getattr(_field(entity, name), "geometry_column", None) or _field(entity, name).column
    return sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(column))


def from_model(entity: Entity, name: str, alias: str, *, as_name: str = "", description: str = "") -> Property:
    """A property taken as is from the entity model: its column and its kind."""
    field = _field(entity, name)
    kinds: dict[type[Field], PropertyKind] = {Text: "string", Instant: "datetime", Json: "json", Result: "json"}
    kind = kinds[type(field)]
    table = sql.Identifier(alias)
    select = field.json_sql(table) if kind == "json" else field.col(table)
    return Property(as_name or name, kind, select, description or f"{entity.name} {name}")


def interval_bounds(entity: Entity, name: str, alias: str, description: str) -> tuple[Property, Property]:
    """An interval property as two datetime attributes, `<name>Start` and `<name>End`."""
    field = _field(entity, name)
    assert isinstance(field, Interval)
    start, end = (field.col(sql.Identifier(alias), column) for column in field.columns)
    return (Property(f"{name}Start", "datetime", start, f"start of the {description}"),
            Property(f"{name}End", "datetime", sql.SQL("coalesce({}, {})").format(end, start),
                     f"end of the {description}"))


def _current_location(thing_alias: str, alias: str, view: View) -> sql.Composable:
    """LEFT JOIN of the Thing's current Location (the newest link), aliased `alias`."""
    return sql.SQL("LEFT JOIN LATERAL ({}) {cur} ON true LEFT JOIN {} ON {loc}.id = {cur}.{current}").format(
        current_location_sql(sql.SQL("{}.id").format(sql.Identifier(thing_alias))),
        _table(LOCATION, alias, view), cur=sql.Identifier(f"{alias}_link"), loc=sql.Identifier(alias),
        current=CURRENT_LOCATION_ID)


def _latest_observation(datastream_alias: str, alias: str, *, required: bool, view: View
                        ) -> sql.Composable:
    """The newest Observation of a Datastream (by phenomenonTime start; served by the datastream/time index)."""
    latest = sql.SQL("(SELECT o.* FROM {} WHERE {} = {}.id ORDER BY {} DESC LIMIT 1) {}").format(
        _table(OBSERVATION, "o", view), _key(OBSERVATION, "Datastream", "o"), sql.Identifier(datastream_alias),
        _column(OBSERVATION, "phenomenonTime", "o"), sql.Identifier(alias))
    if required:
        return sql.SQL("CROSS JOIN LATERAL {}").format(latest)
    return sql.SQL("LEFT JOIN LATERAL {} ON true").format(latest)


def _join_observed_property_and_unit(datastream_alias: str, view: View) -> sql.Composable:
    return sql.SQL("JOIN {} ON op.id = {}").format(
        _table(OBSERVED_PROPERTY, "op", view), _key(DATASTREAM, "ObservedProperty", datastream_alias))


def _unit(datastream_alias: str, key: str, what: str) -> Property:
    unit = _field(DATASTREAM, "unitOfMeasurement").col(sql.Identifier(datastream_alias))
    return Property("unit" if key == "symbol" else f"unit{key.title()}", "string",
                    sql.SQL("{} ->> {}").format(unit, sql.Literal(key)), what)


def _observed_property(description: str) -> Property:
    return from_model(OBSERVED_PROPERTY, "name", "op", as_name="observedProperty", description=description)


def _result_and_time(alias: str, result_name: str, time_name: str) -> tuple[Property, ...]:
    phenomenon = _field(OBSERVATION, "phenomenonTime")
    start = phenomenon.col(sql.Identifier(alias), phenomenon.columns[0])
    return (
        from_model(OBSERVATION, "result", alias, as_name=result_name,
                   description="the latest Observation's result, with its JSON type"),
        Property(time_name, "datetime", start, "the latest Observation's phenomenonTime (its start)"),
    )


# ---------------------------------------------------------------------------------------------- the collections

def _things(view: View) -> Collection:
    observed = sql.SQL("ARRAY(SELECT DISTINCT {} FROM {} JOIN {} ON op.id = {} WHERE {} = e.id ORDER BY 1)").format(
        _column(OBSERVED_PROPERTY, "name", "op"), _table(DATASTREAM, "ds", view),
        _table(OBSERVED_PROPERTY, "op", view),
        _key(DATASTREAM, "ObservedProperty", "ds"), _key(DATASTREAM, "Thing", "ds"))
    return Collection(
        "things", "Things", "Sensor platforms (SensorThings Things) at their current Location.",
        THING,
        sql.SQL("{} {}").format(_table(THING, "e", view), _current_location("e", "loc", view)),
        _geometry(LOCATION, "location", "loc"),
        (
            from_model(THING, "name", "e", description="name of the Thing"),
            from_model(THING, "description", "e", description="description of the Thing"),
            Property("observedProperties", "json", sql.SQL("to_json({})").format(observed),
                     "names of the ObservedProperties of the Thing's Datastreams"),
        ),
        flat_properties=sql.SQL("ogc_flat_properties({}, 'properties.')").format(
            _field(THING, "properties").col(sql.Identifier("e"))),
    )


def _datastreams(view: View) -> Collection:
    phenomenon_start, phenomenon_end = interval_bounds(DATASTREAM, "phenomenonTime", "e", "Datastream's phenomenonTime")
    located = sql.SQL("{} JOIN {} ON t.id = {} {}").format(
        _table(DATASTREAM, "e", view), _table(THING, "t", view), _key(DATASTREAM, "Thing", "e"),
        _current_location("t", "loc", view))
    geometry = sql.SQL("coalesce({}, {})").format(_field(DATASTREAM, "observedArea").col(sql.Identifier("e")),
                                                  _geometry(LOCATION, "location", "loc"))
    return Collection(
        "datastreams", "Datastreams",
        "Time series (SensorThings Datastreams): the area they observe, what, in which unit, and the latest value.",
        DATASTREAM,
        sql.SQL("{} {} {}").format(located, _join_observed_property_and_unit("e", view),
                                   _latest_observation("e", "lo", required=False, view=view)),
        geometry,
        (
            from_model(DATASTREAM, "name", "e", description="name of the Datastream"),
            from_model(DATASTREAM, "description", "e", description="description of the Datastream"),
            from_model(DATASTREAM, "observationType", "e", description="the type of its results"),
            _observed_property("the ObservedProperty's name"),
            _unit("e", "symbol", "unit of measurement: symbol"),
            _unit("e", "name", "unit of measurement: name"),
            _unit("e", "definition", "unit of measurement: definition"),
            Property("thing", "integer", _key(DATASTREAM, "Thing", "e"), "the @iot.id of its Thing"),
            from_model(THING, "name", "t", as_name="thingName", description="name of its Thing"),
            phenomenon_start,
            phenomenon_end,
            *_result_and_time("lo", "latestResult", "latestTime"),
        ),
        time_start=phenomenon_start.select,
        time_end=phenomenon_end.select,
        time_description="the Datastream's phenomenonTime extent",
        lean_from=located,  # counts and extents skip the latest Observation's lookup, one per Datastream
    )


def _latest(view: View) -> Collection:
    feature_geometry = _geometry(FEATURE, "feature", "f")
    return Collection(
        "latest", "Latest values",
        "One point per Datastream with its latest Observation: a map of current conditions.",
        DATASTREAM,
        sql.SQL("{} JOIN {} ON t.id = {} {} {} {} JOIN {} ON f.id = {}").format(
            _table(DATASTREAM, "e", view), _table(THING, "t", view), _key(DATASTREAM, "Thing", "e"),
            _current_location("t", "loc", view), _join_observed_property_and_unit("e", view),
            _latest_observation("e", "lo", required=True, view=view), _table(FEATURE, "f", view),
            _key(OBSERVATION, "FeatureOfInterest", "lo")),
        sql.SQL("ST_PointOnSurface(coalesce({}, {}))").format(feature_geometry, _geometry(LOCATION, "location", "loc")),
        (
            from_model(DATASTREAM, "name", "e", as_name="datastreamName", description="name of the Datastream"),
            _observed_property("the ObservedProperty's name"),
            _unit("e", "symbol", "unit of measurement: symbol"),
            _unit("e", "name", "unit of measurement: name"),
            Property("thing", "integer", _key(DATASTREAM, "Thing", "e"), "the @iot.id of its Thing"),
            from_model(THING, "name", "t", as_name="thingName", description="name of its Thing"),
            Property("observation", "integer", sql.SQL("lo.id"), "the @iot.id of the latest Observation"),
            *_result_and_time("lo", "result", "phenomenonTime"),
        ),
        time_start=_column(OBSERVATION, "phenomenonTime", "lo"),
        time_description="the latest Observation's phenomenonTime (its start)",
    )


def _observations(view: View) -> Collection:
    phenomenon = _field(OBSERVATION, "phenomenonTime")
    start, end = (phenomenon.col(sql.Identifier("e"), c) for c in phenomenon.columns)
    result = _field(OBSERVATION, "result")
    assert isinstance(result, Result)
    result_number = result.number_sql(sql.Identifier("e"))
    return Collection(
        "observations", "Observations",
        "Every Observation at its FeatureOfInterest; `datetime` selects by the start of its phenomenonTime.",
        OBSERVATION,
        sql.SQL("{} JOIN {} ON f.id = {} JOIN {} ON d.id = {} {}").format(
            _table(OBSERVATION, "e", view), _table(FEATURE, "f", view),
            _key(OBSERVATION, "FeatureOfInterest", "e"), _table(DATASTREAM, "d", view),
            _key(OBSERVATION, "Datastream", "e"), _join_observed_property_and_unit("d", view)),
        _geometry(FEATURE, "feature", "f"),
        (
            Property("datastream", "integer", _key(OBSERVATION, "Datastream", "e"), "the @iot.id of its Datastream"),
            from_model(DATASTREAM, "name", "d", as_name="datastreamName", description="name of its Datastream"),
            _observed_property("the ObservedProperty's name"),
            _unit("d", "symbol", "unit of measurement: symbol"),
            from_model(OBSERVATION, "result", "e", description="the result, with its JSON type"),
            Property("resultNumber", "number", result_number, "the result, when it is a number (for filters)"),
            Property("phenomenonTime", "datetime", start, "phenomenonTime (its start, for an interval)"),
            Property("phenomenonTimeEnd", "datetime", end, "end of the phenomenonTime, for an interval"),
            from_model(OBSERVATION, "resultTime", "e", description="resultTime"),
            Property("featureOfInterest", "integer", _key(OBSERVATION, "FeatureOfInterest", "e"),
                     "the @iot.id of its FeatureOfInterest"),
        ),
        time_start=start,  # the start only (see the description): an interval could not prune partitions
        time_description="the start of the Observation's phenomenonTime",
        countable=False,
        extent_from=sql.SQL(  # the whole table would be read otherwise
            "(SELECT ST_Extent({geometry}) AS geom, "
            "(SELECT min({start}) FROM {ds}) AS t0, "
            "(SELECT max(coalesce({end}, {start})) FROM {ds}) AS t1 "
            "FROM {f}) AS x").format(
            ds=_table(DATASTREAM, "ds", view), f=_table(FEATURE, "f", view),
            geometry=_geometry(FEATURE, "feature", "f"),
            start=_column(DATASTREAM, "phenomenonTime", "ds"), end=_column(DATASTREAM, "phenomenonTime", "ds", 1)),
    )


def _geo_entity(entity: Entity, collection_id: str, title: str, description: str, geometry: str,
                view: View) -> Collection:
    return Collection(
        collection_id, title, description, entity, _table(entity, "e", view), _geometry(entity, geometry, "e"),
        (
            from_model(entity, "name", "e", description=f"name of the {entity.name}"),
            from_model(entity, "description", "e", description=f"description of the {entity.name}"),
        ),
        flat_properties=sql.SQL("ogc_flat_properties({}, 'properties.')").format(
            _field(entity, "properties").col(sql.Identifier("e"))),
    )


@functools.cache
def collections(view: View) -> dict[str, Collection]:
    """The collections, in their order, of what `view` lets the principal bound at execution see."""
    return {c.id: c for c in (
        _things(view),
        _datastreams(view),
        _latest(view),
        _observations(view),
        _geo_entity(FEATURE, "features-of-interest", "Features of interest",
                    "What the Observations are about (SensorThings FeaturesOfInterest).", "feature", view),
        _geo_entity(LOCATION, "locations", "Locations", "Where the Things are (SensorThings Locations).", "location",
                    view),
    )}


COLLECTIONS = collections(View.ALL)
"""The collections as a principal who may read everything sees them (their ids, properties, queryables)."""
