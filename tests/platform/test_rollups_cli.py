"""`citystream rollups add|list|remove` (citystream/rollup_commands.py), run as the real executable against the
session database while the session app serves it: a rollup added on the command line is the Datastream that
POST /v1.1/Datastreams with RollupOf makes (linked both ways, computed from the history at once, kept up to
date by later ingest without a restart), listed as a table and as JSON, and removed without its source.
Mistakes exit non-zero with a `citystream: error:` message naming the flag to change, never a traceback.

Every test uses the `sta` fixture, which empties the database first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from citystream.cli_args import build_parser
from tests.sta_helpers import (
    create,
    create_thing_with_location,
    datastream_body,
    get,
    observed_property_body,
    post,
    read,
    ref,
    sensor_body,
    values,
)

CITYSTREAM = Path(sys.executable).with_name("citystream")
OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
START = datetime(2024, 5, 6, 21, 0, tzinfo=UTC)  # 23:00 in Berlin: the quarter hours cross local midnight
COUNTS = [3, 5, 8, 13, 2, 4, 6, 1, 7, 9]


@dataclass
class Cli:
    database_url: str

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        clean = {name: value for name, value in os.environ.items() if not name.startswith("CITYSTREAM_")}
        return subprocess.run([str(CITYSTREAM), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120, env={**clean, "CITYSTREAM_DATABASE_URL": self.database_url, **(env or {})})

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self(*args)
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def fails(self, code: int, *args: str, env: dict[str, str] | None = None) -> str:
        """Run a command that must exit `code` with an error message; the message."""
        done = self(*args, env=env)
        assert done.returncode == code, f"{args}: exit {done.returncode}, not {code}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        assert "error" in done.stderr, done.stderr
        return done.stderr

    def table(self, *args: str) -> list[list[str]]:
        """`rollups list` as rows of cells (the name, with its spaces, last), the header checked and left out."""
        lines = self.ok("rollups", "list", *args).stdout.splitlines()
        assert lines and lines[0].split() == ["id", "source", "width", "function", "zone", "buckets", "name"], lines
        return [line.split(maxsplit=6) for line in lines[1:]]


@pytest.fixture
def cli(sta: str, database_url: str) -> Cli:
    return Cli(database_url)


def datastream(sta: str, observation_type: str, name: str) -> int:
    thing = create_thing_with_location(sta)
    return create(sta, f"Things({thing})/Datastreams", datastream_body(
        name, observationType=OM + observation_type, Sensor=sensor_body(), ObservedProperty=observed_property_body()))


def send(sta: str, source: int, start: datetime, results: list[int]) -> None:
    """Quarter-hour Observations from `start`, in one ingest batch."""
    response = post(sta, "CreateObservations", [{
        "Datastream": ref(source), "components": ["phenomenonTime", "result"],
        "dataArray": [[(start + timedelta(minutes=15 * i)).isoformat().replace("+00:00", "Z"), r]
                      for i, r in enumerate(results)]}])
    assert response.status_code == 201 and not [x for x in response.json() if x.startswith("error")], response.text


def buckets(sta: str, rollup_id: int) -> dict[str, tuple[Any, int]]:
    return {o["phenomenonTime"]: (o["result"], o["parameters"]["rollup"]["count"])
            for o in values(sta, f"Datastreams({rollup_id})/Observations", **{"$top": 1000})}


def hourly_sums(start: datetime, results: list[int]) -> dict[str, tuple[int, int]]:
    sums: dict[datetime, list[int]] = {}
    for i, result in enumerate(results):
        hour = (start + timedelta(minutes=15 * i)).replace(minute=0)
        sums.setdefault(hour, []).append(result)
    return {f"{_z(h)}/{_z(h + timedelta(hours=1))}": (sum(r), len(r)) for h, r in sums.items()}


def _z(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def test_add_list_and_remove_rollups(sta: str, cli: Cli) -> None:
    source = datastream(sta, "OM_CountObservation", "bicycles")
    send(sta, source, START, COUNTS)

    done = cli.ok("rollups", "add", str(source), "--width", "PT1H", "--function", "sum", "--time-zone",
                  "Europe/Berlin")
    hourly = int(done.stdout.strip())
    assert f"rollup {hourly}" in done.stderr and "3 buckets" in done.stderr
    document = read(sta, f"Datastreams({hourly})")
    assert {k: document["rollup"][k] for k in ("width", "function", "timeZone")} == {
        "width": "PT1H", "function": "sum", "timeZone": "Europe/Berlin"}
    assert document["name"] == "bicycles (sum per PT1H)" and document["observationType"] == OM + "OM_CountObservation"
    assert read(sta, f"Datastreams({hourly})/RollupOf")["@iot.id"] == source
    assert read(sta, f"Datastreams({hourly})/Thing")["@iot.id"] == read(sta, f"Datastreams({source})/Thing")["@iot.id"]
    assert buckets(sta, hourly) == hourly_sums(START, COUNTS)  # computed from the history at once

    daily = int(cli.ok("rollups", "add", str(source), "--width", "P1D", "--function", "max", "--time-zone",
                       "Europe/Berlin", "--name", "Busiest quarter hour per day").stdout)
    assert read(sta, f"Datastreams({daily})")["name"] == "Busiest quarter hour per day"
    assert buckets(sta, daily) == {"2024-05-05T22:00:00Z/2024-05-06T22:00:00Z": (13, 4),
                                   "2024-05-06T22:00:00Z/2024-05-07T22:00:00Z": (9, 6)}
    assert sorted(d["@iot.id"] for d in values(sta, f"Datastreams({source})/Rollups")) == [hourly, daily]
    utc = int(cli.ok("rollups", "add", str(source), "--width", "PT15M", "--function", "count", "--final-after",
                     "PT2H").stdout)
    assert {k: read(sta, f"Datastreams({utc})")["rollup"][k] for k in ("timeZone", "finalAfter")} == {
        "timeZone": "UTC", "finalAfter": "PT2H"}

    # The running API merges later ingest into the rollups the command made.
    send(sta, source, START + timedelta(hours=3), [10, 20])
    assert buckets(sta, hourly)["2024-05-07T00:00:00Z/2024-05-07T01:00:00Z"] == (30, 2)

    assert cli.table() == [
        [str(hourly), str(source), "PT1H", "sum", "Europe/Berlin", "4", "bicycles (sum per PT1H)"],
        [str(daily), str(source), "P1D", "max", "Europe/Berlin", "2", "Busiest quarter hour per day"],
        [str(utc), str(source), "PT15M", "count", "UTC", "12", "bicycles (count per PT15M)"]]
    listed = json.loads(cli.ok("rollups", "list", str(source), "--json").stdout)
    assert [(r["id"], r["source"], r["width"], r["function"], r["timeZone"], r["buckets"], r["name"])
            for r in listed] == [(hourly, source, "PT1H", "sum", "Europe/Berlin", 4, "bicycles (sum per PT1H)"),
                                 (daily, source, "P1D", "max", "Europe/Berlin", 2, "Busiest quarter hour per day"),
                                 (utc, source, "PT15M", "count", "UTC", 12, "bicycles (count per PT15M)")]
    other = datastream(sta, "OM_Measurement", "temperature")
    assert cli.table(str(other)) == []
    assert json.loads(cli.ok("rollups", "list", str(other), "--json").stdout) == []

    removed = cli.ok("rollups", "remove", str(daily))
    assert f"rollup {daily} of Datastream {source} removed" in removed.stderr
    assert get(sta, f"Datastreams({daily})").status_code == 404
    assert get(sta, f"Datastreams({source})").status_code == 200
    assert len(values(sta, f"Datastreams({source})/Observations", **{"$top": 100})) == 12
    assert [row[0] for row in cli.table(str(source))] == [str(hourly), str(utc)]


def test_mistakes_are_refused_with_a_message(sta: str, cli: Cli) -> None:
    counts = datastream(sta, "OM_CountObservation", "bicycles")
    temperature = datastream(sta, "OM_Measurement", "temperature")
    words = datastream(sta, "OM_CategoryObservation", "status")
    hourly = int(cli.ok("rollups", "add", str(counts), "--width", "PT1H", "--function", "sum").stdout)

    def add(source: int, *flags: str) -> list[str]:
        return ["rollups", "add", str(source), *flags]

    assert "there is no Datastream 999" in cli.fails(1, *add(999, "--width", "PT1H", "--function", "mean"))
    message = cli.fails(2, *add(counts, "--width", "PT60M", "--function", "sum"))
    assert "--width: 'PT60M' is not a rollup width (write it as 'PT1H')" in message
    assert "--function: 'sum' is offered only" in cli.fails(2, *add(temperature, "--width", "P1D", "--function", "sum"))
    assert "--function: 'MEAN'" in cli.fails(2, *add(temperature, "--width", "P1D", "--function", "MEAN"))
    assert "did you mean 'Europe/Berlin'" in cli.fails(2, *add(temperature, "--width", "P1D", "--function", "mean",
                                                                "--time-zone", "europe/berlin"))
    message = cli.fails(2, *add(hourly, "--width", "P1D", "--function", "sum"))
    assert f"the source: Datastream {hourly} is itself a rollup" in message
    assert "rollups aggregate numbers" in cli.fails(2, *add(words, "--width", "P1D", "--function", "count"))
    assert "a Datastream id is a positive integer" in cli.fails(2, "rollups", "add", "x", "--width", "P1D",
                                                                 "--function", "mean")
    assert "--width" in cli.fails(2, "rollups", "add", str(counts), "--function", "mean")  # argparse: required
    assert "--final-after: 'P1Y'" in cli.fails(2, *add(counts, "--width", "P1D", "--function", "sum",
                                                       "--final-after", "P1Y"))

    assert f"Datastream {counts} is not a rollup" in cli.fails(1, "rollups", "remove", str(counts))
    assert get(sta, f"Datastreams({counts})").status_code == 200
    assert "there is no Datastream 999" in cli.fails(1, "rollups", "remove", "999")
    assert "there is no Datastream 999" in cli.fails(1, "rollups", "list", "999")
    assert [row[0] for row in cli.table()] == [str(hourly)]  # nothing of the refused ones was created

    unreachable = "postgresql://citystream:not-a-real-password@127.0.0.1:1/citystream"
    message = cli.fails(1, "rollups", "list", env={"CITYSTREAM_DATABASE_URL": unreachable})
    assert "cannot use the database" in message and "not-a-real-password" not in message


def test_the_command_line_parses() -> None:
    args = build_parser().parse_args(["rollups", "--data-dir", "/tmp/x", "add", "5", "--width", "PT1H",
                                      "--function", "mean", "--time-zone", "Europe/Berlin", "--name", "n"])
    assert (args.command, args.rollups_command, args.source, args.width, args.function, args.time_zone,
            args.name, str(args.data_dir)) == ("rollups", "add", 5, "PT1H", "mean", "Europe/Berlin", "n", "/tmp/x")
    listed = build_parser().parse_args(["rollups", "list", "--json"])
    assert (listed.source, listed.json) == (None, True)
    assert build_parser().parse_args(["rollups", "remove", "7"]).rollup == 7
