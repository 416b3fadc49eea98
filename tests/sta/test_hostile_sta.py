"""Hostile requests to the SensorThings API (issue 13, items 2 and 4): bodies nested thousands deep, bytes
that are not UTF-8 (raw surrogates), too many $orderby keys, a PATCH racing a DELETE. Each is a 4xx that
says what to fix, stores nothing, and leaves the API serving."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from tests.sta_helpers import (
    ADMIN,
    assert_error,
    counts,
    create,
    create_datastream,
    get,
    post,
    send_raw,
    thing_body,
)

SURROGATE = b"\xed\xa0\x80"  # U+D800 encoded as if it were a character: not UTF-8


def nested(depth: int) -> bytes:
    return b'{"name": "t", "description": "d", "properties": {"a": ' + b"[" * depth + b"]" * depth + b"}}"


def assert_serving(sta: str) -> None:
    assert get(sta, "Things").status_code == 200


@pytest.mark.parametrize("depth", [101, 1500, 5000])
@pytest.mark.parametrize(("method", "path", "wrap"), [
    ("POST", "Things", lambda body: body),
    ("POST", "Datastreams(1)/Observations", lambda body: body.replace(b'"name": "t", "description": "d", '
                                                                        b'"properties"', b'"result": 1, "parameters"')),
    ("POST", "CreateObservations", lambda body: b"[" + body + b"]"),
    ("POST", "$batch", lambda body: b'{"requests": [{"id": "1", "method": "post", "url": "Things", "body": '
                                    + body + b"}]}"),
    ("PATCH", "Things(1)", lambda body: body),
])
def test_bodies_nested_too_deep(sta: str, method: str, path: str, wrap: object, depth: int) -> None:
    thing = create(sta, "Things", thing_body())
    create_datastream(sta, thing)
    before = counts(sta)
    body = wrap(nested(depth))  # type: ignore[operator]
    assert_error(send_raw(method, sta, path, body), 400, "nested")
    assert counts(sta) == before
    assert_serving(sta)


def test_nesting_within_the_bound_is_stored(sta: str) -> None:
    thing = create(sta, "Things", thing_body(properties={"a": orjson.loads(b"[" * 90 + b"]" * 90)}))
    assert get(sta, f"Things({thing})").json()["properties"]["a"] == orjson.loads(b"[" * 90 + b"]" * 90)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "Things", b'{"name": "x", "description": "y", "properties": {"x": "' + SURROGATE + b'"}}'),
    ("POST", "Datastreams(1)/Observations", b'{"result": 1, "parameters": {"x": "' + SURROGATE + b'"}}'),
    ("POST", "Datastreams(1)/Observations", b'{"result": "' + SURROGATE + b'"}'),
    ("PATCH", "Things(1)", b'{"properties": {"x": "' + SURROGATE + b'"}}'),
    ("POST", "$batch", b'{"requests": [{"id": "1", "method": "post", "url": "Things", "body": {"name": "'
     + SURROGATE + b'", "description": "d"}}]}'),
    ("POST", "CreateObservations", b'[{"Datastream": {"@iot.id": 1}, "components": ["result"], "dataArray": [["'
     + SURROGATE + b'"]]}]'),
    ("POST", "Things", b'{"name": "\xff\xfe", "description": "y"}'),
])
def test_bytes_that_are_not_utf8(sta: str, method: str, path: str, body: bytes) -> None:
    thing = create(sta, "Things", thing_body())
    create_datastream(sta, thing)
    before = counts(sta)
    assert_error(send_raw(method, sta, path, body), 400, "UTF-8")
    assert counts(sta) == before
    assert_serving(sta)


@pytest.mark.parametrize("number", [b"1e99999999999999999999", b"-1e-99999999999999999999", b"9" * 5000])
def test_numbers_beyond_range(sta: str, number: bytes) -> None:
    """An exponent beyond what a decimal holds raised decimal.InvalidOperation: a 500 on every JSON body."""
    before = counts(sta)
    assert_error(send_raw("POST", sta, "Things", b'{"name": "x", "description": "y", "properties": {"a": '
                          + number + b"}}"), 400, "number")
    assert counts(sta) == before


def test_escaped_lone_surrogates_are_still_refused(sta: str) -> None:
    assert_error(send_raw("POST", sta, "Things", b'{"name": "\\ud800", "description": "y"}'), 400, "surrogate")


def test_too_many_orderby_keys(sta: str) -> None:
    create(sta, "Things", thing_body())
    for keys in (2000, 100, 33):
        assert_error(get(sta, "Things", params={"$orderby": ",".join(["name"] * keys)}), 400, "$orderby")
    assert_error(get(sta, "Things", params={"$expand": "Datastreams($orderby=" + ",".join(["name"] * 40) + ")"}),
                 400, "$orderby")
    assert get(sta, "Things", params={"$orderby": ",".join(["name"] * 32), "$top": 1}).status_code == 200
    assert get(sta, "Observations", params={"$orderby": ",".join(["result"] * 32)}).status_code == 200


def test_patch_racing_delete(sta: str) -> None:
    """A PATCH that finds its entity and then loses it to a concurrent DELETE is a 404, not a TypeError."""
    async def race() -> list[tuple[str, int]]:
        outcomes = []
        async with httpx.AsyncClient(timeout=30, headers=ADMIN) as client:
            for n in range(25):
                thing = create(sta, "Things", thing_body(f"racer {n}"))
                answers = await asyncio.gather(
                    client.patch(f"{sta}/Things({thing})", json=[{"name": "x"}, {}, {"properties": {}}][n % 3]),
                    client.delete(f"{sta}/Things({thing})"),
                    client.patch(f"{sta}/Things({thing})", content=b'[{"op": "replace", "path": "/name", '
                                 b'"value": "y"}]', headers={"content-type": "application/json-patch+json"}))
                outcomes += [(a.request.method, a.status_code) for a in answers]
        return outcomes

    outcomes = asyncio.run(race())
    assert {status for _, status in outcomes} <= {200, 404}, outcomes
    assert ("DELETE", 200) in outcomes


def _collection(depth: int) -> dict[str, object]:
    geometry: dict[str, object] = {"type": "Point", "coordinates": [10.0, 53.5]}
    for _ in range(depth):
        geometry = {"type": "GeometryCollection", "geometries": [geometry]}
    return geometry


def test_geometry_collections_nested_too_deep(sta: str) -> None:
    """PostGIS's GeoJSON reader gives up at 32 levels with an internal error (a 500 before)."""
    body = {"name": "n", "description": "d", "encodingType": "application/geo+json"}
    assert_error(post(sta, "Locations", {**body, "location": _collection(30)}), 400, "nested")
    assert_error(post(sta, "FeaturesOfInterest", {**body, "feature": _collection(9)}), 400, "nested")
    assert post(sta, "Locations", {**body, "location": _collection(5)}).status_code == 201


@pytest.mark.parametrize("result_format", ["CSV", "GeoJSON"])
def test_result_formats_with_integers_beyond_64_bits(sta: str, result_format: str) -> None:
    """Found by schemathesis: a Sensor whose metadata is 2^64 made $resultFormat=CSV/GeoJSON a 500."""
    create(sta, "Sensors", {"name": "s", "description": "d", "encodingType": "application/json",
                            "metadata": 18446744073709551616})
    response = get(sta, "Sensors", params={"$resultFormat": result_format})
    assert response.status_code == 200, response.text
    assert "18446744073709551616" in response.text
