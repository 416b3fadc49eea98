"""JSON Patch (RFC 6902, `application/json-patch+json`) bodies of a PATCH: the operations applied to an
entity's properties, giving the properties that changed.

Apart from routes.py because it is a document transformation without HTTP or SQL: the route fetches the
entity as stored and hands what changed to the writer, just as it hands over a merge-patch body.
"""

from __future__ import annotations

from typing import Any

import jsonpatch
import jsonpointer

from sensorthings.model.entities import Entity
from sensorthings.model.errors import BadRequest
from sensorthings.write.writer import changed_fields

JSON_PATCH = "application/json-patch+json"


def patch_operations(body: Any) -> list[Any]:
    """The operations of a JSON Patch body (an array), else a 400 that shows one."""
    if not isinstance(body, list):
        raise BadRequest("a JSON Patch body is an array of operations, e.g. "
                         '[{"op": "replace", "path": "/name", "value": "x"}]')
    return body


def apply_json_patch(entity: Entity, current: dict[str, Any], ops: list[Any]) -> dict[str, Any]:
    """Apply RFC 6902 operations to the properties of `entity` in `current` (its JSON as stored); return the
    properties that changed."""
    document = {name: current.get(name) for name in entity.property_names}
    try:
        patched = jsonpatch.apply_patch(document, ops)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError) as exc:
        raise BadRequest(f"JSON Patch cannot be applied: {exc}; paths address properties such as "
                         f"/{entity.property_names[0]}") from None
    unknown = set(patched) - set(entity.property_names)
    if unknown:
        raise BadRequest(f"JSON Patch may only change properties of {entity.name}, not {', '.join(unknown)}")
    return changed_fields(document, patched, entity.property_names)
