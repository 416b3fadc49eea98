"""Rollup buckets are provisional until their rollup's `finalAfter` has passed since their end, then final
(`parameters.rollup.final`); the finalizer makes due buckets final and notifies (citystream/rollup_finalizer.py).
Also what keeps a rollup's Observations whole: a filtered DELETE never matches them, and deleting a
FeatureOfInterest that one of them names writes it again from the bucket's other raw Observations."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from psycopg_pool import AsyncConnectionPool

from citystream.embedded import find_free_port
from citystream.rollup_finalizer import RollupFinalizer
from citystream.settings import Settings
from sensorthings.write.ports import Change
from tests.conftest import running_app
from tests.mqtt_helpers import wait_for
from tests.notify_helpers import notify
from tests.sta.test_rollups import computed, numeric_datastream, rollup, send
from tests.sta_helpers import HTTP, create, delete, read, values


def rollup_observations(sta: str, rollup_id: int) -> list[dict[str, Any]]:
    return values(sta, f"Datastreams({rollup_id})/Observations", **{"$orderby": "phenomenonTime"})


MARGIN = 8
"""Seconds a test has to write its bucket and see it provisional (a loaded CI machine needs a few)."""


def minute_just_ended() -> tuple[datetime, int]:
    """A time in the minute before this one, and a lateness (whole seconds) that ends MARGIN s from now for
    that minute's PT1M bucket."""
    now = datetime.now(UTC)
    this_minute = now.replace(second=0, microsecond=0)
    return this_minute - timedelta(seconds=30), int((now - this_minute).total_seconds()) + MARGIN


@dataclasses.dataclass
class Listened:
    """A ChangeListener that keeps what it is told (the finalizer's notifications, fed to a real notifier)."""

    changes: list[Change] = dataclasses.field(default_factory=list)
    listening: bool = True

    def changed(self, changes: Sequence[Change]) -> None:
        self.changes.extend(changes)


def finalize(database_url: str) -> tuple[int, list[Change]]:
    async def run() -> tuple[int, list[Change]]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, min_size=1, max_size=1, open=False)
        await pool.open(wait=True)
        try:
            listened = Listened()
            made = await RollupFinalizer(pool, listened, interval=0).run_once()
            return made, listened.changes
        finally:
            await pool.close()
    return asyncio.run(run())


def test_old_buckets_are_final_and_the_running_one_provisional(sta: str) -> None:
    source = numeric_datastream(sta)
    now = datetime.now(UTC)
    send(sta, source, [(datetime(2024, 5, 1, 10, 5, tzinfo=UTC), 1.5), (now, 2.5)])
    hourly = rollup(sta, source, "PT1H", "max", zone="UTC")
    assert read(sta, f"Datastreams({hourly})")["rollup"]["finalAfter"] == "PT1H"
    old, running = rollup_observations(sta, hourly)
    assert old["parameters"]["rollup"]["final"] is True
    assert running["parameters"]["rollup"] == {"width": "PT1H", "function": "max", "timeZone": "UTC",
                                               "finalAfter": "PT1H", "count": 1, "final": False}
    send(sta, source, [(datetime(2024, 5, 1, 10, 50, tzinfo=UTC), 7)])  # late data into a final bucket
    old_again = rollup_observations(sta, hourly)[0]
    assert old_again["@iot.id"] == old["@iot.id"] and old_again["result"] == 7
    assert old_again["parameters"]["rollup"]["final"] is True


def test_the_finalizer_makes_due_buckets_final_and_notifies(sta: str, database_url: str) -> None:
    source = numeric_datastream(sta)
    at, lateness = minute_just_ended()
    minutely = create(sta, "Datastreams", {"RollupOf": {"@iot.id": source}, "rollup": {
        "width": "PT1M", "function": "mean", "timeZone": "UTC", "finalAfter": f"PT{lateness}S"}})
    send(sta, source, [(datetime(2024, 5, 1, 10, 5, tzinfo=UTC), 1), (at, 4), (at + timedelta(seconds=1), 6)])
    old, recent = rollup_observations(sta, minutely)
    assert (old["parameters"]["rollup"]["final"], recent["parameters"]["rollup"]["final"]) == (True, False)
    assert finalize(database_url)[0] == 0  # not due yet
    time.sleep(MARGIN + 0.5)
    made, changes = finalize(database_url)
    assert made == 1 and [c.id for c in changes] == [recent["@iot.id"]]
    now_final = read(sta, f"Observations({recent['@iot.id']})")
    assert now_final["parameters"]["rollup"]["final"] is True and now_final["result"] == 5
    assert finalize(database_url)[0] == 0  # once
    topic = f"v1.1/Datastreams({minutely})/Observations"
    run = notify(database_url, sta, [topic, f"v1.1/Observations({recent['@iot.id']})/parameters"], changes)
    assert [m.json() for m in run.published.on(topic)] == [now_final]
    assert run.published.on(f"v1.1/Observations({recent['@iot.id']})/parameters")[0].json() == {
        "parameters": now_final["parameters"]}


def test_the_platform_runs_the_finalizer(database_url: str, sta: str) -> None:
    settings = Settings(database_url=database_url, mqtt_url=None, host="127.0.0.1", http_port=find_free_port(),
                        rollup_finalize_seconds=1)
    with running_app(settings, database_url) as url:
        own = f"{url}/v1.1"
        source = numeric_datastream(own)
        at, lateness = minute_just_ended()
        minutely = create(own, "Datastreams", {"RollupOf": {"@iot.id": source}, "rollup": {
            "width": "PT1M", "function": "count", "timeZone": "UTC", "finalAfter": f"PT{lateness}S"}})
        send(own, source, [(at, 4)])
        wait_for(lambda: rollup_observations(own, minutely)[0]["parameters"]["rollup"]["final"], timeout=20,
                 what="the bucket to be made final")


