"""The audit log (citystream/audit.py, sensorthings/http/audit.py, migration 0008_audit.sql): every write on
record with its principal, path, status and rows, the requests of a $batch one by one (a change set's as
its outcome has them), refused writes included and reads not; GET /admin/audit with its paging, filters
and refusals; the table append-only but truncatable, old day partitions dropped by retention; and the
buffer that drops and counts instead of blocking when it is full.

Entries are found by the X-Request-ID each request sends (the access log keeps it, the audit log records
it), so tests never depend on what other tests wrote; the flush is asynchronous, hence `wait_for`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from citystream.audit import AuditLog
from sensorthings.write.ports import AuditEntry
from tests.auth.helpers import ANON, bearer, connection, key_id, new_key, revoked_key
from tests.mqtt_helpers import wait_for
from tests.sta_helpers import (
    ADMIN,
    HTTP,
    create,
    create_datastream,
    create_datastream_with_observations,
    delete,
    patch,
    post,
    thing_body,
    url,
)

COLUMNS = "id, at, principal_kind, principal, principal_id, method, path, status, rows, request_id"
OPERATOR = ("token", "CITYSTREAM_ADMIN_TOKEN", "operator")


def new_request_id() -> str:
    return f"audit-test-{uuid.uuid4().hex}"


def traced(request_id: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    return {**(headers or {}), "X-Request-ID": request_id}


def entries_of(database_url: str, request_id: str) -> list[dict[str, Any]]:
    with connection(database_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        return cursor.execute(f"SELECT {COLUMNS} FROM audit_log WHERE request_id = %s ORDER BY id",  # noqa: S608
                              (request_id,)).fetchall()


def wait_entries(database_url: str, request_id: str, n: int = 1) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        found = entries_of(database_url, request_id)
        return found if len(found) >= n else None

    return wait_for(enough, what=f"{n} audit entries of request {request_id}")


def the_entry(database_url: str, request_id: str) -> dict[str, Any]:
    found = wait_entries(database_url, request_id)
    assert len(found) == 1, found
    return found[0]


def who(entry: dict[str, Any]) -> tuple[str, str, str | None]:
    return entry["principal_kind"], entry["principal"], entry["principal_id"]


# ------------------------------------------------------------------ what is recorded


def test_a_create_a_patch_and_a_delete_are_recorded(sta: str, database_url: str) -> None:
    before = datetime.now(UTC)
    rid = new_request_id()
    thing = create(sta, "Things", thing_body("audited"), headers=traced(rid))
    entry = the_entry(database_url, rid)
    assert who(entry) == OPERATOR
    assert (entry["method"], entry["path"], entry["status"], entry["rows"]) == ("POST", "/v1.1/Things", 201, 1)
    assert before - timedelta(seconds=1) <= entry["at"] <= datetime.now(UTC)

    rid = new_request_id()
    assert patch(sta, f"Things({thing})", {"name": "renamed"}, headers=traced(rid)).status_code == 200
    entry = the_entry(database_url, rid)
    assert (entry["method"], entry["path"], entry["status"], entry["rows"]) == (
        "PATCH", f"/v1.1/Things({thing})", 200, 1)

    rid = new_request_id()
    assert delete(sta, f"Things({thing})", headers=traced(rid)).status_code == 200
    entry = the_entry(database_url, rid)
    assert (entry["method"], entry["path"], entry["status"], entry["rows"]) == (
        "DELETE", f"/v1.1/Things({thing})", 200, 1)


def test_a_failed_write_is_recorded_with_no_rows(sta: str, database_url: str) -> None:
    rid = new_request_id()
    assert patch(sta, "Things(999999)", {"name": "nobody"}, headers=traced(rid)).status_code == 404
    entry = the_entry(database_url, rid)
    assert (entry["status"], entry["rows"]) == (404, 0)


def test_a_filtered_delete_records_how_many_it_deleted(sta: str, database_url: str) -> None:
    create_datastream_with_observations(sta, 5)
    rid = new_request_id()
    response = HTTP.delete(url(sta, "Observations"), params={"$filter": "result lt 3"}, headers=traced(rid))
    assert response.status_code == 200 and response.json() == {"deleted": 3}, response.text
    entry = the_entry(database_url, rid)
    assert (entry["method"], entry["status"], entry["rows"]) == ("DELETE", 200, 3)
    assert entry["path"] == f"/v1.1/Observations?{response.request.url.query.decode()}"  # as sent
    assert "filter" in entry["path"]


def test_create_observations_records_how_many_it_created(sta: str, database_url: str) -> None:
    stream = create_datastream(sta)
    rid = new_request_id()
    response = post(sta, "CreateObservations", [
        {"Datastream": {"@iot.id": stream}, "components": ["phenomenonTime", "result"],
         "dataArray": [["2024-05-01T10:00:00Z", 1], ["not a time", 2], ["2024-05-01T10:02:00Z", 3]]}],
        headers=traced(rid))
    assert response.status_code == 201, response.text
    assert [link.startswith("error") for link in response.json()] == [False, True, False]
    entry = the_entry(database_url, rid)
    assert (entry["path"], entry["status"], entry["rows"]) == ("/v1.1/CreateObservations", 201, 2)


def test_post_observations_through_ingest_is_recorded(sta: str, database_url: str) -> None:
    stream = create_datastream(sta)
    rid = new_request_id()
    assert post(sta, f"Datastreams({stream})/Observations", {"result": 1}, headers=traced(rid)).status_code == 201
    entry = the_entry(database_url, rid)
    assert (entry["path"], entry["status"], entry["rows"]) == (f"/v1.1/Datastreams({stream})/Observations", 201, 1)


def test_the_requests_of_a_batch_are_recorded_one_by_one(sta: str, database_url: str) -> None:
    rid = new_request_id()
    response = HTTP.post(f"{sta}/$batch", headers=traced(rid), json={"requests": [
        {"id": "1", "method": "post", "url": "Things", "body": thing_body("in a batch")},
        {"id": "2", "method": "get", "url": "Things"},
        {"id": "3", "method": "post", "url": "Things", "body": {"name": "no description"}},
    ]})
    assert [r["status"] for r in response.json()["responses"]] == [201, 200, 400], response.text
    found = wait_entries(database_url, rid, 2)
    assert [(e["method"], e["path"], e["status"], e["rows"]) for e in found] == [
        ("POST", "/v1.1/Things", 201, 1), ("POST", "/v1.1/Things", 400, 0)]  # not the GET, not the $batch
    assert all(who(e) == OPERATOR for e in found)


def test_a_change_set_is_recorded_as_its_outcome_has_it(sta: str, database_url: str) -> None:
    """Committed: each request as answered. Rolled back: the failing one with its status, those before it as
    424 (not applied) with no rows, though they had succeeded inside the transaction."""
    rid = new_request_id()
    response = HTTP.post(f"{sta}/$batch", headers=traced(rid), json={"requests": [
        {"id": "a", "atomicityGroup": "ok", "method": "post", "url": "Things", "body": thing_body("one")},
        {"id": "b", "atomicityGroup": "ok", "method": "post", "url": "$a/Locations", "body": {
            "name": "here", "description": "here", "encodingType": "application/geo+json",
            "location": {"type": "Point", "coordinates": [10, 53]}}},
        {"id": "c", "atomicityGroup": "bad", "method": "post", "url": "Things", "body": thing_body("two")},
        {"id": "d", "atomicityGroup": "bad", "method": "patch", "url": "Things(999999)", "body": {"name": "x"}},
    ]})
    assert [r["status"] for r in response.json()["responses"]] == [201, 201, 404, 424], response.text
    found = wait_entries(database_url, rid, 4)
    assert [(e["status"], e["rows"]) for e in found] == [(201, 1), (201, 1), (424, 0), (404, 0)]
    assert found[1]["path"].endswith("/Locations") and found[1]["path"].startswith("/v1.1/Things(")


def test_a_retried_change_set_is_recorded_once(sta: str, database_url: str) -> None:
    """An Observation of a month without a partition makes the change set's transaction run twice (the
    partition is created in between): its requests are recorded once, from the attempt that committed."""
    stream = create_datastream(sta)
    with connection(database_url) as conn:
        month = next(f"{year}-{m:02d}" for year in range(1901, 1999) for m in range(1, 13)
                     if conn.execute("SELECT to_regclass(%s)", (f"observations_{year}{m:02d}",)).fetchone() == (None,))
    rid = new_request_id()
    response = HTTP.post(f"{sta}/$batch", headers=traced(rid), json={"requests": [
        {"id": "t", "atomicityGroup": "g", "method": "post", "url": "Things", "body": thing_body("retried")},
        {"id": "o", "atomicityGroup": "g", "method": "post", "url": f"Datastreams({stream})/Observations",
         "body": {"result": 1, "phenomenonTime": f"{month}-01T00:00:00Z"}},
    ]})
    assert [r["status"] for r in response.json()["responses"]] == [201, 201], response.text
    marker = new_request_id()  # recorded after the batch: once it is written, the batch's entries are too
    create(sta, "Things", thing_body(), headers=traced(marker))
    the_entry(database_url, marker)
    assert [(e["path"], e["status"]) for e in entries_of(database_url, rid)] == [
        ("/v1.1/Things", 201), (f"/v1.1/Datastreams({stream})/Observations", 201)]


def test_an_anonymous_write_is_recorded_as_refused(sta: str, database_url: str) -> None:
    rid = new_request_id()
    assert ANON.post(url(sta, "Things"), json=thing_body(), headers=traced(rid)).status_code == 401
    entry = the_entry(database_url, rid)
    assert who(entry) == ("anonymous", "anonymous", None)
    assert (entry["method"], entry["path"], entry["status"], entry["rows"]) == ("POST", "/v1.1/Things", 401, 0)


def test_a_write_without_the_role_is_recorded_with_the_key(sta: str, database_url: str) -> None:
    token = new_key(database_url, "read", name="audit reader")
    rid = new_request_id()
    assert ANON.post(url(sta, "Things"), json=thing_body(), headers=traced(rid, bearer(token))).status_code == 403
    entry = the_entry(database_url, rid)
    assert who(entry) == ("key", "audit reader", key_id(token))
    assert (entry["status"], entry["rows"]) == (403, 0)


def test_a_write_with_a_credential_that_does_not_verify_is_recorded_with_what_it_claimed(
        sta: str, database_url: str) -> None:
    token = revoked_key(database_url, "create")
    rid = new_request_id()
    assert ANON.post(url(sta, "Things"), json=thing_body(), headers=traced(rid, bearer(token))).status_code == 401
    entry = the_entry(database_url, rid)
    assert who(entry) == ("unverified", key_id(token), key_id(token))
    assert (entry["status"], entry["rows"]) == (401, 0)
    assert token.rsplit("_", 1)[1] not in str(entry)  # never the secret


def _read_recorded(sta: str, database_url: str, headers: dict[str, str]) -> bool:
    """Whether a read with `headers` is recorded: a write after it is waited for (entries are written in
    order), then the read's entries are looked up."""
    read_id, write_id = new_request_id(), new_request_id()
    assert ANON.get(url(sta, "Things"), headers=traced(read_id, headers)).status_code == 200
    create(sta, "Things", thing_body(), headers=traced(write_id))
    the_entry(database_url, write_id)
    return bool(entries_of(database_url, read_id))


