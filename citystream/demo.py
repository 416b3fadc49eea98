"""The demo city: a small Hamburg-like city created through the STA REST API, with live data over MQTT.

`citystream up --demo` and `citystream demo` use this so that a new user sees data flowing within seconds.
Everything goes through the public interfaces a real sensor operator would use, never the database:

- `create_city` creates 30 Things (bike counters, e-charging stations, bike-share stations, air-quality and
  noise stations, traffic counters; modelled on iot.hamburg.de) with their Locations and 54 Datastreams by
  deep insert (`POST Things` with Locations and Datastreams inline). Sensors and ObservedProperties are
  shared by all stations of a kind: they are created once and linked by `@iot.id`. Every demo entity carries
  `properties.demo == "citystream"` and a stable `properties.key`, which makes `create_city` idempotent: it
  reuses what exists and creates only what is missing (a deleted Thing or Datastream comes back).
- `publish_forever` publishes Observations to `v1.1/Datastreams({id})/Observations` over MQTT 5 (QoS 1),
  following a simulated clock (see `SimulatedClock`): it starts one day in the past and runs `speed` times
  faster than real time until it has caught up with the real now, then continues in real time. So a fresh
  demo first fills a day of history quickly and then keeps producing live data, and no phenomenonTime is
  ever in the future. Each Datastream also publishes one observation immediately at start.
- Values are deterministic functions of the seed, the Datastream and the (simulated) time, with daily
  cycles in Hamburg local time: rush hours for traffic and bikes, NO2 higher at rush hour, noise lower at
  night, bike-share stations emptying or filling with commuters, charging stations changing status now and
  then (published on change only).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import math
import random
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import httpx
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from mqtt_bridge.address import BrokerAddress

log = logging.getLogger("citystream.demo")

DEMO_MARK: Final = "citystream"
"""Value of `properties.demo` on every entity the demo creates."""
DEFAULT_BACKLOG: Final = timedelta(days=1)
"""How far in the past the simulated clock starts when it runs faster than real time."""
HAMBURG: Final = ZoneInfo("Europe/Berlin")

_OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
OM_COUNT: Final = _OM + "OM_CountObservation"
OM_CATEGORY: Final = _OM + "OM_CategoryObservation"
OM_MEASUREMENT: Final = _OM + "OM_Measurement"

CHARGING_STATES: Final = ("available", "charging", "out of service")

_DEF = "https://demo.citystream.example/def"
_DOCS = "https://demo.citystream.example/sensors"


class DemoError(RuntimeError):
    """The STA service refused or failed a request the demo needs; the message says which and why."""


# ============================================================================================ values


class ValueGenerator:
    """Produces the result of one Observation of a Datastream.

    Called with the phenomenon interval [`start`, `end`) of the observation (for instant observations
    `start` is the previous observation time and the phenomenonTime is `end`). Returns the result, or None
    when there is nothing to publish this time (an on-change Datastream whose value did not change).
    Results are deterministic functions of the seed, the Datastream and the time; only on-change generators
    keep state, so they must be called in time order.
    """

    def __call__(self, start: datetime, end: datetime) -> Any:
        raise NotImplementedError


def _bump(hour: float, centre: float, width: float) -> float:
    return math.exp(-0.5 * ((hour - centre) / width) ** 2)


def _local(t: datetime) -> tuple[float, bool]:
    """Hamburg local hour of day (fractional) and whether it is a weekend day."""
    local = t.astimezone(HAMBURG)
    return local.hour + local.minute / 60 + local.second / 3600, local.weekday() >= 5


def commuter_activity(t: datetime) -> float:
    """Bicycle traffic, relative to the weekday morning peak (about 1): rush hours on weekdays, a broad
    afternoon hump at weekends, almost nothing at night."""
    h, weekend = _local(t)
    if weekend:
        return 0.03 + 0.55 * _bump(h, 14.0, 3.2)
    return 0.03 + 1.0 * _bump(h, 7.9, 0.9) + 0.85 * _bump(h, 17.2, 1.3) + 0.3 * _bump(h, 12.5, 3.0)


def traffic_activity(t: datetime) -> float:
    """Motor traffic relative to the weekday peak: heavier off-peak base than bicycles."""
    h, weekend = _local(t)
    if weekend:
        return 0.06 + 0.6 * _bump(h, 13.5, 4.0)
    return 0.06 + 0.75 * _bump(h, 7.6, 1.1) + 0.8 * _bump(h, 16.8, 1.5) + 0.5 * _bump(h, 12.5, 4.0)


def awake(t: datetime) -> float:
    """0 in the middle of the night, 1 during the day (city noise, charging demand)."""
    h, weekend = _local(t)
    wake = 7.0 if weekend else 6.0
    return 1 / (1 + math.exp(-(h - wake) / 0.7)) - 1 / (1 + math.exp(-(h - 22.5) / 0.8))


def _rng(seed: int, *parts: object) -> random.Random:
    """A random generator determined by the seed and `parts` (string seeding is hash-salt independent)."""
    return random.Random("|".join([str(seed), *map(str, parts)]))


@functools.lru_cache(maxsize=4096)
def _weather(seed: int, day: str) -> float:
    """A city-wide factor per local day: rainy days have fewer cyclists (0.6 … 1.15)."""
    return _rng(seed, "weather", day).uniform(0.6, 1.15)


@functools.lru_cache(maxsize=200_000)
def _quarter_hour_count(seed: int, key: str, slot: int, peak: float, profile: str) -> int:
    """The count of quarter hour number `slot` (seconds since the epoch // 900) at a counting station."""
    middle = datetime.fromtimestamp(slot * 900 + 450, UTC)
    if profile == "bicycles":
        mean = peak * commuter_activity(middle) * _weather(seed, middle.astimezone(HAMBURG).date().isoformat())
    else:
        mean = peak * traffic_activity(middle)
    value = _rng(seed, key, slot).gauss(mean, math.sqrt(mean) * 1.2 + 0.5)
    return max(0, round(value))


@dataclass(frozen=True)
class CountGenerator(ValueGenerator):
    """Counts per interval as the sum of the station's quarter-hour counts, so the 15-min, hour, day and
    week Datastreams of one counter add up exactly."""

    seed: int
    station: str
    peak: float
    """Expected count in the busiest quarter hour."""
    profile: str = "bicycles"
    """`bicycles` (commuter cycle, weather) or `vehicles` (motor traffic cycle)."""

    def __call__(self, start: datetime, end: datetime) -> int:
        first, last = int(start.timestamp()) // 900, int(end.timestamp()) // 900
        return sum(_quarter_hour_count(self.seed, self.station, s, self.peak, self.profile) for s in range(first, last))


@dataclass(frozen=True)
class MeasurementGenerator(ValueGenerator):
    """A measurement (mean over the interval) from a daily shape plus noise, rounded to `digits`."""

    seed: int
    key: str
    shape: Callable[[datetime], float]
    noise: float
    minimum: float = 0.0
    digits: int = 1

    def __call__(self, start: datetime, end: datetime) -> float:
        middle = start + (end - start) / 2
        value = self.shape(middle) + _rng(self.seed, self.key, int(end.timestamp())).gauss(0, self.noise)
        return round(max(self.minimum, value), self.digits)


@dataclass(frozen=True)
class AvailabilityGenerator(ValueGenerator):
    """Bikes available at a bike-share station: central stations fill up with commuters in the morning
    (direction +1), residential ones empty (direction -1); both return to about half full at night."""

    seed: int
    key: str
    capacity: int
    direction: int

    def __call__(self, start: datetime, end: datetime) -> int:
        h, weekend = _local(end)
        swing = 0.3 * _bump(h, 15.0, 3.0) if weekend else _bump(h, 11.5, 3.2)
        level = 0.5 + self.direction * 0.42 * swing + _rng(self.seed, self.key, int(end.timestamp())).gauss(0, 0.05)
        return round(min(1.0, max(0.0, level)) * self.capacity)


@dataclass
class ChargingStatusGenerator(ValueGenerator):
    """The status of a charging point, checked once per period and published only when it changes.

    A free point starts charging more often in the day and evening; a session lasts about 1.5 h; now and
    then a point goes out of service for a few hours. The first call always returns the current status.
    """

    seed: int
    key: str
    period: float
    state: str | None = field(default=None)

    def __call__(self, start: datetime, end: datetime) -> str | None:
        rng = _rng(self.seed, self.key, int(end.timestamp()))
        if self.state is None:
            self.state = rng.choices(CHARGING_STATES, weights=(0.55, 0.4, 0.05))[0]
            return self.state
        steps = self.period / 3600  # probabilities below are per hour
        roll = rng.random()
        new = self.state
        if self.state == "out of service":
            if roll < 0.25 * steps:
                new = "available"
        elif roll < 0.01 * steps:
            new = "out of service"
        elif self.state == "charging":
            if roll < 0.01 * steps + 0.65 * steps:
                new = "available"
        elif roll < 0.01 * steps + (0.05 + 0.6 * awake(end)) * steps:
            new = "charging"
        if new == self.state:
            return None
        self.state = new
        return new


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
class DemoCity:
    """The demo city as it exists on the server."""

    base_url: str
    thing_ids: tuple[int | str, ...]
    datastreams: tuple[DemoDatastream, ...]
    created_things: int = 0
    """How many Things this call of `create_city` created (0: everything was reused)."""
    created_datastreams: int = 0
    seed: int = 1


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class _Stream:
    suffix: str
    name: str
    description: str
    observed_property: str
    sensor: str
    observation_type: str
    unit: Mapping[str, str | None]
    period: float
    calendar: str = "fixed"
    interval: bool = False


@dataclass(frozen=True)
class _Station:
    key: str
    kind: str
    name: str
    address: str
    district: str
    lon: float
    lat: float
    params: Mapping[str, float] = field(default_factory=dict)


_BICYCLES = {"name": "bicycles", "symbol": "bicycles", "definition": "{bicycles}"}
_VEHICLES = {"name": "vehicles", "symbol": "vehicles", "definition": "{vehicles}"}
_UG_M3 = {"name": "microgram per cubic metre", "symbol": "µg/m³", "definition": "ug/m3"}
_DBA = {"name": "decibel (A-weighted)", "symbol": "dB(A)", "definition": "dB[SPL]"}
_STATUS = {"name": "charging point status", "symbol": None, "definition": None}

SENSORS: Final[dict[str, dict[str, Any]]] = {
    "bicycle-counter": {
        "name": "Inductive loop bicycle counter",
        "description": "Dual induction loops in the cycle lane, classifying bicycles by length and speed",
        "encodingType": "application/pdf",
        "metadata": f"{_DOCS}/bicycle-loop-counter-datasheet.pdf",
    },
    "charge-point-controller": {
        "name": "Charge point controller (OCPP 1.6)",
        "description": "Status notifications of a public AC charging point, 2 × 22 kW Type 2",
        "encodingType": "text/html",
        "metadata": f"{_DOCS}/charge-point-controller.html",
    },
    "bike-dock-controller": {
        "name": "Bike-share dock controller",
        "description": "Counts bicycles locked into the docks of a bike-share station",
        "encodingType": "text/html",
        "metadata": f"{_DOCS}/bike-dock-controller.html",
    },
    "no2-analyser": {
        "name": "NO2 chemiluminescence analyser",
        "description": "Reference method for nitrogen dioxide (EN 14211), hourly means",
        "encodingType": "application/pdf",
        "metadata": f"{_DOCS}/no2-chemiluminescence-analyser.pdf",
    },
    "pm-monitor": {
        "name": "Particulate matter monitor",
        "description": "Optical aerosol spectrometer for PM10 and PM2.5 (EN 16450), hourly means",
        "encodingType": "application/pdf",
        "metadata": f"{_DOCS}/particulate-matter-monitor.pdf",
    },
    "sound-level-meter": {
        "name": "Class 1 sound level meter",
        "description": "Outdoor noise monitoring terminal (IEC 61672-1 class 1), LAeq over 10 minutes",
        "encodingType": "application/pdf",
        "metadata": f"{_DOCS}/class-1-sound-level-meter.pdf",
    },
    "traffic-detector": {
        "name": "Inductive loop traffic detector",
        "description": "Induction loops in every lane, counting motor vehicles",
        "encodingType": "application/pdf",
        "metadata": f"{_DOCS}/traffic-loop-detector.pdf",
    },
}

OBSERVED_PROPERTIES: Final[dict[str, dict[str, Any]]] = {
    "bicycle-count": {
        "name": "Bicycle count",
        "definition": f"{_DEF}/observed-property/bicycle-count",
        "description": "Number of bicycles passing the counting site in both directions",
    },
    "charging-point-status": {
        "name": "Charging point status",
        "definition": f"{_DEF}/observed-property/charging-point-status",
        "description": "Status of a charging point: available, charging or out of service",
    },
    "available-bicycles": {
        "name": "Available bicycles",
        "definition": f"{_DEF}/observed-property/available-bicycles",
        "description": "Number of bicycles available for rent at a bike-share station",
    },
    "no2": {
        "name": "Nitrogen dioxide (NO2)",
        "definition": "http://dd.eionet.europa.eu/vocabulary/aq/pollutant/8",
        "description": "Mass concentration of nitrogen dioxide in ambient air",
    },
    "pm10": {
        "name": "Particulate matter < 10 µm (PM10)",
        "definition": "http://dd.eionet.europa.eu/vocabulary/aq/pollutant/5",
        "description": "Mass concentration of particulate matter with an aerodynamic diameter below 10 µm",
    },
    "pm2.5": {
        "name": "Particulate matter < 2.5 µm (PM2.5)",
        "definition": "http://dd.eionet.europa.eu/vocabulary/aq/pollutant/6001",
        "description": "Mass concentration of particulate matter with an aerodynamic diameter below 2.5 µm",
    },
    "sound-level": {
        "name": "Sound level LAeq",
        "definition": f"{_DEF}/observed-property/laeq",
        "description": "A-weighted equivalent continuous sound pressure level",
    },
    "vehicle-count": {
        "name": "Motor vehicle count",
        "definition": f"{_DEF}/observed-property/vehicle-count",
        "description": "Number of motor vehicles passing the counting site, all lanes",
    },
}

STREAMS: Final[dict[str, tuple[_Stream, ...]]] = {
    "bike-counter": tuple(
        _Stream(suffix, f"Bicycles per {label}", f"Number of bicycles counted per {label}", "bicycle-count",
                "bicycle-counter", OM_COUNT, _BICYCLES, period, calendar, interval=True)
        for suffix, label, period, calendar in (
            ("15min", "15 minutes", 900, "fixed"),
            ("1h", "hour", 3600, "fixed"),
            ("1d", "day", 86400, "day"),
            ("1w", "week", 604800, "week"),
        )
    ),
    "e-charging": (
        _Stream("status", "Status", "Status of the charging point, published on every change",
                "charging-point-status", "charge-point-controller", OM_CATEGORY, _STATUS, 300),
    ),
    "bike-share": (
        _Stream("available", "Available bicycles", "Bicycles available for rent, every 5 minutes",
                "available-bicycles", "bike-dock-controller", OM_COUNT, _BICYCLES, 300),
    ),
    "air-quality": (
        _Stream("no2", "NO2", "Nitrogen dioxide, hourly mean", "no2", "no2-analyser", OM_MEASUREMENT, _UG_M3,
                3600, interval=True),
        _Stream("pm10", "PM10", "Particulate matter PM10, hourly mean", "pm10", "pm-monitor", OM_MEASUREMENT,
                _UG_M3, 3600, interval=True),
        _Stream("pm2.5", "PM2.5", "Particulate matter PM2.5, hourly mean", "pm2.5", "pm-monitor", OM_MEASUREMENT,
                _UG_M3, 3600, interval=True),
    ),
    "noise": (
        _Stream("laeq", "Noise level LAeq,10min", "A-weighted equivalent sound level over 10 minutes",
                "sound-level", "sound-level-meter", OM_MEASUREMENT, _DBA, 600, interval=True),
    ),
    "traffic": (
        _Stream("15min", "Vehicles per 15 minutes", "Number of motor vehicles counted per 15 minutes",
                "vehicle-count", "traffic-detector", OM_COUNT, _VEHICLES, 900, interval=True),
    ),
}

KIND_TITLES: Final = {
    "bike-counter": "Bicycle counting station",
    "e-charging": "E-charging station",
    "bike-share": "Bike-share station",
    "air-quality": "Air quality station",
    "noise": "Noise monitoring station",
    "traffic": "Traffic counting station",
}


def _stations() -> tuple[_Station, ...]:
    S = _Station
    return (
        # bike counters: peak = bicycles in the busiest quarter hour
        S("bike-counter-01", "bike-counter", "Lombardsbrücke", "Lombardsbrücke", "Neustadt",
          9.9985, 53.5562, {"peak": 260}),
        S("bike-counter-02", "bike-counter", "Schwanenwik", "Schwanenwik 38", "Uhlenhorst",
          10.0132, 53.5667, {"peak": 180}),
        S("bike-counter-03", "bike-counter", "Osterstraße", "Osterstraße 120", "Eimsbüttel",
          9.9508, 53.5759, {"peak": 140}),
        S("bike-counter-04", "bike-counter", "Harvestehuder Weg", "Harvestehuder Weg 12", "Harvestehude",
          9.9985, 53.5742, {"peak": 210}),
        S("bike-counter-05", "bike-counter", "Elbchaussee", "Elbchaussee 96", "Ottensen",
          9.9131, 53.5456, {"peak": 90}),
        S("bike-counter-06", "bike-counter", "Georg-Wilhelm-Straße", "Georg-Wilhelm-Straße 7", "Wilhelmsburg",
          9.9953, 53.5085, {"peak": 70}),
        # e-charging stations
        S("e-charging-01", "e-charging", "Grindelallee 80", "Grindelallee 80", "Rotherbaum", 9.9801, 53.5676),
        S("e-charging-02", "e-charging", "Mühlenkamp 12", "Mühlenkamp 12", "Winterhude", 10.0152, 53.5836),
        S("e-charging-03", "e-charging", "Bahrenfelder Chaussee 49", "Bahrenfelder Chaussee 49", "Bahrenfeld",
          9.9153, 53.5651),
        S("e-charging-04", "e-charging", "Fuhlsbüttler Straße 150", "Fuhlsbüttler Straße 150", "Barmbek-Nord",
          10.0437, 53.5893),
        S("e-charging-05", "e-charging", "Wandsbeker Marktstraße 5", "Wandsbeker Marktstraße 5", "Wandsbek",
          10.0717, 53.5718),
        S("e-charging-06", "e-charging", "Hammer Landstraße 90", "Hammer Landstraße 90", "Hamm", 10.0561, 53.5547),
        S("e-charging-07", "e-charging", "Eppendorfer Landstraße 40", "Eppendorfer Landstraße 40", "Eppendorf",
          9.9822, 53.5861),
        S("e-charging-08", "e-charging", "Osdorfer Landstraße 130", "Osdorfer Landstraße 130", "Osdorf",
          9.8738, 53.5701),
        # bike-share stations: direction +1 fills with commuters in the morning, -1 empties
        S("bike-share-01", "bike-share", "Hauptbahnhof / Steintorwall", "Steintorwall", "St. Georg",
          10.0065, 53.5517, {"capacity": 40, "direction": 1}),
        S("bike-share-02", "bike-share", "Jungfernstieg", "Jungfernstieg 1", "Neustadt",
          9.9930, 53.5528, {"capacity": 30, "direction": 1}),
        S("bike-share-03", "bike-share", "HafenCity Universität", "Überseeallee 16", "HafenCity",
          10.0146, 53.5405, {"capacity": 24, "direction": 1}),
        S("bike-share-04", "bike-share", "Sternschanze", "Schanzenstraße 2", "Sternschanze",
          9.9657, 53.5629, {"capacity": 28, "direction": -1}),
        S("bike-share-05", "bike-share", "Altona Bahnhof", "Paul-Nevermann-Platz", "Altona-Altstadt",
          9.9349, 53.5517, {"capacity": 32, "direction": -1}),
        S("bike-share-06", "bike-share", "Barmbek Bahnhof", "Wiesendamm 1", "Barmbek-Nord",
          10.0452, 53.5870, {"capacity": 26, "direction": -1}),
        # air quality: NO2 background and rush-hour traffic contribution in µg/m³
        S("air-quality-01", "air-quality", "Max-Brauer-Allee", "Max-Brauer-Allee 91", "Altona-Nord",
          9.9383, 53.5561, {"no2": 20, "traffic": 34}),
        S("air-quality-02", "air-quality", "Habichtstraße", "Habichtstraße 40", "Barmbek-Nord",
          10.0462, 53.5922, {"no2": 18, "traffic": 30}),
        S("air-quality-03", "air-quality", "Sternschanze", "Sternschanzenpark", "Sternschanze",
          9.9680, 53.5645, {"no2": 12, "traffic": 12}),
        # noise: LAeq at night and during the day in dB(A)
        S("noise-01", "noise", "Stresemannstraße", "Stresemannstraße 170", "Altona-Nord",
          9.9443, 53.5603, {"night": 54, "day": 70}),
        S("noise-02", "noise", "Hafenstraße", "Hafenstraße 126", "St. Pauli",
          9.9662, 53.5461, {"night": 50, "day": 66}),
        S("noise-03", "noise", "Stadtpark", "Südring", "Winterhude",
          10.0249, 53.5962, {"night": 38, "day": 53}),
        # traffic counters: peak = vehicles in the busiest quarter hour
        S("traffic-01", "traffic", "Willy-Brandt-Straße", "Willy-Brandt-Straße 57", "Altstadt",
          9.9947, 53.5468, {"peak": 520}),
        S("traffic-02", "traffic", "Kieler Straße", "Kieler Straße 300", "Stellingen",
          9.9404, 53.5796, {"peak": 430}),
        S("traffic-03", "traffic", "Wandsbeker Chaussee", "Wandsbeker Chaussee 120", "Eilbek",
          10.0470, 53.5701, {"peak": 380}),
        S("traffic-04", "traffic", "Köhlbrandbrücke", "Köhlbrandbrücke", "Waltershof",
          9.9270, 53.5265, {"peak": 460}),
    )


STATIONS: Final = _stations()


def _generator(station: _Station, stream: _Stream, seed: int) -> ValueGenerator:
    p, key = station.params, f"{station.key}/{stream.suffix}"
    if station.kind == "bike-counter":
        return CountGenerator(seed, station.key, p["peak"], "bicycles")
    if station.kind == "traffic":
        return CountGenerator(seed, station.key, p["peak"], "vehicles")
    if station.kind == "bike-share":
        return AvailabilityGenerator(seed, key, int(p["capacity"]), int(p["direction"]))
    if station.kind == "e-charging":
        return ChargingStatusGenerator(seed, key, stream.period)
    if station.kind == "noise":
        night, day = p["night"], p["day"]
        return MeasurementGenerator(
            seed, key, lambda t: night + (day - night) * awake(t) + 2.0 * traffic_activity(t), noise=1.2,
            minimum=30.0)
    if station.kind == "air-quality":
        background, traffic = p["no2"], p["traffic"]
        shapes: dict[str, tuple[Callable[[datetime], float], float]] = {
            "no2": (lambda t: background + traffic * traffic_activity(t), 3.0),
            "pm10": (lambda t: 13 + 0.25 * traffic * traffic_activity(t) + 4 * awake(t), 2.0),
            "pm2.5": (lambda t: 8 + 0.12 * traffic * traffic_activity(t) + 2 * awake(t), 1.2),
        }
        shape, noise = shapes[stream.suffix]
        return MeasurementGenerator(seed, key, shape, noise=noise, minimum=1.0)
    raise ValueError(f"no generator for {station.kind}")


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
    with any missing shared Sensors/ObservedProperties. Raises `DemoError` if the service refuses a request.
    """
    root = base_url.rstrip("/")
    things = await _demo_things(client, root)

    def stream_key(datastream: dict[str, Any]) -> str:
        return str((datastream.get("properties") or {}).get("key"))

    def stream_keys(thing: dict[str, Any]) -> set[str]:
        return {stream_key(d) for d in thing.get("Datastreams", [])}

    missing_things = [s for s in STATIONS if s.key not in things]
    missing_streams = [
        (station, stream)
        for station in STATIONS
        if station.key in things
        for stream in STREAMS[station.kind]
        if f"{station.key}/{stream.suffix}" not in stream_keys(things[station.key])
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

    datastreams: list[DemoDatastream] = []
    for station in STATIONS:
        thing = things.get(station.key)
        if thing is None:
            raise DemoError(f"demo Thing {station.key} was created but cannot be read back")
        by_key: dict[str, dict[str, Any]] = {}
        for d in thing.get("Datastreams", []):
            by_key.setdefault(stream_key(d), d)
        for stream in STREAMS[station.kind]:
            key = f"{station.key}/{stream.suffix}"
            if key not in by_key:
                raise DemoError(f"demo Datastream {key} was created but cannot be read back")
            datastreams.append(DemoDatastream(
                id=by_key[key]["@iot.id"],
                thing_id=thing["@iot.id"],
                kind=station.kind,
                key=key,
                name=by_key[key].get("name", key),
                period=stream.period,
                generator=_generator(station, stream, seed),
                calendar=stream.calendar,
                interval=stream.interval,
                observation_type=stream.observation_type,
            ))
    return DemoCity(
        base_url=root,
        thing_ids=tuple(things[s.key]["@iot.id"] for s in STATIONS),
        datastreams=tuple(datastreams),
        created_things=len(missing_things),
        created_datastreams=sum(len(STREAMS[s.kind]) for s in missing_things) + len(missing_streams),
        seed=seed,
    )


# ============================================================================================ MQTT


class SimulatedClock:
    """The demo's time: `min(start + elapsed × speed, real now)`.

    With `speed` > 1 the clock starts `backlog` in the past and runs `speed` times faster than real time
    until it reaches the real now; from then on it is the real clock (speed 1). With `speed` <= 1 it starts
    at the real now (speed 1 is real time). So phenomenonTimes are never in the future.
    """

    def __init__(self, speed: float, backlog: timedelta = DEFAULT_BACKLOG, *, now: datetime | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if not speed > 0 or math.isinf(speed):
            raise ValueError(f"speed must be a positive number, got {speed}")
        self.speed = speed
        self.real_start = now or datetime.now(UTC)
        self.start = self.real_start - backlog if speed > 1 else self.real_start
        self._monotonic = monotonic
        self._mono_start = monotonic()

    def _both(self) -> tuple[datetime, datetime]:
        elapsed = self._monotonic() - self._mono_start
        return (self.start + timedelta(seconds=elapsed * self.speed),
                self.real_start + timedelta(seconds=elapsed))

    def now(self) -> datetime:
        accelerated, real = self._both()
        return min(accelerated, real)

    @property
    def caught_up(self) -> bool:
        accelerated, real = self._both()
        return accelerated >= real

    def seconds_until(self, t: datetime) -> float:
        """Real seconds until `now()` reaches `t` (0 if it has)."""
        accelerated, real = self._both()
        return max(0.0, (t - accelerated).total_seconds() / self.speed, (t - real).total_seconds())


class _Publisher:
    """A paho MQTT 5 client running its network loop in paho's thread; counts broker acknowledgements."""

    def __init__(self, target: BrokerAddress, username: str | None, password: str | None,
                 max_queued: int = 50_000) -> None:
        self.target = target
        self._lock = threading.Lock()
        self.sent = 0
        self.acknowledged = 0
        self.rejected = 0
        self.dropped = 0
        self._warned_rejected = False
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"citystream-demo-{uuid.uuid4().hex[:12]}",
                             protocol=mqtt.MQTTv5)
        if username is not None:
            client.username_pw_set(username, password)
        if target.tls:
            client.tls_set_context(ssl.create_default_context())
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(200)
        client.max_queued_messages_set(max_queued)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_connect_fail = self._on_connect_fail
        self.client = client

    def start(self) -> None:
        self.client.connect_async(self.target.host, self.target.port, keepalive=30, clean_start=True)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("demo publisher: %s:%s refused the connection: %s (check the MQTT credentials)",
                        self.target.host, self.target.port, reason)
        else:
            log.info("demo publisher connected to %s:%s", self.target.host, self.target.port)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        log.warning("demo publisher: cannot reach MQTT broker %s:%s, retrying", self.target.host, self.target.port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.value != 0:
            log.warning("demo publisher: disconnected from %s:%s (%s), reconnecting",
                        self.target.host, self.target.port, reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            if reason.is_failure:
                self.rejected += 1
                warn, self._warned_rejected = not self._warned_rejected, True
            else:
                self.acknowledged += 1
                warn = False
        if warn:
            log.warning("demo publisher: the broker refused an observation (%s); check that the account may "
                        "publish to v1.1/Datastreams(…)/Observations", reason)

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            if self.dropped in (1, 1000) or self.dropped % 100_000 == 0:
                log.warning("demo publisher: %d observations dropped while the broker is unreachable", self.dropped)
        else:
            self.sent += 1

    @property
    def outstanding(self) -> int:
        with self._lock:
            return self.sent - self.acknowledged - self.rejected

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


async def publish_forever(
    city: DemoCity,
    mqtt_url: str,
    *,
    username: str | None,
    password: str | None,
    speed: float = 60.0,
    stop: asyncio.Event | None = None,
    on_published: Callable[[int], None] | None = None,
    backlog: timedelta = DEFAULT_BACKLOG,
) -> None:
    """Publish the city's Observations over MQTT 5 (QoS 1) until `stop` is set (or the task is cancelled).

    Follows a `SimulatedClock(speed, backlog)`: one immediate observation per Datastream (the last one
    due at the clock's start), then every Datastream at its period of simulated time. Explicit
    `username`/`password` win over credentials in `mqtt_url`. paho reconnects by itself after a connection
    loss; observations produced meanwhile are queued (up to 50,000) and sent on reconnect.
    `on_published(total)` is called from this task whenever the number of observations the broker has
    acknowledged (PUBACK) grows, with the running total. On stop, in-flight observations get up to 5 s to
    be acknowledged before the client disconnects.
    """
    target = BrokerAddress.from_url(mqtt_url)
    user = username if username is not None else target.username
    secret = password if password is not None else target.password
    stop = stop or asyncio.Event()
    clock = SimulatedClock(speed, backlog)
    publisher = _Publisher(target, user, secret)
    publisher.start()
    queue: list[tuple[datetime, int]] = [(ds.floor(clock.start), i) for i, ds in enumerate(city.datastreams)]
    heapq.heapify(queue)
    reported = 0
    try:
        while not stop.is_set():
            now = clock.now()
            handled = 0
            while queue and queue[0][0] <= now and handled < 500:
                due, index = heapq.heappop(queue)
                ds = city.datastreams[index]
                observation = ds.observation(due)
                if observation is not None:
                    publisher.publish(ds.topic, orjson.dumps(observation))
                heapq.heappush(queue, (ds.following(due), index))
                handled += 1
            if on_published is not None and publisher.acknowledged != reported:
                reported = publisher.acknowledged
                on_published(reported)
            if handled >= 500:
                await asyncio.sleep(0)  # a long catch-up: let other tasks run between chunks
                continue
            wait = min(0.25, clock.seconds_until(queue[0][0])) if queue else 0.25
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(wait, 0.005))
        deadline = time.monotonic() + 5
        while publisher.outstanding > 0 and publisher.client.is_connected() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if on_published is not None and publisher.acknowledged != reported:
            on_published(publisher.acknowledged)
    finally:
        await asyncio.shield(asyncio.to_thread(publisher.close))


# ============================================================================================ run


async def _wait_for_api(client: httpx.AsyncClient, root: str, stop: asyncio.Event, timeout: float = 60.0) -> bool:
    """Wait until the STA service root answers (the server may still be starting). False if stopped."""
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        try:
            response = await client.get(root)
            if response.status_code < 500:
                return True
        except httpx.TransportError as exc:
            if time.monotonic() > deadline:
                raise DemoError(f"the SensorThings API at {root} is not reachable: {exc}") from exc
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)
    return False