def test_a_filtered_delete_never_matches_a_rollups_observations(sta: str) -> None:
    source = numeric_datastream(sta)
    daily = rollup(sta, source, "P1D", "count", zone="UTC")
    send(sta, source, [(datetime(2024, 5, 1, 10, 30, tzinfo=UTC), 1), (datetime(2024, 5, 1, 11, 30, tzinfo=UTC), 1)])
    response = HTTP.delete(f"{sta}/Observations", params={"$filter": "phenomenonTime lt 2024-05-01T11:00:00Z"},
                           timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": 1}  # the 10:30 one; not the day's (which begins at midnight)
    assert computed(sta, daily) == {datetime(2024, 5, 1, tzinfo=UTC): (1, 1)}


def test_deleting_the_feature_a_rollup_observation_names_writes_it_again(sta: str) -> None:
    source = numeric_datastream(sta)
    hourly = rollup(sta, source, "PT1H", "max", zone="UTC")
    first, last = (create(sta, "FeaturesOfInterest", {
        "name": name, "description": name, "encodingType": "application/geo+json",
        "feature": {"type": "Point", "coordinates": [10.0 + i, 53.5]}}) for i, name in enumerate(("a", "b")))
    for feature, minute, value in ((first, 5, 3), (last, 50, 9)):
        created = HTTP.post(f"{sta}/Datastreams({source})/Observations", json={
            "phenomenonTime": f"2024-05-01T10:{minute:02d}:00Z", "result": value,
            "FeatureOfInterest": {"@iot.id": feature}}, timeout=30)
        assert created.status_code == 201, created.text
    before = rollup_observations(sta, hourly)
    assert [(o["result"], o["parameters"]["rollup"]["count"]) for o in before] == [(9, 2)]
    assert read(sta, f"Observations({before[0]['@iot.id']})/FeatureOfInterest")["@iot.id"] == last
    assert delete(sta, f"FeaturesOfInterest({last})").status_code == 200  # takes its raw and rollup Observation
    after = rollup_observations(sta, hourly)
    assert [(o["@iot.id"], o["result"], o["parameters"]["rollup"]["count"]) for o in after] == [
        (before[0]["@iot.id"], 3, 1)]
    assert read(sta, f"Observations({after[0]['@iot.id']})/FeatureOfInterest")["@iot.id"] == first


def test_a_rollups_observed_area_covers_its_buckets_features(sta: str) -> None:
    source = numeric_datastream(sta)
    merged = rollup(sta, source, "P1D", "count", zone="UTC")  # before any data: kept by ingest batches
    send(sta, source, [(datetime(2024, 5, 1, 10, 5, tzinfo=UTC), 1)])
    backfilled = rollup(sta, source, "PT1H", "max", zone="UTC")  # computed by the REST writer
    area = read(sta, f"Datastreams({source})")["observedArea"]
    assert area is not None
    assert read(sta, f"Datastreams({merged})")["observedArea"] == area
    assert read(sta, f"Datastreams({backfilled})")["observedArea"] == area


def anonymous_observations(sta: str, rollup_id: int) -> list[dict[str, Any]]:
    response = httpx.get(f"{sta}/Datastreams({rollup_id})/Observations", timeout=30)
    assert response.status_code == 200, response.text
    return list(response.json()["value"])


def test_a_delayed_streams_buckets_reach_the_public_once_the_delay_has_passed(sta: str, database_url: str) -> None:
    at, delay = minute_just_ended()
    source = numeric_datastream(sta, privacy={"publicationDelay": f"PT{delay}S", "minimumCount": 2})
    minutely = create(sta, "Datastreams", {"RollupOf": {"@iot.id": source}, "rollup": {
        "width": "PT1M", "function": "max", "timeZone": "UTC", "finalAfter": "P1D"}})
    send(sta, source, [(at, 4), (at + timedelta(seconds=1), 6),  # a bucket of two: public after the delay
                       (at - timedelta(minutes=5), 1)])  # one of one: never public (minimumCount 2)
    assert [o["result"] for o in rollup_observations(sta, minutely)] == [1, 6]  # the operator sees both
    assert anonymous_observations(sta, minutely) == []
    assert finalize(database_url) == (0, [])  # the delay has not passed: nothing released yet
    time.sleep(MARGIN + 0.5)
    made, changes = finalize(database_url)
    public = rollup_observations(sta, minutely)[1]
    assert made == 1 and [(c.id, c.public) for c in changes] == [(public["@iot.id"], True)]
    assert anonymous_observations(sta, minutely) == [public]
    topic = f"v1.1/Datastreams({minutely})/Observations"
    run = notify(database_url, sta, [topic], changes)
    assert [(m.json(), m.audience) for m in run.published.on(topic)] == [(public, None)]  # to everyone
    assert finalize(database_url) == (0, [])  # once
    send(sta, source, [(at + timedelta(seconds=2), 9)])  # a late one: members now, everyone at the next pass
    made, changes = finalize(database_url)
    assert made == 1 and read(sta, f"Observations({public['@iot.id']})")["result"] == 9
