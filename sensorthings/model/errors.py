"""Client-facing errors. Every mistake a client can make ends as one of these, never as a 500."""

from __future__ import annotations

from datetime import datetime


class StaError(Exception):
    """An error with an HTTP status and a message that tells the client what to fix."""

    status: int = 400
    headers: dict[str, str] | None = None
    """Response headers the error needs (a 401's WWW-Authenticate)."""

    def __init__(self, message: str, *, status: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.status, "type": "error", "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class BadRequest(StaError):
    status = 400


class NotFound(StaError):
    status = 404


class Conflict(StaError):
    status = 409


class PayloadTooLarge(StaError):
    status = 413


class ServiceUnavailable(StaError):
    status = 503


class PartitionMissing(Exception):
    """A write needs a time partition that does not exist yet. Not a client error: the caller rolls back,
    creates the partition outside any transaction and retries (see sta_ensure_observation_partition)."""

    def __init__(self, time: datetime) -> None:
        super().__init__(f"no observation partition for {time.isoformat()}")
        self.time = time