def test_reads_are_recorded_only_while_restricted_data_exists(sta: str, database_url: str) -> None:
    """Nothing restricted: no read is recorded. A restricted Project: reads by principals that may see
    restricted data are, as soon as the platform has learned of it (citystream/restrictions.py); anonymous
    reads never are."""
    reader = bearer(new_key(database_url, "read"))
    wait_for(lambda: not _read_recorded(sta, database_url, reader) or None, what="reads no longer recorded")
    assert not _read_recorded(sta, database_url, ADMIN)
    project = create(sta, "Projects", {"name": "audited", "termsOfUse": "none", "visibility": "restricted"})
    try:
        wait_for(lambda: _read_recorded(sta, database_url, reader) or None, what="reads of restricted data recorded")
        assert _read_recorded(sta, database_url, ADMIN)
        assert not _read_recorded(sta, database_url, {})
        read_id = new_request_id()
        assert HTTP.get(f"{sta.rsplit('/', 1)[0]}/ogcapi/collections/datastreams/items",
                        headers=traced(read_id)).status_code == 200
        entry = wait_entries(database_url, read_id)[0]
        assert (entry["method"], entry["status"], who(entry)) == ("GET", 200, OPERATOR), entry
    finally:
        assert HTTP.patch(url(sta, f"Projects({project})"), json={"visibility": "public"}).status_code == 200


