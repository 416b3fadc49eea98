"""Observation ids that encode their day (sensorthings/model/observation_ids.py), without a database.

Moved here from tests/sta/test_schema.py, which checks on a real PostgreSQL that id lookups touch one
partition.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sensorthings.model import observation_ids


def test_observation_ids_encode_their_day() -> None:
    when = datetime(2024, 5, 1, 13, 30, tzinfo=UTC)
    identifier = observation_ids.observation_id(42, when)
    lower, upper = observation_ids.day_bounds(identifier)
    assert lower == datetime(2024, 5, 1, tzinfo=UTC) and upper == datetime(2024, 5, 2, tzinfo=UTC)
    assert identifier < 2**53
    assert observation_ids.observation_id(43, when) > identifier
    early = observation_ids.observation_id(1, datetime(1850, 1, 1, tzinfo=UTC))
    assert observation_ids.day_bounds(early)[0] is None
