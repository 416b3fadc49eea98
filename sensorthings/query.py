"""Query options (`$top`, `$skip`, `$count`, `$orderby`) parsed into a typed AST.

Expressions are parsed with a real grammar (lark, LALR) so that errors carry a position and so that the
$filter / $expand / $select grammar of the query language extends this one instead of living beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode

from lark import Lark, Token, Transformer, UnexpectedInput

from sensorthings.errors import BadRequest
from sensorthings.fields import is_ascii_digits

MAX_SKIP = 2**62  # keeps $skip + $top + 1 inside PostgreSQL's bigint

GRAMMAR = r"""
?start: orderby

orderby: order_item ("," order_item)*
order_item: expr DIRECTION?

?expr: path

path: NAME ("/" NAME)*

DIRECTION.2: /(asc|desc)(?![A-Za-z0-9_])/i
NAME: /[A-Za-z_@][A-Za-z0-9_.@]*/

%ignore " "
"""

_PARSER = Lark(GRAMMAR, parser="lalr", lexer="contextual", propagate_positions=True, start="start")


@dataclass(frozen=True)
class PropertyPath:
    """A property reference, possibly into JSON (`properties/district`)."""

    segments: tuple[str, ...]

    def __str__(self) -> str:
        return "/".join(self.segments)


@dataclass(frozen=True)
class OrderItem:
    expr: PropertyPath
    descending: bool = False


@dataclass(frozen=True)
class QueryOptions:
    top: int
    skip: int = 0
    count: bool = False
    orderby: tuple[OrderItem, ...] = ()
    passthrough: tuple[tuple[str, str], ...] = field(default=())
    """The options as received, minus $skip/$top, kept for building `@iot.nextLink`."""

    def next_query(self, next_skip: int) -> str:
        items = [*self.passthrough, ("$top", str(self.top)), ("$skip", str(next_skip))]
        return urlencode(items, safe="$(),'/ ").replace(" ", "%20")


class _ToAst(Transformer):
    def path(self, children: list[Token]) -> PropertyPath:
        return PropertyPath(tuple(str(c) for c in children))

    def order_item(self, children: list[object]) -> OrderItem:
        expr = children[0]
        assert isinstance(expr, PropertyPath)
        descending = len(children) > 1 and str(children[1]).lower() == "desc"
        return OrderItem(expr, descending)

    def orderby(self, children: list[OrderItem]) -> tuple[OrderItem, ...]:
        return tuple(children)


def parse_orderby(text: str) -> tuple[OrderItem, ...]:
    try:
        tree = _PARSER.parse(text)
    except UnexpectedInput as exc:
        expected = sorted(getattr(exc, "expected", None) or getattr(exc, "allowed", None) or [])
        hint = f"; expected one of {', '.join(expected)}" if expected else ""
        raise BadRequest(
            f"$orderby: syntax error at position {exc.column}: {exc.get_context(text).strip()!r}{hint}"
        ) from None
    result = _ToAst().transform(tree)
    assert isinstance(result, tuple)
    return result


KNOWN_LATER = {
    "$filter": "the query language issue",
    "$expand": "the query language issue",
    "$select": "the query language issue",
    "$resultFormat": "the Data Array / result format issue",
}
KNOWN = {"$top", "$skip", "$count", "$orderby"}


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
    orderby = parse_orderby(seen["$orderby"]) if "$orderby" in seen else ()
    return QueryOptions(top=top, skip=skip, count=count_raw == "true", orderby=orderby,
                        passthrough=tuple(passthrough))
