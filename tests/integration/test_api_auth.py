"""The main API's skeleton (services.api) with FastAPI's TestClient on a migrated SQLite database: the token flow,
/auth/me for users and API keys, 401 vs 403, /health, the schema and docs behind authentication, CORS, and the
SECRET_KEY rule. No real peers needed; argon2 runs with cheap parameters (keys and passwords share the hasher)."""

from __future__ import annotations

import logging

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select

from services.api.app import create_app
from services.api.deps import AdminDep, PrincipalDep
from shared.config import ApiSettings, DatabaseSettings, Settings
from shared.db.models import Role, User
from shared.db.session import make_sessionmaker
from shared.security import api_keys
from shared.security.api_keys import create_api_key
from shared.security.authenticator import VERIFIED_TTL, Authenticator
from shared.security.users import create_user, set_user_active
from tests.fakes.clock import FakeClock
from tests.integration.api_fixtures import CHEAP, SECRET, api_settings, migrated_sqlite

ORIGIN = "https://viewer.example.org"
PASSWORDS = {"root": "root-password-1", "alice": "alice-password-1", "eve": "eve-password-1"}


@pytest.fixture()
def database(tmp_path, monkeypatch):
    monkeypatch.setattr(api_keys, "default_hasher", lambda: CHEAP)
    url, engine, factory = migrated_sqlite(tmp_path)
    with factory.begin() as session:
        create_user(session, username="root", password=PASSWORDS["root"], role=Role.ADMIN, hasher=CHEAP)
        create_user(session, username="alice", password=PASSWORDS["alice"], hasher=CHEAP)
        create_user(session, username="eve", password=PASSWORDS["eve"], hasher=CHEAP)
        set_user_active(session, username="eve", active=False)
    yield url, factory
    engine.dispose()


def admin_only_router() -> APIRouter:
    """A test-only router (not a product route) exercising the dependencies later route modules will use."""
    router = APIRouter(prefix="/test-only")

    @router.get("/admin")
    def admin_action(principal: AdminDep) -> dict:
        return {"admin": principal.name}

    @router.get("/anyone")
    def anyone_action(principal: PrincipalDep) -> dict:
        return {"caller": principal.name}

    return router


@pytest.fixture()
def client(database):
    url, factory = database
    app = create_app(api_settings(url, AXIOM_CORS_ORIGINS=f"{ORIGIN}, https://other.example.org/"))
    app.include_router(admin_only_router())
    with TestClient(app) as client:
        client.factory = factory
        yield client


def token(client, username: str, password: str | None = None):
    return client.post("/api/v1/auth/token",
                       data={"username": username, "password": password or PASSWORDS[username]})


def bearer(client, username: str) -> dict[str, str]:
    answer = token(client, username)
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def test_a_user_gets_a_token_and_sees_itself(client, caplog):
    caplog.set_level(logging.DEBUG)
    answer = token(client, "alice")
    assert answer.status_code == 200
    body = answer.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600 and body["access_token"].count(".") == 2
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200 and me.json() == {"name": "alice", "role": "user", "kind": "user"}
    with client.factory() as session:
        assert session.scalar(select(User.last_login_at).where(User.username == "alice")) is not None
    assert PASSWORDS["alice"] not in caplog.text and body["access_token"] not in caplog.text


@pytest.mark.parametrize("username,password", [
    ("alice", "wrong-password"), ("nobody", "whatever-password"), ("eve", PASSWORDS["eve"]), ("bad name", "x" * 9),
])
def test_bad_credentials_are_401_with_a_bearer_challenge(client, caplog, username, password):
    caplog.set_level(logging.DEBUG)
    refused = token(client, username, password)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert password not in caplog.text
    assert token(client, "alice").status_code == 200


def test_a_token_request_without_the_form_fields_is_422(client):
    assert client.post("/api/v1/auth/token", data={"username": "alice"}).status_code == 422


def test_api_keys_authenticate_as_x_api_key_or_bearer(client):
    with client.factory.begin() as session:
        key = create_api_key(session, name="ohif-viewer", role=Role.USER, hasher=CHEAP)[1]
    expected = {"name": "ohif-viewer", "role": "user", "kind": "api_key"}
    assert client.get("/api/v1/auth/me", headers={"X-API-Key": key}).json() == expected
    assert client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {key}"}).json() == expected


