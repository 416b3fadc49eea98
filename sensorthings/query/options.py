"""System query options of a request, validated into one typed object.

The expression options ($filter, $orderby, $select, $expand) are parsed by the OData grammar in odata.py;
this module checks the option names, the numbers and the limits, and remembers what is needed to build
`@iot.nextLink`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson

from sensorthings.model.errors import BadRequest
from sensorthings.model.times import is_ascii_digits
from sensorthings.query import odata

MAX_SKIP = 2**62  # keeps $skip + $top + 1 inside PostgreSQL's bigint

KNOWN = {"$top", "$skip", "$count", "$orderby", "$filter", "$select", "$expand", "$skiptoken", "$resultFormat"}
RESULT_FORMATS = ("dataArray", "CSV", "GeoJSON")


@dataclass(frozen=True)
class QueryOptions:
    top: int
    skip: int = 0
    count: bool = False
    orderby: tuple[odata.OrderItem, ...] = ()
    filter: odata.Expr | None = None
    select: tuple[str, ...] = ()
    expand: tuple[odata.ExpandItem, ...] = ()
    skiptoken: tuple[Any, ...] | None = None
    """Key values of the last row of the previous page (keyset paging), from an opaque `$skiptoken`."""
    result_format: str | None = None  # "dataArray" (STA 1.1 §14.3), "CSV", "GeoJSON", or None for JSON
    passthrough: tuple[tuple[str, str], ...] = field(default=())
    """The options as received, minus $skip/$top/$skiptoken, kept for building `@iot.nextLink`."""
    top_given: bool = False
    """Whether the request gave `$top` (then `top` is it, clamped to the maximum) or `top` is the default."""

    @property
    def offset(self) -> int:
        """The rows the statement passes over (SQL OFFSET): `$skip`, unless a `$skiptoken` gives the position;
        then `$skip` only counts the rows delivered before it and is not applied again."""
        return 0 if self.skiptoken is not None else self.skip

    def next_query(self, next_skip: int, last_key: str | None) -> str:
        """The query of `@iot.nextLink`, as FROST writes it for walkers that read it (Masterportal stops at
        a link whose `$top` is not above its `$skip`): the options, `$top` only when the request gave it
        (clamped), `$skip` = the rows delivered so far (`next_skip`), and, when the order allows it, a keyset
        `$skiptoken` after `last_key` that gives the position (so a late page costs what the first does)."""
        items = [*self.passthrough, *([("$top", str(self.top))] if self.top_given else []), ("$skip", str(next_skip))]
        if last_key is not None:
            items.append(("$skiptoken", encode_skiptoken(last_key, self._orderby_text)))
        return urlencode(items, safe="$(),'/:").replace("+", "%20")

    @property
    def _orderby_text(self) -> str:
        return dict(self.passthrough).get("$orderby", "")


def encode_skiptoken(last_key: str, orderby: str) -> str:
    payload = orjson.dumps({"k": orjson.loads(last_key), "o": orderby})
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_skiptoken(token: str, orderby: str) -> tuple[Any, ...]:
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        keys = payload["k"]
        if payload["o"] != orderby or not isinstance(keys, list):
            raise ValueError
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise BadRequest("$skiptoken is not valid for this request; follow @iot.nextLink as given") from None
    return tuple(keys)


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
        if name not in KNOWN:
            raise BadRequest(f"unknown query option {name}; supported: {', '.join(sorted(KNOWN))}")
        if name in seen:
            if seen[name] == value:  # the same twice (pygeoapi re-sends its $expand with every nextLink)
                continue
            raise BadRequest(f"{name} is given twice with different values; give it once")
        seen[name] = value
        if name not in ("$top", "$skip", "$skiptoken"):
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

    result_format = seen.get("$resultFormat")
    if result_format is not None and result_format not in RESULT_FORMATS:
        raise BadRequest(f"$resultFormat={result_format} is not supported; supported: {', '.join(RESULT_FORMATS)}")

    skiptoken = None
    if "$skiptoken" in seen:  # the position; a $skip beside it is the count delivered so far (`offset`)
        skiptoken = decode_skiptoken(seen["$skiptoken"], seen.get("$orderby", ""))

    return QueryOptions(
        top=top, skip=skip, count=count_raw == "true", skiptoken=skiptoken,
        orderby=expression("orderby") or (),  # type: ignore[arg-type]
        filter=expression("filter"),  # type: ignore[arg-type]
        select=expression("select") or (),  # type: ignore[arg-type]
        expand=expression("expand") or (),  # type: ignore[arg-type]
        result_format=result_format,
        passthrough=tuple(passthrough), top_given="$top" in seen,
    )