# ------------------------------------------------------------------ GET /admin/audit


def admin_audit(server_url: str, **params: Any) -> Any:
    response = HTTP.get(f"{server_url}/admin/audit", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_admin_audit_pages_newest_first_and_filters(sta: str, server_url: str, database_url: str) -> None:
    token = new_key(database_url, "create", name=f"pager {uuid.uuid4().hex[:8]}")
    writer, rid = bearer(token), new_request_id()
    for i in range(4):
        create(sta, "Things", thing_body(f"paged {i}"), headers=traced(rid, writer))
    assert ANON.patch(url(sta, "Things(1)"), json={"name": "x"}, headers=traced(rid, writer)).status_code == 403
    wait_entries(database_url, rid, 5)

    first = admin_audit(server_url, principal=key_id(token), limit=2)
    assert [(e["method"], e["status"]) for e in first["value"]] == [("PATCH", 403), ("POST", 201)]
    entry = first["value"][0]
    assert set(entry) == {"id", "at", "principalKind", "principal", "principalId", "method", "path", "status",
                          "rows", "requestId"}
    assert (entry["principalKind"], entry["principalId"], entry["requestId"], entry["rows"]) == (
        "key", key_id(token), rid, 0)
    second = HTTP.get(first["nextLink"]).json()  # keeps the filter
    third = HTTP.get(second["nextLink"]).json()
    assert "nextLink" not in third
    pages = [first["value"], second["value"], third["value"]]
    assert [len(page) for page in pages] == [2, 2, 1]
    ids = [e["id"] for page in pages for e in page]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 5

    by_name = admin_audit(server_url, principal=entry["principal"], status=201)["value"]
    assert [e["status"] for e in by_name] == [201] * 4
    assert all(e["principalId"] == key_id(token) for e in by_name)
    assert admin_audit(server_url, principal=key_id(token), before=ids[-1])["value"] == []


def test_admin_audit_needs_the_admin_role(server_url: str, database_url: str) -> None:
    assert ANON.get(f"{server_url}/admin/audit").status_code == 401
    creator = new_key(database_url, "create", "read", "update", "delete")
    response = ANON.get(f"{server_url}/admin/audit", headers=bearer(creator))
    assert response.status_code == 403 and "'admin'" in response.json()["message"]
    assert ANON.get(f"{server_url}/admin/audit", headers=bearer(new_key(database_url, "admin"))).status_code == 200


@pytest.mark.parametrize(("params", "fragment"), [
    ({"since": "2024-01-01"}, "unknown parameter(s) since"),
    ({"status": "abc"}, "status must be"),
    ({"status": "42"}, "status must be an HTTP status"),
    ({"before": "-1"}, "before must be"),
    ({"principal": ""}, "principal must be"),
])
def test_admin_audit_refuses_what_it_does_not_take(server_url: str, params: dict[str, str], fragment: str) -> None:
    response = HTTP.get(f"{server_url}/admin/audit", params=params)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["message"]


# ------------------------------------------------------------------ the table


def test_the_audit_log_is_append_only_but_truncatable(sta: str, database_url: str) -> None:
    rid = new_request_id()
    create(sta, "Things", thing_body(), headers=traced(rid))
    entry_id = the_entry(database_url, rid)["id"]
    for statement in ("UPDATE audit_log SET status = 200 WHERE id = %s", "DELETE FROM audit_log WHERE id = %s"):
        with connection(database_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege,
                                                             match="append-only"):
            conn.execute(statement, (entry_id,))
    assert len(entries_of(database_url, rid)) == 1
    with connection(database_url) as conn:
        conn.execute("TRUNCATE audit_log")
    assert entries_of(database_url, rid) == []


def _partition(day: Any) -> str:
    return f"audit_log_{day:%Y%m%d}"


def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone() == (True,)


async def _with_log(database_url: str, **options: Any) -> tuple[AsyncConnectionPool[Any], AuditLog]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False,
                                                         kwargs={"autocommit": True})
    await pool.open(wait=True)
    return pool, AuditLog(pool, **options)


