"""JSON in and out, bounded and exact: request and MQTT bodies parsed as strict UTF-8 with a depth limit,
numbers kept exact (decimals and integers beyond 64 bits), and values made storable as jsonb."""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

import orjson

from sensorthings.model.errors import BadRequest


class JsonNumber(Decimal):
    """A JSON number that remembers the exact text it was written as (e.g. `21.50`, `6.02e23`), so that a
    stored result reads back exactly as it was sent."""

    text: str

    def __new__(cls, text: str) -> JsonNumber:
        number = super().__new__(cls, text)
        number.text = text
        return number


def dumps_exact(value: Any) -> bytes:
    """JSON bytes of parsed request JSON, numbers written back as the text they were sent as (JsonNumber).
    Integers beyond 64 bits, which orjson does not write, are written as their digits."""
    try:
        return orjson.dumps(value, default=_exact_number)
    except orjson.JSONEncodeError:
        return orjson.dumps(_big_integers_as_text(value), default=_exact_number)


def _big_integers_as_text(value: Any) -> Any:
    if type(value) is int and not -(2**63) <= value < 2**64:
        return orjson.Fragment(str(value))
    if isinstance(value, dict):
        return {k: _big_integers_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_big_integers_as_text(v) for v in value]
    return value


def _exact_number(value: Any) -> orjson.Fragment:
    if isinstance(value, JsonNumber):
        return orjson.Fragment(value.text)
    raise TypeError(f"{type(value).__name__} is not JSON")


_RESULT_NUMBER = re.compile(rb'"result"\s*:\s*(-?[0-9][0-9.eE+-]*)')


def parse_observation_json(raw: bytes) -> Any:
    """An Observation create body (MQTT payload or POST) as `parse_request_json` would parse it, in a
    fraction of the time: orjson, with the exact text of a top-level numeric result recovered from the
    payload (so that `21.50` stays `21.50`). Anything unusual (escapes, which may hide NUL or lone
    surrogates; a float anywhere else, e.g. in `parameters`; a result number that cannot be matched
    unambiguously; any orjson error, such as bytes that are not UTF-8 or nesting beyond orjson's own limit)
    takes the general parser and its error messages."""
    if b"\\u" in raw:
        return parse_request_json(raw)
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return parse_request_json(raw)
    if not isinstance(document, dict) or _has_other_floats(document):
        return parse_request_json(raw)
    _check_depth(document, raw)
    if isinstance(document.get("result"), float):
        numbers = _RESULT_NUMBER.findall(raw)
        if len(numbers) != 1:
            return parse_request_json(raw)
        text = numbers[0].decode()
        if repr(document["result"]) == text:
            return document  # the float prints as sent (21.57): no need to carry the text
        try:
            exact = JsonNumber(text)
        except ArithmeticError:
            return parse_request_json(raw)
        if float(exact) != document["result"]:
            return parse_request_json(raw)
        document["result"] = exact
    return document


def _has_other_floats(document: dict[str, Any]) -> bool:
    """A float anywhere but as the top-level result (e.g. in `parameters`): orjson has lost its text.
    (Plain loops and an explicit stack: generator expressions and recursion made this 12% of the bridge.)"""
    for key, value in document.items():
        kind = type(value)
        if kind is float:
            if key != "result":
                return True
        elif (kind is dict or kind is list) and _contains_float(value):
            return True
    return False


def _contains_float(value: dict[str, Any] | list[Any]) -> bool:
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float:
            return True
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
    return False


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not a JSON number; send a finite number or null")


MAX_JSON_DEPTH = 100
"""Deepest nesting of objects and arrays accepted in a request body or MQTT payload. A deep insert with a
MultiPolygon is about a dozen levels; the bound keeps every later step (validation, serialisation, the
database) far from any recursion limit."""


