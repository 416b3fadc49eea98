"""A GET turned into its ONE SQL statement: path and query options parsed, compiled, bounded in size,
and cached by URL."""

from __future__ import annotations

from collections import OrderedDict
from urllib.parse import parse_qsl

from sensorthings.model import LATEST
from sensorthings.model.errors import (
    BadRequest,
)
from sensorthings.query.compiler import Compiled, Limits, compile_collection, compile_entity
from sensorthings.query.options import QueryOptions, parse_query
from sensorthings.query.path import ResourcePath, parse_path
from sensorthings.query.visibility import View

COLLECTION_ONLY = ("$filter", "$orderby", "$top", "$skip", "$skiptoken", "$count", "$resultFormat")
MAX_STATEMENT_BYTES = 2 * 1024 * 1024
CompiledRead = tuple[ResourcePath, QueryOptions, Compiled]


def _compile_read(resource: str, query: str, base: str, limits: Limits, version: str, view: View) -> CompiledRead:
    path = parse_path(resource, version)
    params = parse_qsl(query, keep_blank_values=True)
    if not path.is_collection:
        misplaced = sorted({name for name, _ in params if name in COLLECTION_ONLY})
        if misplaced:
            raise BadRequest(f"{', '.join(misplaced)} applies to collections; {resource} is a single entity")
    options = parse_query(params, default_top=limits.default_top, max_top=limits.max_top)
    try:
        compiled = (compile_collection(path, options, base, limits, view=view) if path.is_collection
                    else compile_entity(path, base, options, limits, view=view))
        size = len(compiled.query)  # renders the SQL text once
    except RecursionError:
        raise BadRequest("the query options are nested too deeply; simplify them") from None
    if size > MAX_STATEMENT_BYTES:
        raise BadRequest("the query options expand to an unreasonably large query; simplify them")
    return path, options, compiled


class CompileCache:
    """Compiled GETs by URL, bounded by the total size of their SQL. Dashboards repeat the same requests,
    and parsing plus compiling costs about as much as a small indexed query. Errors are never cached."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str, str, Limits, str, View], CompiledRead] = OrderedDict()
        self._bytes = 0

    def get(self, resource: str, query: str, base: str, limits: Limits, version: str = LATEST, *,
            view: View) -> CompiledRead:
        """The compiled read of `resource?query` under API `version` (the key keeps versions apart even
        where a base URL would not), as `view` has it (query.visibility)."""
        key = (resource, query, base, limits, version, view)
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found
        entry = _compile_read(resource, query, base, limits, version, view)
        self._entries[key] = entry
        self._bytes += len(entry[2].query)
        while self._bytes > self.max_bytes and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted[2].query)
        return entry