def test_retention_drops_old_day_partitions(database_url: str) -> None:
    today = datetime.now(UTC).date()
    old = today - timedelta(days=400)
    with connection(database_url) as conn:
        conn.execute("SELECT audit_ensure_partition(%s), audit_ensure_partition(%s)", (old, today))
        conn.execute("INSERT INTO audit_log (at, principal_kind, principal, method, path, status) "
                     "VALUES (%s, 'anonymous', 'anonymous', 'POST', '/v1.1/Things', 401)",
                     (datetime(old.year, old.month, old.day, 12, tzinfo=UTC),))

    async def expire(retention_days: int) -> int:
        pool, audit = await _with_log(database_url, retention_days=retention_days)
        try:
            return await audit.expire()
        finally:
            await pool.close()

    assert asyncio.run(expire(0)) == 0  # 0: keep everything
    with connection(database_url) as conn:
        assert _exists(conn, _partition(old))
    assert asyncio.run(expire(365)) >= 1
    with connection(database_url) as conn:
        assert not _exists(conn, _partition(old))
        assert _exists(conn, _partition(today))


def _entry(request_id: str, at: float | None = None) -> AuditEntry:
    return AuditEntry(time.time() if at is None else at, "anonymous", "anonymous", None, "POST", "/v1.1/Things",
                      401, 0, request_id)


