"""Restricted data never leaks (sensorthings/query/visibility.py): a STAplus Project is public or
restricted, a Datastream / MultiDatastream inherits its Project's visibility unless it sets its own, and an
Observation is as visible as its stream. Who may see restricted data: principals with read everywhere (and
admin), principals with read for the stream's Project, and the stream's owner (the Party whose authId is
the principal's). Everyone else gets a 404 for the entity and never finds it in a collection, an expand, a
filter across relations, a count, a page, a batch, a result format, /v1.0, or the OGC API.

One module-scoped world (`world`), read by seven principals. Most checks derive what a principal must get
from the operator's (admin's) answer with the entities it may not see taken out (`prune`), so each checks
the whole document, not just ids: nothing hidden is in it and nothing visible is missing. Filters across
relations cannot be derived that way; for them a small model of the world (`View`) says which entities
match. The property test draws random `$filter`/`$expand` combinations and compares the principal's
answer with a "shadow" query the operator issues with the visible ids spelt out. At the end (they change
the world and put it back): visibility changes take effect at once, MQTT notifications of restricted data
reach no anonymous subscriber, a create-only key learns nothing from a hidden stream's id, and the first
reads after data becomes restricted (the guarded shortcut of migration 0010) hide it.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citystream.auth import credentials
from sensorthings.model.access import Role
from tests.auth.helpers import ANON, bearer, connection, key_id, new_key
from tests.conftest import empty_database
from tests.mqtt_helpers import Subscriber, wait_for, wait_until_learned
from tests.sta.test_sta_multi_datastream import multi_body
from tests.sta_helpers import (
    ADMIN,
    HTTP,
    create,
    datastream_body,
    feature_body,
    location_body,
    observed_property_body,
    ref,
    sensor_body,
    thing_body,
)

WHO = ("anonymous", "create", "p1", "p2", "owner", "read", "admin")
"""anonymous; a key with only `create`; read for Project P1 only; read for Project P2 only; the owner (a
key without roles whose id is the owning Party's authId); read everywhere; the operator."""

DAY = "2024-05-01T{:02d}:00:00Z"
EARLY, LATE = "2001-01-01T00:00:00Z", "2035-01-01T00:00:00Z"
"""The times of restricted Observations only: no public extent or summary may reach them."""

PUBLIC_STREAMS = ("plain", "p1", "p2open")
RESTRICTED_STREAMS = ("p2secret", "p1secret", "owned", "multi")
SEES: dict[str, set[str]] = {
    "anonymous": set(), "create": set(), "p1": {"p1secret"}, "p2": {"p2secret", "multi"}, "owner": {"owned"},
    "read": set(RESTRICTED_STREAMS), "admin": set(RESTRICTED_STREAMS)}
"""The restricted streams each principal may see (every one sees the public streams)."""
SEES_P2 = {"p2", "read", "admin"}
"""Who may see the restricted Project P2 (everyone sees the public P1)."""

STREAMS: dict[str, dict[str, Any]] = {
    # key: name, Thing, Project, own visibility, ObservedProperty, Observations (result, phenomenonTime, FoI)
    "plain": {"name": "plain", "thing": "mixed", "project": None, "visibility": None, "prop": "temperature",
              "obs": [(1, DAY.format(0), "fpub"), (2, DAY.format(1), "fshared")]},
    "p1": {"name": "in p1", "thing": "mixed", "project": "P1", "visibility": None, "prop": "temperature",
           "obs": [(3, DAY.format(2), "fpub")]},
    "p2open": {"name": "open in p2", "thing": "mixed", "project": "P2", "visibility": "public",
               "prop": "temperature", "obs": [(4, DAY.format(3), "fpub"), (5, DAY.format(4), "fshared")],
               "licensed": True},
    "p2secret": {"name": "secret in p2", "thing": "hidden only", "project": "P2", "visibility": None,
                 "prop": "prop-r", "obs": [(912.25, EARLY, "fshared"), (913.25, DAY.format(5), "fshared")],
                 "licensed": True},
    "p1secret": {"name": "secret in p1", "thing": "mixed", "project": "P1", "visibility": "restricted",
                 "prop": "prop-r", "obs": [(921.75, LATE, "fsecret")]},
    "owned": {"name": "secret owned", "thing": "mixed", "project": None, "visibility": "restricted",
              "prop": "prop-r", "obs": [(931.5, EARLY, "fshared")], "owned": True},
}
MULTI: dict[str, Any] = {"name": "secret multi", "thing": "mixed", "project": "P2",
         "obs": [([941.5, 942, "sky-m"], LATE, "fsecret")]}
PROJECT_NAMES = {"P1": "open project", "P2": "secret project"}
FEATURES = {"fpub": (10.0, 53.6), "fshared": (10.5, 53.7), "fsecret": (20.0, 60.0)}
THINGS = {"mixed": (9.99, 53.55), "hidden only": (8.0, 50.0)}

KINDS = ("Datastreams", "MultiDatastreams", "Observations", "Projects")
"""The entity sets whose entities can be hidden."""
KEY_KIND = {"Datastreams": "Datastreams", "Datastream": "Datastreams", "MultiDatastreams": "MultiDatastreams",
            "MultiDatastream": "MultiDatastreams", "Observations": "Observations", "Project": "Projects",
            "Projects": "Projects"}
"""The kind of the entities under a navigation property's key in an entity's JSON."""
LINK = re.compile(r"(?<![A-Za-z])(Datastreams|MultiDatastreams|Observations|Projects)\((\d+)\)")


# ---------------------------------------------------------------------------------------------- the world


@dataclass
class Obs:
    id: int
    result: Any
    time: str
    foi: int
    stream: str


@dataclass
class World:
    sta: str
    root: str
    headers: dict[str, dict[str, str]]
    ids: dict[str, int]  # symbolic name -> @iot.id (streams, things, features, projects, ...)
    obs: dict[str, list[Obs]]  # stream key -> its Observations
    names: dict[str, int] = field(default_factory=dict)
    admin_cache: dict[str, httpx.Response] = field(default_factory=dict)

    # -- who sees what

    def streams(self, who: str) -> set[str]:
        return set(PUBLIC_STREAMS) | SEES[who]

    def projects(self, who: str) -> set[int]:
        return {self.ids["P1"], self.ids["P2"]} if who in SEES_P2 else {self.ids["P1"]}

    def visible(self, who: str) -> dict[str, set[int]]:
        streams = self.streams(who)
        return {
            "Datastreams": {self.ids[k] for k in streams if k != "multi"},
            "MultiDatastreams": {self.ids["multi"]} if "multi" in streams else set(),
            "Observations": {o.id for k in streams for o in self.obs[k]},
            "Projects": self.projects(who),
        }

    def all_ids(self) -> dict[str, set[int]]:
        return self.visible("admin")

    def hidden(self, who: str) -> dict[str, set[int]]:
        everything, seen = self.all_ids(), self.visible(who)
        return {kind: everything[kind] - seen[kind] for kind in KINDS}

    def markers(self, who: str) -> list[str]:
        """Text that must not appear in any answer to `who`: names, results and times of what it may not
        see (times only where nothing it may see has them too)."""
        streams = self.streams(who)
        hidden = [k for k in RESTRICTED_STREAMS if k not in streams]
        found = [MULTI["name"] if k == "multi" else STREAMS[k]["name"] for k in hidden]
        found += [json.dumps(o.result) if not isinstance(o.result, list) else "sky-m"
                  for k in hidden for o in self.obs[k]]
        visible_times = {o.time[:10] for k in streams for o in self.obs[k]}
        found += sorted({o.time[:10] for k in hidden for o in self.obs[k]} - visible_times)
        if who not in SEES_P2:
            found.append(PROJECT_NAMES["P2"])
        return found

    # -- HTTP

    def url(self, path: str) -> str:
        """`path` under the v1.1 service root, or under the server root when it starts with '/'."""
        return self.root + path if path.startswith("/") else f"{self.sta}/{path}"

    def get(self, who: str, path: str, **params: Any) -> httpx.Response:
        """GET `path` (its query string and `params` merged: httpx would drop the former) as `who`."""
        base, _, query = path.partition("?")
        merged = {**dict(parse_qsl(query, keep_blank_values=True)), **params}
        return ANON.get(self.url(base), params=merged or None, headers=self.headers[who])

    def admin(self, path: str) -> httpx.Response:
        if path not in self.admin_cache:
            self.admin_cache[path] = HTTP.get(self.url(path))
        return self.admin_cache[path]

    def fmt(self, template: str) -> str:
        return template.format(**self.names)


def scoped_key(database_url: str, project: int, *roles: str) -> str:
    """A key holding `roles` only for `project` (credentials.create_key's `projects`)."""
    with connection(database_url) as conn:
        return credentials.create_key(conn, f"for project {project}", frozenset(Role(r) for r in roles),
                                      projects=[project]).token


@pytest.fixture(scope="module")
def world(server_url: str, database_url: str) -> Iterator[World]:
    """The world, with fresh planner statistics (the suite truncates tables that earlier modules filled:
    their statistics would describe tens of thousands of rows and steer the hiding statements' plans into
    30 s nested loops on this small world); emptied afterwards, so that no later module reads restricted
    data it did not make."""
    empty_database(database_url)
    sta = f"{server_url}/v1.1"
    owner = new_key(database_url, name="owner, no roles")
    ids: dict[str, int] = {}
    for key, name in PROJECT_NAMES.items():
        ids[key] = create(sta, "Projects", {"name": name, "termsOfUse": "https://example.org/terms",
                                            "visibility": "public" if key == "P1" else "restricted"})
    ids["license"] = create(sta, "Licenses", {"name": "CC BY 4.0",
                                              "definition": "https://creativecommons.org/licenses/by/4.0/"})
    ids["party"] = create(sta, "Parties", {"role": "individual", "displayName": "owner", "authId": key_id(owner)})
    for name, (lon, lat) in THINGS.items():
        ids[name] = create(sta, "Things", thing_body(name, Locations=[location_body(f"{name} loc", lon, lat)]))
        ids[f"{name} loc"] = HTTP.get(f"{sta}/Things({ids[name]})/Locations").json()["value"][0]["@iot.id"]
    ids["sensor"] = create(sta, "Sensors", sensor_body())
    for name in ("temperature", "prop-r", "sky"):
        ids[name] = create(sta, "ObservedProperties", observed_property_body(name))
    for name, (lon, lat) in FEATURES.items():
        ids[name] = create(sta, "FeaturesOfInterest", feature_body(name, lon, lat))
    obs: dict[str, list[Obs]] = {}
    for key, spec in STREAMS.items():
        links: dict[str, Any] = {"Thing": ref(ids[spec["thing"]]), "Sensor": ref(ids["sensor"]),
                                 "ObservedProperty": ref(ids[spec["prop"]])}
        if spec["project"]:
            links["Project"] = ref(ids[spec["project"]])
        if spec["visibility"]:
            links["visibility"] = spec["visibility"]
        if spec.get("owned"):
            links["Party"] = ref(ids["party"])
        if spec.get("licensed"):
            links["License"] = ref(ids["license"])
        ids[key] = create(sta, "Datastreams", datastream_body(spec["name"], **links))
    ids["multi"] = create(sta, "MultiDatastreams", multi_body(
        MULTI["name"], Thing=ref(ids[MULTI["thing"]]), Sensor=ref(ids["sensor"]),
        ObservedProperties=[ref(ids[p]) for p in ("temperature", "prop-r", "sky")], Project=ref(ids["P2"]),
        License=ref(ids["license"])))
    for key, spec in [*STREAMS.items(), ("multi", MULTI)]:
        stream_set = "MultiDatastreams" if key == "multi" else "Datastreams"
        obs[key] = [Obs(create(sta, f"{stream_set}({ids[key]})/Observations",
                               {"result": result, "phenomenonTime": time, "FeatureOfInterest": ref(ids[foi])}),
                        result, time, ids[foi], key)
                    for result, time, foi in spec["obs"]]
    tokens = {"create": new_key(database_url, "create"), "p1": scoped_key(database_url, ids["P1"], "read"),
              "p2": scoped_key(database_url, ids["P2"], "read"), "owner": owner,
              "read": new_key(database_url, "read")}
    headers = {"anonymous": {}, "admin": dict(ADMIN), **{who: bearer(token) for who, token in tokens.items()}}
    names = {**{k.replace(" ", "_").replace("-", "_"): v for k, v in ids.items()},
             **{f"o_{k}": v[0].id for k, v in obs.items()}}
    with connection(database_url) as conn:
        conn.execute("ANALYZE")
    yield World(sta, server_url, headers, ids, obs, names)
    empty_database(database_url)


# ---------------------------------------------------------------------------------------------- helpers


def entity_id(entity: dict[str, Any]) -> int | None:
    if isinstance(entity.get("@iot.id"), int):
        return int(entity["@iot.id"])
    match = LINK.search(str(entity.get("@iot.selfLink", "")) + "$")
    return int(match.group(2)) if match and str(entity["@iot.selfLink"]).endswith(")") else None


def prune(doc: Any, hidden: dict[str, set[int]], kind: str | None = None) -> Any:
    """`doc` (an answer to admin) without the entities in `hidden` (by kind): a to-many list loses them, a
    to-one entity is left out, and the counts of what lost entries are recomputed."""
    if isinstance(doc, list):
        kept = [x for x in doc if not (kind and isinstance(x, dict) and entity_id(x) in hidden.get(kind, ()))]
        return [prune(x, hidden) for x in kept]
    if not isinstance(doc, dict):
        return doc
    out: dict[str, Any] = {}
    for key, value in doc.items():
        child = KEY_KIND.get(key)
        if key == "value":
            child = kind
        if child and isinstance(value, dict) and entity_id(value) in hidden.get(child, ()):
            continue  # a hidden to-one entity: left out as if there were none
        out[key] = prune(value, hidden, child)
    for key, value in doc.items():
        if key.endswith("@iot.count"):
            listed = "value" if key == "@iot.count" else key.removesuffix("@iot.count")
            if isinstance(doc.get(listed), list) and len(doc[listed]) == value:  # not paged: exact
                out[key] = len(out[listed])
    return out


def normalized_links(doc: Any) -> Any:
    """`doc` with every nextLink replaced by a mark (shadow queries have other query strings)."""
    if isinstance(doc, list):
        return [normalized_links(x) for x in doc]
    if isinstance(doc, dict):
        return {k: ("<next>" if k.endswith("@iot.nextLink") else normalized_links(v)) for k, v in doc.items()}
    return doc


def assert_no_leak(world: World, who: str, text: str, links: bool = True) -> None:
    """Nothing of what `who` may not see in `text`: no link to a hidden entity (unless `links` is False: a
    404 names the path asked for), none of its names, results or (restricted-only) times."""
    hidden = world.hidden(who)
    for kind, number in LINK.findall(text) if links else ():
        assert int(number) not in hidden[kind], f"{who} got a link to hidden {kind}({number}): {text[:2000]}"
    for marker in world.markers(who):
        assert marker not in text, f"{who} got {marker!r}: {text[:3000]}"


def ident(entity: dict[str, Any]) -> int:
    found = entity_id(entity)
    assert found is not None, entity
    return found


def ids_of(body: dict[str, Any]) -> list[int]:
    return [ident(e) for e in body["value"]]


SEGMENT = re.compile(r"^(?P<name>[A-Za-z]+)(?:\((?P<id>\d+)\))?$")
TO_ONE = {"Datastream": "Datastreams", "MultiDatastream": "MultiDatastreams", "Project": "Projects"}


def addresses_hidden(world: World, who: str, path: str) -> bool:
    """Whether a step of `path` (an entity by id or a to-one step) is an entity `who` may not see."""
    base = path.partition("?")[0]
    prefix, rest = ("/v1.0", base[len("/v1.0/"):]) if base.startswith("/v1.0/") else ("", base)
    segments = rest.split("/")
    hidden = world.hidden(who)
    for i, segment in enumerate(segments):
        match = SEGMENT.match(segment)
        if not match:
            continue
        name, number = match["name"], match["id"]
        kind = name if name in KINDS else TO_ONE.get(name)
        if kind is None:
            continue
        if number is None and name in TO_ONE:
            steps = "/".join(segments[: i + 1])
            answer = HTTP.get(world.url(f"{prefix}/{steps}" if prefix else steps), params={"$select": "id"})
            if answer.status_code != 200:
                continue
            number = answer.json()["@iot.id"]
        if number is not None and int(number) in hidden[kind]:
            return True
    return False


MISSING = 987_654_321


def assert_like_nothing_there(world: World, who: str, path: str, answer: httpx.Response) -> None:
    """A 404 for a hidden entity is the 404 for one that does not exist (no existence oracle)."""
    hidden = world.hidden(who)
    missing = LINK.sub(lambda m: f"{m[1]}({MISSING})" if int(m[2]) in hidden[m[1]] else m[0], path)
    nothing = world.get(who, missing)
    assert nothing.status_code == 404, (missing, nothing.text)
    digits = re.compile(r"\d+")
    assert digits.sub("N", answer.text) == digits.sub("N", nothing.text), (answer.text, nothing.text)


def path_kind(path: str) -> str | None:
    """The kind of the entities in the `value` of a collection `path`."""
    segments = [s for s in path.partition("?")[0].split("/") if s and not s.startswith("$")]
    match = SEGMENT.match(segments[-1]) if segments else None
    return match["name"] if match and match["name"] in KINDS and match["id"] is None else None


def assert_answer_is_admins_without_the_hidden(world: World, who: str, path: str) -> httpx.Response:
    """`who`'s answer to GET `path` is admin's with what `who` may not see taken out, or a 404 where the path
    goes through such an entity."""
    theirs = world.get(who, path)
    admins = world.admin(path)
    assert admins.status_code in (200, 204, 404), f"admin: {path} -> {admins.status_code} {admins.text}"
    if admins.status_code == 404:  # nothing there (a stream without a Party): nothing for anyone
        assert theirs.status_code == 404, f"{who}: {path} -> {theirs.status_code} {theirs.text[:1000]}"
        return theirs
    if addresses_hidden(world, who, path):
        assert theirs.status_code == 404, f"{who}: {path} -> {theirs.status_code} {theirs.text[:1000]}"
        assert_no_leak(world, who, theirs.text, links=False)
        assert_like_nothing_there(world, who, path, theirs)
        return theirs
    assert theirs.status_code == admins.status_code, f"{who}: {path} -> {theirs.status_code} {theirs.text[:1000]}"
    assert_no_leak(world, who, theirs.text)
    if not theirs.headers.get("content-type", "").startswith("application/json"):
        assert theirs.text == admins.text
        return theirs
    assert "@iot.nextLink" not in admins.text, "the world is small: no page may be cut"
    expected = prune(admins.json(), world.hidden(who), path_kind(path))
    assert theirs.json() == expected, f"{who}: {path}"
    return theirs


# ---------------------------------------------------------------------------------------------- the model


@dataclass
class View:
    """The world as `who` may see it, for the expected matches of filters across relations."""

    world: World
    who: str

    @cached_property
    def streams(self) -> list[str]:
        """The visible Datastreams (not the MultiDatastream)."""
        return [k for k in STREAMS if k in self.world.streams(self.who)]

    @cached_property
    def observations(self) -> list[Obs]:
        """Every visible Observation, a MultiDatastream's too."""
        return [o for k in self.world.streams(self.who) for o in self.world.obs[k]]

    def project_name(self, stream: str) -> str | None:
        project = STREAMS[stream]["project"]
        if project is None or self.world.ids[project] not in self.world.projects(self.who):
            return None
        return PROJECT_NAMES[project]

    def streams_of_thing(self, thing: str) -> list[str]:
        return [k for k in self.streams if STREAMS[k]["thing"] == thing]

    def obs_of_foi(self, foi: int) -> list[Obs]:
        return [o for o in self.observations if o.foi == foi]

    def multis_of_thing(self, thing: str) -> list[str]:
        return ["multi"] if "multi" in self.world.streams(self.who) and MULTI["thing"] == thing else []

    # -- the candidates of each entity set, as (id, record)

    def candidates(self, entity_set: str) -> list[tuple[int, Any]]:
        ids = self.world.ids
        if entity_set == "Things":
            return [(ids[name], name) for name in THINGS]
        if entity_set == "Datastreams":
            return [(ids[k], k) for k in self.streams]
        if entity_set == "Observations":
            return [(o.id, o) for o in self.observations]
        assert entity_set == "FeaturesOfInterest"
        return [(ids[name], ids[name]) for name in FEATURES]

    def foi_name(self, foi: int) -> str:
        return next(name for name in FEATURES if self.world.ids[name] == foi)


Predicate = Callable[[View, Any], bool]


@dataclass(frozen=True)
class Filter:
    text: str
    test: Predicate
    negatable: bool = True  # False: a to-one path that may be null (three-valued logic under `not`)


def _gt(n: float) -> Callable[[Obs], bool]:
    return lambda o: isinstance(o.result, (int, float)) and o.result > n


def _name(o: Obs) -> str | None:
    """The name of an Observation's Datastream (None: a MultiDatastream's)."""
    return STREAMS[o.stream]["name"] if o.stream in STREAMS else None


def _thing(o: Obs) -> str | None:
    return STREAMS[o.stream]["thing"] if o.stream in STREAMS else None


def atoms(entity_set: str, n: float, stream: str, thing: str, project: str, foi: str) -> list[Filter]:
    """The filters of `entity_set` the property test combines (with the values drawn)."""
    s_name, p_name = (MULTI["name"] if stream == "multi" else STREAMS[stream]["name"]), PROJECT_NAMES[project]
    gt = _gt(n)
    if entity_set == "Things":
        return [
            Filter(f"Datastreams/Observations/result gt {n}",
                   lambda v, t: any(gt(o) for k in v.streams_of_thing(t) for o in v.world.obs[k])),
            Filter(f"Datastreams/Observations/result lt {n}",
                   lambda v, t: any(o.result < n for k in v.streams_of_thing(t) for o in v.world.obs[k])),
            Filter(f"Datastreams/name eq '{s_name}'",
                   lambda v, t: any(STREAMS[k]["name"] == s_name for k in v.streams_of_thing(t))),
            Filter(f"MultiDatastreams/name eq '{s_name}'",
                   lambda v, t: bool(v.multis_of_thing(t)) and s_name == MULTI["name"]),
            Filter(f"Datastreams/Project/name eq '{p_name}'",
                   lambda v, t: any(v.project_name(k) == p_name for k in v.streams_of_thing(t))),
            Filter(f"Datastreams/Observations/FeatureOfInterest/name eq '{foi}'",
                   lambda v, t: any(v.foi_name(o.foi) == foi for k in v.streams_of_thing(t)
                                    for o in v.world.obs[k])),
            Filter(f"name eq '{thing}'", lambda v, t: t == thing),
        ]
    if entity_set == "Datastreams":
        return [
            Filter(f"Observations/result gt {n}", lambda v, k: any(gt(o) for o in v.world.obs[k])),
            Filter(f"name eq '{s_name}'", lambda v, k: STREAMS[k]["name"] == s_name),
            Filter(f"Thing/name eq '{thing}'", lambda v, k: STREAMS[k]["thing"] == thing),
            Filter(f"Project/name eq '{p_name}'", lambda v, k: v.project_name(k) == p_name, negatable=False),
            Filter(f"Thing/Datastreams/Observations/result gt {n}",
                   lambda v, k: any(gt(o) for j in v.streams_of_thing(STREAMS[k]["thing"]) for o in v.world.obs[j])),
            Filter(f"Observations/FeatureOfInterest/Observations/result gt {n}",
                   lambda v, k: any(gt(p) for o in v.world.obs[k] for p in v.obs_of_foi(o.foi))),
        ]
    if entity_set == "Observations":
        return [
            Filter(f"result gt {n}", lambda v, o: gt(o)),
            Filter(f"result le {n}", lambda v, o: not isinstance(o.result, list) and o.result <= n),
            Filter(f"Datastream/name eq '{s_name}'", lambda v, o: _name(o) == s_name),
            Filter(f"FeatureOfInterest/Observations/result gt {n}",
                   lambda v, o: any(gt(p) for p in v.obs_of_foi(o.foi))),
            Filter(f"Datastream/Thing/Datastreams/Observations/result gt {n}",
                   lambda v, o: any(gt(p) for j in v.streams_of_thing(_thing(o) or "") for p in v.world.obs[j])),
            Filter(f"Datastream/Project/name eq '{p_name}'",
                   lambda v, o: o.stream in STREAMS and v.project_name(o.stream) == p_name, negatable=False),
            Filter(f"FeatureOfInterest/name eq '{foi}'", lambda v, o: v.foi_name(o.foi) == foi),
        ]
    assert entity_set == "FeaturesOfInterest"
    return [
        Filter(f"Observations/result gt {n}", lambda v, f: any(gt(o) for o in v.obs_of_foi(f))),
        Filter(f"Observations/Datastream/name eq '{s_name}'",
               lambda v, f: any(_name(o) == s_name for o in v.obs_of_foi(f))),
        Filter(f"Observations/Datastream/Thing/name eq '{thing}'",
               lambda v, f: any(_thing(o) == thing for o in v.obs_of_foi(f))),
        Filter(f"name eq '{foi}'", lambda v, f: v.foi_name(f) == foi),
    ]


def matching(world: World, who: str, entity_set: str, predicate: Predicate) -> list[int]:
    view = View(world, who)
    return sorted(i for i, record in view.candidates(entity_set) if predicate(view, record))


def expected_ids(world: World, who: str, entity_set: str, text: str) -> list[int]:
    """The ids a fixed filter (one of `atoms`' with their values) matches for `who`."""
    for n, stream, thing, project, foi in itertools.product((5, 0, 4, 900, 920, 930), [*STREAMS, "multi"], THINGS,
                                                            PROJECT_NAMES, FEATURES):
        for f in atoms(entity_set, n, stream, thing, project, foi):
            if f.text == text:
                return matching(world, who, entity_set, f.test)
    raise AssertionError(f"no model for {text!r}")


# ---------------------------------------------------------------------------------------------- the world itself


def test_the_world_is_as_the_tests_assume(world: World) -> None:
    """The operator sees everything; the streams' effective visibility is what the world says."""
    every = world.all_ids()
    assert set(ids_of(world.admin("Datastreams").json())) == every["Datastreams"]
    assert set(ids_of(world.admin("Observations").json())) == every["Observations"]
    assert set(ids_of(world.admin("Projects").json())) == every["Projects"]
    assert len(every["Observations"]) == 10
    assert world.get("anonymous", f"Datastreams({world.ids['plain']})").status_code == 200
    for who in WHO:
        assert world.get(who, "Things").status_code == 200, who


# ------------------------------------------------------------------------------- collections, entities, paths

COLLECTIONS = ["Things", "Locations", "HistoricalLocations", "Sensors", "ObservedProperties", "FeaturesOfInterest",
               "Datastreams", "MultiDatastreams", "Observations", "Projects", "Parties", "Licenses",
               "Datastreams?$count=true", "Observations?$count=true", "MultiDatastreams?$count=true",
               "Datastreams?$select=id,name", "Observations?$orderby=result desc",
               "Observations?$orderby=phenomenonTime&$select=id,result"]
ENTITIES = [f"Datastreams({{{k}}})" for k in STREAMS] + ["MultiDatastreams({multi})", "Observations({o_multi})",
                                                         "Projects({P1})", "Projects({P2})"] + \
           [f"Observations({{o_{k}}})" for k in STREAMS]
SUBPATHS = [f"Datastreams({{{k}}})/{rest}" for k in ("p2secret", "owned", "p2open")
            for rest in ("Thing", "Sensor", "ObservedProperty", "Observations", "Observations?$count=true",
                         "Observations/$ref", "Project", "Party", "name", "name/$value", "$ref",
                         "Thing/Datastreams", "Observations?$expand=FeatureOfInterest")] + \
    [f"Observations({{o_{k}}})/{rest}" for k in ("p2secret", "p1secret", "p2open")
     for rest in ("Datastream", "FeatureOfInterest", "result", "result/$value", "Datastream/Thing",
                  "Datastream/Project", "$ref", "FeatureOfInterest/Observations")] + \
    ["MultiDatastreams({multi})/Observations", "MultiDatastreams({multi})/ObservedProperties",
     "MultiDatastreams({multi})/Thing", "Observations({o_multi})/MultiDatastream", "Projects({P2})/Datastreams",
     "Projects({P2})/MultiDatastreams", "Projects({P2})/name", "Datastreams({p2open})/Project/Datastreams",
     "Datastreams({p2open})/Project/name/$value"]
NAVIGATION = ["Things({mixed})/Datastreams", "Things({mixed})/MultiDatastreams", "Things({hidden_only})/Datastreams",
              "Things({mixed})/Datastreams/$ref", "Things({mixed})/Datastreams?$count=true",
              "FeaturesOfInterest({fshared})/Observations", "FeaturesOfInterest({fsecret})/Observations?$count=true",
              "FeaturesOfInterest({fpub})/Observations", "Sensors({sensor})/Datastreams",
              "Sensors({sensor})/MultiDatastreams", "ObservedProperties({prop_r})/Datastreams",
              "ObservedProperties({prop_r})/MultiDatastreams", "ObservedProperties({temperature})/Datastreams",
              "Projects({P1})/Datastreams", "Projects({P1})/Datastreams?$count=true", "Parties({party})/Datastreams",
              "Parties({party})/MultiDatastreams", "Locations({mixed_loc})/Things", "Things({mixed})/Locations",
              "Licenses({license})/Datastreams", "Licenses({license})/MultiDatastreams",
              "Licenses({license})/Datastreams?$count=true", "Things({hidden_only})/Datastreams({p2secret})",
              "Things({mixed})/Datastreams({owned})/Observations", "Datastreams({p2secret})/Thing/Locations",
              "Datastreams({p2secret})/License", "Datastreams({p2open})/License/Datastreams"]
EXPANDS = [
    "Things?$expand=Datastreams", "Things?$expand=MultiDatastreams,Datastreams",
    "Things?$expand=Datastreams($expand=Observations)",
    "Things?$expand=Datastreams($count=true;$expand=Observations($count=true;$expand=FeatureOfInterest))",
    "Things?$expand=Datastreams/Observations", "Things({mixed})?$expand=Datastreams($select=id,phenomenonTime)",
    "Things?$expand=Datastreams($expand=Project,Party,Observations($select=result))",
    "FeaturesOfInterest?$expand=Observations($expand=Datastream($expand=Project))",
    "FeaturesOfInterest?$expand=Observations($count=true)",
    "FeaturesOfInterest({fshared})?$expand=Observations($expand=Datastream($expand=Thing($expand=Datastreams)))",
    "Sensors?$expand=Datastreams($expand=Observations),MultiDatastreams($expand=Observations)",
    "ObservedProperties?$expand=Datastreams($count=true),MultiDatastreams($count=true)",
    "Projects?$expand=Datastreams($expand=Observations),MultiDatastreams",
    "Parties?$expand=Datastreams($expand=Observations),MultiDatastreams",
    "Licenses?$expand=Datastreams($expand=Observations($count=true);$count=true),MultiDatastreams($count=true)",
    "Datastreams?$expand=Project,Thing($expand=Datastreams($expand=Project))",
    "Datastreams?$expand=Thing($expand=MultiDatastreams($expand=Observations))",
    "Observations?$expand=Datastream($expand=Project,Thing),FeatureOfInterest($expand=Observations)",
    "Observations?$expand=MultiDatastream", "Locations?$expand=Things($expand=Datastreams($expand=Observations))",
    "Datastreams({p2open})?$expand=Project($expand=Datastreams)",
    "Datastreams({p2secret})?$expand=Observations", "Projects({P2})?$expand=Datastreams",
    "Things({hidden_only})?$expand=Datastreams($expand=Observations;$count=true)",
]
V10 = ["/v1.0/Datastreams", "/v1.0/Observations", "/v1.0/MultiDatastreams", "/v1.0/Observations?$count=true",
       "/v1.0/Things?$expand=Datastreams($expand=Observations),MultiDatastreams",
       "/v1.0/Datastreams({p2secret})", "/v1.0/Datastreams({p2secret})/Observations",
       "/v1.0/Observations({o_owned})", "/v1.0/Observations({o_owned})/Datastream",
       "/v1.0/FeaturesOfInterest({fshared})/Observations?$count=true", "/v1.0/Things({mixed})/MultiDatastreams",
       "/v1.0/MultiDatastreams({multi})", "/v1.0/Observations({o_multi})"]


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("path", COLLECTIONS + ENTITIES + SUBPATHS + NAVIGATION + EXPANDS + V10)
def test_each_answer_is_admins_without_what_the_principal_may_not_see(world: World, who: str, path: str) -> None:
    assert_answer_is_admins_without_the_hidden(world, who, world.fmt(path))


@pytest.mark.parametrize("who", WHO)
def test_collections_hold_exactly_the_visible_entities(world: World, who: str) -> None:
    """The same, said directly: the ids and counts of each hideable collection."""
    seen = world.visible(who)
    for kind in KINDS:
        body = world.get(who, kind, **{"$count": "true"}).json()
        assert set(ids_of(body)) == seen[kind], (who, kind)
        assert body["@iot.count"] == len(seen[kind]), (who, kind)
        for entity in world.all_ids()[kind]:
            status = world.get(who, f"{kind}({entity})").status_code
            assert status == (200 if entity in seen[kind] else 404), (who, kind, entity)
    expanded = world.get(who, f"Things({world.ids['mixed']})", **{"$expand": "Datastreams($count=true)"}).json()
    mine = {world.ids[k] for k in world.streams(who) if k != "multi" and STREAMS[k]["thing"] == "mixed"}
    assert expanded["Datastreams@iot.count"] == len(mine) and set(ids_of({"value": expanded["Datastreams"]})) == mine


COUNTED = ["Datastreams", "Observations", "MultiDatastreams", "Projects", "Things({mixed})/Datastreams",
           "Things({mixed})/MultiDatastreams", "FeaturesOfInterest({fshared})/Observations",
           "Projects({P1})/Datastreams", "Parties({party})/Datastreams", "Sensors({sensor})/Datastreams",
           "ObservedProperties({prop_r})/Datastreams", "/v1.0/Observations",
           "Observations?$filter=FeatureOfInterest/name eq 'fshared'"]


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("path", COUNTED)
def test_counts_without_entities_count_the_visible_ones(world: World, who: str, path: str) -> None:
    path = world.fmt(path)
    expected = len(prune(world.admin(path).json(), world.hidden(who), path_kind(path))["value"])
    for top in ("0", "1"):
        body = world.get(who, path, **{"$count": "true", "$top": top}).json()
        assert body["@iot.count"] == expected, (who, path, top)


@pytest.mark.parametrize("who", WHO)
def test_a_public_stream_of_a_restricted_project_is_seen_without_its_project(world: World, who: str) -> None:
    stream = world.get(who, f"Datastreams({world.ids['p2open']})", **{"$expand": "Project"})
    assert stream.status_code == 200
    assert ("Project" in stream.json()) == (who in SEES_P2)
    assert world.get(who, f"Datastreams({world.ids['p2open']})/Project").status_code == (200 if who in SEES_P2
                                                                                        else 404)


# ----------------------------------------------------------------------------------- filters across relations

FILTERS = [
    ("Things", "Datastreams/Observations/result gt 5"), ("Things", "Datastreams/Observations/result gt 920"),
    ("Things", "Datastreams/name eq 'secret in p2'"), ("Things", "Datastreams/name eq 'secret owned'"),
    ("Things", "MultiDatastreams/name eq 'secret multi'"), ("Things", "Datastreams/Project/name eq 'secret project'"),
    ("Things", "Datastreams/Observations/FeatureOfInterest/name eq 'fsecret'"),
    ("Datastreams", "Project/name eq 'secret project'"), ("Datastreams", "Observations/result gt 5"),
    ("Datastreams", "Thing/Datastreams/Observations/result gt 5"),
    ("Datastreams", "Observations/FeatureOfInterest/Observations/result gt 5"),
    ("Observations", "result gt 5"), ("Observations", "FeatureOfInterest/Observations/result gt 5"),
    ("Observations", "FeatureOfInterest/Observations/result gt 920"),
    ("Observations", "Datastream/Thing/Datastreams/Observations/result gt 5"),
    ("Observations", "Datastream/Project/name eq 'secret project'"),
    ("Observations", "Datastream/name eq 'secret owned'"),
    ("FeaturesOfInterest", "Observations/result gt 5"), ("FeaturesOfInterest", "Observations/result gt 930"),
    ("FeaturesOfInterest", "Observations/Datastream/name eq 'secret in p1'"),
    ("FeaturesOfInterest", "Observations/Datastream/Thing/name eq 'hidden only'"),
]


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize(("entity_set", "text"), FILTERS)
def test_filters_across_relations_only_see_visible_rows(world: World, who: str, entity_set: str, text: str) -> None:
    answer = world.get(who, entity_set, **{"$filter": text, "$count": "true"})
    assert answer.status_code == 200, answer.text
    expected = expected_ids(world, who, entity_set, text)
    assert sorted(ids_of(answer.json())) == expected, (who, entity_set, text)
    assert answer.json()["@iot.count"] == len(expected)
    assert_no_leak(world, who, answer.text)


@pytest.mark.parametrize("who", WHO)
def test_filters_by_the_id_of_a_hidden_entity_match_nothing(world: World, who: str) -> None:
    hidden = world.hidden(who)
    hidden_stream = next(iter(hidden["Datastreams"]), None)
    cases = [("Datastreams", "Project/@iot.id eq {P2}", "P2"), ("Datastreams", "Project/id eq {P2}", "P2"),
             ("Observations", "Datastream/Project/id eq {P2}", "P2")]
    for entity_set, template, _ in cases:
        answer = world.get(who, entity_set, **{"$filter": world.fmt(template)})
        got = set(ids_of(answer.json()))
        if who in SEES_P2:
            assert got, (who, template)
        else:
            assert got == set(), f"{who}: {entity_set}?$filter={world.fmt(template)} -> {got}"
    if hidden_stream is not None:
        for entity_set, template in [("Things", "Datastreams/@iot.id eq {}"), ("Observations", "Datastream/id eq {}"),
                                     ("Sensors", "Datastreams/id eq {}"), ("FeaturesOfInterest",
                                                                           "Observations/Datastream/id eq {}")]:
            answer = world.get(who, entity_set, **{"$filter": template.format(hidden_stream)})
            assert ids_of(answer.json()) == [], f"{who}: {entity_set}?$filter={template.format(hidden_stream)}"


def catalogue_cases(world: World, who: str) -> list[tuple[str, str, set[int]]]:
    """Filters of never-hidden (and Project) entity sets across relations into hideable ones, with what
    they must match for `who`."""
    ids, streams, projects = world.ids, world.streams(who), world.projects(who)
    p2_there = ids["P2"] in projects

    def some(*keys: str) -> bool:
        return any(k in streams for k in keys)

    def when(condition: bool, *names: str) -> set[int]:
        return {ids[n] for n in names} if condition else set()

    return [
        ("Projects", "Datastreams/name eq 'open in p2'", when(p2_there, "P2")),
        ("Projects", "Datastreams/Observations/result gt 900",
         when(some("p1secret"), "P1") | when(p2_there and some("p2secret"), "P2")),
        ("Projects", "MultiDatastreams/name eq 'secret multi'", when(p2_there and some("multi"), "P2")),
        ("Parties", "Datastreams/Observations/result gt 900", when(some("owned"), "party")),
        ("Parties", "Datastreams/name eq 'secret owned'", when(some("owned"), "party")),
        ("Sensors", "Datastreams/Observations/result gt 900", when(some("p2secret", "p1secret", "owned"), "sensor")),
        ("Sensors", "MultiDatastreams/Observations/FeatureOfInterest/name eq 'fsecret'", when(some("multi"), "sensor")),
        ("ObservedProperties", "Datastreams/name eq 'secret in p1'", when(some("p1secret"), "prop-r")),
        ("ObservedProperties", "MultiDatastreams/name eq 'secret multi'",
         when(some("multi"), "temperature", "prop-r", "sky")),
        ("ObservedProperties", "Datastreams/Observations/result gt 900",
         when(some("p2secret", "p1secret", "owned"), "prop-r")),
        ("Locations", "Things/Datastreams/Observations/result gt 900",
         when(some("p1secret", "owned"), "mixed loc") | when(some("p2secret"), "hidden only loc")),
        ("Locations", "Things/MultiDatastreams/name eq 'secret multi'", when(some("multi"), "mixed loc")),
        ("Licenses", "Datastreams/name eq 'secret in p2'", when(some("p2secret"), "license")),
        ("Licenses", "MultiDatastreams/Observations/result ne null", when(some("multi"), "license")),
        ("Things", "MultiDatastreams/Observations/FeatureOfInterest/name eq 'fsecret'", when(some("multi"), "mixed")),
    ]


@pytest.mark.parametrize("who", WHO)
def test_catalogue_filters_across_relations_only_see_visible_rows(world: World, who: str) -> None:
    for entity_set, text, expected in catalogue_cases(world, who):
        answer = world.get(who, entity_set, **{"$filter": text, "$count": "true"})
        assert answer.status_code == 200, (entity_set, text, answer.text)
        assert set(ids_of(answer.json())) == expected, (who, entity_set, text)
        assert answer.json()["@iot.count"] == len(expected)
        assert_no_leak(world, who, answer.text)
    history = {name: ids_of(world.admin(f"Things({world.ids[name]})/HistoricalLocations").json()) for name in THINGS}
    answer = world.get(who, "HistoricalLocations", **{"$filter": "Thing/Datastreams/Observations/result gt 900"})
    expected_history = set(history["mixed"]) if {"p1secret", "owned"} & world.streams(who) else set()
    expected_history |= set(history["hidden only"]) if "p2secret" in world.streams(who) else set()
    assert set(ids_of(answer.json())) == expected_history, who


@pytest.mark.parametrize("who", WHO)
def test_filters_inside_an_expand_across_relations_only_see_visible_rows(world: World, who: str) -> None:
    view = View(world, who)
    big = _gt(900)

    def thing_has_big(thing: str) -> bool:
        return any(big(o) for k in view.streams_of_thing(thing) for o in world.obs[k])

    def foi_has_big(foi: int) -> bool:
        return any(big(o) for o in view.obs_of_foi(foi))

    things = world.get(who, "Things", **{
        "$expand": "Datastreams($count=true;$filter=Thing/Datastreams/Observations/result gt 900)"}).json()
    for thing in things["value"]:
        name = thing["name"]
        expected = sorted(world.ids[k] for k in view.streams_of_thing(name)) if thing_has_big(name) else []
        assert sorted(ident(d) for d in thing["Datastreams"]) == expected, (who, name)
        assert thing["Datastreams@iot.count"] == len(expected)
    streams = world.get(who, "Datastreams", **{
        "$expand": "Observations($count=true;$filter=FeatureOfInterest/Observations/result gt 900)"}).json()
    for stream in streams["value"]:
        key = next(k for k in STREAMS if world.ids[k] == stream["@iot.id"])
        expected = sorted(o.id for o in world.obs[key] if foi_has_big(o.foi))
        assert sorted(ident(o) for o in stream["Observations"]) == expected, (who, key)
        assert stream["Observations@iot.count"] == len(expected)
    features = world.get(who, "FeaturesOfInterest", **{
        "$expand": "Observations($filter=Datastream/Thing/Datastreams/Observations/result gt 900)"}).json()
    for feature in features["value"]:
        expected = sorted(o.id for o in view.obs_of_foi(feature["@iot.id"])
                          if o.stream in STREAMS and thing_has_big(STREAMS[o.stream]["thing"]))
        assert sorted(ident(o) for o in feature["Observations"]) == expected, (who, feature["name"])
    for body in (things, streams, features):
        assert_no_leak(world, who, json.dumps(body))


@pytest.mark.parametrize("who", WHO)
def test_ordering_by_a_hidden_project_orders_as_if_there_were_none(world: World, who: str) -> None:
    """Sorting by a to-one path must not read a hidden Project's name (nulls last ascending, first
    descending, as PostgreSQL orders them)."""
    view = View(world, who)
    streams = sorted(view.streams, key=lambda k: world.ids[k])
    ascending = sorted(streams, key=lambda k: (view.project_name(k) is None, view.project_name(k) or ""))
    got = ids_of(world.get(who, "Datastreams", **{"$orderby": "Project/name,id", "$select": "id"}).json())
    assert got == [world.ids[k] for k in ascending], who
    observations = sorted(view.observations, key=lambda o: o.id)  # a MultiDatastream's: no Datastream, null

    def project(o: Obs) -> str | None:
        return view.project_name(o.stream) if o.stream in STREAMS else None

    # stable: equal names keep their ids ascending
    named = sorted((o for o in observations if project(o)), key=lambda o: project(o) or "", reverse=True)
    descending = [o for o in observations if not project(o)] + named
    got = ids_of(world.get(who, "Observations", **{"$orderby": "Datastream/Project/name desc,id",
                                                    "$select": "id"}).json())
    assert got == [o.id for o in descending], who


SECRET_PLACE = "geography'POLYGON((15 55, 25 55, 25 65, 15 65, 15 55))'"
"""Around fsecret (20 60), where only restricted Observations are."""


@pytest.mark.parametrize("who", WHO)
def test_geo_filters_across_relations_only_see_visible_rows(world: World, who: str) -> None:
    there = "p1secret" in world.streams(who)  # the one Datastream with Observations at fsecret
    cases = [("Things", f"st_within(Datastreams/observedArea, {SECRET_PLACE})", {world.ids["mixed"]}),
             ("Datastreams", f"st_intersects(observedArea, {SECRET_PLACE})", {world.ids["p1secret"]}),
             ("Things", f"st_within(Datastreams/Observations/FeatureOfInterest/feature, {SECRET_PLACE})",
              {world.ids["mixed"]}),
             ("Observations", f"st_within(FeatureOfInterest/feature, {SECRET_PLACE})",
              {o.id for o in world.obs["p1secret"]})]
    for entity_set, text, if_there in cases:
        answer = world.get(who, entity_set, **{"$filter": text})
        assert answer.status_code == 200, answer.text
        got = set(ids_of(answer.json()))
        if entity_set == "Observations" and "multi" in world.streams(who):
            got -= {o.id for o in world.obs["multi"]}
        assert got == (if_there if there else set()), (who, entity_set, text)


# ---------------------------------------------------------------------------------------------- paging

PAGED = ["Datastreams", "Observations", "MultiDatastreams", "Projects", "Things({mixed})/Datastreams",
         "FeaturesOfInterest({fshared})/Observations", "Observations?$orderby=result desc",
         "Observations?$filter=result gt 0", "Parties({party})/Datastreams", "Projects({P1})/Datastreams",
         "/v1.0/Observations", "Sensors({sensor})/Datastreams"]


def walk(world: World, who: str, path: str, **params: Any) -> tuple[list[int], list[int]]:
    """Every page of `path` with $top=1 and $count: the ids and the counts the pages announced."""
    found: list[int] = []
    counts: list[int] = []
    response = world.get(who, path, **{"$top": "1", "$count": "true", **params})
    for _ in range(50):
        assert response.status_code == 200, response.text
        assert_no_leak(world, who, response.text)
        body = response.json()
        found += ids_of(body)
        counts.append(body["@iot.count"])
        if "@iot.nextLink" not in body:
            return found, counts
        response = ANON.get(body["@iot.nextLink"], headers=world.headers[who])
    raise AssertionError("no end of pages")


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("path", PAGED)
def test_next_links_walk_exactly_the_visible_entities(world: World, who: str, path: str) -> None:
    path = world.fmt(path)
    expected = ids_of(prune(world.admin(path).json(), world.hidden(who), path_kind(path)))
    found, counts = walk(world, who, path)
    assert found == expected, (who, path)
    assert set(counts) == {len(expected)}, counts


@pytest.mark.parametrize("who", WHO)
def test_next_links_inside_an_expand_walk_the_visible_entities(world: World, who: str) -> None:
    for thing, nav in (("mixed", "Datastreams"), ("fshared", "Observations"), ("mixed", "MultiDatastreams")):
        set_name = "FeaturesOfInterest" if thing.startswith("f") else "Things"
        body = world.get(who, f"{set_name}({world.ids[thing]})", **{"$expand": f"{nav}($top=1;$count=true)"}).json()
        found = [ident(e) for e in body[nav]]
        link = body.get(f"{nav}@iot.nextLink")
        while link:
            page = ANON.get(link, headers=world.headers[who])
            assert_no_leak(world, who, page.text)
            found += ids_of(page.json())
            link = page.json().get("@iot.nextLink")
        full = world.admin(f"{set_name}({world.ids[thing]})/{nav}").json()
        expected = ids_of(prune(full, world.hidden(who), nav))
        assert found == expected, (who, thing, nav)
        assert body[f"{nav}@iot.count"] == len(expected)


@pytest.mark.parametrize("who", WHO)
def test_skipping_past_the_visible_entities_finds_nothing(world: World, who: str) -> None:
    visible = len(world.visible(who)["Observations"])
    body = world.get(who, "Observations", **{"$skip": str(visible), "$count": "true"}).json()
    assert body["value"] == [] and body["@iot.count"] == visible


# ---------------------------------------------------------------------------------------------- $batch

BATCHED = ["Datastreams", "Observations?$count=true", "Datastreams({p2secret})", "Datastreams({owned})/Observations",
           "Observations({o_p1secret})", "Things?$expand=Datastreams($expand=Observations)", "Projects",
           "Projects({P2})", "MultiDatastreams", "Things?$filter=Datastreams/Observations/result gt 5",
           "Observations?$resultFormat=dataArray", "Datastreams({p2open})/Project"]


@pytest.mark.parametrize("who", WHO)
def test_batched_reads_answer_as_the_same_requests_alone(world: World, who: str) -> None:
    paths = [world.fmt(p) for p in BATCHED]
    requests = [{"id": str(i), "method": "get", "url": p} for i, p in enumerate(paths)]
    response = ANON.post(f"{world.sta}/$batch", json={"requests": requests}, headers=world.headers[who])
    assert response.status_code == 200, response.text
    answers = {r["id"]: r for r in response.json()["responses"]}
    for i, path in enumerate(paths):
        assert_no_leak(world, who, json.dumps(answers[str(i)]), links=answers[str(i)]["status"] != 404)
        alone = world.get(who, path)
        assert answers[str(i)]["status"] == alone.status_code, (who, path, answers[str(i)])
        if alone.status_code == 200:
            assert answers[str(i)]["body"] == alone.json(), (who, path)


# ---------------------------------------------------------------------------------------------- result formats


@pytest.mark.parametrize("who", WHO)
def test_data_arrays_hold_only_visible_observations(world: World, who: str) -> None:
    seen = world.visible(who)
    body = world.get(who, "Observations", **{"$resultFormat": "dataArray", "$count": "true"})
    assert body.status_code == 200, body.text
    assert_no_leak(world, who, body.text)
    groups = body.json()["value"]
    rows = [row[0] for g in groups for row in g["dataArray"]]
    assert sorted(rows) == sorted(seen["Observations"])
    streams = {(kind, int(n)) for g in groups for kind, n in LINK.findall(json.dumps(g))}
    assert streams <= {("Datastreams", i) for i in seen["Datastreams"]} | {
        ("MultiDatastreams", i) for i in seen["MultiDatastreams"]}
    assert body.json().get("@iot.count", len(rows)) == len(rows)
    for key in [*STREAMS, "multi"]:
        set_name = "MultiDatastreams" if key == "multi" else "Datastreams"
        answer = world.get(who, f"{set_name}({world.ids[key]})/Observations", **{"$resultFormat": "dataArray"})
        assert answer.status_code == (200 if key in world.streams(who) else 404), (who, key, answer.text)
        assert_no_leak(world, who, answer.text, links=answer.status_code != 404)


CSV_PATHS = ["Observations", "Datastreams", "Things?$expand=Datastreams($expand=Observations)",
             "FeaturesOfInterest?$expand=Observations($expand=Datastream)", "Projects?$expand=Datastreams",
             "Things?$expand=MultiDatastreams($expand=Observations)", "Things({hidden_only})/Datastreams"]


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("result_format", ["CSV", "GeoJSON"])
def test_csv_and_geojson_hold_only_visible_data(world: World, who: str, result_format: str) -> None:
    for path in CSV_PATHS:
        answer = world.get(who, world.fmt(path), **{"$resultFormat": result_format})
        assert answer.status_code == 200, answer.text
        assert_no_leak(world, who, answer.text)
    seen = world.visible(who)
    for kind in ("Observations", "Datastreams"):
        answer = world.get(who, kind, **{"$resultFormat": result_format})
        if result_format == "CSV":
            found = {int(row["@iot.id"]) for row in csv.DictReader(io.StringIO(answer.text))}
        else:
            found = {f["properties"]["@iot.id"] for f in answer.json()["features"]}
        assert found == seen[kind], (who, kind, result_format)
    hidden = next(iter(world.hidden(who)["Datastreams"]), None)
    if hidden is not None:
        answer = world.get(who, f"Datastreams({hidden})/Observations", **{"$resultFormat": result_format})
        assert answer.status_code == 404, answer.text


@pytest.mark.parametrize("who", WHO)
def test_summaries_of_visible_streams_hold_only_their_own_data(world: World, who: str) -> None:
    """A visible stream's phenomenonTime/observedArea are of its own Observations: no restricted time or
    place reaches a principal through them."""
    body = world.get(who, "Datastreams", **{"$select": "id,phenomenonTime,resultTime,observedArea"}).json()
    for stream in body["value"]:
        key = next(k for k in STREAMS if world.ids[k] == stream["@iot.id"])
        times = sorted(o.time for o in world.obs[key])
        assert stream["phenomenonTime"] == (times[0] if len(times) == 1 else f"{times[0]}/{times[-1]}")
    assert_no_leak(world, who, json.dumps(body))


# ---------------------------------------------------------------------------------------------- OGC API


def ogc(world: World, who: str, path: str, **params: Any) -> httpx.Response:
    return ANON.get(f"{world.root}/ogcapi{path}", params=params or None, headers=world.headers[who])


def ogc_visible(world: World, who: str, collection: str) -> set[int]:
    seen = world.visible(who)
    return {"things": {world.ids[t] for t in THINGS}, "locations": {world.ids[f"{t} loc"] for t in THINGS},
            "features-of-interest": {world.ids[f] for f in FEATURES}, "datastreams": seen["Datastreams"],
            "latest": seen["Datastreams"],  # each has Observations
            "observations": {o.id for k in world.streams(who) if k != "multi" for o in world.obs[k]}}[collection]


OGC_COLLECTIONS = ("things", "datastreams", "latest", "observations", "features-of-interest", "locations")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("who", WHO)
def test_ogc_extents_cover_only_visible_data(world: World, who: str) -> None:
    listing = ogc(world, who, "/collections")
    assert listing.status_code == 200
    assert_no_leak(world, who, listing.text)
    by_id = {c["id"]: c for c in listing.json()["collections"]}
    streams = [k for k in world.streams(who) if k != "multi"]
    times = sorted(parse_time(o.time) for k in streams for o in world.obs[k])
    latest = sorted(max(parse_time(o.time) for o in world.obs[k]) for k in streams)
    expected = {"datastreams": (times[0], times[-1]), "observations": (times[0], times[-1]),
                "latest": (latest[0], latest[-1])}
    for collection_id, (start, end) in expected.items():
        for document in (by_id[collection_id], ogc(world, who, f"/collections/{collection_id}").json()):
            (interval,) = document["extent"]["temporal"]["interval"]
            assert (parse_time(interval[0]), parse_time(interval[1])) == (start, end), (who, collection_id, interval)
    reaches_secret_place = bool({"p1secret"} & world.streams(who))  # its only Observation is at fsecret (20, 60)
    for collection_id in ("datastreams", "latest"):
        (box,) = by_id[collection_id]["extent"]["spatial"]["bbox"]
        assert (box[2] >= 20) == reaches_secret_place, (who, collection_id, box)


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("collection", OGC_COLLECTIONS)
def test_ogc_items_are_the_visible_features(world: World, who: str, collection: str) -> None:
    expected = ogc_visible(world, who, collection)
    document = ogc(world, who, f"/collections/{collection}/items", limit=1000)
    assert document.status_code == 200, document.text
    assert_no_leak(world, who, document.text)
    body = document.json()
    assert {f["id"] for f in body["features"]} == expected, (who, collection)
    assert body.get("numberMatched", len(expected)) == len(expected), (who, collection, body.get("numberMatched"))
    found: list[int] = []
    page = ogc(world, who, f"/collections/{collection}/items", limit=1)
    while True:
        assert_no_leak(world, who, page.text)
        found += [f["id"] for f in page.json()["features"]]
        following = next((li["href"] for li in page.json()["links"] if li["rel"] == "next"), None)
        if following is None:
            break
        page = ANON.get(following, headers=world.headers[who])
    assert sorted(found) == sorted(expected), (who, collection)
    for fmt in ("csv", "html"):
        encoded = ogc(world, who, f"/collections/{collection}/items", f=fmt, limit=1000)
        assert encoded.status_code == 200
        assert_no_leak(world, who, encoded.text)


@pytest.mark.parametrize("who", WHO)
def test_ogc_feature_properties_hold_only_visible_data(world: World, who: str) -> None:
    view = View(world, who)
    things = ogc(world, who, "/collections/things/items").json()["features"]
    for feature in things:
        name = feature["properties"]["name"]
        props = sorted({STREAMS[k]["prop"] for k in view.streams_of_thing(name)})
        assert sorted(feature["properties"]["observedProperties"]) == props, (who, name)
    seen = world.visible(who)
    for feature in ogc(world, who, "/collections/latest/items").json()["features"]:
        key = next(k for k in STREAMS if world.ids[k] == feature["id"])
        newest = max(world.obs[key], key=lambda o: o.time)
        assert (feature["properties"]["observation"], feature["properties"]["result"]) == (newest.id, newest.result)
        assert feature["properties"]["observation"] in seen["Observations"]


@pytest.mark.parametrize("who", WHO)
def test_ogc_single_items_of_hidden_entities_are_404(world: World, who: str) -> None:
    for collection in ("datastreams", "latest", "observations"):
        candidates = {"observations": {o.id for k in STREAMS for o in world.obs[k]}}.get(
            collection, {world.ids[k] for k in STREAMS})
        expected = ogc_visible(world, who, collection)
        for number in sorted(candidates):
            for fmt in ("json", "html"):
                answer = ogc(world, who, f"/collections/{collection}/items/{number}", f=fmt)
                assert answer.status_code == (200 if number in expected else 404), (who, collection, number, fmt)
                assert_no_leak(world, who, answer.text)


@pytest.mark.parametrize("who", WHO)
def test_ogc_filters_only_see_visible_rows(world: World, who: str) -> None:
    seen = world.visible(who)
    for stream in [k for k in STREAMS]:
        got = {f["id"] for f in ogc(world, who, "/collections/observations/items",
                                    datastream=world.ids[stream], limit=100).json()["features"]}
        assert got == ({o.id for o in world.obs[stream]} if stream in world.streams(who) else set()), (who, stream)
    big = {f["id"] for f in ogc(world, who, "/collections/observations/items", filter="resultNumber > 5",
                                limit=100).json()["features"]}
    assert big == {o.id for k in world.streams(who) if k != "multi" for o in world.obs[k] if o.result > 5}
    early = ogc(world, who, "/collections/observations/items", datetime="2000-01-01T00:00:00Z/2002-01-01T00:00:00Z")
    assert {f["id"] for f in early.json()["features"]} == {
        o.id for k in world.streams(who) if k != "multi" for o in world.obs[k] if o.time == EARLY}
    named = ogc(world, who, "/collections/datastreams/items", filter="name LIKE 'secret%'").json()["features"]
    assert {f["id"] for f in named} == seen["Datastreams"] - {world.ids[k] for k in PUBLIC_STREAMS}
    for collection in OGC_COLLECTIONS:
        for document in ("queryables", "sortables"):
            answer = ogc(world, who, f"/collections/{collection}/{document}")
            assert answer.status_code == 200
            assert_no_leak(world, who, answer.text)


@pytest.mark.parametrize("who", WHO)
def test_answers_to_a_credential_are_private(world: World, who: str) -> None:
    shared = "public" if who == "anonymous" else "private"
    for path in ("", "/collections", "/collections/datastreams", "/collections/observations/items",
                 f"/collections/datastreams/items/{world.ids['plain']}", "/collections/latest/items?f=csv",
                 "/collections/things/items?f=html", "/collections/observations/queryables"):
        answer = ANON.get(f"{world.root}/ogcapi{path}", headers=world.headers[who])
        assert answer.status_code == 200, (path, answer.text)
        assert answer.headers["cache-control"].split(",")[0] == shared, (who, path, answer.headers)
        assert "authorization" in answer.headers.get("vary", "").lower()
    for path in ("Datastreams", "Observations", f"Datastreams({world.ids['plain']})"):
        answer = world.get(who, path)
        # the STA sends no Cache-Control at all; what it must never say is that a shared cache may keep an
        # answer to a credential
        if who != "anonymous":
            assert "public" not in answer.headers.get("cache-control", ""), (who, path, answer.headers)


# ---------------------------------------------------------------------------------------------- the property test

NUMBERS = st.sampled_from([0, 2, 4, 5, 900, 912.5, 920, 930, 1000])
STREAM_KEYS = st.sampled_from([*STREAMS, "multi"])
PROPERTY_WHO = ("anonymous", "create", "p1", "owner")
"""Who sees no MultiDatastream Observations (their array results compare differently): the model's scope."""


@st.composite
def filters(draw: st.DrawFn, entity_set: str, depth: int = 0) -> Filter:
    candidates = atoms(entity_set, draw(NUMBERS), draw(STREAM_KEYS), draw(st.sampled_from(list(THINGS))),
                       draw(st.sampled_from(["P1", "P2"])), draw(st.sampled_from(list(FEATURES))))
    atom = draw(st.sampled_from(candidates))
    if depth >= 2 or draw(st.integers(0, 2)) == 0:
        return atom
    how = draw(st.sampled_from(["and", "or", "not"]))
    if how == "not":
        if not atom.negatable:
            return atom

        def negated(v: View, r: Any) -> bool:
            return not atom.test(v, r)
        return Filter(f"not ({atom.text})", negated)
    other = draw(filters(entity_set, depth + 1))

    def both(v: View, r: Any) -> bool:
        return atom.test(v, r) and other.test(v, r)

    def either(v: View, r: Any) -> bool:
        return atom.test(v, r) or other.test(v, r)
    return Filter(f"({atom.text}) {how} ({other.text})", both if how == "and" else either,
                  atom.negatable and other.negatable)


@dataclass
class Expand:
    """One $expand item: a navigation property with options; rendered for the principal and, for the
    shadow query, with the visible ids of a hideable to-many collection spelt out in its $filter."""

    nav: str
    top: int | None = None
    filter: str | None = None
    count: bool = False
    orderby: str | None = None
    inner: list[Expand] = field(default_factory=list)

    def render(self, restrict: Callable[[str], str | None] | None = None) -> str:
        options = []
        condition = self.filter
        extra = restrict(self.nav) if restrict else None
        if extra is not None:
            condition = f"({condition}) and {extra}" if condition else extra
        if condition:
            options.append(f"$filter={condition}")
        if self.top is not None:
            options.append(f"$top={self.top}")
        if self.count:
            options.append("$count=true")
        if self.orderby:
            options.append(f"$orderby={self.orderby}")
        if self.inner:
            options.append("$expand=" + ",".join(e.render(restrict) for e in self.inner))
        return self.nav + (f"({';'.join(options)})" if options else "")


NAVS: dict[str, list[tuple[str, str]]] = {
    # entity -> (navigation property, entity it leads to)
    "Thing": [("Datastreams", "Datastream"), ("MultiDatastreams", "MultiDatastream"), ("Locations", "Location")],
    "Datastream": [("Observations", "Observation"), ("Thing", "Thing"), ("Project", "Project")],
    "MultiDatastream": [("Observations", "Observation"), ("Thing", "Thing")],
    "Observation": [("Datastream", "Datastream"), ("FeatureOfInterest", "FeatureOfInterest"),
                    ("MultiDatastream", "MultiDatastream")],
    "FeatureOfInterest": [("Observations", "Observation")],
    "Project": [("Datastreams", "Datastream"), ("MultiDatastreams", "MultiDatastream")],
    "Location": [("Things", "Thing")],
}
INNER_FILTERS = {"Datastreams": ["Observations/result gt 2", "name eq 'in p1'", "name ne 'plain'"],
                 "Observations": ["result gt 2", "result lt 5", "phenomenonTime lt 2024-05-01T02:00:00Z"],
                 "MultiDatastreams": ["name eq 'secret multi'"], "Locations": [], "Things": ["name eq 'mixed'"]}
SET_OF = {"Thing": "Things", "Datastream": "Datastreams", "Observation": "Observations",
          "FeatureOfInterest": "FeaturesOfInterest"}


@st.composite
def expands(draw: st.DrawFn, entity: str, depth: int = 0) -> list[Expand]:
    chosen = draw(st.lists(st.sampled_from(NAVS[entity]), min_size=1, max_size=2, unique=True))
    found = []
    for nav, target in chosen:
        item = Expand(nav)
        if nav.endswith("s"):  # to-many: options
            item.top = draw(st.one_of(st.none(), st.integers(1, 3)))
            inner = INNER_FILTERS[nav]
            item.filter = draw(st.one_of(st.none(), st.sampled_from(inner))) if inner else None
            item.count = draw(st.booleans())
            item.orderby = draw(st.sampled_from([None, "id desc", "id"]))
        if depth < 2 and draw(st.booleans()):
            item.inner = draw(expands(target, depth + 1))
        found.append(item)
    return found


def id_list(ids: set[int]) -> str:
    return "(" + " or ".join(f"id eq {i}" for i in sorted(ids)) + ")" if ids else "(id eq 0)"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_filters_and_expands_show_exactly_what_admin_sees_of_the_visible(world: World, data: st.DataObject
                                                                                ) -> None:
    who = data.draw(st.sampled_from(PROPERTY_WHO), label="who")
    entity = data.draw(st.sampled_from(list(SET_OF)), label="entity")
    entity_set = SET_OF[entity]
    condition = data.draw(st.one_of(st.none(), filters(entity_set)), label="filter")
    expand = data.draw(expands(entity), label="expand") if data.draw(st.integers(0, 3), label="expanding") else []
    top = data.draw(st.one_of(st.none(), st.integers(1, 4)), label="top")
    orderby = data.draw(st.sampled_from([None, "id desc"]), label="orderby")

    params = {"$count": "true"}
    if condition is not None:
        params["$filter"] = condition.text
    if expand:
        params["$expand"] = ",".join(e.render() for e in expand)
    if top is not None:
        params["$top"] = str(top)
    if orderby:
        params["$orderby"] = orderby
    theirs = world.get(who, entity_set, **params)
    assert theirs.status_code == 200, f"{who} {entity_set} {params}: {theirs.text}"
    assert_no_leak(world, who, theirs.text)

    # The shadow: admin asks for exactly the entities the model says match, each to-many expand of a
    # hideable set restricted to the visible ids; to-one hidden entities are pruned afterwards.
    seen = world.visible(who)
    matched = matching(world, who, entity_set, condition.test if condition else (lambda v, r: True))

    def restrict(nav: str) -> str | None:
        return id_list(seen[nav]) if nav in ("Datastreams", "Observations", "MultiDatastreams") else None

    shadow = {**params, "$filter": id_list(set(matched))}
    if expand:
        shadow["$expand"] = ",".join(e.render(restrict) for e in expand)
    admins = HTTP.get(world.url(entity_set), params=shadow)
    assert admins.status_code == 200, f"shadow {shadow}: {admins.text}"
    expected = prune(admins.json(), world.hidden(who), entity_set)
    assert normalized_links(theirs.json()) == normalized_links(expected), f"{who} {entity_set} {params}"


# ---------------------------------------------------------------------------------------------- changing visibility


def test_changing_visibility_takes_effect_at_once(world: World) -> None:
    """PATCHing a Project's visibility, a stream's own visibility or its Project moves the stream and its
    Observations in and out of sight in the next request (the triggers of migration 0009)."""
    sta = world.sta
    project = create(sta, "Projects", {"name": "switching", "termsOfUse": "t", "visibility": "restricted"})
    stream = create(sta, "Datastreams", datastream_body(
        "switching stream", Thing=ref(world.ids["mixed"]), Sensor=ref(world.ids["sensor"]),
        ObservedProperty=ref(world.ids["temperature"]), Project=ref(project),
        Observations=[{"result": 977.5, "phenomenonTime": "2024-06-01T00:00:00Z",
                       "FeatureOfInterest": ref(world.ids["fpub"])}]))
    observation = ids_of(world.admin(f"Datastreams({stream})/Observations").json())[0]

    def seen_by(who: str) -> bool:
        single = world.get(who, f"Datastreams({stream})").status_code == 200
        listed = stream in ids_of(world.get(who, "Datastreams").json())
        observed = observation in ids_of(world.get(who, "Observations").json())
        on_map = ogc(world, who, f"/collections/datastreams/items/{stream}").status_code == 200
        assert single == listed == observed == on_map, (who, single, listed, observed, on_map)
        return single

    def ok(response: httpx.Response) -> None:
        assert response.status_code == 200, response.text

    try:
        assert not seen_by("anonymous") and seen_by("read")
        ok(HTTP.patch(f"{sta}/Projects({project})", json={"visibility": "public"}))
        assert seen_by("anonymous") and seen_by("p1")
        ok(HTTP.patch(f"{sta}/Projects({project})", json={"visibility": "restricted"}))
        assert not seen_by("anonymous") and not seen_by("p1") and seen_by("read")
        ok(HTTP.patch(f"{sta}/Datastreams({stream})", json={"visibility": "public"}))  # overrides its Project's
        assert seen_by("anonymous")
        ok(HTTP.put(f"{sta}/Datastreams({stream})", json=datastream_body("switching stream")))  # inherits again
        assert not seen_by("anonymous")
        ok(HTTP.patch(f"{sta}/Datastreams({stream})", json={"Project": ref(world.ids["P1"])}))  # a public one
        assert seen_by("anonymous")
        ok(HTTP.patch(f"{sta}/Datastreams({stream})", json={"Project": ref(project)}))
        assert not seen_by("anonymous")
        ok(HTTP.patch(f"{sta}/Datastreams({stream})", json={"Project": None}))  # no Project: public
        assert seen_by("anonymous")
        ok(HTTP.patch(f"{sta}/Datastreams({stream})", json={"visibility": "restricted", "Project": ref(project)}))
        assert not seen_by("anonymous") and not seen_by("p1") and not seen_by("owner") and seen_by("read")
    finally:
        HTTP.delete(f"{sta}/Datastreams({stream})")
        HTTP.delete(f"{sta}/Projects({project})")



def test_patching_visibility_to_null_makes_a_stream_inherit_again(world: World) -> None:
    sta = world.sta
    stream = create(sta, "Datastreams", datastream_body(
        "null visibility", Thing=ref(world.ids["mixed"]), Sensor=ref(world.ids["sensor"]),
        ObservedProperty=ref(world.ids["temperature"]), Project=ref(world.ids["P2"]), visibility="public"))
    try:
        assert world.get("anonymous", f"Datastreams({stream})").status_code == 200
        cleared = HTTP.patch(f"{sta}/Datastreams({stream})", json={"visibility": None})
        assert cleared.status_code == 200, cleared.text
        assert "visibility" not in cleared.json()
        assert world.get("anonymous", f"Datastreams({stream})").status_code == 404  # P2's: restricted
    finally:
        HTTP.delete(f"{sta}/Datastreams({stream})")


def test_mqtt_notifications_of_restricted_data_reach_no_anonymous_subscriber(
        world: World, server_url: str, mosquitto_server: Any) -> None:
    """The broker lets anonymous clients read v1.1/#: a notification about a restricted stream or its
    Observations must not be published where they read."""
    hidden, public = world.ids["p2secret"], world.ids["plain"]
    topics = ["v1.1/Observations", f"v1.1/Datastreams({hidden})/Observations",
              f"v1.1/Datastreams({public})/Observations", "v1.1/Datastreams", f"v1.1/Datastreams({hidden})"]
    made: list[int] = []
    with Subscriber(mosquitto_server, topics) as anonymous:
        wait_until_learned(server_url, *topics)
        try:
            def public_notification(result: float) -> None:
                made.append(create(world.sta, f"Datastreams({public})/Observations",
                                   {"result": result, "phenomenonTime": DAY.format(7)}))
                wait_for(lambda: any(m.json().get("result") == result
                                     for m in anonymous.on(f"v1.1/Datastreams({public})/Observations")),
                         what=f"the notification of the public Observation {result}")
                wait_for(lambda: any(m.json().get("result") == result for m in anonymous.on("v1.1/Observations")),
                         what=f"the notification of the public Observation {result} on v1.1/Observations")

            public_notification(3.25)  # the notifications flow
            made.append(create(world.sta, f"Datastreams({hidden})/Observations",
                               {"result": 955.5, "phenomenonTime": DAY.format(7)}))
            assert HTTP.patch(f"{world.sta}/Datastreams({hidden})", json={"description": "changed secretly"}
                              ).status_code == 200
            public_notification(3.5)  # published after the restricted ones would have been
            time.sleep(0.3)
            leaked = [(m.topic, m.payload[:200]) for m in anonymous.messages
                      if b"955.5" in m.payload or b"changed secretly" in m.payload
                      or f"Datastreams({hidden})".encode() in m.payload]
            assert leaked == [], f"anonymous MQTT subscribers received restricted data: {leaked}"
        finally:
            for observation in made:
                HTTP.delete(f"{world.sta}/Observations({observation})")
            HTTP.patch(f"{world.sta}/Datastreams({hidden})", json={"description": "secret in p2 description"})



def test_a_key_with_create_everywhere_creates_in_a_hidden_stream_by_path_and_by_body(world: World) -> None:
    """Create everywhere covers every stream, restricted ones too (write.authorize), however the stream is
    named: by the path or by the body."""
    hidden = world.ids["p2secret"]
    made: list[str] = []
    try:
        for path, body in ((f"Datastreams({hidden})/Observations", {"result": 1.25}),
                           ("Observations", {"result": 1.25, "Datastream": ref(hidden)})):
            answer = ANON.post(f"{world.sta}/{path}", json=body, headers=world.headers["create"])
            assert answer.status_code == 201, (path, answer.text)
            made.append(answer.headers["location"])
    finally:
        for location in made:
            HTTP.delete(location)


def test_a_key_that_may_not_create_there_finds_a_hidden_stream_as_it_finds_a_missing_one(
        world: World, database_url: str) -> None:
    """Create for P1 only, against a stream of the restricted P2: the same refusal as for a stream that does
    not exist, by the path (404) and by the body (403), so no answer tells that the stream exists."""
    headers = {"Authorization": f"Bearer {scoped_key(database_url, world.ids['P1'], 'create')}"}
    hidden = world.ids["p2secret"]
    before = ANON.get(f"{world.sta}/Observations?$count=true&$top=0", headers=ADMIN).json()["@iot.count"]
    answers = {}
    for stream in (hidden, MISSING):
        for form, (path, body) in {"path": (f"Datastreams({stream})/Observations", {"result": 1.25}),
                                   "body": ("Observations", {"result": 1.25, "Datastream": ref(stream)})}.items():
            answer = ANON.post(f"{world.sta}/{path}", json=body, headers=headers)
            answers[form, stream] = (answer.status_code, answer.json()["message"].replace(str(stream), "N"))
    assert answers["path", hidden] == answers["path", MISSING] and answers["path", hidden][0] == 404, answers
    assert answers["body", hidden] == answers["body", MISSING] and answers["body", hidden][0] == 403, answers
    after = ANON.get(f"{world.sta}/Observations?$count=true&$top=0", headers=ADMIN).json()["@iot.count"]
    assert after == before


def test_reads_right_after_data_becomes_restricted_hide_it(world: World) -> None:
    """While nothing is restricted, hiding principals' reads run the plain statement under a guard
    (migration 0010; the app learns "nothing is restricted" every 2 s): the first reads after a stream
    becomes restricted, on every surface at once, must hide it all the same."""
    sta, ids = world.sta, world.ids
    secret, secret_obs = ids["p1secret"], world.obs["p1secret"][0].id
    opened = [(f"Projects({ids['P2']})", "restricted"), (f"Datastreams({secret})", "restricted"),
              (f"Datastreams({ids['owned']})", "restricted")]
    public_streams = {ids[k] for k in STREAMS} - {secret}
    root = world.root
    surfaces: list[tuple[str, Callable[[httpx.Response], bool]]] = [
        (f"{sta}/Datastreams", lambda r: set(ids_of(r.json())) == public_streams),
        (f"{sta}/Datastreams({secret})", lambda r: r.status_code == 404),
        (f"{sta}/Observations({secret_obs})", lambda r: r.status_code == 404),
        (f"{sta}/Observations?$filter=result gt 920 and result lt 930", lambda r: ids_of(r.json()) == []),
        (f"{sta}/Things?$filter=Datastreams/name eq 'secret in p1'", lambda r: ids_of(r.json()) == []),
        (f"{sta}/Things?$expand=Datastreams($expand=Observations)", lambda r: True),
        (f"{sta}/Datastreams?$count=true&$top=0", lambda r: r.json()["@iot.count"] == len(public_streams)),
        (f"{sta}/Observations?$resultFormat=dataArray", lambda r: True),
        (f"{sta}/Observations?$resultFormat=CSV", lambda r: True),
        (f"{sta}/Datastreams({secret})/Observations?$resultFormat=GeoJSON", lambda r: r.status_code == 404),
        (f"{root}/v1.0/Datastreams({secret})", lambda r: r.status_code == 404),
        (f"{root}/ogcapi/collections", lambda r: True),
        (f"{root}/ogcapi/collections/datastreams/items", lambda r: {f["id"] for f in r.json()["features"]}
         == public_streams),
        (f"{root}/ogcapi/collections/datastreams/items/{secret}", lambda r: r.status_code == 404),
        (f"{root}/ogcapi/collections/latest/items/{secret}", lambda r: r.status_code == 404),
        (f"{root}/ogcapi/collections/observations/items/{secret_obs}", lambda r: r.status_code == 404),
        (f"{root}/ogcapi/collections/observations/items?limit=100",
         lambda r: secret_obs not in {f["id"] for f in r.json()["features"]}),
        (f"{root}/ogcapi/collections/things/items", lambda r: True),
    ]
    batch = {"requests": [{"id": "1", "method": "get", "url": f"Datastreams({secret})"},
                          {"id": "2", "method": "get", "url": "Observations?$filter=result gt 920 and result lt 930"}]}
    markers = ["secret in p1", "921.75", f"Datastreams({secret})", f"Observations({secret_obs})"]

    def patch_all(value: str | None) -> None:
        for path, restricted in opened:
            answer = HTTP.patch(f"{sta}/{path}", json={"visibility": value or restricted})
            assert answer.status_code == 200, answer.text

    def ask(who: str, target: str) -> tuple[str, httpx.Response]:
        if target == "$batch":
            return target, ANON.post(f"{sta}/$batch", json=batch, headers=world.headers[who])
        return target, ANON.get(target, headers=world.headers[who])

    checks = dict(surfaces)
    targets = [*checks, "$batch"]
    try:
        # The first guarded read that finds restricted data tells the app so, and the reads after it hide
        # from the start: each round starts the reads at once, each round another one first.
        for round_, who in enumerate(("anonymous", "p2", "owner", "create", "anonymous", "p2", "anonymous")):
            patch_all("public")
            time.sleep(2.3)  # the app learns that nothing is restricted any more
            assert HTTP.patch(f"{sta}/Datastreams({secret})", json={"visibility": "restricted"}).status_code == 200
            start = (round_ * 3) % len(targets)
            with ThreadPoolExecutor(len(targets)) as pool:
                answers = list(pool.map(lambda t, w=who: ask(w, t), targets[start:] + targets[:start]))
            for target, answer in answers:
                assert answer.status_code in (200, 404), (who, target, answer.text)
                text = answer.text if answer.status_code == 200 else answer.text.replace(
                    f"Datastreams({secret})", "").replace(f"Observations({secret_obs})", "")
                if target == "$batch":
                    bodies = answer.json()["responses"]
                    assert [r["status"] for r in bodies] == [404, 200], bodies
                    assert bodies[1]["body"]["value"] == []
                    text = json.dumps(bodies[1])
                else:
                    assert checks[target](answer), (who, target, answer.text[:2000])
                for marker in markers:
                    assert marker not in text, (who, target, marker, text[:2000])
    finally:
        patch_all(None)
