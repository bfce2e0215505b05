"""POST /api/v1/auth/google with FastAPI's TestClient on a migrated SQLite database and a fake Google issuer (its
JWKS served over HTTP on 127.0.0.1): a valid ID token of an existing user gets a working access token; every
refusal is one 401; not configured is 404; a dead JWKS endpoint is 503. No token content reaches the logs."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from shared.db.models import Role, User
from shared.security import api_keys
from shared.security.users import create_user, set_user_active
from tests.fakes.google_issuer import CLIENT_ID, FakeGoogleIssuer
from tests.integration.api_fixtures import CHEAP, api_settings, database_with_users
from tests.peers import free_port

GOOGLE = "/api/v1/auth/google"


@pytest.fixture(scope="module")
def issuer():
    with FakeGoogleIssuer() as issuer:
        yield issuer


@pytest.fixture()
def database(tmp_path, monkeypatch):
    monkeypatch.setattr(api_keys, "default_hasher", lambda: CHEAP)
    url, engine, factory = database_with_users(tmp_path)
    with factory.begin() as session:
        create_user(session, username="Dr.Who@hospital.org", password="who-password-1", role=Role.ADMIN, hasher=CHEAP)
        create_user(session, username="gone@hospital.org", password="gone-password-1", hasher=CHEAP)
        set_user_active(session, username="gone@hospital.org", active=False)
    yield url, factory
    engine.dispose()


@pytest.fixture()
def client(database, issuer):
    app = create_app(api_settings(database[0], AXIOM_GOOGLE_CLIENT_ID=CLIENT_ID,
                                  AXIOM_GOOGLE_CERTS_URL=issuer.certs_url))
    with TestClient(app) as client:
        client.factory = database[1]
        yield client


def test_a_google_id_token_of_an_existing_user_gets_a_working_access_token(client, issuer, caplog):
    caplog.set_level(logging.DEBUG)
    id_token = issuer.token("dr.who@HOSPITAL.org")
    answer = client.post(GOOGLE, json={"id_token": id_token})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.json() == {"name": "Dr.Who@hospital.org", "role": "admin", "kind": "user"}
    with client.factory() as session:
        assert session.query(User).filter_by(username="Dr.Who@hospital.org").one().last_login_at is not None
    assert id_token not in caplog.text and id_token.split(".")[1] not in caplog.text


def test_every_refusal_is_the_same_401(client, issuer, caplog):
    caplog.set_level(logging.DEBUG)
    tokens = {
        "wrong aud": issuer.token("dr.who@hospital.org", aud="other.apps.googleusercontent.com"),
        "wrong iss": issuer.token("dr.who@hospital.org", iss="https://evil.example"),
        "expired": issuer.token("dr.who@hospital.org", issued=1_000_000, lifetime=3600),
        "unverified e-mail": issuer.token("dr.who@hospital.org", email_verified=False),
        "HS256": issuer.token("dr.who@hospital.org", key="k" * 40, algorithm="HS256"),
        "unknown kid": issuer.token("dr.who@hospital.org", kid="not-published"),
        "unknown user": issuer.token("nobody@hospital.org"),
        "disabled user": issuer.token("gone@hospital.org"),
        "garbage": "not.a.jwt",
    }
    details = set()
    for case, id_token in tokens.items():
        answer = client.post(GOOGLE, json={"id_token": id_token})
        assert answer.status_code == 401, case
        assert answer.headers["www-authenticate"] == "Bearer", case
        details.add(answer.json()["detail"])
        assert id_token not in caplog.text, case
    assert len(details) == 1 and "Google login refused" in details.pop()
    with client.factory() as session:
        assert session.query(User).filter_by(username="gone@hospital.org").one().last_login_at is None
        assert session.query(User).filter_by(username="nobody@hospital.org").first() is None  # no auto-provisioning


def test_a_missing_or_oversized_id_token_is_a_422_naming_the_field(client):
    for body in ({}, {"id_token": ""}, {"id_token": "x" * 9000}, {"token": "abc"}):
        answer = client.post(GOOGLE, json=body)
        assert answer.status_code == 422, body
        assert answer.json()["detail"][0]["loc"] == ["body", "id_token"], body


def test_not_configured_is_404(database, issuer):
    with TestClient(create_app(api_settings(database[0]))) as plain:
        answer = plain.post(GOOGLE, json={"id_token": issuer.token("dr.who@hospital.org")})
    assert answer.status_code == 404 and "AXIOM_GOOGLE_CLIENT_ID" in answer.json()["detail"]


def test_a_dead_jwks_endpoint_is_503(database, issuer):
    app = create_app(api_settings(database[0], AXIOM_GOOGLE_CLIENT_ID=CLIENT_ID,
                                  AXIOM_GOOGLE_CERTS_URL=f"http://127.0.0.1:{free_port()}/certs"))
    with TestClient(app) as client:
        answer = client.post(GOOGLE, json={"id_token": issuer.token("dr.who@hospital.org")})
    assert answer.status_code == 503 and "signing keys" in answer.json()["detail"]


def test_the_hosted_domain_setting_is_enforced(database, issuer):
    app = create_app(api_settings(database[0], AXIOM_GOOGLE_CLIENT_ID=CLIENT_ID,
                                  AXIOM_GOOGLE_CERTS_URL=issuer.certs_url, AXIOM_GOOGLE_HOSTED_DOMAIN="hospital.org"))
    with TestClient(app) as client:
        assert client.post(GOOGLE, json={"id_token": issuer.token("dr.who@hospital.org")}).status_code == 401
        inside = client.post(GOOGLE, json={"id_token": issuer.token("dr.who@hospital.org", hd="hospital.org")})
        assert inside.status_code == 200, inside.text
