"""Roles held for a STAplus Project, on the credential side: `keys create` / `users create --project N …`
store the Project ids (migration 0009_visibility.sql's `project_ids` column), refusing ids that are not
positive integers or name no Project; `keys list` / `users list` show them; the credential store turns them
into a Principal whose roles hold only for those Projects (`project_roles`), and the OIDC verifier reads
them from CITYSTREAM_OIDC_PROJECT_ROLES_CLAIM (an object {"<id>": [roles]} or a list of "<id>:<role>"),
leaving out whatever it cannot read.

What Project roles allow on entities is tested where it is enforced; here only who the principal is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from citystream.auth import credentials
from citystream.auth.oidc import OidcConfig, OidcVerifier
from citystream.auth.store import CredentialStore
from citystream.settings import _oidc_env
from sensorthings.model.access import Principal, Role
from tests.auth.helpers import ANON, app_settings, assert_refused, basic, bearer, connection, key_id
from tests.auth.test_credentials_cli import PASSWORD, Cli
from tests.auth.test_oidc import AUDIENCE, ISSUER, Jwks, Signer, claims, jwks_endpoint, rsa_signer
from tests.conftest import running_app
from tests.sta_helpers import url

READ_CREATE = frozenset({Role.READ, Role.CREATE})


def new_project(database_url: str, name: str = "p") -> int:
    with connection(database_url) as conn:
        row = conn.execute("INSERT INTO projects (name, terms_of_use, creation_time) VALUES (%s, 'CC-BY', now()) "
                           "RETURNING id", (name,)).fetchone()
    assert row is not None
    return int(row[0])


def stored_projects(database_url: str, table: str, column: str, value: str) -> Any:
    with connection(database_url) as conn:
        row = conn.execute(f"SELECT project_ids FROM {table} WHERE {column} = %s", (value,)).fetchone()  # noqa: S608
    assert row is not None, f"no {table} row {value!r}"
    return row[0]


def listed(cli: Cli, what: str) -> dict[str, dict[str, str]]:
    """`keys list` / `users list` as {first column: {column: cell}}, cut at the header's column starts (an
    empty cell stays empty instead of shifting the others)."""
    lines = cli.ok(what, "list").stdout.splitlines()
    header = lines[0]
    names = header.split()
    starts = [header.index(f" {name}") + 1 if i else 0 for i, name in enumerate(names)]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    rows = [{name: line[a:b].strip() for name, (a, b) in zip(names, bounds, strict=True)} for line in lines[1:]]
    return {row[names[0]]: row for row in rows}


@pytest.fixture
def cli(sta: str, database_url: str) -> Cli:
    return Cli(database_url, sta)


# ---------------------------------------------------------------------------------------------- the commands


def test_keys_create_with_projects_stores_and_lists_them(cli: Cli, database_url: str) -> None:
    first, second = new_project(database_url, "first"), new_project(database_url, "second")
    created = cli.ok("keys", "create", "--name", "scoped", "--role", "create,read",
                     "--project", str(second), "--project", f"{first},{second}")
    token = created.stdout.strip()
    assert f"for Project {first},{second} only" in created.stderr, created.stderr
    assert stored_projects(database_url, "api_keys", "id", key_id(token)) == [first, second]
    everywhere = cli.ok("keys", "create", "--name", "global", "--role", "read").stdout.strip()
    assert stored_projects(database_url, "api_keys", "id", key_id(everywhere)) is None

    rows = listed(cli, "keys")
    assert list(next(iter(rows.values()))) == ["id", "name", "roles", "project_ids", "created_at", "expires_at",
                                               "revoked_at"]
    assert rows[key_id(token)]["project_ids"] == f"{first},{second}"
    assert rows[key_id(token)]["roles"] == "create,read"
    assert rows[key_id(everywhere)]["project_ids"] == ""
    assert token.split("_", 2)[2] not in cli.ok("keys", "list").stdout

    # A project-scoped key is a valid credential: a bad one is a 401 even where anonymous may read.
    answered = ANON.get(url(cli.sta, "Things"), headers=bearer(token))
    assert answered.status_code == 200, answered.text


def test_users_create_with_projects_stores_and_lists_them(cli: Cli, database_url: str) -> None:
    project = new_project(database_url)
    made = cli.ok("users", "create", "--name", "field.team", "--role", "create", "--role", "read",
                  "--project", str(project), input=PASSWORD + "\n")
    assert f"for Project {project} only" in made.stderr, made.stderr
    cli.ok("users", "create", "--name", "everywhere", "--role", "read", input=PASSWORD + "\n")
    assert stored_projects(database_url, "api_users", "name", "field.team") == [project]
    assert stored_projects(database_url, "api_users", "name", "everywhere") is None
    rows = listed(cli, "users")
    assert rows["field.team"]["project_ids"] == str(project) and rows["everywhere"]["project_ids"] == ""
    assert ANON.get(url(cli.sta, "Things"), headers=basic("field.team", PASSWORD)).status_code == 200
    assert_refused(ANON.get(url(cli.sta, "Things"), headers=basic("field.team", PASSWORD + "!")), 401)


@pytest.mark.parametrize("value", ["abc", "0", "-3", "1.5", "+4", "0x10", "", ",", "٣", "9" * 20],
                         ids=["a word", "zero", "negative", "a fraction", "a sign", "hex", "empty", "a comma",
                              "arabic-indic digit", "beyond bigint"])
def test_a_project_that_is_no_positive_integer_is_refused(cli: Cli, database_url: str, value: str) -> None:
    project = new_project(database_url)
    message = cli.fails(2, "keys", "create", "--name", "n", "--role", "read", "--project", str(project),
                        f"--project={value}")
    assert "--project" in message, message
    assert "--project" in cli.fails(2, "users", "create", "--name", "u", "--role", "read",
                                    f"--project={value}", input=PASSWORD + "\n")
    assert listed(cli, "keys") == {} and listed(cli, "users") == {}, "a refused create made a credential"


def test_a_project_that_does_not_exist_is_refused(cli: Cli, database_url: str) -> None:
    project = new_project(database_url)
    message = cli.fails(1, "keys", "create", "--name", "n", "--role", "read", "--project", f"{project},{project + 41}")
    assert f"no Project {project + 41}:" in message, message
    assert f"no Project {project}," not in message
    message = cli.fails(1, "users", "create", "--name", "u", "--role", "read", "--project", str(project + 7),
                        input=PASSWORD + "\n")
    assert f"no Project {project + 7}" in message, message
    assert listed(cli, "keys") == {} and listed(cli, "users") == {}, "a refused create made a credential"


def test_create_key_refuses_bad_project_ids_itself(clean_db: str) -> None:
    project = new_project(clean_db)
    with connection(clean_db) as conn:
        for bad in ([], [0], [-1], [2**63]):
            with pytest.raises(ValueError, match="positive integers"):
                credentials.create_key(conn, "n", READ_CREATE, projects=bad)
        with pytest.raises(credentials.UnknownProjects) as refused:
            credentials.create_user(conn, "u", PASSWORD, READ_CREATE, projects=[project + 2, project, project + 1])
        assert refused.value.missing == [project + 1, project + 2]
        assert conn.execute("SELECT count(*) FROM api_keys").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM api_users").fetchone() == (0,)


# ---------------------------------------------------------------------------------------------- the store


def test_the_store_builds_principals_with_project_roles(clean_db: str) -> None:
    first, second = new_project(clean_db), new_project(clean_db)
    with connection(clean_db) as conn:
        scoped = credentials.create_key(conn, "scoped", READ_CREATE, projects=[second, first])
        everywhere = credentials.create_key(conn, "everywhere", READ_CREATE)
        for_none = credentials.create_key(conn, "for none", READ_CREATE, projects=[first])
        conn.execute("UPDATE api_keys SET project_ids = '{}' WHERE id = %s", (for_none.id,))  # made by hand
        credentials.create_user(conn, "field.team", PASSWORD, frozenset({Role.UPDATE}), projects=[second])

    async def principals() -> tuple[Principal | None, ...]:
        store = CredentialStore(clean_db)
        await store.start()
        try:
            found = (await store.key(scoped.id, scoped.secret), await store.key(everywhere.id, everywhere.secret),
                     await store.key(for_none.id, for_none.secret), await store.basic("field.team", PASSWORD),
                     await store.basic(scoped.id, scoped.secret))
            await store.reload()  # the user's remembered check survives a reload that changed nothing
            assert store._verified and await store.basic("field.team", PASSWORD) == found[3]
            return found
        finally:
            await store.stop()

    key, global_key, none_key, user, key_by_basic = asyncio.run(principals())
    assert key is not None and key == key_by_basic
    assert (key.kind, key.name, key.auth_id, key.roles) == ("key", "scoped", scoped.id, frozenset())
    assert dict(key.project_roles) == {first: READ_CREATE, second: READ_CREATE}
    assert key.has_in(Role.CREATE, first) and not key.has_in(Role.CREATE, second + 1) and not key.has(Role.READ)
    assert key.projects_with(Role.CREATE) == (first, second) and key.has_somewhere(Role.READ)
    with pytest.raises(TypeError):
        key.project_roles[99] = READ_CREATE  # type: ignore[index]

    assert global_key is not None and global_key.roles == READ_CREATE and dict(global_key.project_roles) == {}
    assert none_key is not None and none_key.roles == frozenset() and dict(none_key.project_roles) == {}
    assert not none_key.has_somewhere(Role.READ)
    assert user is not None and (user.kind, user.roles) == ("user", frozenset())
    assert dict(user.project_roles) == {second: frozenset({Role.UPDATE})}


def test_a_project_scoped_key_authenticates_where_anonymous_may_not_read(clean_db: str) -> None:
    project = new_project(clean_db)
    with connection(clean_db) as conn:
        token = credentials.create_key(conn, "scoped reader", frozenset({Role.READ}), projects=[project]).token
    with running_app(app_settings(clean_db, anonymous_read=False), clean_db) as base:
        assert_refused(ANON.get(f"{base}/v1.1/Things"), 401)
        answered = ANON.get(f"{base}/v1.1/Things", headers=bearer(token))
        assert answered.status_code == 200, answered.text


# ---------------------------------------------------------------------------------------------- OIDC


@pytest.fixture(scope="module")
def signer() -> Signer:
    return rsa_signer("project-roles")


@pytest.fixture(scope="module")
def idp(signer: Signer) -> Iterator[Jwks]:
    with jwks_endpoint(signer) as endpoint:
        yield endpoint


def verified(idp: Jwks, token: str, project_roles_claim: str | None = "citystream.projects") -> Principal:
    config = OidcConfig(idp.url, ISSUER, AUDIENCE, role_map=(("sta-writer", Role.CREATE),),
                        project_roles_claim=project_roles_claim)
    return asyncio.run(OidcVerifier(config).principal(token))


def project_token(signer: Signer, value: Any) -> str:
    return signer.sign(claims(citystream={"projects": value}))


def test_a_token_holds_project_roles_from_an_object(idp: Jwks, signer: Signer) -> None:
    principal = verified(idp, project_token(signer, {"7": ["read", "create"], "9": ["sta-writer"], "11": "update"}))
    assert principal.roles == frozenset({Role.CREATE})  # the global roles claim keeps working
    assert dict(principal.project_roles) == {7: READ_CREATE, 9: frozenset({Role.CREATE}),
                                             11: frozenset({Role.UPDATE})}
    assert principal.has_in(Role.READ, 7) and not principal.has_in(Role.READ, 9)


def test_a_token_holds_project_roles_from_a_list(idp: Jwks, signer: Signer) -> None:
    token = signer.sign(claims(realm_access=None, citystream={"projects": ["7:read", "7:sta-writer", "12:delete"]}))
    principal = verified(idp, token)
    assert principal.roles == frozenset()
    assert dict(principal.project_roles) == {7: READ_CREATE, 12: frozenset({Role.DELETE})}
    assert principal.projects_with(Role.DELETE) == (12,)


def test_a_top_level_claim_path_works_too(idp: Jwks, signer: Signer) -> None:
    principal = verified(idp, signer.sign(claims(sta_projects=["3:read"])), "sta_projects")
    assert dict(principal.project_roles) == {3: frozenset({Role.READ})}


def test_no_project_roles_without_the_setting(idp: Jwks, signer: Signer) -> None:
    principal = verified(idp, project_token(signer, {"7": ["admin"]}), None)
    assert dict(principal.project_roles) == {} and principal.roles == frozenset({Role.CREATE})


GARBAGE: dict[str, tuple[Any, dict[int, frozenset[Role]]]] = {
    "absent": (None, {}),
    "a string": ("7:read", {}),
    "a number": (7, {}),
    "true": (True, {}),
    "an empty object": ({}, {}),
    "an empty list": ([], {}),
    "ids that are not positive integers": ({"x": ["read"], "-1": ["read"], "0": ["read"], "7.5": ["read"],
                                            "0x7": ["read"], "٣": ["read"], "9" * 20: ["read"], "": ["read"],
                                            "8": ["read"]}, {8: frozenset({Role.READ})}),
    "unknown roles": ({"7": ["superuser", "ADMIN", 5, None, {"r": 1}, ["read"]], "8": "nonsense", "9": 3,
                       "10": None, "11": {"read": True}}, {}),
    "list entries that are no id:role": (["7", "read", ":read", "7:", "x:read", "-7:read", "7 :read", 7, None,
                                          True, {"7": "read"}, ["7", "read"], "7:superuser", "8:read:x",
                                          "9:read"], {9: frozenset({Role.READ})}),
}


@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_in_the_project_claim_is_ignored(idp: Jwks, signer: Signer, case: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    value, expected = GARBAGE[case]
    with caplog.at_level(logging.DEBUG, logger="citystream.auth"):
        principal = verified(idp, project_token(signer, value))
    assert dict(principal.project_roles) == expected
    assert principal.roles == frozenset({Role.CREATE})
    if case not in ("absent", "an empty object", "an empty list"):
        assert any("citystream.projects" in r.getMessage() for r in caplog.records), caplog.records


def test_the_claim_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("CITYSTREAM_OIDC_JWKS_URL", "http://idp.example/certs"), ("CITYSTREAM_OIDC_ISSUER", ISSUER),
                        ("CITYSTREAM_OIDC_AUDIENCE", AUDIENCE)):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CITYSTREAM_OIDC_PROJECT_ROLES_CLAIM", raising=False)
    config = _oidc_env()
    assert config is not None and config.project_roles_claim is None
    monkeypatch.setenv("CITYSTREAM_OIDC_PROJECT_ROLES_CLAIM", "  ")
    assert (config := _oidc_env()) is not None and config.project_roles_claim is None
    monkeypatch.setenv("CITYSTREAM_OIDC_PROJECT_ROLES_CLAIM", " resource_access.citystream.projects ")
    config = _oidc_env()
    assert config is not None and config.project_roles_claim == "resource_access.citystream.projects"
    assert config.roles_claim == "realm_access.roles"


def test_an_oidc_app_authenticates_a_project_token(idp: Jwks, signer: Signer, clean_db: str) -> None:
    config = OidcConfig(idp.url, ISSUER, AUDIENCE, project_roles_claim="citystream.projects")
    garbage = signer.sign(claims(realm_access=None, citystream={"projects": {"7": [{"x": 1}], "y": 3}}))
    with running_app(app_settings(clean_db, oidc=config, anonymous_read=False), clean_db) as base:
        answered = ANON.get(f"{base}/v1.1/Things", headers=bearer(project_token(signer, ["4:read"])))
        assert answered.status_code == 200, answered.text
        refused = ANON.get(f"{base}/v1.1/Things", headers=bearer(garbage))  # holds nothing: not a 500
        assert refused.status_code == 403, refused.text
