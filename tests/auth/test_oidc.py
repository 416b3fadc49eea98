"""OIDC bearer tokens (citystream/auth/oidc.py) against an identity provider of our own: RSA and EC keys made
with `cryptography`, a JWKS served from a local HTTP server whose answer the tests change (rotate the keys,
answer 500, answer garbage, stop), and tokens signed with PyJWT.

A good token writes with the roles of its claim (mapped through the role map); every token that must not
verify (expired, another issuer or audience, no `sub`, a wrong signature, an unknown key, algorithm
confusion) is a 401 with the RFC 6750 challenge, never a 500, also where anonymous could read. PyJWKClient
fetches the key set again for an unknown key id, but at most once per 10 s cooldown counted from the last
successful fetch (the first one included): the rotation test polls until the new key is taken.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from citystream.auth.oidc import OidcConfig
from sensorthings.model.access import Role
from tests.auth.helpers import ANON, app_settings, assert_refused, bearer
from tests.conftest import empty_database, running_app
from tests.mqtt_helpers import wait_for
from tests.sta_helpers import HTTP, count, id_from_location, url

ISSUER = "https://idp.example/realms/city"
AUDIENCE = "citystream"
THING = {"name": "x", "description": "y"}


# ---------------------------------------------------------------------------------------------- the identity provider


@dataclass(frozen=True)
class Signer:
    """A private key and the key id the JWKS publishes it under."""

    kid: str
    private_key: Any
    algorithm: str = "RS256"

    @property
    def jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        form = (RSAAlgorithm if self.algorithm == "RS256" else ECAlgorithm).to_jwk(public, as_dict=True)
        return {**form, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    @property
    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        return jwt.encode(claims, self.private_key, algorithm=self.algorithm, headers={"kid": kid or self.kid})


def rsa_signer(kid: str) -> Signer:
    return Signer(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))


@dataclass
class Jwks:
    """What the JWKS endpoint answers now (the handler reads it on every request), and how often it was asked."""

    server: ThreadingHTTPServer | None = None
    status: int = 200
    body: bytes = b'{"keys": []}'
    fetches: int = 0
    stopped: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/realms/city/protocol/openid-connect/certs"

    def publish(self, *signers: Signer) -> None:
        self.status, self.body = 200, json.dumps({"keys": [s.jwk for s in signers]}).encode()

    def fail(self, status: int, body: bytes = b"<html>Internal Server Error</html>") -> None:
        self.status, self.body = status, body

    def stop(self) -> None:
        """Stop answering: the port refuses connections from now on."""
        with self._lock:
            if self.server is not None and not self.stopped:
                self.stopped = True
                self.server.shutdown()
                self.server.server_close()


@contextmanager
def jwks_endpoint(*signers: Signer) -> Iterator[Jwks]:
    state = Jwks()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            state.fetches += 1
            status, body = state.status, state.body
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    state.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.publish(*signers)
    threading.Thread(target=state.server.serve_forever, name="test-jwks", daemon=True).start()
    try:
        yield state
    finally:
        state.stop()


def claims(**changes: Any) -> dict[str, Any]:
    """A good token's claims, changed by `changes` (None removes a claim). Each has its own `jti`, so no two
    tokens are equal and the verifier's memory of verified tokens never answers for another test's."""
    now = int(time.time())
    base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300,
                            "jti": uuid.uuid4().hex, "realm_access": {"roles": ["create"]}}
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"


def unsigned_token(kid: str) -> str:
    """`alg: none`, no signature."""
    return _segments({"alg": "none", "typ": "JWT", "kid": kid}, claims()) + "."


def hs256_with_public_key(signer: Signer) -> str:
    """Algorithm confusion: HS256 with the RSA public key (its PEM, which anyone can fetch) as the secret."""
    signing_input = _segments({"alg": "HS256", "typ": "JWT", "kid": signer.kid}, claims())
    signature = hmac.new(signer.public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def tampered(signer: Signer) -> str:
    """A good token whose payload was swapped for one granting admin, its signature kept."""
    header, _payload, signature = signer.sign(claims()).split(".")
    forged = _b64(json.dumps(claims(realm_access={"roles": ["admin"]})).encode())
    return f"{header}.{forged}.{signature}"


def oidc_config(jwks_url: str) -> OidcConfig:
    return OidcConfig(jwks_url, ISSUER, AUDIENCE, role_map=(("sta-writer", Role.CREATE),))


@contextmanager
def oidc_app(database_url: str, jwks_url: str) -> Iterator[str]:
    """An app of its own taking tokens of the issuer whose keys `jwks_url` serves; yields its STA root."""
    with running_app(app_settings(database_url, oidc=oidc_config(jwks_url)), database_url) as base:
        yield f"{base}/v1.1"


def post_thing(sta: str, token: str) -> httpx.Response:
    return ANON.post(url(sta, "Things"), json=THING, headers=bearer(token))


def get_things(sta: str, token: str) -> httpx.Response:
    return ANON.get(url(sta, "Things"), headers=bearer(token))


def assert_invalid_token(response: httpx.Response, *fragments: str) -> str:
    text = assert_refused(response, 401)
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="CityStream"') and 'error="invalid_token"' in challenge, challenge
    for fragment in fragments:
        assert fragment in text, text
    return text


# ---------------------------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Keys:
    main: Signer
    ec: Signer
    other: Signer
    """Not published: its signatures must not verify, whatever kid they claim."""


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(rsa_signer("main-2024"), Signer("ec-2024", ec.generate_private_key(ec.SECP256R1()), "ES256"),
                rsa_signer("other"))


@pytest.fixture(scope="module")
def idp(keys: Keys) -> Iterator[Jwks]:
    with jwks_endpoint(keys.main, keys.ec) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def app(idp: Jwks, database_url: str) -> Iterator[str]:
    empty_database(database_url)
    with oidc_app(database_url, idp.url) as sta:
        yield sta


# ---------------------------------------------------------------------------------------------- good tokens


@pytest.mark.parametrize("which", ["main", "ec"])
def test_a_good_token_creates_and_reads(app: str, keys: Keys, which: str) -> None:
    token = getattr(keys, which).sign(claims())
    created = post_thing(app, token)
    assert created.status_code == 201, created.text
    thing = id_from_location(created)
    read = ANON.get(url(app, f"Things({thing})"), headers=bearer(token))
    assert read.status_code == 200, read.text
    assert (read.json()["name"], read.json()["description"]) == ("x", "y")
    again = post_thing(app, token)  # the same token again (remembered once verified)
    assert again.status_code == 201, again.text


def test_the_role_map_grants_create_and_unknown_role_names_are_ignored(app: str, keys: Keys) -> None:
    token = keys.main.sign(claims(realm_access={"roles": ["sta-writer", "superuser", "ADMIN", 7, {"x": 1}]}))
    created = post_thing(app, token)
    assert created.status_code == 201, created.text
    thing = id_from_location(created)
    refused = ANON.delete(url(app, f"Things({thing})"), headers=bearer(token))
    assert "superuser" not in assert_refused(refused, 403, "delete")
    assert HTTP.get(url(app, f"Things({thing})")).status_code == 200
    only_unknown = keys.main.sign(claims(realm_access={"roles": ["writer", "sta-reader"]}))
    assert_refused(post_thing(app, only_unknown), 403, "create")


@pytest.mark.parametrize("roles_claim", [None, {"roles": []}, {"roles": "create"}, ["create"]],
                         ids=["absent", "empty", "a string", "not an object"])
def test_a_token_without_roles_reads_but_cannot_write(app: str, keys: Keys, roles_claim: Any) -> None:
    token = keys.main.sign(claims(realm_access=roles_claim, preferred_username="ana.lyst"))
    assert get_things(app, token).status_code == 200
    before = count(app, "Things")
    text = assert_refused(post_thing(app, token), 403, "create")
    assert "oidc" in text and "ana.lyst" in text, text
    assert count(app, "Things") == before


def test_a_token_expired_within_the_leeway_is_taken(app: str, keys: Keys) -> None:
    token = keys.main.sign(claims(exp=int(time.time()) - 10))  # the leeway is 30 s
    assert post_thing(app, token).status_code == 201


def test_an_expired_token_is_refused(app: str, keys: Keys) -> None:
    token = keys.main.sign(claims(exp=int(time.time()) - 600))
    response = post_thing(app, token)
    assert_invalid_token(response, "expired")
    assert 'error_description="the token has expired"' in response.headers["www-authenticate"]
    assert_invalid_token(get_things(app, token), "expired")


# ---------------------------------------------------------------------------------------------- bad tokens

BAD_TOKENS: dict[str, tuple[Any, str]] = {
    "wrong issuer": (lambda k: k.main.sign(claims(iss="https://evil.example/realms/city")), "issuer"),
    "wrong audience": (lambda k: k.main.sign(claims(aud="another-service")), "audience"),
    "no audience": (lambda k: k.main.sign(claims(aud=None)), ""),
    "missing sub": (lambda k: k.main.sign(claims(sub=None)), "sub"),
    "missing exp": (lambda k: k.main.sign(claims(exp=None)), "exp"),
    "not valid yet": (lambda k: k.main.sign(claims(nbf=int(time.time()) + 600)), ""),
    "signed by another key under a published kid": (lambda k: k.other.sign(claims(), kid=k.main.kid), ""),
    "signed by the EC key under the RSA kid": (lambda k: k.ec.sign(claims(), kid=k.main.kid), ""),
    "a kid not in the JWKS": (lambda k: k.other.sign(claims()), "signing key"),
    "no kid": (lambda k: jwt.encode(claims(), k.main.private_key, algorithm="RS256"), ""),
    "alg none": (lambda k: unsigned_token(k.main.kid), ""),
    "HS256 with the public key as secret": (lambda k: hs256_with_public_key(k.main), ""),
    "payload swapped, signature kept": (lambda k: tampered(k.main), ""),
    "three segments of garbage": (lambda k: "not.a.jwt", ""),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_a_token_that_does_not_verify_is_a_401(app: str, keys: Keys, case: str) -> None:
    make, fragment = BAD_TOKENS[case]
    token = make(keys)
    before = count(app, "Things")
    assert_invalid_token(post_thing(app, token), fragment)
    assert_invalid_token(get_things(app, token), fragment)  # also where anonymous could read
    assert count(app, "Things") == before


def test_a_bearer_that_is_neither_a_jwt_nor_a_key_is_a_401(app: str) -> None:
    text = assert_refused(get_things(app, "abc"), 401)
    assert "OIDC issuer" in text, text
    assert ANON.get(url(app, "Things")).status_code == 200  # and anonymous still reads


def test_a_jwt_where_no_issuer_is_configured_is_a_401(sta: str, keys: Keys) -> None:
    token = keys.main.sign(claims())
    text = assert_refused(get_things(sta, token), 401)
    assert "no OIDC issuer is configured" in text, text
    assert_refused(post_thing(sta, token), 401)
    assert count(sta, "Things") == 0


# ---------------------------------------------------------------------------------------------- the key set


def test_a_rotated_key_is_taken_once_the_jwks_is_fetched_again(database_url: str) -> None:
    old, new = rsa_signer("2024-old"), rsa_signer("2025-new")
    with jwks_endpoint(old) as endpoint, oidc_app(database_url, endpoint.url) as sta:
        assert post_thing(sta, old.sign(claims())).status_code == 201
        assert endpoint.fetches == 1
        endpoint.publish(new)
        token = new.sign(claims())
        # PyJWKClient fetches again for the unknown kid once its cooldown (10 s since the last fetch) is over
        wait_for(lambda: get_things(sta, token).status_code == 200, timeout=30, what="the rotated key taken")
        assert endpoint.fetches >= 2
        assert post_thing(sta, token).status_code == 201
        assert post_thing(sta, new.sign(claims())).status_code == 201
        assert_invalid_token(post_thing(sta, old.sign(claims())))  # the retired key is gone from the set


def test_a_failing_jwks_is_a_401_and_the_app_keeps_serving(database_url: str) -> None:
    signer = rsa_signer("idp-down")
    with jwks_endpoint() as endpoint, oidc_app(database_url, endpoint.url) as sta:
        endpoint.fail(500)
        assert_invalid_token(post_thing(sta, signer.sign(claims())), "cannot be fetched")
        assert endpoint.fetches == 1
        assert ANON.get(url(sta, "Things")).status_code == 200
        assert HTTP.post(url(sta, "Things"), json=THING).status_code == 201
        endpoint.fail(503, b"")
        assert_invalid_token(get_things(sta, signer.sign(claims())), "cannot be fetched")
        endpoint.publish(signer)  # back: a failed fetch starts no cooldown, the next token fetches again
        assert post_thing(sta, signer.sign(claims())).status_code == 201


@pytest.mark.parametrize("body", [b"<html>maintenance</html>", b"[]", b'{"keys": []}', b'{"keys": [{"kty": "XX"}]}'],
                         ids=["not JSON", "not an object", "no keys", "no usable key"])
def test_a_jwks_answering_garbage_is_a_401(database_url: str, body: bytes) -> None:
    signer = rsa_signer("idp-garbage")
    with jwks_endpoint() as endpoint, oidc_app(database_url, endpoint.url) as sta:
        endpoint.fail(200, body)
        assert_invalid_token(post_thing(sta, signer.sign(claims())))
        assert ANON.get(url(sta, "Things")).status_code == 200
        endpoint.publish(signer)
        assert post_thing(sta, signer.sign(claims())).status_code == 201


def test_a_stopped_jwks_is_a_401_and_the_app_keeps_serving(database_url: str) -> None:
    signer = rsa_signer("idp-gone")
    with jwks_endpoint(signer) as endpoint, oidc_app(database_url, endpoint.url) as sta:
        endpoint.stop()
        assert_invalid_token(post_thing(sta, signer.sign(claims())), "cannot be fetched")
        assert_invalid_token(get_things(sta, signer.sign(claims())), "cannot be fetched")
        assert ANON.get(url(sta, "Things")).status_code == 200
        assert HTTP.post(url(sta, "Things"), json=THING).status_code == 201


@pytest.mark.parametrize("kid", ["café€", "x\r\nSet-Cookie: a=b", "\x00\x7f"])
def test_a_kid_no_header_can_carry_is_a_401_with_a_clean_challenge(app: str, keys: Keys, kid: str) -> None:
    """The kid is the client's text: it may reach the JSON body, never the WWW-Authenticate header."""
    response = post_thing(app, keys.main.sign(claims(), kid=kid))
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.isascii() and challenge.isprintable() and "Set-Cookie" not in challenge
