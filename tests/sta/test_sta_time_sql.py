"""`sta_time` / `sta_interval` (migrations 0001, 0017) against the text STA readers expect.

Every time in a response is rendered by these two SQL functions; migration 0017 replaced 0001's to_char()
branches with PostgreSQL's JSON rendering of a timestamp, for speed. The text must stay what it was: UTC,
`Z`, the fraction only where there is one, its trailing zeros cut, four-digit years (0001-9999), and no
value for the infinities (the server's open ends), whatever the session's zone and DateStyle.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

INSTANTS = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))


def expected(t: datetime) -> str:
    """STA's instant text: ISO 8601 in UTC, the microseconds without trailing zeros, `Z`."""
    text = t.astimezone(UTC).replace(tzinfo=None).isoformat()
    if "." in text:
        text = text.rstrip("0")
    return f"{text}Z"  # isoformat pads the year to four digits, as PostgreSQL does


@pytest.fixture(scope="module")
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("SET TIME ZONE 'Pacific/Chatham'")  # the session's zone and style must not matter
        connection.execute("SET DateStyle = 'SQL, DMY'")
        yield connection


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(INSTANTS, min_size=1, max_size=200))
def test_instants_render_as_sta_text(conn: psycopg.Connection, instants: list[datetime]) -> None:
    rows = conn.execute("SELECT sta_time(t) FROM unnest(%s::timestamptz[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
                        (instants,)).fetchall()
    assert [r[0] for r in rows] == [expected(t) for t in instants]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(INSTANTS, INSTANTS)
def test_intervals_render_start_slash_end(conn: psycopg.Connection, a: datetime, b: datetime) -> None:
    start, end = min(a, b), max(a, b)
    row = conn.execute("SELECT sta_interval(%s, %s), sta_interval(%s, NULL)", (start, end, start)).fetchone()
    assert row is not None
    assert row[0] == (expected(start) if start == end else f"{expected(start)}/{expected(end)}")
    assert row[1] == expected(start)


def test_the_examples_and_the_infinities(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT sta_time('2024-03-31 00:59:59.5+00'), sta_time('0044-03-15 12:00:00.000120+00'),"
                       " sta_time('2024-01-01 00:00:00+01'), sta_time('infinity'), sta_time('-infinity'),"
                       " sta_time(NULL)").fetchone()
    assert row == ("2024-03-31T00:59:59.5Z", "0044-03-15T12:00:00.00012Z", "2023-12-31T23:00:00Z", None, None, None)
