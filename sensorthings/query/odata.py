"""The OData subset STA 1.1 uses in query options: one lark grammar, one typed AST.

`$filter`, `$orderby`, `$select` and `$expand` (with its nested options) are parsed by the same LALR grammar
into the frozen dataclasses below. Literals stay values in the AST; the SQL compiler turns each into a bind
parameter, so no user text ever becomes SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from lark import (
    Lark,
    Token,
    Transformer,
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    v_args,
)
from lark.exceptions import VisitError
from lark.tree import Meta

from sensorthings.model.errors import BadRequest
from sensorthings.model.times import parse_duration

GRAMMAR = r"""
filter: expr
orderby: order_item ("," order_item)*
select: select_item ("," select_item)*
expand: expand_item ("," expand_item)*

order_item: expr DIRECTION?
select_item: NAME
expand_item: NAME ("/" NAME)* ("(" expand_option (";" expand_option)* ")")?
expand_option: "$filter" "=" expr          -> opt_filter
             | "$orderby" "=" orderby_list -> opt_orderby
             | "$select" "=" select_list   -> opt_select
             | "$expand" "=" expand_list   -> opt_expand
             | "$top" "=" INT              -> opt_top
             | "$skip" "=" INT             -> opt_skip
             | "$count" "=" BOOLEAN        -> opt_count
orderby_list: order_item ("," order_item)*
select_list: select_item ("," select_item)*
expand_list: expand_item ("," expand_item)*

?expr: or_expr
?or_expr: and_expr (OR and_expr)*
?and_expr: not_expr (AND not_expr)*
?not_expr: NOT not_expr -> negation
         | comparison
?comparison: additive
           | additive COMPARE additive    -> compare
           | additive IN "(" expr ("," expr)* ")" -> membership
?additive: multiplicative
         | additive ADD_OP multiplicative -> arithmetic
?multiplicative: unary
               | multiplicative MUL_OP unary -> arithmetic
?unary: primary
      | "-" unary -> minus
?primary: literal
        | path
        | function
        | "(" expr ")"

function: NAME "(" [expr ("," expr)*] ")"
path: NAME ("/" NAME)*

literal: STRING   -> string
       | NUMBER   -> number
       | DATETIME -> datetime
       | DATE     -> date
       | TIME     -> time
       | BOOLEAN  -> boolean
       | NULL     -> null
       | GEO      -> geo
       | DURATION -> duration

OR.3: /or(?![\w.@])/i
AND.3: /and(?![\w.@])/i
NOT.3: /not(?![\w.@])/i
IN.3: /in(?![\w.@])/i
COMPARE.3: /(eq|ne|gt|ge|lt|le)(?![\w.@])/i
ADD_OP.3: /(add|sub)(?![\w.@])/i
MUL_OP.3: /(mul|div|mod)(?![\w.@])/i
DIRECTION.3: /(asc|desc)(?![\w.@])/i
BOOLEAN.3: /(true|false)(?![\w.@])/i
NULL.3: /null(?![\w.@])/i
GEO.4: /(geography|geometry)'[^']*'/i
DURATION.4: /duration'[^']*'/i
DATETIME.5: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?/
DATE.4: /\d{4}-\d{2}-\d{2}(?![\dT:])/
TIME.4: /\d{2}:\d{2}(:\d{2}(\.\d+)?)?(?![\d:])/
NUMBER.2: /\d+(\.\d+)?([eE][+-]?\d+)?/
INT: /\d+/
STRING: /'([^']|'')*'/
NAME: /[A-Za-z_@][\w.@]*/

