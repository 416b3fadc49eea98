"""Rollup Datastreams (issue 18, part 1): declared through STA, computed by the platform, equal to the plain
Python computation of sensorthings/model/rollups.py after creates (ingest batches), late and out-of-order
data, PATCH, PUT and DELETE of raw Observations; never written by clients."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sensorthings.model.rollups import RollupSpec, reference_rollup
from tests.sta_helpers import (
    HTTP,
    assert_error,
    create,
    create_thing_with_location,
    datastream_body,
    delete,
    observed_property_body,
    patch,
    post,
    put,
    read,
    ref,
    sensor_body,
    values,
)

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"


def numeric_datastream(sta: str, observation_type: str = "OM_Measurement", **extra: Any) -> int:
    thing = create_thing_with_location(sta)
    return create(sta, f"Things({thing})/Datastreams", datastream_body(
        "air temperature", observationType=OM + observation_type, Sensor=sensor_body(),
        ObservedProperty=observed_property_body(), **extra))


def rollup(sta: str, source: int, width: str, function: str, zone: str = "Europe/Berlin", **extra: Any) -> int:
    return create(sta, "Datastreams", {"RollupOf": ref(source),
                                       "rollup": {"width": width, "function": function, "timeZone": zone},
                                       **extra})


def send(sta: str, source: int, observations: list[tuple[datetime, float | int]]) -> list[int]:
    """One ingest batch per call (CreateObservations, a Data Array): the path MQTT and POST share."""
    response = post(sta, "CreateObservations", [{
        "Datastream": ref(source), "components": ["phenomenonTime", "result"],
        "dataArray": [[t.isoformat().replace("+00:00", "Z"), v] for t, v in observations]}])
    assert response.status_code == 201, response.text
    links = response.json()
    assert not [link for link in links if link.startswith("error")], links
    return [int(link.rsplit("(", 1)[1].rstrip(")")) for link in links]


def raw(sta: str, source: int) -> list[tuple[datetime, float | int, int]]:
    found = values(sta, f"Datastreams({source})/Observations", **{"$top": 10000, "$orderby": "id"})
    return [(_start(o["phenomenonTime"]), o["result"], o["@iot.id"]) for o in found]


def computed(sta: str, rollup_id: int) -> dict[datetime, tuple[Any, int]]:
    found = values(sta, f"Datastreams({rollup_id})/Observations", **{"$top": 10000})
    return {_start(o["phenomenonTime"]): (o["result"], o["parameters"]["rollup"]["count"]) for o in found}


def _start(time: str) -> datetime:
    return datetime.fromisoformat(time.split("/")[0].replace("Z", "+00:00")).astimezone(UTC)


def assert_rollup_equals_reference(sta: str, source: int, rollup_id: int, spec: RollupSpec) -> None:
    expected = reference_rollup(raw(sta, source), spec)
    got = computed(sta, rollup_id)
    assert set(got) == set(expected)
    for start, (value, n) in expected.items():
        assert got[start][1] == n, start
        assert got[start][0] == pytest.approx(value, rel=1e-12), (start, got[start], value)


def test_a_rollup_is_a_datastream_computed_from_its_source(sta: str) -> None:
    source = numeric_datastream(sta)
    base = datetime(2024, 3, 30, 20, tzinfo=UTC)  # the night Berlin's clocks go forward
    send(sta, source, [(base + timedelta(minutes=7 * i), 10 + i % 9) for i in range(120)])
    hourly = rollup(sta, source, "PT1H", "mean")
    daily = rollup(sta, source, "P1D", "max")
    document = read(sta, f"Datastreams({hourly})")
    assert document["rollup"] == {"width": "PT1H", "function": "mean", "timeZone": "Europe/Berlin",
                                  "finalAfter": "PT1H"}
    assert document["observationType"] == OM + "OM_Measurement"
    assert document["name"] == "air temperature (mean per PT1H)"
    assert read(sta, f"Datastreams({hourly})/RollupOf")["@iot.id"] == source
    assert sorted(d["@iot.id"] for d in values(sta, f"Datastreams({source})/Rollups")) == [hourly, daily]
    assert read(sta, f"Datastreams({hourly})/Thing")["@iot.id"] == read(sta, f"Datastreams({source})/Thing")["@iot.id"]
    for rollup_id, spec in ((hourly, RollupSpec("PT1H", "mean", "Europe/Berlin")),
                            (daily, RollupSpec("P1D", "max", "Europe/Berlin"))):
        assert_rollup_equals_reference(sta, source, rollup_id, spec)
    days = values(sta, f"Datastreams({daily})/Observations", **{"$orderby": "phenomenonTime"})
    assert days[1]["phenomenonTime"] == "2024-03-30T23:00:00Z/2024-03-31T22:00:00Z"  # a 23-hour local day
    summary = read(sta, f"Datastreams({daily})")["phenomenonTime"]
    assert summary.startswith("2024-03-29T23:00:00Z/")


@pytest.mark.parametrize("function", ["count", "mean", "min", "max", "first", "last"])
def test_batches_late_data_updates_and_deletes_keep_it_equal(sta: str, function: str) -> None:
    source = numeric_datastream(sta)
    spec = RollupSpec("PT15M", function, "Europe/Berlin")
    rollup_id = rollup(sta, source, spec.width, spec.function)
    rng = random.Random(function)
    base = datetime(2024, 10, 26, 23, tzinfo=UTC)  # Berlin's clocks go back in this night
    for _ in range(4):  # batches, each with late and out-of-order Observations
        batch = [(base + timedelta(seconds=rng.randrange(0, 4 * 3600)), rng.choice([rng.randrange(-5, 40),
                                                                                    round(rng.uniform(-5, 40), 2)]))
                 for _ in range(rng.randrange(1, 60))]
        send(sta, source, batch)
        assert_rollup_equals_reference(sta, source, rollup_id, spec)
    observations = raw(sta, source)
    changed, moved, gone = rng.sample(observations, 3)
    assert patch(sta, f"Observations({changed[2]})", {"result": 99.5}).status_code == 200
    assert patch(sta, f"Observations({moved[2]})", {
        "phenomenonTime": (base + timedelta(hours=7)).isoformat().replace("+00:00", "Z")}).status_code == 200
    assert delete(sta, f"Observations({gone[2]})").status_code == 200
    assert_rollup_equals_reference(sta, source, rollup_id, spec)


def test_a_bucket_emptied_by_deletes_loses_its_observation(sta: str) -> None:
    source = numeric_datastream(sta)
    rollup_id = rollup(sta, source, "PT1H", "count", zone="UTC")
    ids = send(sta, source, [(datetime(2024, 5, 1, 10, 5, tzinfo=UTC), 1),
                             (datetime(2024, 5, 1, 11, 5, tzinfo=UTC), 2)])
    assert len(computed(sta, rollup_id)) == 2
    assert delete(sta, f"Observations({ids[0]})").status_code == 200
    assert computed(sta, rollup_id) == {datetime(2024, 5, 1, 11, tzinfo=UTC): (1, 1)}


def test_sum_only_for_counts_and_totals(sta: str) -> None:
    temperatures = numeric_datastream(sta)
    response = post(sta, "Datastreams", {"RollupOf": ref(temperatures), "rollup": {"width": "P1D", "function": "sum"}})
    assert_error(response, 400, "counts or totals")
    counts = numeric_datastream(sta, "OM_CountObservation")
    send(sta, counts, [(datetime(2024, 5, 1, h, tzinfo=UTC), h) for h in range(24)])
    daily = rollup(sta, counts, "P1D", "sum", zone="UTC")
    assert computed(sta, daily) == {datetime(2024, 5, 1, tzinfo=UTC): (sum(range(24)), 24)}
    assert read(sta, f"Datastreams({daily})")["observationType"] == OM + "OM_CountObservation"
    rain = numeric_datastream(sta, properties={"resultsAreTotals": True})
    assert rollup(sta, rain, "P1M", "sum")


def test_clients_cannot_write_what_the_platform_computes(sta: str) -> None:
    source = numeric_datastream(sta)
    send(sta, source, [(datetime(2024, 5, 1, 10, tzinfo=UTC), 1)])
    rollup_id = rollup(sta, source, "PT1H", "mean")
    assert_error(post(sta, f"Datastreams({rollup_id})/Observations", {"result": 3}), 400, "is a rollup of")
    refused = post(sta, "CreateObservations", [{"Datastream": ref(rollup_id), "components": ["result"],
                                                "dataArray": [[3]]}])
    assert refused.status_code == 201 and refused.json()[0].startswith("error") and "is a rollup of" in refused.text
    computed_id = values(sta, f"Datastreams({rollup_id})/Observations")[0]["@iot.id"]
    assert_error(patch(sta, f"Observations({computed_id})", {"result": 5}), 400, "is a rollup of")
    assert_error(delete(sta, f"Observations({computed_id})"), 400, "is a rollup of")
    assert_error(patch(sta, f"Datastreams({rollup_id})", {"rollup": {"width": "P1D", "function": "mean"}}), 400,
                 "cannot change")
    assert_error(patch(sta, f"Datastreams({rollup_id})", {"RollupOf": ref(source + 1000)}), 400, "cannot change")
    assert patch(sta, f"Datastreams({rollup_id})", {"name": "hourly mean"}).status_code == 200
    kept = read(sta, f"Datastreams({rollup_id})", **{"$select": "name,description,observationType,unitOfMeasurement"})
    assert put(sta, f"Datastreams({rollup_id})", kept).status_code == 200
    assert read(sta, f"Datastreams({rollup_id})")["rollup"]["width"] == "PT1H"  # a PUT keeps it
    assert_error(post(sta, "Datastreams", {"RollupOf": ref(rollup_id), "rollup": {"width": "P1D", "function": "max"}}),
                 400, "itself a rollup")
    category = create(sta, "Datastreams", datastream_body(
        observationType=OM + "OM_CategoryObservation", Thing=ref(read(sta, f"Datastreams({source})/Thing")["@iot.id"]),
        Sensor=sensor_body(), ObservedProperty=observed_property_body()))
    assert_error(post(sta, "Datastreams", {"RollupOf": ref(category), "rollup": {"width": "P1D", "function": "count"}}),
                 400, "aggregate numbers")
    assert_error(post(sta, "Datastreams", {"rollup": {"width": "P1D", "function": "count"}}), 400, "RollupOf")


def test_deleting_the_source_deletes_its_rollups(sta: str) -> None:
    source = numeric_datastream(sta)
    rollup_id = rollup(sta, source, "PT1H", "mean")
    assert delete(sta, f"Datastreams({source})").status_code == 200
    assert HTTP.get(f"{sta}/Datastreams({rollup_id})").status_code == 404


def test_a_bucket_may_start_in_a_month_without_raw_data(sta: str) -> None:
    """A local month east of UTC starts on the last day of the UTC month before, where no partition may
    exist yet: an ingest batch and a rollup's creation both create it."""
    source = numeric_datastream(sta)
    monthly = rollup(sta, source, "P1M", "max")
    send(sta, source, [(datetime(2031, 7, 20, 12, tzinfo=UTC), 4)])  # only July 2031 has raw data
    assert computed(sta, monthly) == {datetime(2031, 6, 30, 22, tzinfo=UTC): (4, 1)}
    later = numeric_datastream(sta)
    send(sta, later, [(datetime(2032, 3, 15, 12, tzinfo=UTC), 7)])
    assert computed(sta, rollup(sta, later, "P1M", "min")) == {datetime(2032, 2, 29, 23, tzinfo=UTC): (7, 1)}


