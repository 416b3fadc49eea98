"""Datastream and MultiDatastream summaries stay true (issue 15, point 7): `phenomenonTime`, `resultTime` and
`observedArea` are the extent of the stream's Observations as they are now (18-088 §8.2.4), not only widened
by writes. Each case changes, moves or deletes Observations over HTTP and reads the summary back, for both
stream kinds: PATCH and PUT of times, a move to another stream (PATCH of its link, `$ref`), a new
FeatureOfInterest, DELETE of one, a filtered DELETE, and DELETE of a FeatureOfInterest (which takes its
Observations along)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.sta_helpers import (
    HTTP,
    assert_error,
    create,
    create_thing_with_location,
    datastream_body,
    delete,
    feature_body,
    observed_property_body,
    patch,
    post,
    put,
    read,
    ref,
    sensor_body,
)

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
Summary = tuple[Any, Any, Any]

# Three FeaturesOfInterest: A and B on a line, C off it.
A, B, C = (10.0, 53.5), (10.2, 53.5), (10.1, 53.7)


@dataclass(frozen=True)
class Kind:
    """One kind of stream, and how its Observations look."""

    set_name: str  # "Datastreams"
    link: str  # the Observation's navigation property to it

    def create(self, sta: str, thing: int, name: str = "stream") -> int:
        if self.link == "Datastream":
            return create(sta, f"Things({thing})/Datastreams",
                          datastream_body(name, Sensor=sensor_body(), ObservedProperty=observed_property_body()))
        unit = {"name": "degree Celsius", "symbol": "°C", "definition": "http://unitsofmeasure.org/ucum.html#para-30"}
        return create(sta, "MultiDatastreams", {
            "name": name, "description": "one component", "observationType": OM + "OM_ComplexObservation",
            "multiObservationDataTypes": [OM + "OM_Measurement"], "unitOfMeasurements": [unit],
            "Thing": ref(thing), "Sensor": sensor_body(), "ObservedProperties": [observed_property_body()]})

    def result(self, value: float) -> Any:
        return value if self.link == "Datastream" else [value]


KINDS = [Kind("Datastreams", "Datastream"), Kind("MultiDatastreams", "MultiDatastream")]


@pytest.fixture(params=KINDS, ids=[k.link for k in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def thing(sta: str) -> int:
    return create_thing_with_location(sta)


@pytest.fixture
def features(sta: str) -> dict[str, int]:
    return {name: create(sta, "FeaturesOfInterest", feature_body(name, *where))
            for name, where in (("A", A), ("B", B), ("C", C))}


def observe(sta: str, kind: Kind, stream: int, time: str, feature: int, result_time: str | None = None,
            value: float = 1.0) -> int:
    body: dict[str, Any] = {"result": kind.result(value), "phenomenonTime": time, "FeatureOfInterest": ref(feature)}
    if result_time is not None:
        body["resultTime"] = result_time
    return create(sta, f"{kind.set_name}({stream})/Observations", body)


SUMMARY = ("phenomenonTime", "resultTime", "observedArea")


def summary(sta: str, kind: Kind, stream: int) -> Summary:
    """The summary as GET renders it; a property left out reads as None here (see assert_no_summary)."""
    body = read(sta, f"{kind.set_name}({stream})")
    return body.get("phenomenonTime"), body.get("resultTime"), body.get("observedArea")


def assert_no_summary(sta: str, kind: Kind, stream: int, thing: int) -> None:
    """No summary, rendered exactly as that of a new stream (left out or null, whichever GET does)."""
    fresh = read(sta, f"{kind.set_name}({kind.create(sta, thing, 'fresh')})")
    body = read(sta, f"{kind.set_name}({stream})")
    assert {k: body[k] for k in SUMMARY if k in body} == {k: fresh[k] for k in SUMMARY if k in fresh}
    assert summary(sta, kind, stream) == NOTHING


def at(where: tuple[float, float]) -> dict[str, Any]:
    return {"type": "Point", "coordinates": list(where)}


def line(a: tuple[float, float], b: tuple[float, float]) -> dict[str, Any]:
    return {"type": "LineString", "coordinates": [list(p) for p in sorted((a, b))]}


def ok(response: Any) -> None:
    assert response.status_code in (200, 204), f"{response.status_code} {response.text}"


T2010, T2012, T2015 = "2010-03-01T00:00:00Z", "2012-06-01T00:00:00Z", "2015-09-01T00:00:00Z"
R2010, R2015 = "2010-03-02T00:00:00Z", "2015-09-02T00:00:00Z"
NOTHING: Summary = (None, None, None)


# ------------------------------------------------------------------ a stream with nothing


def test_a_new_stream_has_no_summary(sta: str, kind: Kind, thing: int) -> None:
    """The reference for a stream whose Observations are all gone (assert_no_summary)."""
    assert summary(sta, kind, kind.create(sta, thing)) == NOTHING


# ------------------------------------------------------------------ updates


def test_patching_the_only_observation_moves_the_summary(sta: str, kind: Kind, thing: int,
                                                         features: dict[str, int]) -> None:
    stream = kind.create(sta, thing)
    observation = observe(sta, kind, stream, T2010, features["A"], R2010)
    assert summary(sta, kind, stream) == (T2010, R2010, at(A))
    ok(patch(sta, f"Observations({observation})", {"phenomenonTime": T2015, "resultTime": R2015}))
    assert summary(sta, kind, stream) == (T2015, R2015, at(A))
    ok(patch(sta, f"Observations({observation})", {"resultTime": None}))
    assert summary(sta, kind, stream) == (T2015, None, at(A))


def test_patching_the_earliest_or_latest_of_several_narrows_to_the_others(sta: str, kind: Kind, thing: int,
                                                                          features: dict[str, int]) -> None:
    stream = kind.create(sta, thing)
    first = observe(sta, kind, stream, T2010, features["A"], R2010)
    observe(sta, kind, stream, T2012, features["A"], T2012)
    last = observe(sta, kind, stream, T2015, features["A"], R2015)
    assert summary(sta, kind, stream) == (f"{T2010}/{T2015}", f"{R2010}/{R2015}", at(A))
    ok(patch(sta, f"Observations({first})", {"phenomenonTime": "2013-01-01T00:00:00Z", "resultTime": T2012}))
    assert summary(sta, kind, stream) == (f"{T2012}/{T2015}", f"{T2012}/{R2015}", at(A))
    ok(patch(sta, f"Observations({last})", {"phenomenonTime": "2011-01-01T00:00:00Z/2014-01-01T00:00:00Z",
                                             "resultTime": "2013-01-01T00:00:00Z"}))
    assert summary(sta, kind, stream) == ("2011-01-01T00:00:00Z/2014-01-01T00:00:00Z",
                                          f"{T2012}/2013-01-01T00:00:00Z", at(A))


def test_a_change_inside_the_extent_keeps_the_summary(sta: str, kind: Kind, thing: int,
                                                      features: dict[str, int]) -> None:
    stream = kind.create(sta, thing)
    observe(sta, kind, stream, T2010, features["A"], R2010)
    middle = observe(sta, kind, stream, T2012, features["A"], T2012)
    observe(sta, kind, stream, T2015, features["B"], R2015)
    before = summary(sta, kind, stream)
    assert before == (f"{T2010}/{T2015}", f"{R2010}/{R2015}", line(A, B))
    ok(patch(sta, f"Observations({middle})", {"phenomenonTime": "2013-01-01T00:00:00Z", "result": kind.result(2)}))
    assert summary(sta, kind, stream) == before
    ok(delete(sta, f"Observations({middle})"))
    assert summary(sta, kind, stream) == before


def test_put_of_an_observation_replaces_what_it_gave(sta: str, kind: Kind, thing: int,
                                                     features: dict[str, int]) -> None:
    stream = kind.create(sta, thing)
    observation = observe(sta, kind, stream, T2010, features["A"], R2010)
    observe(sta, kind, stream, T2015, features["A"])
    ok(put(sta, f"Observations({observation})", {"result": kind.result(3), "phenomenonTime": T2012}))
    assert read(sta, f"Observations({observation})").get("resultTime") is None
    assert summary(sta, kind, stream) == (f"{T2012}/{T2015}", None, at(A))


# ------------------------------------------------------------------ moves to another stream


@pytest.mark.parametrize("how", ["patch", "ref"])
def test_an_observation_moved_to_another_stream_leaves_the_first(sta: str, kind: Kind, thing: int,
                                                                 features: dict[str, int], how: str) -> None:
    first, second = kind.create(sta, thing, "first"), kind.create(sta, thing, "second")
    moving = observe(sta, kind, first, T2010, features["A"], R2010)
    observe(sta, kind, first, T2015, features["B"], R2015)
    observe(sta, kind, second, T2012, features["C"], T2012)
    assert summary(sta, kind, first) == (f"{T2010}/{T2015}", f"{R2010}/{R2015}", line(A, B))
    if how == "patch":
        ok(patch(sta, f"Observations({moving})", {kind.link: ref(second)}))
    else:
        ok(put(sta, f"Observations({moving})/{kind.link}/$ref", ref(second)))
    assert summary(sta, kind, first) == (T2015, R2015, at(B))
    assert summary(sta, kind, second) == (f"{T2010}/{T2012}", f"{R2010}/{T2012}", line(A, C))
    # and back through the other stream's collection
    if how == "patch":
        ok(patch(sta, f"Observations({moving})", {kind.link: ref(first)}))
    else:
        ok(post(sta, f"{kind.set_name}({first})/Observations/$ref", ref(moving)))
    assert summary(sta, kind, first) == (f"{T2010}/{T2015}", f"{R2010}/{R2015}", line(A, B))
    assert summary(sta, kind, second) == (T2012, T2012, at(C))


def test_the_only_observation_moved_away_leaves_no_summary(sta: str, kind: Kind, thing: int,
                                                            features: dict[str, int]) -> None:
    first, second = kind.create(sta, thing, "first"), kind.create(sta, thing, "second")
    moving = observe(sta, kind, first, T2010, features["A"], R2010)
    ok(patch(sta, f"Observations({moving})", {kind.link: ref(second), "phenomenonTime": T2015}))
    assert_no_summary(sta, kind, first, thing)
    assert summary(sta, kind, second) == (T2015, R2010, at(A))


def test_an_observation_moved_to_the_other_kind_of_stream(sta: str, thing: int, features: dict[str, int]) -> None:
    single, multi = KINDS
    datastream, multi_datastream = single.create(sta, thing), multi.create(sta, thing)
    moving = observe(sta, single, datastream, T2010, features["A"], R2010)
    observe(sta, single, datastream, T2015, features["B"])
    ok(patch(sta, f"Observations({moving})", {"MultiDatastream": ref(multi_datastream), "result": [1.5]}))
    assert summary(sta, single, datastream) == (T2015, None, at(B))
    assert summary(sta, multi, multi_datastream) == (T2010, R2010, at(A))
    ok(patch(sta, f"Observations({moving})", {"Datastream": ref(datastream)}))
    assert_no_summary(sta, multi, multi_datastream, thing)
    assert summary(sta, single, datastream) == (f"{T2010}/{T2015}", R2010, line(A, B))


# ------------------------------------------------------------------ FeaturesOfInterest


@pytest.mark.parametrize("how", ["patch", "ref"])
def test_a_new_feature_of_interest_moves_the_area(sta: str, kind: Kind, thing: int, features: dict[str, int],
                                                  how: str) -> None:
    stream = kind.create(sta, thing)
    observation = observe(sta, kind, stream, T2010, features["A"])
    other = observe(sta, kind, stream, T2015, features["B"])
    assert summary(sta, kind, stream)[2] == line(A, B)
    if how == "patch":
        ok(patch(sta, f"Observations({observation})", {"FeatureOfInterest": ref(features["C"])}))
    else:
        ok(put(sta, f"Observations({observation})/FeatureOfInterest/$ref", ref(features["C"])))
    assert summary(sta, kind, stream) == (f"{T2010}/{T2015}", None, line(B, C))
    ok(patch(sta, f"Observations({other})", {"FeatureOfInterest": ref(features["C"])}))
    assert summary(sta, kind, stream) == (f"{T2010}/{T2015}", None, at(C))


def test_a_feature_of_interest_kept_by_another_observation_keeps_the_area(sta: str, kind: Kind, thing: int,
                                                                          features: dict[str, int]) -> None:
    stream = kind.create(sta, thing)
    observe(sta, kind, stream, T2010, features["A"])
    second = observe(sta, kind, stream, T2012, features["A"])
    observe(sta, kind, stream, T2015, features["B"])
    ok(delete(sta, f"Observations({second})"))
    assert summary(sta, kind, stream) == (f"{T2010}/{T2015}", None, line(A, B))


def test_deleting_a_feature_of_interest_takes_its_observations_from_the_summary(
        sta: str, kind: Kind, thing: int, features: dict[str, int]) -> None:
    stream = kind.create(sta, thing)
    observe(sta, kind, stream, T2010, features["A"], R2010)
    observe(sta, kind, stream, T2012, features["B"], T2012)
    observe(sta, kind, stream, T2015, features["C"], R2015)
    assert summary(sta, kind, stream)[2]["type"] == "Polygon"
    ok(delete(sta, f"FeaturesOfInterest({features['C']})"))
    assert summary(sta, kind, stream) == (f"{T2010}/{T2012}", f"{R2010}/{T2012}", line(A, B))
    ok(delete(sta, "FeaturesOfInterest?$filter=name eq 'A' or name eq 'B'"))
    assert_no_summary(sta, kind, stream, thing)


def test_moving_a_feature_of_interest_moves_the_area(sta: str, kind: Kind, thing: int,
                                                     features: dict[str, int]) -> None:
    stream = kind.create(sta, thing)
    observe(sta, kind, stream, T2010, features["A"])
    observe(sta, kind, stream, T2015, features["B"])
    ok(patch(sta, f"FeaturesOfInterest({features['B']})", {"feature": at(C)}))
    assert summary(sta, kind, stream)[2] == line(A, C)
    ok(patch(sta, f"FeaturesOfInterest({features['B']})", {"feature": at(A)}))
    assert summary(sta, kind, stream)[2] == at(A)


def test_a_recomputed_area_is_the_area_that_writes_widened(sta: str, kind: Kind, thing: int,
                                                           features: dict[str, int]) -> None:
    """Widened request by request in one order, recomputed at once in another: the same GeoJSON (a two-point
    area is a LineString in one canonical direction)."""
    stream = kind.create(sta, thing)
    observe(sta, kind, stream, T2012, features["B"])
    observe(sta, kind, stream, T2012, features["A"])
    widened = summary(sta, kind, stream)
    assert widened[2] == line(A, B)
    extra = observe(sta, kind, stream, T2012, features["C"])
    assert summary(sta, kind, stream)[2]["type"] == "Polygon"
    ok(delete(sta, f"Observations({extra})"))  # C's only Observation: the area is read again
    assert summary(sta, kind, stream) == widened
    stream = kind.create(sta, thing, "triangle")
    for name in ("C", "A", "B"):
        observe(sta, kind, stream, T2012, features[name])
    widened = summary(sta, kind, stream)
    assert widened[2]["type"] == "Polygon"
    ok(patch(sta, f"FeaturesOfInterest({features['C']})", {"feature": at(C)}))  # the same place: recomputed
    assert summary(sta, kind, stream) == widened


# ------------------------------------------------------------------ deletes


def test_deleting_the_earliest_the_latest_and_the_last_observation(sta: str, kind: Kind, thing: int,
                                                                   features: dict[str, int]) -> None:
    stream = kind.create(sta, thing)
    first = observe(sta, kind, stream, T2010, features["A"], R2010)
    middle = observe(sta, kind, stream, T2012, features["B"])
    last = observe(sta, kind, stream, T2015, features["C"], R2015)
    ok(delete(sta, f"Observations({first})"))
    assert summary(sta, kind, stream) == (f"{T2012}/{T2015}", R2015, line(B, C))
    ok(delete(sta, f"Observations({last})"))
    assert summary(sta, kind, stream) == (T2012, None, at(B))
    ok(delete(sta, f"Observations({middle})"))
    assert_no_summary(sta, kind, stream, thing)


def test_a_filtered_delete_narrows_every_stream_it_touches(sta: str, kind: Kind, thing: int,
                                                           features: dict[str, int]) -> None:
    first, second, untouched = (kind.create(sta, thing, name) for name in ("first", "second", "untouched"))
    for stream in (first, second):
        observe(sta, kind, stream, T2010, features["A"], R2010)
        observe(sta, kind, stream, T2015, features["B"], R2015)
    observe(sta, kind, second, "2016-01-01T00:00:00Z", features["C"])
    observe(sta, kind, untouched, T2010, features["C"], R2010)
    response = delete(sta, f"Observations?$filter=phenomenonTime lt 2011-01-01T00:00:00Z and "
                           f"{kind.link}/id ne {untouched}")
    assert response.json() == {"deleted": 2}, response.text
    assert summary(sta, kind, first) == (T2015, R2015, at(B))
    assert summary(sta, kind, second) == (f"{T2015}/2016-01-01T00:00:00Z", R2015, line(B, C))
    assert summary(sta, kind, untouched) == (T2010, R2010, at(C))
    response = delete(sta, f"{kind.set_name}({second})/Observations?$filter=true")
    assert response.json() == {"deleted": 2}, response.text
    assert_no_summary(sta, kind, second, thing)
    assert summary(sta, kind, first) == (T2015, R2015, at(B))


def test_a_failed_delete_leaves_the_summary(sta: str, kind: Kind, thing: int, features: dict[str, int]) -> None:
    stream = kind.create(sta, thing)
    observe(sta, kind, stream, T2010, features["A"], R2010)
    before = summary(sta, kind, stream)
    assert_error(delete(sta, "Observations?$filter=year(phenomenonTime) mul 1e308 mul 10 gt 1"), 400)
    assert summary(sta, kind, stream) == before


def test_concurrent_deletes_and_creates_leave_the_exact_summary(sta: str, kind: Kind, thing: int,
                                                                features: dict[str, int]) -> None:
    """Deletes narrowing the stream while new Observations widen it (through ingest, which does not wait for
    them): the summary at the end is the extent of what is left."""
    stream = kind.create(sta, thing)
    hours = [f"2024-05-01T{h:02d}:00:00Z" for h in range(24)]
    old = [observe(sta, kind, stream, hours[h], features["CAB"[h % 3]], hours[h]) for h in range(12)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        deleted = [pool.submit(delete, sta, f"Observations({o})") for o in old]
        created = [pool.submit(observe, sta, kind, stream, hours[h], features["AB"[h % 2]], hours[h])
                   for h in range(12, 24)]
        assert [f.result().status_code for f in deleted] == [200] * 12
        assert all(isinstance(f.result(), int) for f in created)
    exact = (f"{hours[12]}/{hours[23]}", f"{hours[12]}/{hours[23]}", line(A, B))
    assert summary(sta, kind, stream) == exact


def test_a_change_set_narrows_as_its_requests_would(sta: str, kind: Kind, thing: int,
                                                    features: dict[str, int]) -> None:
    """In a $batch change set (one transaction; a POST in it applies the summaries early): the summary at
    its commit is the extent of what is left, and a change set that fails leaves the summary as it was."""
    stream = kind.create(sta, thing)
    first = observe(sta, kind, stream, T2010, features["A"], R2010)
    last = observe(sta, kind, stream, T2015, features["C"], R2015)
    new = {"result": kind.result(2), "phenomenonTime": T2012, "FeatureOfInterest": ref(features["B"])}
    failed = HTTP.post(f"{sta}/$batch", json={"requests": [
        {"id": "1", "atomicityGroup": "g", "method": "delete", "url": f"Observations({first})"},
        {"id": "2", "atomicityGroup": "g", "method": "delete", "url": "Observations(1)"}]})  # no such id
    assert failed.status_code == 200, failed.text
    assert summary(sta, kind, stream) == (f"{T2010}/{T2015}", f"{R2010}/{R2015}", line(A, C))
    response = HTTP.post(f"{sta}/$batch", json={"requests": [
        {"id": "1", "atomicityGroup": "g", "method": "delete", "url": f"Observations({first})"},
        {"id": "2", "atomicityGroup": "g", "method": "post", "url": f"{kind.set_name}({stream})/Observations",
         "body": new},
        {"id": "3", "atomicityGroup": "g", "method": "delete", "url": f"Observations({last})"}]})
    assert [r["status"] for r in response.json()["responses"]] == [200, 201, 200], response.text
    assert summary(sta, kind, stream) == (T2012, None, at(B))
