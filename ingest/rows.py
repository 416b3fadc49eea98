"""One Observation payload -> one validated row, before it reaches the queue.

Everything that can be checked without the database is checked here, with the same entity model and field
kinds the REST writer uses (`sensorthings.write.writer.check_keys` / `parse_fields`), so a payload is judged the
same way whether it arrived over MQTT or HTTP. What needs the database (does the Datastream exist, does
the result fit its observationType) is checked per batch in `store.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sensorthings.model.entities import ENTITIES, Relation
from sensorthings.model.errors import BadRequest
from sensorthings.model.results import OBSERVATION, STREAM_NAMES, STREAMS
from sensorthings.write.bodies import check_keys, link_id, parse_fields
from sensorthings.write.data_array import FEATURE_COMPONENT

FEATURE_OF_INTEREST = ENTITIES["FeatureOfInterest"]
FEATURE_RELATION = OBSERVATION.relation("FeatureOfInterest")

class Origin(NamedTuple):
    """Where an MQTT payload came from: kept with its dead letter if it cannot be stored."""

    topic: str
    payload: bytes
    client_id: str | None = None


@dataclass(slots=True)
class ObservationRow:
    """A validated Observation waiting for its batch. `columns` holds the Observation's own field columns."""

    columns: dict[str, Any]
    stream: Relation
    """Observation.Datastream or Observation.MultiDatastream (sensorthings.model.results.STREAMS)."""
    stream_id: int
    feature_id: int | None = None
    new_feature: dict[str, Any] | None = None
    """Columns of a FeatureOfInterest given inline, created in the same transaction."""


def parse_observation(body: Any, *, parents: Mapping[str, int], now: datetime | None, where: str = "body"
                      ) -> ObservationRow:
    """Validate an Observation create payload. `parents` holds the ids the URL or topic gives, by relation
    name (`Datastreams(1)/Observations` -> {"Datastream": 1}); the stream must be linked, not created inline."""
    if not isinstance(body, dict):
        raise BadRequest(f"{where} must be a JSON object with the properties of an Observation")
    check_keys(OBSERVATION, body, where)
    columns = parse_fields(OBSERVATION, body, where, complete=True, now=now)
    streams = [(r, i) for r in STREAMS if (i := _linked(r.name, body, parents.get(r.name), where)) is not None]
    if len(streams) != 1:
        raise BadRequest(f"{where}: an Observation needs its {STREAM_NAMES}, exactly one: give \"Datastream\": "
                         f"{{\"@iot.id\": n}} or send it to Datastreams(n)/Observations (MultiDatastream likewise)",
                         field=f"{where}.{STREAMS[0].name}")
    (stream, stream_id), = streams
    feature_id = parents.get(FEATURE_RELATION.name)
    new_feature = None
    if feature_id is None and FEATURE_RELATION.name in body:
        feature_id = link_id(body[FEATURE_RELATION.name], f"{where}.FeatureOfInterest")
        if feature_id is None:
            new_feature = _inline_feature(body[FEATURE_RELATION.name], f"{where}.FeatureOfInterest", now)
    elif FEATURE_RELATION.name in body:
        raise BadRequest(f"{where}: the FeatureOfInterest is given by the URL or topic; leave it out",
                         field=f"{where}.FeatureOfInterest")
    return ObservationRow(columns, stream, stream_id, feature_id, new_feature)


def data_array_row(components: tuple[str, ...], values: Any, stream: Relation, stream_id: int, where: str
                   ) -> ObservationRow:
    """One row of a Data Array (CreateObservations) whose components were checked once for the whole array
    (`sensorthings.write.data_array`): the property values go through `parse_fields` as a body's would, and
    `FeatureOfInterest/id` links the FeatureOfInterest."""
    if not isinstance(values, list) or len(values) != len(components):
        raise BadRequest(f"{where}: a row must be an array of {len(components)} values, one per component")
    properties = dict(zip(components, values, strict=True))
    feature = properties.pop(FEATURE_COMPONENT, None)
    feature_id = None if feature is None else link_id({"@iot.id": feature}, f"{where}.{FEATURE_COMPONENT}")
    return ObservationRow(parse_fields(OBSERVATION, properties, where, complete=True, now=None), stream, stream_id,
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