def parse_request_json(raw: bytes | str) -> Any:
    """Parse request JSON keeping number text (JsonNumber) and rejecting what cannot be stored: NaN and
    Infinity, NUL characters and lone surrogates, bytes that are not UTF-8 (JSON is UTF-8, RFC 8259; a
    lenient decode would let encoded surrogates through to fail deep inside a write), and nesting deeper
    than MAX_JSON_DEPTH."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the request body is not UTF-8 text (invalid bytes at position {exc.start}); "
                         "send JSON encoded as UTF-8") from None
    try:
        document = json.loads(text, parse_float=JsonNumber, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError:  # an integer with more digits than Python converts (4,300)
        raise BadRequest("malformed JSON: a number has too many digits") from None
    except ArithmeticError:  # decimal.InvalidOperation: an exponent beyond what a decimal holds (1e99999999999)
        raise BadRequest("malformed JSON: a number is out of range; numbers must fit a double") from None
    _check_depth(document, text)
    if "\\u" in text and _unstorable_text(document):
        raise BadRequest("text with the NUL character (\\u0000) or an unpaired surrogate (\\ud800-\\udfff) "
                         "cannot be stored; remove it")
    return document


def parse_stored_json(text: str) -> Any:
    """JSON that PostgreSQL rendered from stored data (a page to flatten, an entity to patch), numbers kept
    as their text: the database's own output, so none of a request's checks (or its depth limit, which
    data stored before the limit may exceed) apply."""
    return json.loads(text, parse_float=JsonNumber)


def _too_deep() -> BadRequest:
    return BadRequest(f"the JSON document is nested more than {MAX_JSON_DEPTH} levels deep; flatten it")


def _check_depth(document: Any, raw: bytes | str) -> None:
    """Reject documents nested deeper than MAX_JSON_DEPTH. Counting brackets in the text settles almost every
    document at C speed (fewer brackets than the limit cannot nest deeper); only documents with many
    brackets are walked."""
    if isinstance(raw, str):
        brackets = raw.count("{") + raw.count("[")
    else:
        brackets = raw.count(b"{") + raw.count(b"[")
    if brackets > MAX_JSON_DEPTH and nested_deeper_than(document, MAX_JSON_DEPTH):
        raise _too_deep()


def nested_deeper_than(document: Any, limit: int) -> bool:
    """True when objects and arrays nest more than `limit` levels deep (walked iteratively, containers
    only)."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind is not dict and kind is not list:
            continue
        if depth > limit:
            return True
        for child in (value.values() if kind is dict else value):
            child_kind = type(child)
            if child_kind is dict or child_kind is list:
                stack.append((child, depth + 1))
    return False


def _unstorable_text(value: Any) -> bool:
    """True when some string holds NUL or a lone surrogate (PostgreSQL text cannot store either)."""
    if isinstance(value, str):
        if "\x00" in value:
            return True
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_unstorable_text(k) or _unstorable_text(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unstorable_text(v) for v in value)
    return False


def to_jsonb_text(value: Any, where: str = "the body") -> str:
    """Serialise parsed request JSON for a jsonb column (numbers arrive as Decimal to keep their digits)."""
    try:
        return json.dumps(value, default=_decimal_to_number, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise BadRequest(f"{where} holds a number too large to store; numbers must be finite", field=where) from None


def exact_json_text(value: Any) -> str:
    """An object or array result for jsonb with its numbers as sent (`[21.50, 3]`: jsonb keeps `21.50`),
    as a numeric result keeps its text, in one orjson pass. What orjson cannot write exactly goes to
    `to_jsonb_text`, which rejects numbers beyond a double (`1e400`, a 400 as anywhere else) and keeps
    integers beyond 64 bits by value."""
    try:
        return orjson.dumps(value, default=_finite_exact_number).decode()
    except orjson.JSONEncodeError:
        return to_jsonb_text(value, "result")


def _finite_exact_number(value: Any) -> orjson.Fragment:
    if isinstance(value, JsonNumber) and math.isfinite(value):
        return orjson.Fragment(value.text)
    raise TypeError(f"{value!r} is not a finite JSON number")


def _decimal_to_number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")

