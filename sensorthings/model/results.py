"""Which results an Observation's stream accepts, and which stream an Observation belongs to.

An Observation belongs to exactly one stream: a Datastream, whose observationType fixes the type of every
result, or a MultiDatastream, whose results are arrays with one value per component, each of the type
`multiObservationDataTypes` gives for it. The REST writer and the ingest batch both judge results here.
"""

from __future__ import annotations

import json
from typing import Any

from sensorthings.model.entities import ENTITIES, Relation
from sensorthings.model.errors import StaError
from sensorthings.model.kinds import (
    RESULT_BOOLEAN,
    RESULT_JSON,
    RESULT_NULL,
    RESULT_NUMBER,
    RESULT_STRING,
    result_columns,
)

OBSERVATION = ENTITIES["Observation"]
STREAMS: tuple[Relation, ...] = tuple(OBSERVATION.relation(name) for name in OBSERVATION.exactly_one_of)
"""The to-one relations of an Observation to its stream (Datastream, MultiDatastream)."""
STREAM_NAMES = " or ".join(r.name for r in STREAMS)

_OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
# Result types (sensorthings.model.kinds RESULT_*) each observationType accepts; null is always accepted.
# Types not listed here (OM_Observation, custom URIs) accept any JSON result.
RESULT_TYPES: dict[str, tuple[frozenset[int], str]] = {
    _OM + "OM_Measurement": (frozenset({RESULT_NUMBER}), "a number"),
    _OM + "OM_CountObservation": (frozenset({RESULT_NUMBER}), "an integer"),
    _OM + "OM_TruthObservation": (frozenset({RESULT_BOOLEAN}), "true or false"),
    _OM + "OM_CategoryObservation": (frozenset({RESULT_STRING}), "a string (a category or its URI)"),
    _OM + "OM_ComplexObservation": (frozenset({RESULT_JSON}), "a JSON object or array"),
}


def stream_of(columns: dict[str, Any]) -> tuple[Relation, int] | None:
    """The stream relation and id named by an Observation's columns, when exactly one is."""
    given = [(r, columns[r.column]) for r in STREAMS if columns.get(r.column) is not None]
    return given[0] if len(given) == 1 else None


def result_error(types: Any, columns: dict[str, Any]) -> str | None:
    """Why an Observation's result (its result columns) does not fit its stream, or None when it does.
    `types` is the stream's `result_types_field` value: one observationType, or a list of them."""
    if isinstance(types, list):
        return _components_error(types, columns)
    expected = _expected(types, columns)
    return None if expected is None else f"result must be {expected} for a Datastream of observationType {types}"


def _expected(observation_type: str, columns: dict[str, Any]) -> str | None:
    """What the result should be for `observation_type`, or None when it fits."""
    expected = RESULT_TYPES.get(observation_type)
    result_type = columns["result_type"]
    if expected is None or result_type == RESULT_NULL:
        return None
    types, described = expected
    if result_type not in types:
        return described
    if observation_type.endswith("OM_CountObservation") and not columns["result_string"].lstrip("-").isdigit():
        return described
    return None


def _components_error(types: list[Any], columns: dict[str, Any]) -> str | None:
    # json, not orjson: the stored text may hold integers beyond 64 bits, which orjson refuses
    values = json.loads(columns["result_json"]) if columns["result_type"] == RESULT_JSON else None
    if not isinstance(values, list) or len(values) != len(types):
        return (f"result must be an array of {len(types)} values, one per component of the MultiDatastream "
                f"(its multiObservationDataTypes)")
    for n, (observation_type, value) in enumerate(zip(types, values, strict=True)):
        try:
            component = result_columns(value)
        except StaError as exc:
            return f"result[{n}]: {exc.message}"
        expected = _expected(str(observation_type), component)
        if expected is not None:
            return f"result[{n}] must be {expected}: multiObservationDataTypes[{n}] is {observation_type}"
    return None
