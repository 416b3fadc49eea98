"""The demo's values: deterministic daily cycles in Hamburg local time and the Observation result generators."""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

HAMBURG: Final = ZoneInfo("Europe/Berlin")

CHARGING_STATES: Final = ("available", "charging", "out of service")


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
    """Counts per interval as the sum of the station's quarter-hour counts: any interval of whole quarter
    hours, so a test can tell what an hour, day or week of a counter adds up to (the platform's rollups of
    its 15-minute Datastream must equal it)."""

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

