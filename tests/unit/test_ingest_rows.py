"""The fast reader of Observation bodies (MQTT payloads, POST Observations) reads exactly as the general
request parser does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.rows import parse_observation
from sensorthings.model.errors import StaError
from sensorthings.model.json_values import parse_observation_json, parse_request_json

NOW = datetime(2024, 5, 1, tzinfo=UTC)
NUMBER_TEXTS = st.one_of(
    st.sampled_from(["21.50", "21.5", "1e5", "1E-3", "-0.0", "0", "-7", "6.02e23", "3.141592653589793",
                     "0.1", "100.000", "12345678901234567890.5"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-10**6, 10**6).map(str),
)


def columns(raw: bytes, parse: Any) -> dict[str, Any] | str:
    try:
        return parse_observation(parse(raw), parents={}, now=NOW).columns
    except StaError as exc:
        return exc.message


@given(result=NUMBER_TEXTS, parameter=st.none() | NUMBER_TEXTS, time=st.sampled_from(
    ["2024-05-01T00:00:00Z", "2024-05-01T00:00:00.123456+02:00", "2024-05-01T00:00:00Z/2024-05-01T01:00:00Z"]))
def test_fast_path_equals_the_general_parser(result: str, parameter: str | None, time: str) -> None:
    parameters = "" if parameter is None else f', "parameters": {{"q": {parameter}, "list": [{parameter}]}}'
    raw = (f'{{"phenomenonTime": "{time}", "result": {result}{parameters}, '
           f'"Datastream": {{"@iot.id": 3}}}}').encode()
    assert columns(raw, parse_observation_json) == columns(raw, parse_request_json)


@pytest.mark.parametrize("raw", [
    b'{"result": 21.50, "Datastream": {"@iot.id": 1}}',
    b'{"result": {"a": 1.50, "b": [2.0]}, "Datastream": {"@iot.id": 1}}',
    b'{"result": "x\\u00e9", "Datastream": {"@iot.id": 1}}',
    b'{"result": 1, "resultQuality": {"v": 0.10}, "Datastream": {"@iot.id": 1}}',
    b'{"result": 1.5, "note": "result: 2.5", "Datastream": {"@iot.id": 1}}',
    b'[1, 2]',
    b'{"result": 1,}',
])
def test_unusual_payloads_read_as_the_general_parser_reads_them(raw: bytes) -> None:
    assert columns(raw, parse_observation_json) == columns(raw, parse_request_json)
