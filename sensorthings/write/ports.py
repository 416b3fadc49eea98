"""What the STA layer needs from the layers above it, declared here so that `sensorthings` never imports them.

DESIGN.md: imports point `citystream -> {geo, mqtt_bridge} -> ingest -> sensorthings`. The REST handler
must still write Observations through `ingest/` and tell `mqtt_bridge/` what changed, and record what it
did in the platform's audit log; the composition root (`citystream/app.py`) hands it implementations of
these protocols.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sensorthings.model.entities import Entity
from sensorthings.write.data_array import DataArray


@dataclass(frozen=True)
class Change:
    """One entity created or updated by a committed write (deletes are not notified, STA §14.1)."""

    entity: Entity
    id: int
    created: bool
    properties: tuple[str, ...] = ()
    """For an update: the properties that were sent (each gets its property-topic notification)."""
    links: dict[str, int | None] = field(default_factory=dict)
    """Ids of to-one related entities, by relation name, where the writer knows them (saves a query); None
    where the relation is empty (an Observation's other stream)."""
    public: bool = False
    """Notify everyone, whatever the row's audience: the entity has just become the public's to see (a
    rollup's bucket once its stream's publication delay has passed; write/rollups.py checks that it is)."""


class ChangeListener(Protocol):
    @property
    def listening(self) -> bool:
        """False while nobody could be told: callers may then skip building their changes."""
        ...

    def changed(self, changes: Sequence[Change]) -> None:
        """Called after commit; must not block (queue the work)."""


class ObservationSink(Protocol):
    async def create_observation(self, body: Any, *, parents: Mapping[str, int], base_url: str) -> tuple[int, str]:
        """Validate and store one Observation (JSON body as parsed); once committed, return its id and its
        JSON as GET renders it with links under `base_url` (the 201 body). `parents` holds the ids the URL
        gives, by relation name (`Datastreams(1)/Observations` -> {"Datastream": 1}). Raises StaError."""
        ...

    async def create_observations(self, arrays: Sequence[DataArray]) -> list[int | str]:
        """Validate and store the rows of Data Arrays (CreateObservations): per row, in order, the new id or
        why it was not stored. The good rows are stored even when others are bad."""
        ...


@dataclass(slots=True)
class AuditEntry:
    """One request on the record (sensorthings.http.audit builds it, the platform's audit log stores it): a
    write, or a read that may have seen restricted data."""

    at: float
    """When it was answered (seconds since the epoch)."""
    principal_kind: str
    """How the caller authenticated: Principal.kind (anonymous, key, user, oidc, token)."""
    principal: str
    """Whom it names: Principal.name."""
    principal_id: str | None
    """The stable id it is known by (a key id, a user name, a token's sub): Principal.auth_id."""
    method: str
    path: str
    """Path and query as sent, bounded."""
    status: int
    rows: int | None
    """Entities created, changed, linked or deleted; 0 for a refused or failed request; None where not known
    (a read of a collection, a request that failed in a way nobody foresaw)."""
    request_id: str | None = None
    """The request's id (X-Request-ID), where the layer that records knows it; the sink may fill it in."""


class AuditSink(Protocol):
    def record(self, entry: AuditEntry) -> None:
        """Take one entry; must not block or wait for the database (buffer it)."""