def test_no_or_bad_credentials_are_401_and_a_non_admin_is_403(client):
    for headers in ({}, {"Authorization": "Bearer not.a.token"}, {"X-API-Key": "nope"},
                    {"Authorization": "Basic cm9vdDpyb290"}):
        for path in ("/api/v1/auth/me", "/test-only/admin", "/test-only/anyone"):
            refused = client.get(path, headers=headers)
            assert refused.status_code == 401, (path, headers)
            assert refused.headers["WWW-Authenticate"] == "Bearer"
    user, admin = bearer(client, "alice"), bearer(client, "root")
    forbidden = client.get("/test-only/admin", headers=user)
    assert forbidden.status_code == 403 and "WWW-Authenticate" not in forbidden.headers
    assert client.get("/test-only/anyone", headers=user).json() == {"caller": "alice"}
    assert client.get("/test-only/admin", headers=admin).json() == {"admin": "root"}


def test_a_disabled_users_token_stops_working_once_the_authenticators_memory_expires(client):
    clock = FakeClock()
    client.app.state.authenticator = Authenticator(client.factory, SECRET, clock=clock)
    headers = bearer(client, "alice")
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 200
    with client.factory.begin() as session:
        set_user_active(session, username="alice", active=False)
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 200  # remembered as active
    clock.now += VERIFIED_TTL + 0.1
    refused = client.get("/api/v1/auth/me", headers=headers)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert token(client, "alice").status_code == 401


def test_health_is_open_and_names_the_failed_check(client, tmp_path):
    answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "healthy", "service": "api", "checks": {"db": "ok"}}
    working = client.app.state.session_factory
    try:
        client.app.state.session_factory = make_sessionmaker(create_engine(f"sqlite:///{tmp_path}"))  # a directory
        down = client.get("/health")
        assert down.status_code == 503 and down.json()["checks"] == {"db": "unavailable"}
        assert str(tmp_path) not in down.text
        client.app.state.session_factory = make_sessionmaker(create_engine(f"sqlite:///{tmp_path / 'empty.db'}"))
        empty = client.get("/health")
        assert empty.status_code == 503 and empty.json() == {"status": "unhealthy", "service": "api",
                                                             "checks": {"db": "not migrated"}}
    finally:
        client.app.state.session_factory = working


def test_the_schema_and_docs_need_authentication(client):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 404
    for path in ("/api/v1/openapi.json", "/api/v1/docs"):
        assert client.get(path).status_code == 401
    headers = bearer(client, "alice")
    schema = client.get("/api/v1/openapi.json", headers=headers).json()
    assert {"/health", "/api/v1/auth/token", "/api/v1/auth/me"} <= set(schema["paths"])
    assert set(schema["components"]["securitySchemes"]) == {"OAuth2PasswordBearer", "APIKeyHeader"}
    docs = client.get("/api/v1/docs", headers=headers)
    assert docs.status_code == 200 and "swagger-ui" in docs.text and '"/api/v1/auth/me"' in docs.text


def test_cors_answers_configured_origins_only(client, database):
    preflight = client.options("/api/v1/auth/me", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ORIGIN
    assert client.get("/health", headers={"Origin": "https://other.example.org"}).headers[
        "access-control-allow-origin"] == "https://other.example.org"
    assert "access-control-allow-origin" not in client.get("/health", headers={"Origin": "https://evil.example"}).headers
    with TestClient(create_app(api_settings(database[0]))) as plain:  # no AXIOM_CORS_ORIGINS: no CORS at all
        assert "access-control-allow-origin" not in plain.get("/health", headers={"Origin": ORIGIN}).headers


def test_the_token_ttl_comes_from_the_settings(database):
    app = create_app(api_settings(database[0], AXIOM_TOKEN_TTL_SECONDS=120))
    with TestClient(app) as client:
        assert token(client, "alice").json()["expires_in"] == 120


def test_secret_key_rules(database, tmp_path, caplog):
    url = database[0]
    for secret in (None, "", "too-short"):
        with pytest.raises(ValueError, match="SECRET_KEY"):
            create_app(Settings(db=DatabaseSettings(DATABASE_URL=url), api=ApiSettings(SECRET_KEY=secret)))
    embedded = Settings(db=DatabaseSettings(DATABASE_URL=None, AXIOM_DATA_DIR=tmp_path / "embedded"),
                        api=ApiSettings(SECRET_KEY=None))
    with pytest.raises(ValueError, match="SECRET_KEY"):
        create_app(embedded.model_copy(update={"api": ApiSettings(SECRET_KEY="too-short")}))
    caplog.set_level(logging.WARNING)
    first, second = create_app(embedded), create_app(embedded)
    assert "secret_key_generated" in caplog.text
    assert first.state.secret_key != second.state.secret_key and len(first.state.secret_key) >= 32
