"""The result of compiling a request: one parameterised statement, its bind parameters and its text."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from psycopg import sql


@dataclass(frozen=True)
class Compiled:
    statement: sql.Composed
    params: dict[str, Any]
    rendered: bytes | None = None
    """The statement's text when it is already known (a template's)."""

    @cached_property
    def query(self) -> bytes:
        """The statement as text, rendered once (compiled reads are cached and executed repeatedly)."""
        return self.rendered if self.rendered is not None else self.statement.as_bytes(None)
