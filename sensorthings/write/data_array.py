"""The Data Array extension's write half (STA 1.1 §14.3): a `POST CreateObservations` document, read into
its Data Arrays; the ingest path then turns each row into an Observation row with the same field parsers
as any other Observation (`ingest.rows.data_array_row`).

A malformed document (not a list, a Data Array without its Datastream or MultiDatastream, an unknown
component) is a 400 for
the whole request; a row that does not fit its components becomes that row's error, and the other rows
are still stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sensorthings.model.entities import Relation
from sensorthings.model.errors import BadRequest
from sensorthings.model.results import OBSERVATION, STREAM_NAMES, STREAMS
from sensorthings.write.bodies import link_id

FEATURE = OBSERVATION.relation("FeatureOfInterest")
FEATURE_COMPONENT = f"{FEATURE.name}/id"
COMPONENTS = frozenset({*OBSERVATION.property_names, FEATURE_COMPONENT})
KEYS = frozenset({*(s.name for s in STREAMS), "components", "dataArray", "dataArray@iot.count"})


@dataclass(frozen=True)
class DataArray:
    """One Data Array of a CreateObservations document, its shape checked; its rows are not yet validated."""

    stream: Relation
    """Observation.Datastream or Observation.MultiDatastream."""
    stream_id: int
    components: tuple[str, ...]  # Observation property names and FEATURE_COMPONENT, each once
    rows: list[Any]


def read_data_arrays(document: Any) -> list[DataArray]:
    """The Data Arrays of a CreateObservations document; 400 for anything that is not one."""
    if not isinstance(document, list):
        raise BadRequest("CreateObservations takes a JSON array of Data Array objects, each with Datastream, "
                         "components and dataArray")
    arrays: list[DataArray] = []
    for n, array in enumerate(document):
        where = f"[{n}]"
        if not isinstance(array, dict):
            raise BadRequest(f"{where} must be a Data Array object with Datastream, components and dataArray")
        unknown = sorted(set(array) - KEYS)
        if unknown:
            raise BadRequest(f"{where}: unknown member(s) {', '.join(unknown)}; a Data Array has "
                             f"{', '.join(sorted(KEYS))}")
        streams = [s for s in STREAMS if s.name in array]
        if len(streams) != 1:
            raise BadRequest(f"{where}: give exactly one {STREAM_NAMES}, e.g. \"Datastream\": {{\"@iot.id\": n}}")
        stream = streams[0]
        stream_id = link_id(array[stream.name], f"{where}.{stream.name}")
        if stream_id is None:
            raise BadRequest(f"{where}.{stream.name}: link an existing {stream.name} with {{\"@iot.id\": n}}")
        components = _components(array.get("components"), where)
        rows = array.get("dataArray")
        if not isinstance(rows, list):
            raise BadRequest(f"{where}.dataArray must be an array of rows")
        declared = array.get("dataArray@iot.count")
        if declared is not None and declared != len(rows):
            raise BadRequest(f"{where}: dataArray@iot.count is {declared!r} but dataArray has {len(rows)} rows")
        arrays.append(DataArray(stream, stream_id, tuple(components), rows))
    return arrays


def _components(components: Any, where: str) -> list[str]:
    if not isinstance(components, list) or not components or not all(isinstance(c, str) for c in components):
        raise BadRequest(f"{where}.components must be a non-empty array of property names")
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise BadRequest(f"{where}.components: {unknown[0]!r} is not an Observation property; use "
                         f"{', '.join(sorted(COMPONENTS))}")
    if len(set(components)) != len(components):
        raise BadRequest(f"{where}.components names a property twice")
    return components
