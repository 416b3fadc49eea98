"""One Observation payload -> one validated row, before it reaches the queue.

Everything that can be checked without the database is checked here, with the same entity model and field
kinds the REST writer uses (`sensorthings.writer.check_keys` / `parse_fields`), so a payload is judged the
same way whether it arrived over MQTT or HTTP. What needs the database (does the Datastream exist, does
the result fit its observationType) is checked per batch in `store.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sensorthings.data_array import FEATURE_COMPONENT
from sensorthings.errors import BadRequest
from sensorthings.fields import (
    RESULT_BOOLEAN,
    RESULT_JSON,
    RESULT_NULL,
    RESULT_NUMBER,
    RESULT_STRING,
)
from sensorthings.model import ENTITIES
from sensorthings.writer import check_keys, link_id, parse_fields

OBSERVATION = ENTITIES["Observation"]
FEATURE_OF_INTEREST = ENTITIES["FeatureOfInterest"]
DATASTREAM_RELATION = OBSERVATION.relation("Datastream")
FEATURE_RELATION = OBSERVATION.relation("FeatureOfInterest")

_OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
# Result types (sensorthings.fields RESULT_*) each observationType accepts; null is always accepted.
# Types not listed here (OM_Observation, custom URIs) accept any JSON result.
RESULT_TYPES: dict[str, tuple[frozenset[int], str]] = {
    _OM + "OM_Measurement": (frozenset({RESULT_NUMBER}), "a number"),
    _OM + "OM_CountObservation": (frozenset({RESULT_NUMBER}), "an integer"),
    _OM + "OM_TruthObservation": (frozenset({RESULT_BOOLEAN}), "true or false"),
    _OM + "OM_CategoryObservation": (frozenset({RESULT_STRING}), "a string (a category or its URI)"),
    _OM + "OM_ComplexObservation": (frozenset({RESULT_JSON}), "a JSON object or array"),
}


class Origin(NamedTuple):
    """Where an MQTT payload came from: kept with its dead letter if it cannot be stored."""

    topic: str
    payload: bytes
    client_id: str | None = None


@dataclass(slots=True)
class ObservationRow:
    """A validated Observation waiting for its batch. `columns` holds the Observation's own field columns."""

    columns: dict[str, Any]
    datastream_id: int
    feature_id: int | None = None
    new_feature: dict[str, Any] | None = None
    """Columns of a FeatureOfInterest given inline, created in the same transaction."""


def result_type_error(observation_type: str, columns: dict[str, Any]) -> str | None:
    """Why the result does not fit the Datastream's observationType, or None when it does."""
    expected = RESULT_TYPES.get(observation_type)
    result_type = columns["result_type"]
    if expected is None or result_type == RESULT_NULL:
        return None
    types, described = expected
    if result_type not in types:
        return f"result must be {described} for a Datastream of observationType {observation_type}"
    if observation_type.endswith("OM_CountObservation") and not _is_integer_text(columns["result_string"]):
        return f"result must be an integer for a Datastream of observationType {observation_type}"
    return None


def _is_integer_text(text: str) -> bool:
    return text.lstrip("-").isdigit()


def parse_observation(body: Any, *, datastream_id: int | None, feature_id: int | None, now: datetime | None,
                      where: str = "body") -> ObservationRow:
    """Validate an Observation create payload. `datastream_id` / `feature_id` come from the URL or topic
    (`Datastreams(1)/Observations`); the Datastream must be linked, not created inline."""
    if not isinstance(body, dict):
        raise BadRequest(f"{where} must be a JSON object with the properties of an Observation")
    check_keys(OBSERVATION, body, where)
    columns = parse_fields(OBSERVATION, body, where, complete=True, now=now)
    datastream_id = _linked(DATASTREAM_RELATION.name, body, datastream_id, where)
    if datastream_id is None:
        raise BadRequest(f"{where}: an Observation needs its Datastream: give \"Datastream\": {{\"@iot.id\": n}} "
                         f"or send it to Datastreams(n)/Observations", field=f"{where}.Datastream")
    new_feature = None
    if feature_id is None and FEATURE_RELATION.name in body:
        feature_id = link_id(body[FEATURE_RELATION.name], f"{where}.FeatureOfInterest")
        if feature_id is None:
            new_feature = _inline_feature(body[FEATURE_RELATION.name], f"{where}.FeatureOfInterest", now)
    elif FEATURE_RELATION.name in body:
        raise BadRequest(f"{where}: the FeatureOfInterest is given by the URL or topic; leave it out",
                         field=f"{where}.FeatureOfInterest")
    return ObservationRow(columns, datastream_id, feature_id, new_feature)


def data_array_row(components: tuple[str, ...], values: Any, datastream_id: int, where: str) -> ObservationRow:
    """One row of a Data Array (CreateObservations) whose components were checked once for the whole array
    (`sensorthings.data_array`): the property values go through `parse_fields` as a body's would, and
    `FeatureOfInterest/id` links the FeatureOfInterest."""
    if not isinstance(values, list) or len(values) != len(components):
        raise BadRequest(f"{where}: a row must be an array of {len(components)} values, one per component")
    properties = dict(zip(components, values, strict=True))
    feature = properties.pop(FEATURE_COMPONENT, None)
    feature_id = None if feature is None else link_id({"@iot.id": feature}, f"{where}.{FEATURE_COMPONENT}")
    return ObservationRow(parse_fields(OBSERVATION, properties, where, complete=True, now=None), datastream_id,
                          feature_id)


def _linked(name: str, body: dict[str, Any], from_path: int | None, where: str) -> int | None:
    if name not in body:
        return from_path
    if from_path is not None:
        raise BadRequest(f"{where}: the {name} is given by the URL or topic; leave it out", field=f"{where}.{name}")
    linked = link_id(body[name], f"{where}.{name}")
    if linked is None:
        raise BadRequest(f"{where}.{name}: link an existing {name} with {{\"@iot.id\": n}}; create it first",
                         field=f"{where}.{name}")
    return linked


def _inline_feature(body: Any, where: str, now: datetime | None) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"{where} must be a JSON object", field=where)
    check_keys(FEATURE_OF_INTEREST, body, where)
    related = [name for name in FEATURE_OF_INTEREST.relations if name in body]
    if related:
        raise BadRequest(f"{where}: an inline FeatureOfInterest cannot carry {', '.join(related)}", field=where)
    return parse_fields(FEATURE_OF_INTEREST, body, where, complete=True, now=now)
