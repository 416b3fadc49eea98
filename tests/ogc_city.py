"""A small city for the OGC API – Features tests, created through the SensorThings API (no tests here).

10 Things along a line through Hamburg (lon 9.90 + 0.02·i, lat 53.50 + 0.01·i), each with one Location, a
temperature Datastream (Measurement, °C) and a bike-count Datastream (Count). Each Datastream has 30
Observations, one every 2 hours from 2024-05-01T00:00Z (results i + k/10 and k); their FeatureOfInterest is
generated from the Thing's Location. Thing 0 has nested properties; one extra Thing has no Location.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.sta_helpers import HTTP, create, datastream_body, location_body, sensor_body, thing_body

THINGS = 10
OBSERVATIONS_PER_DATASTREAM = 30
START_DAY = "2024-05-01"
MEASUREMENT = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
COUNT = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_CountObservation"


def coordinates(i: int) -> tuple[float, float]:
    return round(9.90 + 0.02 * i, 6), round(53.50 + 0.01 * i, 6)


def phenomenon_time(k: int) -> str:
    return f"{START_DAY[:-2]}{1 + (2 * k) // 24:02d}T{(2 * k) % 24:02d}:00:00Z"


@dataclass
class City:
    sta: str  # SensorThings service root, …/v1.1
    ogc: str  # OGC API – Features landing page, …/ogcapi
    things: list[int] = field(default_factory=list)
    datastreams: list[int] = field(default_factory=list)

    def get(self, path: str, **params: Any) -> Any:
        response = HTTP.get(f"{self.ogc}{path}", params=params)
        assert response.status_code == 200, response.text
        return response.json()


def build_city(sta: str) -> City:
    city = City(sta, sta.rsplit("/", 1)[0] + "/ogcapi")
    for i in range(THINGS):
        lon, lat = coordinates(i)
        properties: dict[str, Any] = {"district": f"district-{i % 3}", "index": i}
        if i == 0:
            properties["owner"] = {"name": "City of Hamburg", "contact": {"email": "udp@example.org"}}
        datastreams = []
        for name, kind, unit, value in (
            ("temperature", MEASUREMENT, {"name": "degree Celsius", "symbol": "°C", "definition": "ucum:Cel"},
             lambda k, i=i: i + k / 10),
            ("bikes", COUNT, {"name": "bicycles", "symbol": "bicycles", "definition": "{bicycles}"},
             lambda k: k),
        ):
            datastreams.append(datastream_body(
                f"{name} {i}", observationType=kind, unitOfMeasurement=unit,
                Sensor=sensor_body(f"{name} sensor {i}"),
                ObservedProperty={"name": name, "definition": f"https://example.org/{name}",
                                  "description": name},
                Observations=[{"result": value(k), "phenomenonTime": phenomenon_time(k)}
                              for k in range(OBSERVATIONS_PER_DATASTREAM)]))
        thing = create(sta, "Things", thing_body(f"thing {i}", properties=properties,
                                                 Locations=[location_body(f"place {i}", lon, lat)],
                                                 Datastreams=datastreams))
        city.things.append(thing)
        listed = HTTP.get(f"{sta}/Things({thing})/Datastreams", params={"$orderby": "id", "$select": "id"})
        city.datastreams += [d["@iot.id"] for d in listed.json()["value"]]
    city.things.append(create(sta, "Things", thing_body("thing without location")))
    return city
