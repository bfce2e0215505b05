"""The coordinator's HTTP app (services.spanner_coordinator.app) configured from the environment, in the cases
test_coordinator_http.py does not cover: settings read from environment variables (a short SECRET_KEY is
tests/unit/test_messaging.py's), a broker that is down (for
/health and for a submitted query), cancelling a query whose source hangs, the AXIOM_MAX_WAIT_SECONDS cap on long
polls, and a revoked key losing access once the authenticator's memory of it expires.

The app runs on the test's runtime (tests.integration.distributed_fixtures): what it publishes goes to the
in-process broker, and the test runs the steps (`harness.drain()`) as workers would. PostgreSQL and Redis are the
machine's real servers; RabbitMQ is only pinged by /health (a closed port here).
"""

from __future__ import annotations

import time

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from services.spanner_coordinator.app import create_app
from shared.config import Settings
from shared.db.models import Role
from shared.db.repo.query_logs import list_query_logs
from shared.messaging.celery_app import create_celery_app
from shared.security import api_keys
from shared.security.api_keys import create_api_key, revoke_api_key
from shared.security.authenticator import VERIFIED_TTL, Authenticator
from tests.fakes.clock import FakeClock
from tests.fakes.ports import Script, study
from tests.integration.distributed_fixtures import distributed_env
from tests.peers import free_port

pytestmark = pytest.mark.integration
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PROMPT = 3.0  # seconds a cancelled source task may take to return (its scripted hang lasts 30 s)


@pytest.fixture()
def env_settings(harness, monkeypatch) -> Settings:
    """Settings read from the environment of this test's database, Redis prefix and the local RabbitMQ."""
    database_url = harness.rt.session_factory.kw["bind"].url.render_as_string(hide_password=False)
    for name, value in distributed_env(database_url, harness.rt.store._prefix).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AXIOM_MAX_WAIT_SECONDS", "0.5")
    # Keys are hashed cheaply here; verifying must not re-hash them with the production cost (argon2 64 MiB).
    monkeypatch.setattr(api_keys, "default_hasher", lambda: CHEAP)
    return Settings()


def new_key(harness, name: str, role: Role = Role.USER) -> str:
    with harness.rt.session_factory.begin() as session:
        return create_api_key(session, name=name, role=role, hasher=CHEAP)[1]


@pytest.fixture()
def coordinator(harness, env_settings):
    """(client, harness, admin key) on create_app(settings from the environment, the harness's runtime)."""
    app = create_app(env_settings, runtime=harness.rt, celery_app=create_celery_app(env_settings))
    harness.add_config("main", {"QUICK": Script(matches=[study("1.2.1")]),
                                "HUNG": Script(hang=True, hang_seconds=30)})
    admin = new_key(harness, "admin-key", Role.ADMIN)
    with TestClient(app) as client:
        yield client, harness, admin


def submit(client, key: str, **params):
    return client.post("/spanning-query", params={"spanner_config": "main", **params},
                       headers={"X-API-Key": key}, json={"PatientID": "*"})


def test_the_environment_configures_the_app(env_settings, harness):
    assert env_settings.coordinator.secret_key.get_secret_value().startswith("test-secret-")
    assert env_settings.distributed.redis_prefix == harness.rt.store._prefix
    assert env_settings.coordinator.max_wait_seconds == 0.5


def test_health_is_503_naming_the_broker_when_rabbitmq_is_unreachable(harness, env_settings, monkeypatch):
    monkeypatch.setenv("RABBITMQ_URL", f"amqp://guest:guest@127.0.0.1:{free_port()}//")  # nothing listens there
    dead_broker = Settings()
    app = create_app(dead_broker, runtime=harness.rt, celery_app=create_celery_app(dead_broker))
    with TestClient(app) as client:
        answer = client.get("/health")
    assert answer.status_code == 503
    assert answer.json()["checks"] == {"db": "ok", "broker": "unavailable", "redis": "ok"}


def test_a_query_the_broker_cannot_take_is_503_and_its_log_is_closed(coordinator):
    client, harness, admin = coordinator
    harness.broker.down = ConnectionError("connection refused")
    refused = submit(client, admin)
    assert refused.status_code == 503
    assert refused.json()["detail"].startswith("the message broker is unavailable, query not queued")
    with harness.rt.session_factory() as session:
        (log,) = list_query_logs(session)
    assert (log.status.value, log.requester_user) == ("failed", "admin-key") and not log.is_open
    harness.broker.down = None
    shown = client.get(f"/spanning-query/{log.query_id}", headers={"X-API-Key": admin}).json()
    assert shown["status"] == "failed" and "not queued" in shown["error"]


def test_deleting_a_query_whose_source_hangs_stops_it_promptly_and_can_be_repeated(coordinator):
    client, harness, admin = coordinator
    bearer = {"Authorization": f"Bearer {admin}"}
    query_id = submit(client, admin).json()["query_id"]
    harness.drain(wait_sources=False)
    harness.wait_for(lambda: harness.port.calls_for("HUNG") and harness.rt.store.has_outcome(query_id, "QUICK"))
    running = client.get(f"/spanning-query/{query_id}", headers=bearer).json()
    assert running["status"] == "running" and {s["source"]: s["status"] for s in running["sources"]} == {
        "HUNG": "running", "QUICK": "ok"}

    started = time.monotonic()
    cancelled = client.delete(f"/spanning-query/{query_id}", headers=bearer)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert harness.join_sources(timeout=PROMPT) and time.monotonic() - started < PROMPT
    assert harness.port.cancel_observed("HUNG")
    harness.drain()
    final = client.get(f"/spanning-query/{query_id}", headers=bearer).json()
    assert (final["status"], final["error"]) == ("cancelled", "cancelled by the caller")
    assert {s["source"]: s["status"] for s in final["sources"]} == {"HUNG": "cancelled", "QUICK": "ok"}
    assert [m["0020000D"]["Value"] for m in final["results"]] == [["1.2.1"]]
    again = client.delete(f"/spanning-query/{query_id}", headers=bearer)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_a_long_poll_is_capped_by_the_configured_maximum_wait(coordinator):
    client, _harness, admin = coordinator
    query_id = submit(client, admin).json()["query_id"]  # never planned: nobody drains the broker
    started = time.monotonic()
    answer = client.get(f"/spanning-query/{query_id}", headers={"X-API-Key": admin}, params={"wait": 30})
    waited = time.monotonic() - started
    assert answer.status_code == 200 and answer.json()["status"] == "accepted"
    assert 0.45 <= waited < 5.0  # AXIOM_MAX_WAIT_SECONDS=0.5, not the 30 s asked for


def test_a_revoked_key_is_refused_once_the_authenticators_memory_of_it_expires(coordinator):
    client, harness, admin = coordinator
    clock = FakeClock()
    client.app.state.authenticator = Authenticator(harness.rt.session_factory, b"x" * 32, clock=clock)
    key = new_key(harness, "soon-revoked")
    query_id = submit(client, key).json()["query_id"]
    with harness.rt.session_factory.begin() as session:
        assert revoke_api_key(session, name="soon-revoked")
    path = f"/spanning-query/{query_id}"
    assert client.get(path, headers={"X-API-Key": key}).status_code == 200  # remembered as verified
    clock.now += VERIFIED_TTL + 0.1
    assert client.get(path, headers={"X-API-Key": key}).status_code == 401
    assert client.get(path, headers={"X-API-Key": admin}).status_code == 200