def test_buckets_that_retention_cut_into_are_not_computed_again(sta: str, database_url: str) -> None:
    from tests.sta.test_retention import run_pass  # noqa: PLC0415 (its fixtures stay in its module)

    source = numeric_datastream(sta, retention="P1D")
    hourly = rollup(sta, source, "PT1H", "max", zone="UTC")
    early, late, later = send(sta, source, [(datetime(2024, 5, 2, 10, 5, tzinfo=UTC), 1),
                                            (datetime(2024, 5, 2, 10, 50, tzinfo=UTC), 2),
                                            (datetime(2024, 5, 2, 12, 5, tzinfo=UTC), 3)])
    run_pass(database_url, datetime(2024, 5, 3, 10, 30, tzinfo=UTC))  # the horizon: 2024-05-02T10:30Z
    assert read(sta, f"Datastreams({source})")["retainedFrom"] == "2024-05-02T10:30:00Z"
    assert [o[2] for o in raw(sta, source)] == [late, later]
    assert patch(sta, f"Observations({late})", {"result": 5}).status_code == 200
    assert patch(sta, f"Observations({later})", {"result": 7}).status_code == 200
    assert computed(sta, hourly) == {datetime(2024, 5, 2, 10, tzinfo=UTC): (2, 2),  # as it was: half its raw is gone
                                     datetime(2024, 5, 2, 12, tzinfo=UTC): (7, 1)}
