"""The coordinator's HTTP API (services.spanner_coordinator) over real PostgreSQL, Redis and RabbitMQ (/health).

The app is built by create_app on the test's runtime (tests.integration.distributed_fixtures): what it publishes
goes to the in-process broker, and the test runs the steps (`harness.drain()`) as workers would.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from services.spanner_coordinator.app import create_app
from shared.config import DatabaseSettings, DistributedSettings, Settings
from shared.db.models import Role
from shared.distributed.runtime import build_runtime
from shared.messaging.celery_app import create_celery_app
from shared.security.api_keys import create_api_key, revoke_api_key
from shared.security.principal import Principal, PrincipalKind
from shared.security.tokens import issue_token
from shared.security.users import create_user
from tests.fakes.ports import Script, study
from tests.integration.distributed_fixtures import RABBITMQ_URL, REDIS_URL
from tests.peers import free_port

pytestmark = pytest.mark.integration
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
SECRET = "s" * 40


def settings_for(harness) -> Settings:
    url = harness.rt.session_factory.kw["bind"].url.render_as_string(hide_password=False)
    return Settings(db=DatabaseSettings(DATABASE_URL=url),
                    distributed=DistributedSettings(REDIS_URL=REDIS_URL, RABBITMQ_URL=RABBITMQ_URL,
                                                    AXIOM_REDIS_PREFIX=harness.rt.store._prefix),
                    coordinator={"SECRET_KEY": SECRET})


def new_key(harness, name: str, role: Role = Role.USER) -> str:
    with harness.rt.session_factory.begin() as session:
        return create_api_key(session, name=name, role=role, hasher=CHEAP)[1]


@pytest.fixture()
def api(harness):
    """(client, harness, admin key, user key) on a coordinator app with a config 'main' of two archives."""
    settings = settings_for(harness)
    app = create_app(settings, runtime=harness.rt, celery_app=create_celery_app(settings))
    harness.add_config("main", {"A": Script(matches=[study("1.2.1"), study("1.2.2")]),
                                "B": Script(matches=[study("1.2.2"), study("1.2.3")])})
    admin, user = new_key(harness, "admin-key", Role.ADMIN), new_key(harness, "user-key")
    with TestClient(app) as client:
        yield client, harness, admin, user


def submit(client, key: str, body=None, **params):
    params = {"spanner_config": "main", "query_level": "STUDY", **params}
    return client.post("/spanning-query", params=params, headers={"X-API-Key": key},
                       json={"PatientID": "*", "StudyInstanceUID": ""} if body is None else body)


def test_health_needs_no_key_and_names_a_dependency_that_is_down(api):
    client, harness, _, _ = api
    answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "healthy", "service": "spanner-coordinator",
                             "checks": {"db": "ok", "broker": "ok", "redis": "ok"}}
    working = harness.rt.store.redis
    harness.rt.store.redis = redis.Redis(port=free_port(), socket_connect_timeout=0.5)  # nothing listens there
    try:
        down = client.get("/health")
    finally:
        harness.rt.store.redis = working
    assert down.status_code == 503
    assert down.json()["status"] == "unhealthy" and down.json()["checks"]["redis"] == "unavailable"
    assert down.json()["checks"]["db"] == "ok"


def test_every_other_route_needs_a_valid_unrevoked_key(api):
    client, harness, admin, _ = api
    assert client.post("/spanning-query?spanner_config=main", json={}).status_code == 401
    assert client.get("/spanning-query/" + "0" * 32).status_code == 401
    assert client.delete("/spanning-query/" + "0" * 32).status_code == 401
    for garbage in ("nope", "axk_0123456789_" + "x" * 43, "x" * 5000):
        refused = client.get("/spanning-query/" + "0" * 32, headers={"X-API-Key": garbage})
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    revoked = new_key(harness, "old-key")
    with harness.rt.session_factory.begin() as session:
        assert revoke_api_key(session, name="old-key")
    assert submit(client, revoked).status_code == 401
    assert submit(client, admin).status_code == 202
    bearer = client.post("/spanning-query?spanner_config=main", json={},
                         headers={"Authorization": f"Bearer {admin}"})
    assert bearer.status_code == 202


def test_a_users_access_token_from_the_api_works_here_too(api):
    """One verifier for both services: a token the API issued (same SECRET_KEY, same users table) is accepted."""
    client, harness, _, _ = api
    with harness.rt.session_factory.begin() as session:
        create_user(session, username="alice", password="alice-password", hasher=CHEAP)
    token = issue_token(Principal(name="alice", role=Role.USER, kind=PrincipalKind.USER), SECRET, 60)
    headers = {"Authorization": f"Bearer {token}"}
    accepted = client.post("/spanning-query?spanner_config=main", json={}, headers=headers)
    assert accepted.status_code == 202
    view = client.get(accepted.headers["Location"], headers=headers).json()
    assert view["requested_by"] == "alice"
    forged = issue_token(Principal(name="alice", role=Role.ADMIN, kind=PrincipalKind.USER), "f" * 40, 60)
    assert client.get(accepted.headers["Location"], headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_only_health_is_open_and_the_openapi_schema_needs_a_key(api):
    client, _, admin, _ = api
    for path in ("/docs", "/redoc"):
        assert client.get(path).status_code == 404
    assert client.get("/openapi.json").status_code == 401
    schema = client.get("/openapi.json", headers={"X-API-Key": admin}).json()
    assert set(schema["paths"]) == {"/health", "/spanning-query", "/spanning-query/{query_id}"}


def test_a_query_is_accepted_then_polled_to_completion_with_paged_results(api):
    client, harness, admin, _ = api
    headers = {"X-API-Key": admin}
    accepted = submit(client, admin)
    assert accepted.status_code == 202
    body = accepted.json()
    query_id = body["query_id"]
    assert body["status"] == "accepted" and accepted.headers["Location"] == f"/spanning-query/{query_id}"
    queued = client.get(f"/spanning-query/{query_id}", headers=headers).json()
    assert queued["status"] == "accepted" and {s["status"] for s in queued["sources"]} == {"pending"}
    harness.drain()
    done = client.get(f"/spanning-query/{query_id}", headers=headers, params={"limit": 2}).json()
    assert done["status"] == "completed" and done["spanner_config"] == "main" and done["requested_by"] == "admin-key"
    assert (done["total_results"], done["raw_results"], done["sources_queried"], done["sources_responded"]) == (
        3, 4, 2, 2)
    first = [m["0020000D"]["Value"][0] for m in done["results"]]
    rest = client.get(f"/spanning-query/{query_id}", headers=headers, params={"offset": 2, "limit": 10}).json()
    assert len(first) == 2 and sorted(first + [m["0020000D"]["Value"][0] for m in rest["results"]]) == [
        "1.2.1", "1.2.2", "1.2.3"]


@pytest.mark.parametrize(("params", "body", "status", "needle"), [
    ({}, b"{not json", 422, "body: invalid JSON"),
    ({}, b"[1, 2]", 422, "body: the query keys must be a JSON object"),
    ({}, b'{"NoSuchKeyword": "1"}', 422, "NoSuchKeyword"),
    ({"query_level": "VOLUME"}, b"{}", 422, "query_level"),
    ({"query_type": "C-STORE"}, b"{}", 422, "query_type"),
    ({"query_type": "C-MOVE"}, b"{}", 422, "query_type: C-MOVE"),
    ({"spanner_config": "nope"}, b"{}", 404, "spanner_config: no spanner config 'nope'"),
    ({"spanner_config": None, "spanner_config_id": 999}, b"{}", 404, "spanner_config_id: no spanner config 999"),
    ({}, b'{"PatientID": "' + b"x" * 70_000 + b'"}', 413, "body: at most"),
])
def test_bad_requests_are_refused_naming_the_field(api, params, body, status, needle):
    client, _, admin, _ = api
    query = {"spanner_config": "main", "query_level": "STUDY", **params}
    answer = client.post("/spanning-query", params={k: v for k, v in query.items() if v is not None},
                         headers={"X-API-Key": admin, "Content-Type": "application/json"}, content=body)
    assert answer.status_code == status, answer.text
    assert needle in answer.json()["detail"]


def test_unknown_and_ill_formed_query_ids_are_404(api):
    client, _, admin, _ = api
    for query_id in ("0" * 32, "zzz", "..%2F..%2Fetc%2Fpasswd", "A" * 32):
        answer = client.get(f"/spanning-query/{query_id}", headers={"X-API-Key": admin})
        assert answer.status_code == 404, query_id
        assert client.delete(f"/spanning-query/{query_id}", headers={"X-API-Key": admin}).status_code == 404


def test_a_long_poll_returns_as_soon_as_the_query_is_finished_and_gives_up_after_wait(api):
    client, harness, admin, _ = api
    headers = {"X-API-Key": admin}
    query_id = submit(client, admin).json()["query_id"]
    started = time.monotonic()
    still = client.get(f"/spanning-query/{query_id}", headers=headers, params={"wait": 0.5}).json()
    assert still["status"] == "accepted" and 0.45 <= time.monotonic() - started < 3
    answers: list[dict] = []
    poller = threading.Thread(target=lambda: answers.append(client.get(
        f"/spanning-query/{query_id}", headers=headers, params={"wait": 20}).json()))
    poller.start()
    time.sleep(0.3)
    harness.drain()
    finished_at = time.monotonic()
    poller.join(timeout=10)
    assert answers and answers[0]["status"] == "completed"
    assert time.monotonic() - finished_at < 2.0  # woken by the finaliser's announcement, not the 20 s wait


def test_user_keys_see_and_cancel_only_their_own_queries_admins_all(api):
    client, harness, admin, user = api
    other = new_key(harness, "other-user")
    mine = submit(client, user).json()["query_id"]
    assert client.get(f"/spanning-query/{mine}", headers={"X-API-Key": other}).status_code == 404
    assert client.delete(f"/spanning-query/{mine}", headers={"X-API-Key": other}).status_code == 404
    assert client.get(f"/spanning-query/{mine}", headers={"X-API-Key": user}).json()["requested_by"] == "user-key"
    assert client.get(f"/spanning-query/{mine}", headers={"X-API-Key": admin}).status_code == 200
    cancelled = client.delete(f"/spanning-query/{mine}", headers={"X-API-Key": user})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client.get(f"/spanning-query/{mine}", headers={"X-API-Key": user}).json()["status"] == "cancelled"
    harness.drain()  # the plan message of a cancelled query starts nothing
    assert harness.port.calls == []
    done = submit(client, admin).json()["query_id"]
    harness.drain()
    refused = client.delete(f"/spanning-query/{done}", headers={"X-API-Key": admin})
    assert refused.status_code == 409 and "already finished (completed)" in refused.json()["detail"]


def test_two_coordinators_serve_the_same_queries(api):
    client, harness, admin, _ = api
    settings = settings_for(harness)
    second_runtime = build_runtime(settings, harness.broker.publish)
    second = create_app(settings, runtime=second_runtime, celery_app=create_celery_app(settings))
    with TestClient(second) as other:
        query_id = submit(client, admin).json()["query_id"]
        harness.drain()
        seen = other.get(f"/spanning-query/{query_id}", headers={"X-API-Key": admin}).json()
        assert seen["status"] == "completed" and seen["total_results"] == 3
        running = submit(other, admin).json()["query_id"]
        assert client.delete(f"/spanning-query/{running}", headers={"X-API-Key": admin}).json()["status"] == \
            "cancelled"
        assert other.get(f"/spanning-query/{running}", headers={"X-API-Key": admin}).json()["status"] == "cancelled"