def test_a_missing_day_partition_is_created_and_the_flush_stops_with_nothing_left(database_url: str) -> None:
    """An entry of a day without a partition (ten days ago here) gets one; stopping writes what is buffered
    (the flush interval is too long to have done it)."""
    day = datetime.now(UTC).date() - timedelta(days=10)
    at = datetime(day.year, day.month, day.day, 6, tzinfo=UTC).timestamp()
    with connection(database_url) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(_partition(day))))
    rid = new_request_id()

    async def run() -> int:
        pool, audit = await _with_log(database_url, retention_days=0, flush_seconds=60)
        try:
            await audit.start()
            audit.record(_entry(rid, at))
            audit.record(_entry(rid))
            await audit.stop()
            return audit.buffered
        finally:
            await pool.close()

    assert asyncio.run(run()) == 0
    found = entries_of(database_url, rid)
    assert [e["at"].date() for e in found] == [day, datetime.now(UTC).date()]
    with connection(database_url) as conn:
        assert _exists(conn, _partition(day))


def test_a_full_buffer_drops_and_counts_instead_of_blocking() -> None:
    def dropped() -> float:
        return REGISTRY.get_sample_value("citystream_audit_dropped_total", {"reason": "buffer_full"}) or 0.0

    audit = AuditLog(None, capacity=3)  # type: ignore[arg-type]  # never reaches the database
    counted = dropped()
    started = time.perf_counter()
    for _ in range(1000):
        audit.record(_entry("full"))
    elapsed = time.perf_counter() - started
    assert audit.buffered == 3
    assert dropped() - counted == 997
    assert elapsed < 0.5, elapsed  # microseconds each, nothing waited for
