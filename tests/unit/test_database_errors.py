"""Database errors that a request can cause map to clear client-facing statuses, never a traceback."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from sensorthings.http.common import database_error


def test_statement_timeout_is_503_naming_the_limit() -> None:
    error = database_error(errors.QueryCanceled("canceling statement due to statement timeout"), 1234)
    assert error.status == 503 and "1234 ms" in error.message


@pytest.mark.parametrize("exc", [errors.DeadlockDetected(), errors.SerializationFailure()])
def test_lost_concurrency_race_is_503_asking_to_retry(exc: psycopg.Error) -> None:
    error = database_error(exc, 1000)
    assert error.status == 503 and "again" in error.message

