import time
from pathlib import Path

from tests.ogc_city import City


def test_serve(city: City) -> None:
    Path("/tmp/probe_city.txt").write_text(f"{city.sta} {city.ogc} {city.things} {city.datastreams}")
    time.sleep(2400)
