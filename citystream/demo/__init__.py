"""The demo city: a small Hamburg-like city created through the STA REST API, with live data over MQTT.

`citystream up --demo` and `citystream demo` use this so that a new user sees data flowing within seconds.
Everything goes through the public interfaces a real sensor operator would use, never the database:

- `create_city` creates 30 Things (bike counters, e-charging stations, bike-share stations, air-quality and
  noise stations, traffic counters; modelled on iot.hamburg.de) with their Locations and 36 Datastreams by
  deep insert (`POST Things` with Locations and Datastreams inline), then 18 rollup Datastreams: Hamburg
  keeps each bike counter as four Datastreams (per 15 minutes, hour, day, week); here a counter is one
  Datastream of counts per 15 minutes, and its sums per hour, day and week (Europe/Berlin) are rollups of
  it that the platform computes (docs/rollups.md). Sensors and ObservedProperties are shared by all
  stations of a kind: they are created once and linked by `@iot.id`. Every demo entity carries
  `properties.demo == "citystream"` and a stable `properties.key`, which makes `create_city` idempotent: it
  reuses what exists and creates only what is missing (a deleted Thing, Datastream or rollup comes back).
- `publish_forever` publishes Observations to `v1.1/Datastreams({id})/Observations` over MQTT 5 (QoS 1)
  for the 36 published Datastreams (never a rollup, whose Observations only the platform writes),
  following a simulated clock (see `SimulatedClock`): it starts one day in the past and runs `speed` times
  faster than real time until it has caught up with the real now, then continues in real time. So a fresh
  demo first fills a day of history quickly and then keeps producing live data, and no phenomenonTime is
  ever in the future. Each Datastream also publishes one observation immediately at start.
- Values are deterministic functions of the seed, the Datastream and the (simulated) time, with daily
  cycles in Hamburg local time: rush hours for traffic and bikes, NO2 higher at rush hour, noise lower at
  night, bike-share stations emptying or filling with commuters, charging stations changing status now and
  then (published on change only).

Modules, each importing only those above it:
  values     daily cycles in Hamburg local time and the generators of Observation results
  stations   the city plan: stations, their Datastreams and rollups, the shared Sensors and ObservedProperties
  city       DemoCity on the server: `create_city` through the STA REST API
  simulator  the simulated clock, the MQTT publisher, `publish_forever` and `run_demo`
Import from `citystream.demo`; the names below are its API.
"""

from citystream.demo.city import (
    DEMO_MARK,
    DemoCity,
    DemoDatastream,
    DemoError,
    DemoRollup,
    create_city,
    floor_time,
)
from citystream.demo.simulator import DEFAULT_BACKLOG, SimulatedClock, publish_forever, run_demo
from citystream.demo.stations import (
    KIND_TITLES,
    OBSERVED_PROPERTIES,
    OM_CATEGORY,
    OM_COUNT,
    OM_MEASUREMENT,
    ROLLUPS,
    SENSORS,
    STATIONS,
    STREAMS,
)
from citystream.demo.values import (
    CHARGING_STATES,
    HAMBURG,
    AvailabilityGenerator,
    ChargingStatusGenerator,
    CountGenerator,
    MeasurementGenerator,
    ValueGenerator,
    awake,
    commuter_activity,
    traffic_activity,
)

__all__ = [
    "CHARGING_STATES",
    "DEFAULT_BACKLOG",
    "DEMO_MARK",
    "HAMBURG",
    "KIND_TITLES",
    "OBSERVED_PROPERTIES",
    "OM_CATEGORY",
    "OM_COUNT",
    "OM_MEASUREMENT",
    "ROLLUPS",
    "SENSORS",
    "STATIONS",
    "STREAMS",
    "AvailabilityGenerator",
    "ChargingStatusGenerator",
    "CountGenerator",
    "DemoCity",
    "DemoDatastream",
    "DemoError",
    "DemoRollup",
    "MeasurementGenerator",
    "SimulatedClock",
    "ValueGenerator",
    "awake",
    "commuter_activity",
    "create_city",
    "floor_time",
    "publish_forever",
    "run_demo",
    "traffic_activity",
]
