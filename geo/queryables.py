"""What a collection exposes to `filter`, `sortby` and property filters: a name, a SQL expression and a type.

The CQL2 compiler, the sortby/keyset code, the `/queryables` and `/sortables` JSON Schemas and the OpenAPI
document all read these; a collection declares each one once (see geo/collections.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from psycopg import sql

Kind = Literal["string", "number", "integer", "boolean", "datetime", "geometry"]

SQL_TYPES: dict[str, str] = {
    "string": "text",
    "number": "double precision",
    "integer": "bigint",
    "boolean": "boolean",
    "datetime": "timestamptz",
    "geometry": "geometry",
}
"""The PostgreSQL type a bound literal is cast to when compared with a queryable of that kind."""


@dataclass(frozen=True)
class Queryable:
    """One filterable property of a collection.

    `expression` is SQL over the collection's source row (alias `c`), of the type SQL_TYPES[kind];
    geometries are in EPSG:4326 (lon/lat axis order, as CRS84). A datetime queryable whose features span an
    interval also gives `end_expression` (NULL or equal to the start for an instant); temporal CQL2
    predicates then compare intervals, comparisons (=, <, …) use the start.
    """

    name: str
    kind: Kind
    expression: sql.Composable
    description: str = ""
    end_expression: sql.Composable | None = None
    sortable: bool = True

    @property
    def sql_type(self) -> sql.SQL:
        return sql.SQL(SQL_TYPES[self.kind])  # noqa: S608 - a fixed type name, not user input
