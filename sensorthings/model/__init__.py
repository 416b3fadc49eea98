"""The entity model and what it is made of: entities and relations, field kinds, JSON values and times,
result types, Observation ids, errors. Imports nothing else of sensorthings."""

VERSIONS = ("v1.0", "v1.1")
"""The STA versions served from the one store, oldest first, as they appear in URLs and MQTT topics. A field
that a later version added names it in `Field.since`, an entity type (STAplus's) in `Entity.since`, and so
the relations to it; everything else is the same in every version."""
LATEST = VERSIONS[-1]
VERSION = LATEST
"""The newest version served: the default wherever a caller names none."""


def version_of(topic_or_path: str) -> str | None:
    """The version a topic or path under the service starts with (`v1.0/Things` -> 'v1.0'), or None."""
    head = topic_or_path.lstrip("/").split("/", 1)[0]
    return head if head in VERSIONS else None


def in_version(since: str, version: str) -> bool:
    """True where something added in `since` exists in `version`."""
    return VERSIONS.index(since) <= VERSIONS.index(version)
