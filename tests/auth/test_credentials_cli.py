"""`citystream keys …` and `citystream users …` (citystream/auth/commands.py), run as the real executable
against the session database, and what they make checked against the session app: a new key works at once,
a revoked key or disabled user is refused within seconds, no secret or hash is ever listed, and wrong
arguments exit 2 with a message (1: the thing to change does not exist, or exists already).

Every test uses the `sta` fixture, which empties the database (the credential tables too) first.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.auth.helpers import ANON, assert_refused, basic, bearer, key_id
from tests.mqtt_helpers import wait_for
from tests.sta_helpers import id_from_location, url

CITYSTREAM = Path(sys.executable).with_name("citystream")
TOKEN = re.compile(r"cs_[a-z0-9]{12}_\S+")
THING = {"name": "x", "description": "y"}
PASSWORD = "a long enough password"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
ROLE_LIST = "read, create, update, delete, admin"


@dataclass
class Cli:
    database_url: str
    sta: str

    def __call__(self, *args: str, input: str | None = None,  # noqa: A002 (subprocess's name)
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        clean = {name: value for name, value in os.environ.items() if not name.startswith("CITYSTREAM_")}
        return subprocess.run(
            [str(CITYSTREAM), *args], input=input, stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True, text=True, timeout=120,
            env={**clean, "CITYSTREAM_DATABASE_URL": self.database_url, **(env or {})})

    def ok(self, *args: str, input: str | None = None,  # noqa: A002
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        done = self(*args, input=input, env=env)
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def fails(self, code: int, *args: str, input: str | None = None,  # noqa: A002
              env: dict[str, str] | None = None) -> str:
        """Run a command that must exit `code` with a `citystream: error:` message; the message."""
        done = self(*args, input=input, env=env)
        assert done.returncode == code, f"{args}: exit {done.returncode}, not {code}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        assert "error" in done.stderr, done.stderr
        return done.stderr

    def rows(self, what: str) -> dict[str, list[str]]:
        """`keys list` / `users list` as {first column: the row's cells}, the header checked and left out."""
        lines = self.ok(what, "list").stdout.splitlines()
        header = {"keys": "id name roles project_ids created_at expires_at revoked_at",
                  "users": "name roles project_ids created_at disabled_at"}[what]
        assert lines and lines[0].split() == header.split(), lines
        return {line.split()[0]: line.split() for line in lines[1:]}


@pytest.fixture
def cli(sta: str, database_url: str) -> Cli:
    return Cli(database_url, sta)


def post_thing(sta: str, headers: dict[str, str]) -> httpx.Response:
    return ANON.post(url(sta, "Things"), json=THING, headers=headers)


def get_things(sta: str, headers: dict[str, str]) -> httpx.Response:
    return ANON.get(url(sta, "Things"), headers=headers)


def listed_time(cell: str) -> datetime:
    return datetime.strptime(cell, TIME_FORMAT).replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- keys


def test_keys_create_list_and_revoke(cli: Cli) -> None:
    created = cli.ok("keys", "create", "--name", "n", "--role", "create", "--role", "read", "--expires", "30d")
    lines = created.stdout.splitlines()
    assert len(lines) == 1, created.stdout
    token = lines[0]
    assert TOKEN.fullmatch(token), token
    kid, secret = key_id(token), token.split("_", 2)[2]
    assert kid in created.stderr and "shown only now" in created.stderr, created.stderr
    assert secret not in created.stderr
    made = post_thing(cli.sta, bearer(token))  # at once: the app reloads for a key id it does not know
    assert made.status_code == 201, made.text

    listing = cli.ok("keys", "list").stdout
    assert secret not in listing and token not in listing
    row = cli.rows("keys")[kid]
    assert row[:3] == [kid, "n", "create,read"], row
    assert len(row) == 5, f"not revoked: {row}"
    expires = listed_time(row[4]) - datetime.now(UTC)
    assert timedelta(days=29) < expires < timedelta(days=31), row

    revoked = cli.ok("keys", "revoke", kid)
    assert kid in revoked.stderr and revoked.stdout == ""
    wait_for(lambda: get_things(cli.sta, bearer(token)).status_code == 401, timeout=10, what="the revoked key refused")
    assert_refused(post_thing(cli.sta, bearer(token)), 401)
    row = cli.rows("keys")[kid]
    assert len(row) == 6 and listed_time(row[5]) <= datetime.now(UTC) + timedelta(seconds=5), row
    assert ANON.delete(url(cli.sta, f"Things({id_from_location(made)})"), headers=bearer(token)).status_code == 401

    assert kid in cli.fails(1, "keys", "revoke", kid)
    assert "zzzzzzzzzzzz" in cli.fails(1, "keys", "revoke", "zzzzzzzzzzzz")


def test_keys_create_takes_a_role_list_and_every_duration(cli: Cli) -> None:
    for expires, low, high in (("12h", timedelta(hours=11), timedelta(hours=13)),
                               ("90m", timedelta(minutes=89), timedelta(minutes=91))):
        token = cli.ok("keys", "create", "--name", f"for-{expires}", "--role", "create,read",
                       "--expires", expires).stdout.strip()
        row = cli.rows("keys")[key_id(token)]
        assert row[2] == "create,read" and low < listed_time(row[4]) - datetime.now(UTC) < high, row
        assert post_thing(cli.sta, bearer(token)).status_code == 201
    forever = cli.ok("keys", "create", "--name", "forever", "--role", "read").stdout.strip()
    assert get_things(cli.sta, bearer(forever)).status_code == 200
    assert_refused(post_thing(cli.sta, bearer(forever)), 403, "create")


def test_keys_create_refuses_bad_arguments(cli: Cli) -> None:
    for roles in (["--role", "nonsense"], ["--role", "create,nonsense"], ["--role", "read", "--role", "root"]):
        message = cli.fails(2, "keys", "create", "--name", "n", *roles)
        assert ROLE_LIST in message and roles[-1].split(",")[-1] in message, message
    for expires in ("yesterday", "30", "30y", "-1d", "2024-13-01"):
        assert "--expires" in cli.fails(2, "keys", "create", "--name", "n", "--role", "read", "--expires", expires)
    assert cli("keys", "create", "--name", "n").returncode == 2  # no --role: argparse's usage error
    assert cli.rows("keys") == {}, "a refused create made a key"


@pytest.mark.parametrize("name", ["", "k" * 201], ids=["empty", "201 characters"])
def test_keys_create_refuses_a_name_the_table_refuses(cli: Cli, name: str) -> None:
    assert "1 to 200 characters" in cli.fails(2, "keys", "create", "--name", name, "--role", "read")
    assert cli.rows("keys") == {}


def test_a_key_created_expired_is_refused(cli: Cli) -> None:
    token = cli.ok("keys", "create", "--name", "past", "--role", "admin",
                   "--expires", "2020-01-01T00:00:00Z").stdout.strip()
    assert TOKEN.fullmatch(token), token
    assert cli.rows("keys")[key_id(token)][4] == "2020-01-01T00:00:00Z"
    assert "expired" in assert_refused(get_things(cli.sta, bearer(token)), 401)
    assert_refused(post_thing(cli.sta, bearer(token)), 401)
    assert_refused(get_things(cli.sta, {"X-API-Key": token}), 401)


# ---------------------------------------------------------------------------------------------- users


def test_users_create_basic_and_disable(cli: Cli) -> None:
    made = cli.ok("users", "create", "--name", "analyst", "--role", "read", "--role", "create",
                  input=PASSWORD + "\n")
    assert "analyst" in made.stderr and PASSWORD not in made.stdout + made.stderr
    created = post_thing(cli.sta, basic("analyst", PASSWORD))
    assert created.status_code == 201, created.text
    thing = id_from_location(created)
    refused = ANON.delete(url(cli.sta, f"Things({thing})"), headers=basic("analyst", PASSWORD))
    assert_refused(refused, 403, "delete")
    wrong = post_thing(cli.sta, basic("analyst", PASSWORD + "!"))
    assert_refused(wrong, 401)
    assert wrong.headers["www-authenticate"].startswith("Basic")
    assert_refused(get_things(cli.sta, basic("nobody", PASSWORD)), 401)

    assert "exists" in cli.fails(1, "users", "create", "--name", "analyst", "--role", "admin",
                                 input="another long password\n")
    assert post_thing(cli.sta, basic("analyst", PASSWORD)).status_code == 201  # the first password still
    assert "12" in cli.fails(2, "users", "create", "--name", "shorty", "--role", "read", input="eleven char\n")
    assert "12" in cli.fails(2, "users", "create", "--name", "nobody", "--role", "read")  # empty stdin
    cli.fails(2, "users", "create", "--name", "bad name!", "--role", "read", input=PASSWORD + "\n")
    assert ROLE_LIST in cli.fails(2, "users", "create", "--name", "rooted", "--role", "root", input=PASSWORD + "\n")

    cli.ok("users", "create", "--name", "envuser", "--role", "create", env={"CITYSTREAM_USER_PASSWORD": PASSWORD * 2})
    assert post_thing(cli.sta, basic("envuser", PASSWORD * 2)).status_code == 201

    listing = cli.ok("users", "list").stdout
    assert PASSWORD not in listing and "scrypt" not in listing, listing
    rows = cli.rows("users")
    assert set(rows) == {"analyst", "envuser"}, rows
    assert rows["analyst"][1] == "create,read" and rows["envuser"][1] == "create"
    assert len(rows["analyst"]) == 3, f"not disabled: {rows['analyst']}"

    cli.ok("users", "disable", "analyst")
    wait_for(lambda: get_things(cli.sta, basic("analyst", PASSWORD)).status_code == 401, timeout=10,
             what="the disabled user refused")
    assert_refused(post_thing(cli.sta, basic("analyst", PASSWORD)), 401)
    assert post_thing(cli.sta, basic("envuser", PASSWORD * 2)).status_code == 201
    assert len(cli.rows("users")["analyst"]) == 4
    assert "analyst" in cli.fails(1, "users", "disable", "analyst")
    assert "nobody" in cli.fails(1, "users", "disable", "nobody")
