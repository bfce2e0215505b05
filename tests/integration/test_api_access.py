"""Access control over the WHOLE main API, walked from its OpenAPI schema: every operation is in ACCESS with the role
it needs, so a new route cannot be added without saying who may call it. Without credentials (or with a refused
one) every operation but the public ones is 401 with `WWW-Authenticate: Bearer`; a `user` token on an admin
operation is 403; the right role gets past authorisation (any answer but 401/403)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from shared.security import api_keys
from tests.integration.api_fixtures import CHEAP, PASSWORDS, api_settings, bearer, database_with_users

PUBLIC, USER, ADMIN = "public", "user", "admin"
ACCESS = {
    ("GET", "/health"): PUBLIC,
    ("POST", "/api/v1/auth/token"): PUBLIC,
    ("POST", "/api/v1/auth/google"): PUBLIC,
    ("GET", "/api/v1/auth/me"): USER,
    ("GET", "/api/v1/config/destinations"): USER,
    ("POST", "/api/v1/config/destinations"): ADMIN,
    ("GET", "/api/v1/config/destinations/{id}"): USER,
    ("PUT", "/api/v1/config/destinations/{id}"): ADMIN,
    ("DELETE", "/api/v1/config/destinations/{id}"): ADMIN,
    ("GET", "/api/v1/config/sources"): USER,
    ("POST", "/api/v1/config/sources"): ADMIN,
    ("GET", "/api/v1/config/dimse-qr-sources"): USER,
    ("GET", "/api/v1/config/dicomweb-sources"): USER,
    ("GET", "/api/v1/config/sources/{id}"): USER,
    ("PUT", "/api/v1/config/sources/{id}"): ADMIN,
    ("DELETE", "/api/v1/config/sources/{id}"): ADMIN,
    ("GET", "/api/v1/config/spanner"): USER,
    ("POST", "/api/v1/config/spanner"): ADMIN,
    ("GET", "/api/v1/config/spanner/{id}"): USER,
    ("PUT", "/api/v1/config/spanner/{id}"): ADMIN,
    ("DELETE", "/api/v1/config/spanner/{id}"): ADMIN,
    ("GET", "/api/v1/config/spanner/{id}/sources"): USER,
    ("POST", "/api/v1/config/spanner/{id}/sources"): ADMIN,
    ("DELETE", "/api/v1/config/spanner/{id}/sources/{source_id}"): ADMIN,
    ("POST", "/api/v1/config/spanner/{id}/test"): ADMIN,
    ("GET", "/api/v1/spanner/qido/studies"): USER,
    ("GET", "/api/v1/spanner/qido/series"): USER,
    ("GET", "/api/v1/spanner/qido/instances"): USER,
    ("GET", "/api/v1/spanner/qido/studies/{study}/series"): USER,
    ("GET", "/api/v1/spanner/qido/studies/{study}/instances"): USER,
    ("GET", "/api/v1/spanner/qido/studies/{study}/series/{series}/instances"): USER,
    ("GET", "/api/v1/spanner/wado/studies/{study}"): USER,
    ("GET", "/api/v1/spanner/wado/studies/{study}/series/{series}"): USER,
    ("GET", "/api/v1/spanner/wado/studies/{study}/series/{series}/instances/{sop}"): USER,
    ("GET", "/api/v1/spanner/wado/studies/{study}/metadata"): USER,
    ("GET", "/api/v1/spanner/wado/studies/{study}/series/{series}/metadata"): USER,
    ("GET", "/api/v1/spanner/wado/studies/{study}/series/{series}/instances/{sop}/metadata"): USER,
    ("GET", "/api/v1/spanner/services/logs"): USER,
    ("GET", "/api/v1/spanner/services/status"): USER,
    ("POST", "/api/v1/spanner/services/start"): ADMIN,
    ("POST", "/api/v1/spanner/services/stop"): ADMIN,
    ("POST", "/api/v1/spanner/services/restart/{service_id}"): ADMIN,
    ("POST", "/api/v1/spanner/services/cmove"): ADMIN,
    ("GET", "/api/v1/spanner/services/cmove"): ADMIN,
    ("GET", "/api/v1/spanner/services/cmove/{job_id}"): ADMIN,
    ("DELETE", "/api/v1/spanner/services/cmove/{job_id}"): ADMIN,
}
PATH_VALUES = {"{id}": "1", "{source_id}": "1", "{study}": "1.2.3", "{series}": "1.2.3.4", "{sop}": "1.2.3.4.5",
               "{job_id}": "0" * 32, "{service_id}": "listener:nobody"}


def concrete(path: str) -> str:
    for placeholder, value in PATH_VALUES.items():
        path = path.replace(placeholder, value)
    return path


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(api_keys, "default_hasher", lambda: CHEAP)
        url, engine, _factory = database_with_users(tmp_path_factory.mktemp("access"))
        with TestClient(create_app(api_settings(url))) as client:
            client.admin = bearer(client, "root", PASSWORDS["root"])
            client.user = bearer(client, "alice", PASSWORDS["alice"])
            yield client
        engine.dispose()


def operations(client) -> set[tuple[str, str]]:
    schema = client.get("/api/v1/openapi.json", headers=client.user).json()
    return {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}


def call(client, method: str, path: str, headers: dict[str, str] | None = None):
    return client.request(method, concrete(path), headers=headers or {}, json={} if method in ("POST", "PUT") else None)


def test_every_operation_of_the_schema_has_a_declared_role(client):
    assert operations(client) == set(ACCESS), "a route was added or removed: declare who may call it in ACCESS"


@pytest.mark.parametrize("operation", sorted(op for op, role in ACCESS.items() if role != PUBLIC))
def test_without_credentials_is_401_and_a_refused_token_too(client, operation):
    method, path = operation
    answer = call(client, method, path)
    assert answer.status_code == 401, (operation, answer.text)
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    forged = call(client, method, path, {"Authorization": "Bearer not-a-token"})
    assert forged.status_code == 401, (operation, forged.text)


@pytest.mark.parametrize("operation", sorted(op for op, role in ACCESS.items() if role == ADMIN))
def test_a_user_on_an_admin_operation_is_403_and_an_admin_passes(client, operation):
    method, path = operation
    answer = call(client, method, path, client.user)
    assert answer.status_code == 403, (operation, answer.text)
    assert call(client, method, path, client.admin).status_code not in (401, 403), operation


@pytest.mark.parametrize("operation", sorted(op for op, role in ACCESS.items() if role == USER))
def test_a_user_passes_authorisation_on_the_open_operations(client, operation):
    method, path = operation
    assert call(client, method, path, client.user).status_code not in (401, 403), operation
