"""The demo city's generators and clock (citystream/demo.py), without a server or a broker: simulated time,
rush hours, daily cycles, charging status changes, Hamburg's day and week boundaries, broker URLs.

Moved here from tests/platform/test_demo.py, which keeps the tests that create the city through the real
STA API and publish it over a real Mosquitto.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from citystream.demo import (
    CHARGING_STATES,
    HAMBURG,
    AvailabilityGenerator,
    ChargingStatusGenerator,
    CountGenerator,
    MeasurementGenerator,
    SimulatedClock,
    awake,
    floor_time,
    traffic_activity,
)
from mqtt_bridge.address import BrokerAddress


def test_simulated_clock_catches_up_then_runs_in_real_time() -> None:
    real = datetime(2024, 5, 6, 12, 0, tzinfo=UTC)
    elapsed = [0.0]
    clock = SimulatedClock(60, timedelta(days=1), now=real, monotonic=lambda: elapsed[0])
    assert clock.now() == real - timedelta(days=1) and not clock.caught_up
    assert clock.seconds_until(real - timedelta(days=1) + timedelta(minutes=15)) == pytest.approx(15)
    elapsed[0] = 600  # 10 real minutes = 10 simulated hours
    assert clock.now() == real - timedelta(days=1) + timedelta(hours=10)
    catch_up = 86400 / 59  # when start + 60 t == real + t
    elapsed[0] = catch_up + 100
    assert clock.caught_up
    assert clock.now() == real + timedelta(seconds=catch_up + 100)  # never ahead of the real clock
    assert clock.seconds_until(clock.now() + timedelta(minutes=15)) == pytest.approx(900)

    realtime = SimulatedClock(1, now=real, monotonic=lambda: 0.0)
    assert realtime.now() == real and realtime.caught_up
    with pytest.raises(ValueError):
        SimulatedClock(0)


def test_broker_address_from_url() -> None:
    target = BrokerAddress.from_url("mqtt://sensor:p%40ss@broker.example:1884")
    assert (target.host, target.port, target.username, target.password, target.tls) == (
        "broker.example", 1884, "sensor", "p@ss", False)
    assert BrokerAddress.from_url("mqtt://127.0.0.1").port == 1883
    assert BrokerAddress.from_url("mqtts://broker").port == 8883
    assert BrokerAddress.from_url("mqtt://[::1]:1883").host == "::1"
    with pytest.raises(ValueError):
        BrokerAddress.from_url("http://broker:1883")


def local(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=HAMBURG).astimezone(UTC)


def test_counts_follow_rush_hours_add_up_and_are_deterministic() -> None:
    bikes = CountGenerator(seed=1, station="s", peak=200)
    tuesday_8, tuesday_3 = local(2024, 5, 7, 8), local(2024, 5, 7, 3)
    q = timedelta(minutes=15)
    assert bikes(tuesday_8, tuesday_8 + q) > 5 * max(1, bikes(tuesday_3, tuesday_3 + q))
    assert bikes(tuesday_8, tuesday_8 + q) == CountGenerator(seed=1, station="s", peak=200)(tuesday_8, tuesday_8 + q)
    hour = bikes(tuesday_8, tuesday_8 + 4 * q)
    assert hour == sum(bikes(tuesday_8 + i * q, tuesday_8 + (i + 1) * q) for i in range(4))
    day_start = local(2024, 5, 7, 0)
    day = bikes(day_start, local(2024, 5, 8, 0))
    assert day == sum(bikes(day_start + i * q, day_start + (i + 1) * q) for i in range(96))
    assert day != CountGenerator(seed=2, station="s", peak=200)(day_start, local(2024, 5, 8, 0))
    cars = CountGenerator(seed=1, station="t", peak=500, profile="vehicles")
    assert cars(local(2024, 5, 7, 17), local(2024, 5, 7, 17) + q) > 3 * cars(tuesday_3, tuesday_3 + q)


def test_measurements_follow_the_daily_cycle() -> None:
    no2 = MeasurementGenerator(1, "no2", lambda t: 20 + 34 * traffic_activity(t), noise=3.0, minimum=1.0)
    noise = MeasurementGenerator(1, "noise", lambda t: 54 + 16 * awake(t), noise=1.2, minimum=30.0)
    h = timedelta(hours=1)
    rush = [local(2024, 5, d, 8) for d in range(6, 11)]  # Monday to Friday
    night = [local(2024, 5, d, 3) for d in range(6, 11)]
    assert sum(no2(t - h, t) for t in rush) > sum(no2(t - h, t) for t in night) + 5 * 15
    assert all(noise(t - h, t) < noise(r - h, r) for t, r in zip(night, rush, strict=True))
    central, residential = AvailabilityGenerator(1, "c", 30, 1), AvailabilityGenerator(1, "r", 30, -1)
    eleven = local(2024, 5, 7, 11)
    assert central(eleven - h, eleven) > 20 > 10 > residential(eleven - h, eleven)


def test_charging_status_changes_occasionally_and_only_on_change() -> None:
    status = ChargingStatusGenerator(seed=1, key="e", period=300)
    t = local(2024, 5, 7, 0)
    step = timedelta(minutes=5)
    results = []
    for _ in range(288 * 2):  # two days of 5-minute checks
        results.append(status(t - step, t))
        t += step
    assert results[0] in CHARGING_STATES
    changes = [r for r in results[1:] if r is not None]
    assert 4 <= len(changes) <= 100
    assert all(r in CHARGING_STATES for r in changes)
    assert all(a != b for a, b in zip([results[0], *changes], changes, strict=False))


def test_day_and_week_boundaries_are_hamburg_midnights() -> None:
    wednesday_noon = local(2024, 3, 27, 12)
    assert floor_time(wednesday_noon, 86400, "day") == local(2024, 3, 27, 0)
    assert floor_time(wednesday_noon, 604800, "week") == local(2024, 3, 25, 0)
    assert floor_time(local(2024, 5, 7, 8, 20), 900, "fixed") == local(2024, 5, 7, 8, 15)
    # The DST week (31 March 2024) is 167 hours long.
    after = floor_time(local(2024, 3, 25, 0) + timedelta(seconds=1.5 * 604800), 604800, "week")
    assert after == local(2024, 4, 1, 0)
