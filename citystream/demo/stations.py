"""The demo city's plan: its 30 stations, what each kind measures (and which of it the platform rolls up), and
the shared Sensors and ObservedProperties.

Pure data (plus `_generator`, which gives each Datastream its value generator); nothing here talks to a server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from citystream.demo.values import (
    AvailabilityGenerator,
    ChargingStatusGenerator,
    CountGenerator,
    MeasurementGenerator,
    ValueGenerator,
    awake,
    traffic_activity,
)

_OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
OM_COUNT: Final = _OM + "OM_CountObservation"
OM_CATEGORY: Final = _OM + "OM_CategoryObservation"
OM_MEASUREMENT: Final = _OM + "OM_Measurement"

_DEF = "https://demo.citystream.example/def"
_DOCS = "https://demo.citystream.example/sensors"


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
class _Rollup:
    """A Datastream the platform computes from another of the station's (sensorthings/write/rollups.py):
    created through STA with `RollupOf` and `rollup`, never published to."""

    suffix: str
    name: str
    description: str
    source: str
    """The suffix of the station's Datastream it rolls up."""
    width: str
    function: str
    period: float
    """Nominal seconds per bucket (`properties.periodSeconds`, as the published Datastreams have)."""
    time_zone: str = "Europe/Berlin"


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
    "bike-counter": (
        _Stream("15min", "Bicycles per 15 minutes", "Number of bicycles counted per 15 minutes", "bicycle-count",
                "bicycle-counter", OM_COUNT, _BICYCLES, 900, interval=True),
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

ROLLUPS: Final[dict[str, tuple[_Rollup, ...]]] = {
    "bike-counter": tuple(
        _Rollup(suffix, f"Bicycles per {label}", f"Number of bicycles counted per {label}", "15min", width, "sum",
                period)
        for suffix, label, width, period in (
            ("hourly", "hour", "PT1H", 3600),
            ("daily", "day", "P1D", 86400),
            ("weekly", "week", "P1W", 604800),
        )
    ),
}
"""Rollup Datastreams per kind of station. A bike counter counts per 15 minutes; its counts per hour, local
day and ISO week (Hamburg publishes each as a Datastream of its own) are the platform's sums of those. Their
keys differ from the older demo's published `1h`/`1d`/`1w` Datastreams, which a rollup cannot replace in
place (create_city reports any it finds as stale)."""

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

