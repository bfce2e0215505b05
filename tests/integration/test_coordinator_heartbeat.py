"""The coordinator registers `coordinator:<AXIOM_INSTANCE_ID>` while its app runs (lifespan) and heartbeats its
sweep counts; on shutdown it records `stopped`. Real PostgreSQL, Redis and RabbitMQ (tests.integration
distributed_fixtures: skipped without them, failed under AXIOM_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from services.spanner_coordinator.app import create_app
from shared.config import Settings
from shared.db.models import ActualState, ServiceKind
from shared.db.repo.service_instances import get_service, service_health
from shared.messaging.celery_app import create_celery_app
from tests.integration.distributed_fixtures import distributed_env

pytestmark = pytest.mark.integration


def test_the_coordinator_heartbeats_its_sweeps_and_reports_stopped_on_shutdown(harness, monkeypatch):
    database_url = harness.rt.session_factory.kw["bind"].url.render_as_string(hide_password=False)
    environment = {**distributed_env(database_url, harness.rt.store._prefix), "AXIOM_INSTANCE_ID": "co-test",
                   "AXIOM_HEARTBEAT_SECONDS": "0.3"}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    app = create_app(settings, runtime=harness.rt, celery_app=create_celery_app(settings))

    def row():
        with harness.rt.session_factory() as session:
            return get_service(session, service_id="coordinator:co-test")

    with TestClient(app):
        assert row().kind is ServiceKind.COORDINATOR  # registered before the app serves
        give_up = time.monotonic() + 5
        while (row().details or {}).get("sweeps", 0) < 1 and time.monotonic() < give_up:
            time.sleep(0.1)
        running = row()
        assert running.details["sweeps"] >= 1 and service_health(running) == "healthy"
    assert row().actual_state is ActualState.STOPPED