%ignore /[ \t\r\n]+/
"""

_PARSER = Lark(GRAMMAR, parser="lalr", lexer="contextual", start=["filter", "orderby", "select", "expand"],
               propagate_positions=True,
               maybe_placeholders=False)


# ------------------------------------------------------------------------------------------------ AST


@dataclass(frozen=True)
class Literal:
    value: Any  # str, int, Decimal, bool, None, datetime, date, time, Geo, Duration


@dataclass(frozen=True)
class Geo:
    """A WKT literal, e.g. geography'POINT(10 53)'."""

    wkt: str


@dataclass(frozen=True)
class Duration:
    """An ISO 8601 duration literal, e.g. duration'P1DT2H30M': `months` (years count 12) keep their calendar
    meaning, `delta` is the exact rest (a day is 24 hours)."""

    text: str
    months: int = 0
    delta: timedelta = timedelta(0)

    def __str__(self) -> str:
        return f"duration'{self.text}'"


@dataclass(frozen=True)
class Path:
    """A property reference: across relations (`Datastream/ObservedProperty/name`) and/or into JSON
    (`properties/district`, `result/value`)."""

    segments: tuple[str, ...]

    def __str__(self) -> str:
        return "/".join(self.segments)


@dataclass(frozen=True)
class Function:
    name: str  # lower-case
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class Compare:
    op: str  # eq ne gt ge lt le
    left: Expr
    right: Expr


@dataclass(frozen=True)
class In:
    left: Expr
    options: tuple[Expr, ...]


@dataclass(frozen=True)
class Arithmetic:
    op: str  # add sub mul div mod
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Negate:
    operand: Expr


@dataclass(frozen=True)
class Not:
    operand: Expr


@dataclass(frozen=True)
class Logical:
    op: str  # and / or
    operands: tuple[Expr, ...]


Expr = Literal | Path | Function | Compare | In | Arithmetic | Negate | Not | Logical


@dataclass(frozen=True)
class OrderItem:
    expr: Expr
    descending: bool = False


@dataclass(frozen=True)
class ExpandItem:
    """One `$expand` entry; `path` is one navigation property (a/b shorthand is nested on parsing)."""

    path: str
    filter: Expr | None = None
    orderby: tuple[OrderItem, ...] = ()
    select: tuple[str, ...] = ()
    expand: tuple[ExpandItem, ...] = ()
    top: int | None = None
    skip: int = 0
    count: bool = False
    texts: tuple[tuple[str, str], ...] = ()
    """The nested $filter/$orderby/$select/$expand as written, for the nextLink of the expanded collection."""


# ------------------------------------------------------------------------------------------ transform


def _unquote(token: str) -> str:
    return token[1:-1].replace("''", "'")


def _time_value(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class _ToAst(Transformer[Token, Any]):
    def __init__(self, text: str, option: str = "filter") -> None:
        super().__init__()
        self.text = text
        self.option = option

    def _written(self, meta: Meta) -> str:
        """The option's value exactly as the client wrote it (after `$name=`)."""
        return self.text[meta.start_pos:meta.end_pos].split("=", 1)[1].strip()

    # literals
    def string(self, c: list[Token]) -> Literal:
        text = _unquote(c[0])
        if "\x00" in text:
            raise BadRequest("a string literal contains the NUL character, which no stored text can contain")
        return Literal(text)

    def number(self, c: list[Token]) -> Literal:
        text = str(c[0])
        return Literal(int(text) if text.isdigit() else Decimal(text))

    def datetime(self, c: list[Token]) -> Literal:
        return Literal(_time_value(str(c[0])))

    def date(self, c: list[Token]) -> Literal:
        return Literal(date.fromisoformat(str(c[0])))

    def time(self, c: list[Token]) -> Literal:
        return Literal(time.fromisoformat(str(c[0])))

    def boolean(self, c: list[Token]) -> Literal:
        return Literal(str(c[0]).lower() == "true")

    def null(self, c: list[Token]) -> Literal:
        return Literal(None)

    def geo(self, c: list[Token]) -> Literal:
        text = str(c[0])
        return Literal(Geo(text[text.index("'") + 1 : -1]))

    def duration(self, c: list[Token]) -> Literal:
        text = _unquote(str(c[0])[len("duration"):])
        months, delta = parse_duration(text, f"${self.option}")
        return Literal(Duration(text, months, delta))

    # expressions
    def path(self, c: list[Token]) -> Path:
        return Path(tuple(str(t) for t in c))

    def function(self, c: list[Any]) -> Function:
        return Function(str(c[0]).lower(), tuple(c[1:]))

    def compare(self, c: list[Any]) -> Compare:
        return Compare(str(c[1]).lower(), c[0], c[2])

    def membership(self, c: list[Any]) -> In:
        return In(c[0], tuple(c[2:]))

    def arithmetic(self, c: list[Any]) -> Arithmetic:
        return Arithmetic(str(c[1]).lower(), c[0], c[2])

    def minus(self, c: list[Any]) -> Expr:
        operand = c[0]
        if isinstance(operand, Literal) and isinstance(operand.value, int | Decimal):
            return Literal(-operand.value)
        return Negate(operand)

    def negation(self, c: list[Any]) -> Not:
        return Not(c[1])

    def or_expr(self, c: list[Any]) -> Logical:
        return Logical("or", tuple(x for x in c if not isinstance(x, Token)))

    def and_expr(self, c: list[Any]) -> Logical:
        return Logical("and", tuple(x for x in c if not isinstance(x, Token)))

    # option lists
    def filter(self, c: list[Any]) -> Expr:
        expr: Expr = c[0]
        return expr

    def order_item(self, c: list[Any]) -> OrderItem:
        return OrderItem(c[0], len(c) > 1 and str(c[1]).lower() == "desc")

    def orderby(self, c: list[OrderItem]) -> tuple[OrderItem, ...]:
        if len(c) > MAX_ORDERBY_ITEMS:  # a keyset nextLink carries one value per key, a function takes 100
            raise BadRequest(f"$orderby has {len(c)} keys; at most {MAX_ORDERBY_ITEMS} are served")
        return tuple(c)

    orderby_list = orderby

    def select_item(self, c: list[Token]) -> str:
        return str(c[0])

    def select(self, c: list[str]) -> tuple[str, ...]:
        return tuple(c)

    select_list = select

    def expand(self, c: list[ExpandItem]) -> tuple[ExpandItem, ...]:
        return tuple(c)

    expand_list = expand

    def expand_item(self, c: list[Any]) -> ExpandItem:
        names = [str(x) for x in c if isinstance(x, Token)]
        options: dict[str, Any] = {}
        texts: list[tuple[str, str]] = []
        for option in (x for x in c if isinstance(x, tuple) and x and isinstance(x[0], str)):
            key, value = option[0], option[1]
            if key in options:
                raise BadRequest(f"$expand={'/'.join(names)}: ${key} is given twice")
            options[key] = value
            if len(option) == 3:
                texts.append((f"${key}", option[2]))
        item = ExpandItem(names[-1], **options, texts=tuple(texts))
        for name in reversed(names[:-1]):  # Datastreams/Observations == Datastreams($expand=Observations)
            item = ExpandItem(name, expand=(item,))
        return item

    @v_args(meta=True)
    def opt_filter(self, meta: Meta, c: list[Any]) -> tuple[str, Any, str]:
        return ("filter", c[0], self._written(meta))

    @v_args(meta=True)
    def opt_orderby(self, meta: Meta, c: list[Any]) -> tuple[str, Any, str]:
        return ("orderby", c[0], self._written(meta))

    @v_args(meta=True)
    def opt_select(self, meta: Meta, c: list[Any]) -> tuple[str, Any, str]:
        return ("select", c[0], self._written(meta))

    @v_args(meta=True)
    def opt_expand(self, meta: Meta, c: list[Any]) -> tuple[str, Any, str]:
        return ("expand", c[0], self._written(meta))

    def opt_top(self, c: list[Token]) -> tuple[str, Any]:
        return ("top", int(c[0]))

    def opt_skip(self, c: list[Token]) -> tuple[str, Any]:
        if len(c[0]) > 18:
            raise BadRequest(f"$skip inside $expand is too large: {str(c[0])[:30]}")
        return ("skip", int(c[0]))

    def opt_count(self, c: list[Token]) -> tuple[str, Any]:
        return ("count", str(c[0]).lower() == "true")


