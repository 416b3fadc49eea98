"""Audiences of STA notifications (visibility.audience, compile_changed, Notifier): every restricted row
comes back with the text that names who may read it, exactly the principals `visible_row` lets see it; the
notifier publishes restricted rows, with their audience, only once the broker enforces audiences, and
query-option topics with `$filter`/`$expand` only ever carry public rows.

Real PostgreSQL, the real app (without MQTT) to make the data, and a Notifier driven directly
(tests/notify_helpers.py): nothing here depends on the broker."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from psycopg import sql

from sensorthings.model import LATEST
from sensorthings.model.access import ANONYMOUS, Principal, Role
from sensorthings.model.entities import ENTITIES, Entity
from sensorthings.query import visibility
from sensorthings.query.write_statements import compile_changed
from sensorthings.write.ports import Change
from tests.conftest import empty_database
from tests.notify_helpers import app_without_mqtt, notify
from tests.sta.test_sta_multi_datastream import multi_body
from tests.sta_helpers import (
    HTTP,
    create,
    datastream_body,
    location_body,
    observed_property_body,
    ref,
    sensor_body,
    thing_body,
)

OWNER = "owner 7;o=x=y"
"""The owner's authId: free text, with the grammar's own separators in it (the owner runs to the end)."""
DAY = "2024-05-01T{:02d}:00:00Z"

STREAMS: dict[str, dict[str, Any]] = {
    # key: Project, own visibility, Party ("owner": authId OWNER, "anon": a Party without authId)
    "plain": {},
    "in_p1": {"project": "P1"},
    "p1secret": {"project": "P1", "visibility": "restricted"},
    "p2": {"project": "P2"},
    "p2open": {"project": "P2", "visibility": "public"},
    "owned": {"visibility": "restricted", "party": "owner"},
    "owned_p2": {"project": "P2", "party": "owner"},
    "nobody": {"visibility": "restricted", "party": "anon"},
    "public_owned": {"party": "owner"},
}


@dataclass
class World:
    sta: str
    database_url: str
    ids: dict[str, int]
    observations: dict[str, int]  # stream key -> its Observation

    def audiences(self) -> dict[str, str | None]:
        """The audience each stream (and its Observation) must have."""
        p1, p2 = self.ids["P1"], self.ids["P2"]
        return {"plain": None, "in_p1": None, "p1secret": f"r;p={p1}", "p2": f"r;p={p2}", "p2open": None,
                "owned": f"r;o={OWNER}", "owned_p2": f"r;p={p2};o={OWNER}", "nobody": "r", "public_owned": None,
                "multi": f"r;p={p2}"}


@pytest.fixture(scope="module")
def world(database_url: str) -> Iterator[World]:
    """Emptied afterwards: no later module should read restricted data it did not make."""
    empty_database(database_url)
    with app_without_mqtt(database_url) as sta:
        ids: dict[str, int] = {}
        for key, seen in (("P1", "public"), ("P2", "restricted")):
            ids[key] = create(sta, "Projects", {"name": key, "termsOfUse": "https://example.org/terms",
                                                "visibility": seen})
        ids["owner"] = create(sta, "Parties", {"role": "individual", "authId": OWNER})
        ids["anon"] = create(sta, "Parties", {"role": "individual", "displayName": "no authId"})
        ids["thing"] = create(sta, "Things", thing_body("thing", Locations=[location_body()]))
        ids["sensor"] = create(sta, "Sensors", sensor_body())
        ids["property"] = create(sta, "ObservedProperties", observed_property_body())
        common = {"Thing": ref(ids["thing"]), "Sensor": ref(ids["sensor"]),
                  "ObservedProperty": ref(ids["property"])}
        for key, spec in STREAMS.items():
            links: dict[str, Any] = dict(common)
            if "project" in spec:
                links["Project"] = ref(ids[spec["project"]])
            if "visibility" in spec:
                links["visibility"] = spec["visibility"]
            if "party" in spec:
                links["Party"] = ref(ids[spec["party"]])
            ids[key] = create(sta, "Datastreams", datastream_body(key, **links))
        ids["multi"] = create(sta, "MultiDatastreams", multi_body(
            "multi", Thing=ref(ids["thing"]), Sensor=ref(ids["sensor"]), Project=ref(ids["P2"]),
            ObservedProperties=[ref(create(sta, "ObservedProperties", observed_property_body(f"c{n}")))
                                for n in range(3)]))
        observations = {key: create(sta, f"Datastreams({ids[key]})/Observations",
                                    {"result": n, "phenomenonTime": DAY.format(n)})
                        for n, key in enumerate(STREAMS)}
        observations["multi"] = create(sta, f"MultiDatastreams({ids['multi']})/Observations",
                                       {"result": [1.5, 2, "x"], "phenomenonTime": DAY.format(20)})
        try:
            yield World(sta, database_url, ids, observations)
        finally:
            empty_database(database_url)


def changed_rows(database_url: str, entity: Entity, ids: list[int], **options: Any) -> dict[int, tuple[Any, ...]]:
    compiled = compile_changed(entity, ids, "http://example.org/v1.1", **options)
    with psycopg.connect(database_url, autocommit=True) as conn:
        return {int(row[0]): tuple(row) for row in conn.execute(compiled.query, compiled.params)}


def all_ids(database_url: str, entity: Entity) -> list[int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return [int(r[0]) for r in conn.execute(sql.SQL("SELECT id FROM {}").format(sql.Identifier(entity.table)))]


def may_read(audience: str | None, principal: Principal) -> bool:
    """The audience rule (visibility.audience's grammar), as the broker plugin applies it."""
    if audience is None or principal.has(Role.READ):
        return True
    match = re.fullmatch(r"r(?:;p=(?P<project>\d+))?(?:;o=(?P<owner>.*))?", audience, re.S)
    assert match, f"not an audience: {audience!r}"
    if match["project"] is not None and principal.has_in(Role.READ, int(match["project"])):
        return True
    return match["owner"] is not None and principal.auth_id is not None and principal.auth_id == match["owner"]


# ---------------------------------------------------------------------------------------------- tests


def test_the_property_name_is_the_plugins() -> None:
    assert visibility.AUDIENCE_PROPERTY == "citystream-audience"


def test_each_row_comes_back_with_its_audience(world: World) -> None:
    """Every row of every entity type (View.ALL), restricted ones too; audience NULL where public or where
    the type is never restricted; an Observation has its stream's."""
    expected = world.audiences()
    seen: dict[str, dict[int, str | None]] = {}
    for entity in ENTITIES.values():
        ids = all_ids(world.database_url, entity)
        rows = changed_rows(world.database_url, entity, ids)
        assert sorted(rows) == sorted(ids), entity.name
        seen[entity.name] = {i: row[-2] for i, row in rows.items()}
    streams = {world.ids[k]: a for k, a in expected.items() if k != "multi"}
    assert seen["Datastream"] == streams
    assert seen["MultiDatastream"] == {world.ids["multi"]: expected["multi"]}
    assert seen["Observation"] == {world.observations[k]: a for k, a in expected.items()}
    assert seen["Project"] == {world.ids["P1"]: None, world.ids["P2"]: f"r;p={world.ids['P2']}"}
    for name, audiences in seen.items():
        if name not in ("Datastream", "MultiDatastream", "Observation", "Project"):
            assert set(audiences.values()) <= {None}, name


PRINCIPALS: dict[str, Any] = {
    "anonymous": lambda ids: ANONYMOUS,
    "p1 reader": lambda ids: Principal("key", "p1", project_roles={ids["P1"]: frozenset({Role.READ})}),
    "p2 reader": lambda ids: Principal("key", "p2", project_roles={ids["P2"]: frozenset({Role.READ})}),
    "p2 creator": lambda ids: Principal("key", "p2c", project_roles={ids["P2"]: frozenset({Role.CREATE})}),
    "p2 admin": lambda ids: Principal("key", "p2a", project_roles={ids["P2"]: frozenset({Role.ADMIN})}),
    "owner": lambda ids: Principal("key", "owner", auth_id=OWNER),
    "owner's prefix": lambda ids: Principal("key", "prefix", auth_id="owner 7"),
    "owner reading p1": lambda ids: Principal("key", "both", auth_id=OWNER,
                                              project_roles={ids["P1"]: frozenset({Role.READ})}),
    "reader": lambda ids: Principal("key", "reader", roles=frozenset({Role.READ})),
    "creator": lambda ids: Principal("key", "creator", roles=frozenset({Role.CREATE})),
}


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("entity_name", ["Datastream", "MultiDatastream", "Observation", "Project"])
def test_an_audience_admits_exactly_who_may_see_the_row(world: World, who: str, entity_name: str) -> None:
    """For every row: the audience rule says yes exactly where the hiding SQL (visible_condition, bound to
    the principal) shows the row; read everywhere (no hiding) sees everything."""
    entity, principal = ENTITIES[entity_name], PRINCIPALS[who](world.ids)
    ids = all_ids(world.database_url, entity)
    audiences = {i: row[-2] for i, row in changed_rows(world.database_url, entity, ids).items()}
    if visibility.hides(principal):
        v = sql.Identifier("v")
        statement = sql.SQL("SELECT v.id, {} FROM {} v").format(visibility.visible_condition(entity, v),
                                                               sql.Identifier(entity.table))
        with psycopg.connect(world.database_url, autocommit=True) as conn:
            visible = {int(i): bool(shown) for i, shown in conn.execute(statement, visibility.params(principal))}
    else:
        visible = dict.fromkeys(ids, True)
    assert {i: may_read(a, principal) for i, a in audiences.items()} == visible


def stream_changes(world: World) -> list[Change]:
    datastream, multi, observation, project = (ENTITIES[n] for n in (
        "Datastream", "MultiDatastream", "Observation", "Project"))
    return [*(Change(datastream, world.ids[k], created=False, properties=("name",)) for k in STREAMS),
            Change(multi, world.ids["multi"], created=True),
            *(Change(observation, i, created=True) for i in world.observations.values()),
            *(Change(project, world.ids[p], created=True) for p in ("P1", "P2"))]


def topics_of(world: World) -> list[str]:
    p2 = world.ids["p2"]
    return ["v1.1/Datastreams", f"v1.1/Datastreams({p2})", f"v1.1/Datastreams({p2})/name",
            f"v1.1/Projects({world.ids['P2']})/Datastreams", "v1.1/Observations",
            f"v1.1/Datastreams({p2})/Observations",
            "v1.1/Observations?$select=result", "v1.1/Observations?$filter=result ge 0", "v1.1/Projects",
            "v1.1/MultiDatastreams", "v1.0/Datastreams", "v1.1/+/Observations?$expand=Datastream"]


def test_without_enforced_audiences_no_restricted_row_is_published(world: World) -> None:
    run = notify(world.database_url, world.sta, topics_of(world), stream_changes(world))
    expected = world.audiences()
    public = {k for k, a in expected.items() if a is None}
    assert run.published.messages
    assert all(m.audience is None for m in run.published.messages)
    assert {m.json()["@iot.id"] for m in run.published.on("v1.1/Datastreams")} == {
        world.ids[k] for k in public if k != "multi"}
    assert {m.json()["@iot.id"] for m in run.published.on("v1.1/Observations")} == {
        world.observations[k] for k in public}
    hidden = {f"Datastreams({world.ids[k]})" for k in STREAMS if k not in public} | {
        f"Observations({world.observations[k]})" for k in expected if k not in public} | {
        f"Projects({world.ids['P2']})", f"MultiDatastreams({world.ids['multi']})"}
    links = {m.json().get("@iot.selfLink", "").rsplit("/", 1)[-1] for m in run.published.messages}
    assert not links & hidden
    assert not run.published.on(f"v1.1/Datastreams({world.ids['p2']})/name")
    assert [m.json()["@iot.id"] for m in run.published.on("v1.1/Projects")] == [world.ids["P1"]]
    assert not run.published.on("v1.1/MultiDatastreams")


def test_with_enforced_audiences_restricted_rows_are_published_with_theirs(world: World) -> None:
    run = notify(world.database_url, world.sta, topics_of(world), stream_changes(world), enforced=True)
    expected = world.audiences()
    p2 = world.ids["p2"]
    streams = {m.json()["@iot.id"]: m.audience for m in run.published.on("v1.1/Datastreams")}
    assert streams == {world.ids[k]: a for k, a in expected.items() if k != "multi"}
    assert {m.json()["@iot.id"]: m.audience for m in run.published.on("v1.0/Datastreams")} == streams
    observations = {m.json()["@iot.id"]: m.audience for m in run.published.on("v1.1/Observations")}
    assert observations == {world.observations[k]: a for k, a in expected.items()}
    [entity] = run.published.on(f"v1.1/Datastreams({p2})")
    assert entity.audience == f"r;p={world.ids['P2']}"
    assert entity.json() == HTTP.get(f"{world.sta}/Datastreams({p2})").json()  # as GET renders it (admin)
    [name] = run.published.on(f"v1.1/Datastreams({p2})/name")
    assert (name.json(), name.audience) == ({"name": "p2"}, entity.audience)
    in_p2 = run.published.on(f"v1.1/Projects({world.ids['P2']})/Datastreams")
    members = {m.json()["@iot.id"]: m.audience for m in in_p2}
    assert members == {world.ids[k]: expected[k] for k in ("p2", "p2open", "owned_p2")}
    on_nav = run.published.on(f"v1.1/Datastreams({p2})/Observations")
    assert [(m.json()["@iot.id"], m.audience) for m in on_nav] == [(world.observations["p2"], entity.audience)]
    selected = {orjson.dumps(m.json()): m.audience for m in run.published.on("v1.1/Observations?$select=result")}
    assert selected == {**{orjson.dumps({"result": n}): expected[k] for n, k in enumerate(STREAMS)},
                        orjson.dumps({"result": [1.5, 2, "x"]}): expected["multi"]}
    assert [m.json()["@iot.id"] for m in run.published.on("v1.1/MultiDatastreams")] == [world.ids["multi"]]
    assert {m.json()["@iot.id"]: m.audience for m in run.published.on("v1.1/Projects")} == {
        world.ids["P1"]: None, world.ids["P2"]: f"r;p={world.ids['P2']}"}


def test_filter_and_expand_topics_carry_public_rows_only(world: World) -> None:
    """Rendered for the public (no audience), even when the broker enforces audiences: a filter or an
    expansion across relations could reveal restricted related rows."""
    expected = world.audiences()
    public = {world.observations[k] for k, a in expected.items() if a is None}
    for enforced in (False, True):
        run = notify(world.database_url, world.sta, topics_of(world), stream_changes(world), enforced=enforced)
        filtered = run.published.on("v1.1/Observations?$filter=result ge 0")
        assert {m.json()["@iot.id"] for m in filtered} == public
        expanded = [m for m in run.published.messages if m.topic.endswith("/Observations?$expand=Datastream")]
        assert {m.json()["@iot.id"] for m in expanded} == public
        assert all(m.audience is None for m in filtered + expanded)
    # a public Observation expanded with a public Datastream whose owner's Party is someone's: as GET has it
    observation = world.observations["public_owned"]
    [message] = [m for m in expanded if m.json()["@iot.id"] == observation
                 and m.topic == f"v1.1/Datastreams({world.ids['public_owned']})/Observations?$expand=Datastream"]
    anonymous = httpx.get(f"{world.sta}/Datastreams({world.ids['public_owned']})/Observations",
                          params={"$expand": "Datastream"}, timeout=30).json()["value"]
    assert message.json() == next(o for o in anonymous if o["@iot.id"] == observation)


def test_one_statement_per_entity_and_one_per_distinct_query(world: World) -> None:
    """One statement per entity type and version; one more per distinct set of query options."""
    changes = [Change(ENTITIES["Observation"], i, created=True) for i in world.observations.values()]
    plain = notify(world.database_url, world.sta, ["v1.1/Observations", "v1.1/Datastreams(1)/Observations"],
                   changes)
    assert plain.statements == 1
    same = ["v1.1/Observations?$filter=result ge 0&$select=result",
            "v1.1/Observations?$select=result&$filter=result ge 0"]
    queried = notify(world.database_url, world.sta, ["v1.1/Observations", *same,
                                                     "v1.1/Observations?$select=result"], changes)
    assert queried.statements == 3
    assert {m.topic for m in queried.published.messages} == {"v1.1/Observations", *same,
                                                             "v1.1/Observations?$select=result"}
    assert queried.published.on(same[0])[0].payload == queried.published.on(same[1])[0].payload


def test_statements_are_compiled_once_per_options(world: World) -> None:
    entity = ENTITIES["Observation"]
    first = compile_changed(entity, [1], "http://x/v1.1", ("result",), LATEST, filter="result gt 1")
    again = compile_changed(entity, [2], "http://x/v1.1", ("result",), LATEST, filter="result gt 1")
    assert first.statement is again.statement
    other = compile_changed(entity, [2], "http://x/v1.1", ("result",), LATEST, filter="result gt true")
    assert other.statement is not first.statement  # the text is the key: `1` and `true` never share one
