"""The Data Array extension's write half (STA 1.1 §14.3): a `POST CreateObservations` document, read into
one Observation body per row, so that every row is validated and stored like any other Observation.

A malformed document (not a list, a Data Array without its Datastream, an unknown component) is a 400 for
the whole request; a row that does not fit its components becomes that row's error, and the other rows
are still stored.
"""

from __future__ import annotations

from typing import Any

from sensorthings.errors import BadRequest
from sensorthings.model import ENTITIES
from sensorthings.writer import link_id

OBSERVATION = ENTITIES["Observation"]
DATASTREAM = OBSERVATION.relation("Datastream")
FEATURE = OBSERVATION.relation("FeatureOfInterest")
FEATURE_COMPONENT = f"{FEATURE.name}/id"
COMPONENTS = frozenset({*OBSERVATION.property_names, FEATURE_COMPONENT})
KEYS = frozenset({DATASTREAM.name, "components", "dataArray", "dataArray@iot.count"})


def observation_bodies(document: Any) -> list[dict[str, Any] | str]:
    """Per row of every Data Array, in order: the Observation body, or why the row cannot be one."""
    if not isinstance(document, list):
        raise BadRequest("CreateObservations takes a JSON array of Data Array objects, each with Datastream, "
                         "components and dataArray")
    bodies: list[dict[str, Any] | str] = []
    for n, array in enumerate(document):
        where = f"[{n}]"
        if not isinstance(array, dict):
            raise BadRequest(f"{where} must be a Data Array object with Datastream, components and dataArray")
        unknown = sorted(set(array) - KEYS)
        if unknown:
            raise BadRequest(f"{where}: unknown member(s) {', '.join(unknown)}; a Data Array has "
                             f"{', '.join(sorted(KEYS))} (MultiDatastreams are not supported yet)")
        if DATASTREAM.name not in array:
            raise BadRequest(f"{where}: give the Datastream as \"Datastream\": {{\"@iot.id\": n}}")
        datastream = link_id(array[DATASTREAM.name], f"{where}.{DATASTREAM.name}")
        if datastream is None:
            raise BadRequest(f"{where}.Datastream: link an existing Datastream with {{\"@iot.id\": n}}")
        components = _components(array.get("components"), where)
        rows = array.get("dataArray")
        if not isinstance(rows, list):
            raise BadRequest(f"{where}.dataArray must be an array of rows")
        declared = array.get("dataArray@iot.count")
        if declared is not None and declared != len(rows):
            raise BadRequest(f"{where}: dataArray@iot.count is {declared!r} but dataArray has {len(rows)} rows")
        bodies += [_body(row, components, datastream) for row in rows]
    return bodies


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


def _body(row: Any, components: list[str], datastream: int) -> dict[str, Any] | str:
    if not isinstance(row, list) or len(row) != len(components):
        return f"a row must be an array of {len(components)} values, one per component"
    body: dict[str, Any] = {DATASTREAM.name: {"@iot.id": datastream}}
    for name, value in zip(components, row, strict=True):
        if name == FEATURE_COMPONENT:
            body[FEATURE.name] = {"@iot.id": value}
        else:
            body[name] = value
    return body
