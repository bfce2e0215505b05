"""Service management through the API: /api/v1/spanner/services/status, /start, /stop, /restart/{service_id}.

A real in-process Listener (services.listener) and the API app share one SQLite database; the listener's heartbeat
loop (0.3 s) applies what an admin asks and a pynetdicom C-ECHO shows its port closing and opening again. A worker's
heartbeat (services.worker.status) runs over an eager Celery app and its counts show up in /status.
"""

from __future__ import annotations

import logging
import os
import time

import pytest
from celery import Celery
from fastapi.testclient import TestClient
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from services.api.app import create_app
from services.listener.app import Listener
from services.worker.status import TaskCounters, worker_heartbeat
from shared.config import Settings
from shared.db.models import ServiceKind
from shared.provisioning.apply import apply_config_yaml
from shared.security import api_keys
from shared.service_registry import ServiceHeartbeat, process_identity
from tests.integration.api_fixtures import CHEAP, PASSWORDS, api_settings, bearer, database_with_users
from tests.peers import free_port

pytestmark = pytest.mark.integration
SERVICES = "/api/v1/spanner/services"
INTERVAL = 0.3
LISTENER_ID = "listener:test-node"
CONFIG = """
sources:
  - {{name: A, kind: dimse, ae_title: A, host: 127.0.0.1, port: {port}}}
spanner_configs:
  - {{name: main, scp_ae_title: SPAN, sources: [{{source: A}}]}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(api_keys, "default_hasher", lambda: CHEAP)
    url, engine, factory = database_with_users(tmp_path_factory.mktemp("services"))
    settings = Settings(AXIOM_INSTANCE_ID="test-node")
    settings.db.database_url = url
    settings.scp.host, settings.scp.port = "127.0.0.1", free_port()  # fixed: a restart binds the same port
    with factory.begin() as session:
        apply_config_yaml(session, CONFIG.format(port=free_port()), scp=settings.scp)
    listener = Listener(settings, session_factory=factory).start()
    heartbeat = listener.heartbeat(interval=INTERVAL).start()
    client = TestClient(create_app(api_settings(url), session_factory=factory)).__enter__()
    client.admin = bearer(client, "root", PASSWORDS["root"])
    client.user = bearer(client, "alice", PASSWORDS["alice"])
    client.port = settings.scp.port
    try:
        yield client
    finally:
        client.__exit__(None, None, None)
        heartbeat.stop()
        listener.stop()
        engine.dispose()
        monkeypatch.undo()


def echo(port: int) -> bool:
    """True when a C-ECHO to SPAN on `port` succeeds."""
    ae = AE(ae_title="WS1")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 3
    assoc = ae.associate("127.0.0.1", port, ae_title="SPAN")
    try:
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()  # empty when the association is aborted meanwhile (the listener stopping)
        return "Status" in status and status.Status == 0x0000
    finally:
        if assoc.is_established:
            assoc.release()


def service(client, service_id: str) -> dict:
    answer = client.get(f"{SERVICES}/status", headers=client.user)
    assert answer.status_code == 200, answer.text
    return {row["service_id"]: row for row in answer.json()["services"]}[service_id]


def wait_for(predicate, timeout: float = 5.0):
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met within the time limit")


def test_status_lists_the_listener_healthy_with_its_port(stack):
    row = service(stack, LISTENER_ID)
    assert (row["kind"], row["desired_state"], row["actual_state"], row["health"]) == (
        "listener", "running", "running", "healthy")
    assert row["details"]["port"] == stack.port and "SPAN" in row["details"]["served_ae_titles"]
    assert row["seconds_since_heartbeat"] < 3 * INTERVAL and row["heartbeat_seconds"] == INTERVAL
    assert echo(stack.port)


def test_status_lists_the_api_itself_healthy_and_stopped_after_shutdown(stack):
    """`api:<AXIOM_INSTANCE_ID>` registers at start (the stack's own API, and a second one started here with its
    storage AE), reports its port, open move jobs and storage AE, and is recorded `stopped` when it shuts down."""
    row = service(stack, "api:axiom-1")  # the API answering these requests
    assert (row["kind"], row["actual_state"], row["health"], row["pid"]) == ("api", "running", "healthy", os.getpid())
    settings = api_settings(None, AXIOM_API_PORT=8123, AXIOM_API_HOST="127.0.0.1", AXIOM_API_STORE_PORT=free_port())
    settings.instance_id, settings.heartbeat_seconds = "api-two", INTERVAL
    with TestClient(create_app(settings, session_factory=stack.app.state.session_factory)):
        row = service(stack, "api:api-two")
        assert (row["kind"], row["instance_id"], row["health"]) == ("api", "api-two", "healthy")
        assert row["heartbeat_seconds"] == INTERVAL and row["details"]["port"] == 8123
        details = wait_for(lambda: (d := service(stack, "api:api-two")["details"])["open_move_jobs"] == 0 and d)
        assert (details["store_ae_title"], details["store_port"]) == ("AXIOM_API", settings.api.store_port)
    row = service(stack, "api:api-two")  # its last heartbeat (desired stays running: health `reconciling`, then stale)
    assert (row["actual_state"], row["desired_state"]) == ("stopped", "running")
    answer = stack.post(f"{SERVICES}/stop", json={"service_id": "api:api-two"}, headers=stack.admin)
    assert answer.status_code == 409  # reports only: its process supervisor manages it


def test_stop_closes_the_port_start_opens_it_and_restart_brings_the_ae_back(stack):
    stopped = stack.post(f"{SERVICES}/stop", json={"service_id": LISTENER_ID}, headers=stack.admin)
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["desired_state"] == "stopped" and "asynchronous" in stopped.json()["reconciliation"]
    wait_for(lambda: not echo(stack.port))
    row = wait_for(lambda: (r := service(stack, LISTENER_ID))["actual_state"] == "stopped" and r)
    assert row["health"] == "stopped" and row["details"]["port"] is None and row["started_at"] is None

    started = stack.post(f"{SERVICES}/start", json={"service_id": LISTENER_ID}, headers=stack.admin)
    assert started.status_code == 200 and started.json()["desired_state"] == "running"
    wait_for(lambda: echo(stack.port))
    before = wait_for(lambda: service(stack, LISTENER_ID)["started_at"])

    restarted = stack.post(f"{SERVICES}/restart/{LISTENER_ID}", headers=stack.admin)
    assert restarted.status_code == 200, restarted.text
    generation = restarted.json()["restart_generation"]
    row = wait_for(lambda: (r := service(stack, LISTENER_ID))["applied_generation"] == generation and r)
    assert row["started_at"] != before and row["health"] == "healthy"
    assert echo(stack.port)


def test_reads_need_credentials_and_writes_need_the_admin_role(stack):
    writes = [("post", f"{SERVICES}/start", {"service_id": LISTENER_ID}),
              ("post", f"{SERVICES}/stop", {"service_id": LISTENER_ID}),
              ("post", f"{SERVICES}/restart/{LISTENER_ID}", None)]
    assert stack.get(f"{SERVICES}/status").status_code == 401
    assert stack.get(f"{SERVICES}/status", headers={"Authorization": "Bearer nope"}).status_code == 401
    for method, path, body in writes:
        assert stack.request(method, path, json=body).status_code == 401, path
        assert stack.request(method, path, json=body, headers=stack.user).status_code == 403, path
    assert service(stack, LISTENER_ID)["desired_state"] == "running"  # nothing was changed


def test_unknown_ids_are_404_non_listeners_409_and_bad_bodies_422(stack):
    state = stack.app.state
    coordinator = ServiceHeartbeat(state.session_factory, process_identity(
        ServiceKind.COORDINATOR, "co-1", instance_id="co-1"), interval=60).start()
    try:
        for path, body in ((f"{SERVICES}/stop", {"service_id": "listener:nope"}),
                           (f"{SERVICES}/restart/listener:nope", None)):
            answer = stack.post(path, json=body, headers=stack.admin)
            assert answer.status_code == 404 and "listener:nope" in answer.json()["detail"], answer.text
        answer = stack.post(f"{SERVICES}/stop", json={"service_id": "coordinator:co-1"}, headers=stack.admin)
        assert answer.status_code == 409 and "only listeners" in answer.json()["detail"]
        assert stack.post(f"{SERVICES}/restart/coordinator:co-1", headers=stack.admin).status_code == 409
        assert service(stack, "coordinator:co-1")["desired_state"] == "running"
        bodies = ({}, {"service_id": ""}, {"service_id": "listener:a b"}, {"service_id": LISTENER_ID, "extra": 1})
        for body in bodies:
            answer = stack.post(f"{SERVICES}/start", json=body, headers=stack.admin)
            assert answer.status_code == 422 and ("service_id" in answer.text or "extra" in answer.text), answer.text
    finally:
        coordinator.stop()


def test_a_worker_heartbeat_reports_its_queues_and_task_counts(stack, caplog):
    caplog.set_level(logging.INFO, logger="services.worker.status")
    app = Celery("worker-test", set_as_current=False)
    app.conf.task_always_eager = True

    @app.task(name="test.ok")
    def ok() -> int:
        return 1

    @app.task(name="test.boom")
    def boom() -> None:
        raise RuntimeError("boom")

    counters = TaskCounters(app).connect()
    try:
        ok.apply(), ok.apply(), boom.apply()
        settings = Settings(WORKER_TYPE="dimse")
        heartbeat = worker_heartbeat(settings, stack.app.state.session_factory, hostname="dimse-1@test",
                                     queues=("dimse_tasks",), counters=counters, interval=INTERVAL).start()
        heartbeat.stop()
    finally:
        counters.disconnect()
    row = service(stack, "worker:dimse-1@test")
    assert row["kind"] == "worker" and row["details"]["queues"] == ["dimse_tasks"]
    assert {k: row["details"][k] for k in ("in_flight", "processed", "failed")} == {
        "in_flight": 0, "processed": 3, "failed": 1}
    events = [r for r in caplog.records if getattr(r, "event", None) == "dimse_worker_status"]
    assert events and events[-1].processed == 3 and events[-1].failed == 1