MAX_EXPRESSION_CHARS = 10_000
MAX_ORDERBY_ITEMS = 32


def parse(option: str, text: str) -> Any:
    """Parse the text of `$filter`, `$orderby`, `$select` or `$expand` (option without the `$`)."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise BadRequest(f"${option} is longer than {MAX_EXPRESSION_CHARS} characters; simplify it")
    try:
        tree = _PARSER.parse(text, start=option)
        return _ToAst(text, option).transform(tree)
    except RecursionError:
        raise BadRequest(f"${option} is nested too deeply; simplify it") from None
    except VisitError as exc:
        if isinstance(exc.orig_exc, RecursionError):
            raise BadRequest(f"${option} is nested too deeply; simplify it") from None
        if isinstance(exc.orig_exc, BadRequest):
            raise exc.orig_exc from None
        if isinstance(exc.orig_exc, ValueError):
            raise BadRequest(f"${option}: {exc.orig_exc}") from None
        raise
    except UnexpectedInput as exc:
        raise BadRequest(_syntax_message(option, text, exc)) from None


def _syntax_message(option: str, text: str, exc: UnexpectedInput) -> str:
    position = getattr(exc, "column", None)
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        where = "at the end"
    else:
        where = f"at position {position}" if position and position > 0 else "at the start"
    expected: set[str] = set()
    if isinstance(exc, UnexpectedToken | UnexpectedEOF):
        expected = set(exc.expected)
    elif isinstance(exc, UnexpectedCharacters):
        expected = set(exc.allowed or ())
    hint = f"; expected {_describe(expected)}" if expected else ""
    context = exc.get_context(text, span=20).split("\n")[0].strip() if position else text[:40]
    return f"${option}: syntax error {where} near {context!r}{hint}"


_TERMINAL_WORDS = {
    "NAME": "a property or function name", "STRING": "a 'string'", "NUMBER": "a number", "RPAR": "')'",
    "LPAR": "'('", "COMMA": "','", "COMPARE": "eq/ne/gt/ge/lt/le", "AND": "and", "OR": "or", "$END": "the end",
    "DIRECTION": "asc/desc", "SEMICOLON": "';'", "SLASH": "'/'", "INT": "an integer", "EQUAL": "'='",
    "MINUS": "'-'", "ADD_OP": "add/sub", "MUL_OP": "mul/div/mod", "IN": "in", "NOT": "not",
}


def _describe(expected: set[str]) -> str:
    words = sorted({"an option such as $filter=" if name.startswith("__ANON") else
                    _TERMINAL_WORDS.get(name, name.lower()) for name in expected})
    return ", ".join(words[:8]) + (" …" if len(words) > 8 else "")


__all__ = [
    "Arithmetic", "Compare", "Duration", "ExpandItem", "Expr", "Function", "Geo", "In", "Literal", "Logical",
    "Negate", "Not", "OrderItem", "Path", "field", "parse",
]
