"""service_instances repo (register/heartbeat upserts, desired state, restarts, health) and the heartbeat +
reconcile loop (shared.service_registry) on SQLite with a fake target and short intervals."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from shared.db.base import utc_now
from shared.db.models import ActualState, DesiredState, ServiceKind
from shared.db.repo.service_instances import (
    ServiceIdentity, describe_service, get_service, list_services, record_heartbeat, register_service,
    request_restart, service_health, set_desired_state,
)
from shared.service_registry import ServiceHeartbeat, process_identity

INTERVAL = 0.2


def identity(name: str, kind: ServiceKind = ServiceKind.LISTENER) -> ServiceIdentity:
    return ServiceIdentity(service_id=f"{kind.value}:{name}", kind=kind, instance_id=name, host="h", pid=1)


def register(session, name: str, **kwargs):
    values = {"heartbeat_seconds": 1.0, "actual_state": ActualState.RUNNING, **kwargs}
    return register_service(session, identity=identity(name), **values)


def test_register_is_an_upsert_that_keeps_the_desired_state_and_applies_pending_restarts(session):
    first = register(session, "a", details={"port": 1})
    assert (first.desired_state, first.restart_generation, first.applied_generation) == (DesiredState.RUNNING, 0, 0)
    set_desired_state(session, service_id="listener:a", state=DesiredState.STOPPED)
    request_restart(session, service_id="listener:a")
    again = register_service(session, identity=ServiceIdentity("listener:a", ServiceKind.LISTENER, "a", "h2", 7),
                             heartbeat_seconds=2.0, actual_state=ActualState.STOPPED, details={"port": None})
    assert again.id == first.id and (again.host, again.pid, again.heartbeat_seconds) == ("h2", 7, 2.0)
    assert again.desired_state is DesiredState.RUNNING  # the restart asked for running
    assert (again.restart_generation, again.applied_generation) == (1, 1)
    assert again.started_at is None and again.details == {"port": None}
    assert [row.service_id for row in list_services(session)] == ["listener:a"]


def test_restarts_count_each_request_and_unknown_ids_answer_none(session):
    register(session, "b")
    set_desired_state(session, service_id="listener:b", state=DesiredState.STOPPED)
    assert request_restart(session, service_id="listener:b").restart_generation == 1
    row = request_restart(session, service_id="listener:b")
    assert (row.restart_generation, row.desired_state) == (2, DesiredState.RUNNING)
    assert request_restart(session, service_id="listener:nope") is None
    assert set_desired_state(session, service_id="listener:nope", state=DesiredState.RUNNING) is None
    assert record_heartbeat(session, service_id="listener:nope", actual_state=ActualState.RUNNING,
                            applied_generation=0, started_at=None) is None


def test_health_follows_heartbeat_age_and_states(session):
    row = register(session, "c")
    now = row.last_heartbeat_at
    assert service_health(row, now=now + timedelta(seconds=2.9)) == "healthy"
    assert service_health(row, now=now + timedelta(seconds=3.1)) == "stale"  # 3 x its 1 s interval
    row.desired_state = DesiredState.STOPPED
    assert service_health(row, now=now) == "reconciling"
    row.actual_state = ActualState.STOPPED
    assert service_health(row, now=now) == "stopped"
    row.desired_state, row.actual_state = DesiredState.RUNNING, ActualState.FAILED
    assert service_health(row, now=now) == "failed"
    row.actual_state, row.restart_generation = ActualState.RUNNING, row.applied_generation + 1
    assert service_health(row, now=now) == "reconciling"
    row.last_heartbeat_at = None
    view = describe_service(row, now=now)
    assert (view["health"], view["seconds_since_heartbeat"], view["kind"]) == ("stale", None, "listener")


class FakeServer:
    """A Reconcilable that records what it was asked; `refuse` makes start fail like a taken port."""

    def __init__(self) -> None:
        self.serving, self.calls, self.refuse = True, [], False

    def start_serving(self) -> None:
        self.calls.append("start")
        if self.refuse:
            raise OSError("address already in use")
        self.serving = True

    def stop_serving(self) -> None:
        self.calls.append("stop")
        self.serving = False


def wait_for(predicate, timeout: float = 3.0):
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def row_of(factory, service_id: str):
    with factory() as session:
        return get_service(session, service_id=service_id)


def test_the_loop_stops_starts_restarts_and_reports_a_failed_start(factory):
    target = FakeServer()
    loop = ServiceHeartbeat(factory, identity("loop"), interval=INTERVAL, details=lambda: {"n": len(target.calls)},
                            target=target).start()
    try:
        first = row_of(factory, "listener:loop")  # registered synchronously by start()
        assert (first.actual_state, first.details, first.heartbeat_seconds) == (ActualState.RUNNING, {"n": 0}, INTERVAL)
        with factory.begin() as session:
            set_desired_state(session, service_id="listener:loop", state=DesiredState.STOPPED)
        wait_for(lambda: row_of(factory, "listener:loop").actual_state is ActualState.STOPPED)
        assert target.calls == ["stop"] and row_of(factory, "listener:loop").started_at is None
        with factory.begin() as session:
            set_desired_state(session, service_id="listener:loop", state=DesiredState.RUNNING)
        started = wait_for(lambda: row_of(factory, "listener:loop").started_at)
        with factory.begin() as session:
            request_restart(session, service_id="listener:loop")
        wait_for(lambda: row_of(factory, "listener:loop").applied_generation == 1)
        restarted = row_of(factory, "listener:loop")
        assert target.calls == ["stop", "start", "stop", "start"] and restarted.started_at > started
        assert service_health(restarted) == "healthy"
        target.refuse = True
        with factory.begin() as session:
            request_restart(session, service_id="listener:loop")
        failed = wait_for(lambda: (r := row_of(factory, "listener:loop")).actual_state is ActualState.FAILED and r)
        assert failed.applied_generation == 1 and service_health(failed) == "failed"
        target.refuse = False  # the next beat tries again
        wait_for(lambda: row_of(factory, "listener:loop").applied_generation == 2)
        assert row_of(factory, "listener:loop").actual_state is ActualState.RUNNING
    finally:
        loop.stop()
    assert row_of(factory, "listener:loop").actual_state is ActualState.STOPPED  # the last heartbeat


def test_a_reporting_only_loop_re_registers_a_deleted_row_and_survives_database_errors(factory, caplog):
    beats = []
    loop = ServiceHeartbeat(factory, process_identity(ServiceKind.COORDINATOR, "co", instance_id="co"),
                            interval=INTERVAL, details=lambda: {"sweeps": 3}, on_heartbeat=beats.append).start()
    try:
        with factory.begin() as session:
            session.delete(get_service(session, service_id="coordinator:co"))
        wait_for(lambda: row_of(factory, "coordinator:co"))
        row = row_of(factory, "coordinator:co")
        assert row.kind is ServiceKind.COORDINATOR and row.details == {"sweeps": 3} and beats[0] == {"sweeps": 3}
        assert row.last_heartbeat_at > utc_now() - timedelta(seconds=2)
    finally:
        loop.stop()

    def broken():
        raise RuntimeError("database away")

    broken.begin = broken
    failing = ServiceHeartbeat(broken, identity("x"), interval=INTERVAL)
    failing.start()  # logs, never raises
    failing.stop()
    assert any(getattr(r, "event", None) == "service_heartbeat_failed" for r in caplog.records)


def test_a_non_positive_interval_is_refused():
    with pytest.raises(ValueError, match="interval"):
        ServiceHeartbeat(lambda: None, identity("y"), interval=0)
