"""Rollups where TimescaleDB exists: `observations` is a hypertable there, and the same engine (plain SQL
over it, sensorthings/write/rollups.py) must give the same buckets as the plain-PostgreSQL path, which is
what the reference computation checks. Where the extension is not installed (Debian 12 has no package) the
same test runs on the native partitions, so that its own code is checked by every run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from sensorthings.model.rollups import RollupSpec
from tests.sta.test_rollups import assert_rollup_equals_reference, numeric_datastream, rollup, send


def test_rollups_equal_the_reference_on_a_hypertable_or_native_partitions(sta: str, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        hypertable = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is not None
        if hypertable:
            assert conn.execute("SELECT 1 FROM timescaledb_information.hypertables "
                                "WHERE hypertable_name = 'observations'").fetchone() is not None
    source = numeric_datastream(sta)
    base = datetime(2024, 10, 26, 22, tzinfo=UTC)  # Berlin's clocks go back this night
    send(sta, source, [(base + timedelta(minutes=13 * i), (i * 7) % 23) for i in range(200)])
    for width, function in (("PT15M", "mean"), ("PT1H", "max"), ("P1D", "count"), ("P1M", "last")):
        rollup_id = rollup(sta, source, width, function)
        assert_rollup_equals_reference(sta, source, rollup_id, RollupSpec(width, function, "Europe/Berlin"))
    send(sta, source, [(base + timedelta(minutes=5), 99), (base + timedelta(hours=30), -4)])  # late, merged
    assert_rollup_equals_reference(sta, source, rollup_id, RollupSpec("P1M", "last", "Europe/Berlin"))