async def run_demo(
    base_url: str,
    mqtt_url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    speed: float = 60.0,
    seed: int = 1,
    stop: asyncio.Event | None = None,
    report: Callable[[str], None] | None = None,
) -> None:
    """Create (or reuse) the demo city at `base_url`, then publish observations until `stop` is set.

    Prints one line with the size of the city and, every 10 s, how many observations were published
    (`report` receives these lines; default: print with a `citystream demo:` prefix).
    """
    say = report or (lambda line: print(f"citystream demo: {line}", flush=True))
    stop = stop or asyncio.Event()
    root = base_url.rstrip("/")
    async with httpx.AsyncClient(timeout=30) as client:
        if not await _wait_for_api(client, root, stop):
            return
        city = await create_city(client, root, seed=seed)
    reused = len(city.thing_ids) - city.created_things
    say(f"{len(city.thing_ids)} Things ({city.created_things} created, {reused} reused) and "
        f"{len(city.datastreams)} Datastreams at {root}; publishing to {mqtt_url} at {speed:g}× speed "
        f"(simulated clock starts {DEFAULT_BACKLOG.days} day back when faster than real time)")
    total = 0

    def published(count: int) -> None:
        nonlocal total
        total = count

    async def progress() -> None:
        last = 0
        while True:
            await asyncio.sleep(10)
            say(f"{total} observations published (+{total - last} in the last 10 s)")
            last = total

    reporter = asyncio.create_task(progress())
    try:
        await publish_forever(city, mqtt_url, username=username, password=password, speed=speed, stop=stop,
                              on_published=published)
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
