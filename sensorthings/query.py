"""System query options of a request, validated into one typed object.

The expression options ($filter, $orderby, $select, $expand) are parsed by the OData grammar in odata.py;
this module checks the option names, the numbers and the limits, and remembers what is needed to build
`@iot.nextLink`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode

from sensorthings import odata
from sensorthings.errors import BadRequest
from sensorthings.fields import is_ascii_digits

MAX_SKIP = 2**62  # keeps $skip + $top + 1 inside PostgreSQL's bigint

KNOWN_LATER = {"$resultFormat": "the Data Array / result format issue"}
KNOWN = {"$top", "$skip", "$count", "$orderby", "$filter", "$select", "$expand"}


@dataclass(frozen=True)
class QueryOptions:
    top: int
    skip: int = 0
    count: bool = False
    orderby: tuple[odata.OrderItem, ...] = ()
    filter: odata.Expr | None = None
    select: tuple[str, ...] = ()
    expand: tuple[odata.ExpandItem, ...] = ()
    passthrough: tuple[tuple[str, str], ...] = field(default=())
    """The options as received, minus $skip/$top, kept for building `@iot.nextLink`."""

    def next_query(self, next_skip: int) -> str:
        items = [*self.passthrough, ("$top", str(self.top)), ("$skip", str(next_skip))]
        return urlencode(items, safe="$(),'/:").replace("+", "%20")


def _non_negative_int(name: str, raw: str, maximum: int | None = None) -> int:
    """A non-negative integer; above `maximum` it is an error when no clamp applies ($skip)."""
    if not is_ascii_digits(raw):
        raise BadRequest(f"{name} must be a non-negative integer, got {raw!r}")
    digits = raw.lstrip("0") or "0"
    value = int(digits) if len(digits) <= 20 else 10**20  # beyond every limit; skip converting long text
    if maximum is not None and value > maximum:
        raise BadRequest(f"{name} must be at most {maximum}, got {raw[:30]!r}")
    return value


def parse_query(params: list[tuple[str, str]], *, default_top: int, max_top: int) -> QueryOptions:
    """Validate the system query options of a GET. Custom options (no `$`) are ignored, as OData says."""
    seen: dict[str, str] = {}
    passthrough: list[tuple[str, str]] = []
    for name, value in params:
        if not name.startswith("$"):
            continue
        if name in KNOWN_LATER:
            raise BadRequest(f"{name} is not supported by this server yet; remove it from the request")
        if name not in KNOWN:
            raise BadRequest(f"unknown query option {name}; supported: {', '.join(sorted(KNOWN))}")
        if name in seen:
            raise BadRequest(f"{name} is given twice; give it once")
        seen[name] = value
        if name not in ("$top", "$skip"):
            passthrough.append((name, value))
    top = min(_non_negative_int("$top", seen["$top"]), max_top) if "$top" in seen else default_top
    skip = _non_negative_int("$skip", seen["$skip"], MAX_SKIP) if "$skip" in seen else 0
    count_raw = seen.get("$count", "false")
    if count_raw not in ("true", "false"):
        raise BadRequest(f"$count must be true or false, got {count_raw!r}")

    def expression(option: str) -> object:
        text = seen.get(f"${option}")
        if text is None:
            return None
        if not text.strip():
            raise BadRequest(f"${option} is empty; give it a value or leave it out")
        return odata.parse(option, text)

    return QueryOptions(
        top=top, skip=skip, count=count_raw == "true",
        orderby=expression("orderby") or (),  # type: ignore[arg-type]
        filter=expression("filter"),  # type: ignore[arg-type]
        select=expression("select") or (),  # type: ignore[arg-type]
        expand=expression("expand") or (),  # type: ignore[arg-type]
        passthrough=tuple(passthrough),
    )
