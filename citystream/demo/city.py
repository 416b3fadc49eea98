"""The demo city on the server: `create_city` creates or reuses its Things, Datastreams and rollup Datastreams
through the STA REST API."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx

from citystream.demo.stations import (
    KIND_TITLES,
    OBSERVED_PROPERTIES,
    OM_MEASUREMENT,
    ROLLUPS,
    SENSORS,
    STATIONS,
    STREAMS,
    _generator,
    _Rollup,
    _Station,
    _Stream,
)
from citystream.demo.values import HAMBURG, ValueGenerator

DEMO_MARK: Final = "citystream"
"""Value of `properties.demo` on every entity the demo creates."""


class DemoError(RuntimeError):
    """The STA service refused or failed a request the demo needs; the message says which and why."""


# ============================================================================================ schedule


def floor_time(t: datetime, period: float, calendar: str) -> datetime:
    """The last observation boundary at or before `t`: multiples of `period` since the epoch (`fixed`),
    Hamburg local midnight (`day`) or Monday local midnight (`week`)."""
    if calendar == "fixed":
        return datetime.fromtimestamp(math.floor(t.timestamp() / period) * period, UTC)
    local = t.astimezone(HAMBURG)
    day = local.date()
    if calendar == "week":
        day -= timedelta(days=local.weekday())
    elif calendar != "day":
        raise ValueError(f"unknown calendar {calendar!r}")
    return datetime(day.year, day.month, day.day, tzinfo=HAMBURG).astimezone(UTC)


# ============================================================================================ the city


@dataclass(frozen=True)
class DemoDatastream:
    """One published Datastream of the demo city."""

    id: int | str
    thing_id: int | str
    kind: str
    """bike-counter, e-charging, bike-share, air-quality, noise or traffic."""
    key: str
    """Stable demo key (also in the Datastream's `properties.key`), e.g. `bike-counter-01/15min`."""
    name: str
    period: float
    """Seconds of simulated time between observations (nominal for day/week calendars)."""
    generator: ValueGenerator
    calendar: str = "fixed"
    """How observation times align: `fixed` (multiples of period), `day` or `week` (Hamburg local time)."""
    interval: bool = False
    """True: the phenomenonTime is the interval ending at the observation time (counts, means)."""
    observation_type: str = OM_MEASUREMENT

    @property
    def topic(self) -> str:
        ident = f"'{self.id}'" if isinstance(self.id, str) else str(self.id)
        return f"v1.1/Datastreams({ident})/Observations"

    def floor(self, t: datetime) -> datetime:
        return floor_time(t, self.period, self.calendar)

    def following(self, boundary: datetime) -> datetime:
        return self.floor(boundary + timedelta(seconds=1.5 * self.period))

    def preceding(self, boundary: datetime) -> datetime:
        return self.floor(boundary - timedelta(seconds=0.5 * self.period))

    def observation(self, at: datetime) -> dict[str, Any] | None:
        """The Observation for boundary `at`, or None if there is nothing to publish."""
        start = self.preceding(at)
        result = self.generator(start, at)
        if result is None:
            return None
        when = f"{_iso(start)}/{_iso(at)}" if self.interval else _iso(at)
        return {"phenomenonTime": when, "result": result}


@dataclass(frozen=True)
class DemoRollup:
    """One rollup Datastream of the demo city: the platform computes its Observations from its source's."""

    id: int | str
    thing_id: int | str
    source_id: int | str
    kind: str
    key: str
    """Stable demo key (also in `properties.key`), e.g. `bike-counter-01/hourly`."""
    name: str
    width: str
    function: str
    time_zone: str


@dataclass(frozen=True)
class DemoCity:
    """The demo city as it exists on the server."""

    base_url: str
    thing_ids: tuple[int | str, ...]
    datastreams: tuple[DemoDatastream, ...]
    """The Datastreams the simulator publishes to (rollups are not among them)."""
    created_things: int = 0
    """How many Things this call of `create_city` created (0: everything was reused)."""
    created_datastreams: int = 0
    """How many Datastreams it created, rollups included."""
    seed: int = 1
    rollups: tuple[DemoRollup, ...] = ()
    stale: tuple[str, ...] = ()
    """Keys of demo Datastreams on the demo Things that the plan no longer has (an older demo's per-hour,
    day and week bike counts): left in place, since the demo's key may not delete, and no longer published."""


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ============================================================================================ REST


def _demo_filter() -> str:
    return f"properties/demo eq '{DEMO_MARK}'"


async def _request(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise DemoError(f"{method} {url} failed: {exc}") from exc
    if response.status_code >= 400:
        raise DemoError(f"{method} {url} answered {response.status_code}: {response.text[:500]}")
    return response


async def _list(client: httpx.AsyncClient, url: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """All entities of a collection, following @iot.nextLink."""
    entities: list[dict[str, Any]] = []
    next_url: str | None = url
    query: dict[str, str] | None = params
    while next_url:
        body = (await _request(client, "GET", next_url, params=query)).json()
        entities.extend(body.get("value", []))
        next_url, query = body.get("@iot.nextLink"), None
    return entities


async def _create(client: httpx.AsyncClient, root: str, set_name: str, body: dict[str, Any]) -> int | str:
    response = await _request(client, "POST", f"{root}/{set_name}", json=body)
    with contextlib.suppress(ValueError, KeyError, TypeError):
        ident: int | str = response.json()["@iot.id"]
        return ident
    match = re.search(r"\((\d+|'[^']*')\)$", response.headers.get("Location", ""))
    if not match:
        raise DemoError(f"POST {root}/{set_name} returned no @iot.id")
    text = match.group(1)
    return text.strip("'") if text.startswith("'") else int(text)


async def _demo_things(client: httpx.AsyncClient, root: str) -> dict[str, dict[str, Any]]:
    """Existing demo Things by their key, each with its Datastreams (lowest id wins on duplicate keys)."""
    things = await _list(client, f"{root}/Things", {
        "$filter": _demo_filter(),
        "$expand": "Datastreams($select=id,name,properties;$top=1000)",
        "$select": "id,name,properties",
        "$orderby": "id",
    })
    found: dict[str, dict[str, Any]] = {}
    for thing in things:
        key = (thing.get("properties") or {}).get("key")
        if isinstance(key, str) and key not in found:
            found[key] = thing
    return found


async def _ensure(
    client: httpx.AsyncClient, root: str, set_name: str, catalogue: Mapping[str, dict[str, Any]], needed: set[str]
) -> dict[str, int | str]:
    """Ids of the shared demo Sensors/ObservedProperties in `needed`, creating those that do not exist yet."""
    existing = await _list(client, f"{root}/{set_name}", {
        "$filter": _demo_filter(), "$select": "id,properties", "$orderby": "id"})
    ids: dict[str, int | str] = {}
    for entity in existing:
        key = (entity.get("properties") or {}).get("key")
        if isinstance(key, str):
            ids.setdefault(key, entity["@iot.id"])
    for key in sorted(needed - ids.keys()):
        body = {**catalogue[key], "properties": {"demo": DEMO_MARK, "key": key}}
        ids[key] = await _create(client, root, set_name, body)
    return ids


def _datastream_body(station: _Station, stream: _Stream, sensors: Mapping[str, int | str],
                     properties: Mapping[str, int | str]) -> dict[str, Any]:
    return {
        "name": f"{stream.name} – {station.name}",
        "description": f"{stream.description} at {KIND_TITLES[station.kind].lower()} {station.name}",
        "observationType": stream.observation_type,
        "unitOfMeasurement": dict(stream.unit),
        "properties": {
            "demo": DEMO_MARK,
            "key": f"{station.key}/{stream.suffix}",
            "kind": station.kind,
            "periodSeconds": stream.period,
        },
        "Sensor": {"@iot.id": sensors[stream.sensor]},
        "ObservedProperty": {"@iot.id": properties[stream.observed_property]},
    }


def _rollup_body(station: _Station, rollup: _Rollup, source_id: int | str) -> dict[str, Any]:
    """A rollup Datastream: its Thing, Sensor, ObservedProperty, observationType and unit come from its source."""
    return {
        "name": f"{rollup.name} – {station.name}",
        "description": (f"{rollup.description} at {KIND_TITLES[station.kind].lower()} {station.name}: the "
                        f"{rollup.function} of its counts per 15 minutes, computed by the platform"),
        "properties": {
            "demo": DEMO_MARK,
            "key": f"{station.key}/{rollup.suffix}",
            "kind": station.kind,
            "periodSeconds": rollup.period,
        },
        "RollupOf": {"@iot.id": source_id},
        "rollup": {"width": rollup.width, "function": rollup.function, "timeZone": rollup.time_zone},
    }


def _thing_body(station: _Station, sensors: Mapping[str, int | str],
                properties: Mapping[str, int | str]) -> dict[str, Any]:
    title = KIND_TITLES[station.kind]
    return {
        "name": f"{title} {station.name}",
        "description": f"{title} at {station.address}, Hamburg-{station.district} (CityStream demo)",
        "properties": {
            "demo": DEMO_MARK,
            "key": station.key,
            "kind": station.kind,
            "district": station.district,
            "address": station.address,
            "city": "Hamburg",
        },
        "Locations": [{
            "name": station.address,
            "description": f"{station.address}, 20000 Hamburg ({station.district})",
            "encodingType": "application/geo+json",
            "location": {"type": "Point", "coordinates": [station.lon, station.lat]},
        }],
        "Datastreams": [_datastream_body(station, s, sensors, properties) for s in STREAMS[station.kind]],
    }


async def create_city(client: httpx.AsyncClient, base_url: str, *, seed: int = 1) -> DemoCity:
    """Create the demo city under the STA root `base_url` (e.g. http://127.0.0.1:8080/v1.1), or reuse it.

    Things marked `properties.demo == "citystream"` are matched to the city plan by `properties.key`; only
    missing Things (deep insert with Location and Datastreams) and missing Datastreams are created, together
    with any missing shared Sensors/ObservedProperties, and then the missing rollups (POST Datastreams with
    `RollupOf` and `rollup`: their sources must exist first; the platform computes them from the source's
    history at once). Raises `DemoError` if the service refuses a request.
    """
    root = base_url.rstrip("/")
    things = await _demo_things(client, root)
    missing_things = [s for s in STATIONS if s.key not in things]
    missing_streams = [
        (station, stream)
        for station in STATIONS
        if station.key in things
        for stream in STREAMS[station.kind]
        if f"{station.key}/{stream.suffix}" not in _streams_by_key(things[station.key])
    ]
    if missing_things or missing_streams:
        wanted = [s for st in missing_things for s in STREAMS[st.kind]] + [s for _, s in missing_streams]
        sensors = await _ensure(client, root, "Sensors", SENSORS, {s.sensor for s in wanted})
        observed = await _ensure(client, root, "ObservedProperties", OBSERVED_PROPERTIES,
                                 {s.observed_property for s in wanted})
        for station in missing_things:
            await _create(client, root, "Things", _thing_body(station, sensors, observed))
        for station, stream in missing_streams:
            body = _datastream_body(station, stream, sensors, observed)
            body["Thing"] = {"@iot.id": things[station.key]["@iot.id"]}
            await _create(client, root, "Datastreams", body)
        things = await _demo_things(client, root)

    created_rollups = 0
    for station in STATIONS:
        existing = _streams_by_key(_read_back(things, station))
        for rollup in ROLLUPS.get(station.kind, ()):
            if f"{station.key}/{rollup.suffix}" not in existing:
                source = _stream(existing, f"{station.key}/{rollup.source}")
                await _create(client, root, "Datastreams", _rollup_body(station, rollup, source["@iot.id"]))
                created_rollups += 1
    if created_rollups:
        things = await _demo_things(client, root)

    datastreams: list[DemoDatastream] = []
    rollups: list[DemoRollup] = []
    stale: list[str] = []
    for station in STATIONS:
        thing = _read_back(things, station)
        by_key = _streams_by_key(thing)
        for stream in STREAMS[station.kind]:
            key = f"{station.key}/{stream.suffix}"
            found = _stream(by_key, key)
            datastreams.append(DemoDatastream(
                id=found["@iot.id"],
                thing_id=thing["@iot.id"],
                kind=station.kind,
                key=key,
                name=found.get("name", key),
                period=stream.period,
                generator=_generator(station, stream, seed),
                calendar=stream.calendar,
                interval=stream.interval,
                observation_type=stream.observation_type,
            ))
        for rollup in ROLLUPS.get(station.kind, ()):
            key = f"{station.key}/{rollup.suffix}"
            found = _stream(by_key, key)
            rollups.append(DemoRollup(
                id=found["@iot.id"],
                thing_id=thing["@iot.id"],
                source_id=_stream(by_key, f"{station.key}/{rollup.source}")["@iot.id"],
                kind=station.kind,
                key=key,
                name=found.get("name", key),
                width=rollup.width,
                function=rollup.function,
                time_zone=rollup.time_zone,
            ))
        planned = {f"{station.key}/{suffix}" for suffix in (*(s.suffix for s in STREAMS[station.kind]),
                                                             *(r.suffix for r in ROLLUPS.get(station.kind, ())))}
        stale += sorted(key for key, d in by_key.items()
                        if key not in planned and (d.get("properties") or {}).get("demo") == DEMO_MARK)
    return DemoCity(
        base_url=root,
        thing_ids=tuple(things[s.key]["@iot.id"] for s in STATIONS),
        datastreams=tuple(datastreams),
        created_things=len(missing_things),
        created_datastreams=sum(len(STREAMS[s.kind]) for s in missing_things) + len(missing_streams)
        + created_rollups,
        seed=seed,
        rollups=tuple(rollups),
        stale=tuple(stale),
    )


def _read_back(things: Mapping[str, dict[str, Any]], station: _Station) -> dict[str, Any]:
    thing = things.get(station.key)
    if thing is None:
        raise DemoError(f"demo Thing {station.key} was created but cannot be read back")
    return thing


def _streams_by_key(thing: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A demo Thing's Datastreams (rollups among them) by their demo key; the lowest id wins."""
    by_key: dict[str, dict[str, Any]] = {}
    for datastream in thing.get("Datastreams", []):
        by_key.setdefault(str((datastream.get("properties") or {}).get("key")), datastream)
    return by_key


def _stream(by_key: Mapping[str, dict[str, Any]], key: str) -> dict[str, Any]:
    if key not in by_key:
        raise DemoError(f"demo Datastream {key} was created but cannot be read back")
    return by_key[key]
