"""DELETE on a collection with $filter (issue 6, part 5): what passes the filter goes, atomically, and only
an operator may do it."""

from __future__ import annotations

import httpx
import psycopg
import pytest

from citystream.auth.credentials import create_key
from sensorthings.model.access import Role
from tests.sta_helpers import (
    HTTP,
    assert_error,
    count,
    create,
    create_datastream_with_observations,
    create_thing_with_location,
    delete,
    ids,
    location_body,
    thing_body,
)


def test_deletes_exactly_the_observations_that_pass_the_filter(sta: str) -> None:
    first = create_datastream_with_observations(sta, 10)
    second = create_datastream_with_observations(sta, 10)
    keep = ids(sta, "Observations", **{"$filter": "result lt 7", "$top": 100})
    response = delete(sta, "Observations?$filter=result ge 7")
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": 6}
    assert sorted(ids(sta, "Observations", **{"$top": 100})) == sorted(keep)
    assert count(sta, f"Datastreams({first})/Observations") == count(sta, f"Datastreams({second})/Observations") == 7


def test_a_navigation_path_limits_the_delete_to_its_collection(sta: str) -> None:
    first = create_datastream_with_observations(sta, 5)
    second = create_datastream_with_observations(sta, 5)
    response = delete(sta, f"Datastreams({first})/Observations?$filter=result ge 0")
    assert response.json() == {"deleted": 5}
    assert count(sta, f"Datastreams({first})/Observations") == 0
    assert count(sta, f"Datastreams({second})/Observations") == 5


def test_filters_may_cross_relations_and_times(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 30, day="2024-05-01")
    response = delete(sta, "Observations?$filter=phenomenonTime lt 2024-05-01T00:10:00Z and "
                           f"Datastream/id eq {datastream}")
    assert response.json() == {"deleted": 10}
    assert count(sta, "Observations") == 20


def test_deleted_observations_are_gone_by_id_too(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 3)
    victims = ids(sta, f"Datastreams({datastream})/Observations", **{"$filter": "result eq 1"})
    delete(sta, "Observations?$filter=result eq 1")
    assert HTTP.get(f"{sta}/Observations({victims[0]})").status_code == 404


def test_a_failing_filter_deletes_nothing(sta: str) -> None:
    create_datastream_with_observations(sta, 10)  # results 0..9: the product overflows from result 1 on
    response = delete(sta, "Observations?$filter=result mul 1e308 mul 10 gt 1")
    assert response.status_code == 400, response.text
    assert count(sta, "Observations") == 10


def test_location_delete_takes_its_historical_locations(sta: str) -> None:
    thing = create_thing_with_location(sta, "moving")
    create(sta, "Locations", location_body("unused"))
    assert count(sta, "HistoricalLocations") == 1
    response = delete(sta, f"Locations?$filter=Things/id eq {thing}")
    assert response.json() == {"deleted": 1}
    assert count(sta, "HistoricalLocations") == 0
    assert count(sta, "Locations") == 1
    assert count(sta, "Things") == 1


def test_nothing_matches_is_zero_and_a_missing_parent_is_404(sta: str) -> None:
    create_datastream_with_observations(sta, 2)
    assert delete(sta, "Observations?$filter=result gt 100").json() == {"deleted": 0}
    assert_error(delete(sta, "Datastreams(999)/Observations?$filter=true"), 404, "does not exist")
    assert count(sta, "Observations") == 2


@pytest.mark.parametrize(("query", "fragment"), [
    ("", "needs $filter"),
    ("?$top=5", "needs $filter"),
    ("?$filter=result gt 1&$top=5", "only $filter"),
    ("?$filter=nonsense gt", ""),
    ("?$filter=nosuchproperty eq 1", "nosuchproperty"),
])
def test_bad_bulk_deletes_are_400_and_delete_nothing(sta: str, query: str, fragment: str) -> None:
    create_datastream_with_observations(sta, 3)
    assert_error(delete(sta, f"Observations{query}"), 400, fragment)
    assert count(sta, "Observations") == 3


def test_only_the_delete_role_may_delete_by_filter(sta: str, database_url: str) -> None:
    create(sta, "Things", thing_body("keep me"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        writer = create_key(conn, "writer", frozenset({Role.CREATE, Role.READ, Role.UPDATE})).token
        deleter = create_key(conn, "deleter", frozenset({Role.DELETE})).token
    anonymous = httpx.delete(f"{sta}/Things", params={"$filter": "true"}, timeout=10)
    assert anonymous.status_code == 401 and "WWW-Authenticate" in anonymous.headers
    assert_error(delete(sta, "Things?$filter=true", headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(delete(sta, "Things?$filter=true", headers={"Authorization": f"Bearer {writer}"}), 403, "delete")
    assert count(sta, "Things") == 1
    allowed = delete(sta, "Things?$filter=true", headers={"Authorization": f"Bearer {deleter}"})
    assert allowed.json() == {"deleted": 1}
    assert count(sta, "Things") == 0
