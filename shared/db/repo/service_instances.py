"""Queries on `service_instances`: registration and heartbeats (written by the processes), desired state and
restarts (written by operators through the API), and the list with a computed health.

Like the other repo modules these functions flush, never commit: the caller's unit of work commits.

Health (`service_health`), judged against the process's own heartbeat interval:
- `stale`: no heartbeat for more than STALE_AFTER_INTERVALS intervals (the process is gone or stuck);
- `failed`: it reports it could not do what it was asked (e.g. the listener's port is taken);
- `stopped`: desired and actual state are both `stopped`;
- `reconciling`: the desired state or a requested restart is not applied yet;
- `healthy`: running as wished, heartbeating.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db.base import utc_now
from shared.db.models import ActualState, DesiredState, ServiceInstance, ServiceKind

STALE_AFTER_INTERVALS = 3.0
HEALTHY, STALE, FAILED, STOPPED, RECONCILING = "healthy", "stale", "failed", "stopped", "reconciling"


@dataclass(frozen=True)
class ServiceIdentity:
    """Who a process is: its service id (`<kind>:<name>`), kind, instance id, host and pid."""

    service_id: str
    kind: ServiceKind
    instance_id: str
    host: str | None = None
    pid: int | None = None


def get_service(session: Session, *, service_id: str) -> ServiceInstance | None:
    """The row of `service_id`, or None."""
    return session.scalar(select(ServiceInstance).where(ServiceInstance.service_id == service_id))


def register_service(
    session: Session, *, identity: ServiceIdentity, heartbeat_seconds: float, actual_state: ActualState,
    details: dict[str, Any] | None = None, now: datetime | None = None,
) -> ServiceInstance:
    """Create or update the row of a process that has just started (upsert by service id).

    An existing row keeps its `desired_state` (an operator's stop outlives a process restart); a restart asked for
    before this start counts as done (`applied_generation` = `restart_generation`).
    """
    now = now or utc_now()
    row = get_service(session, service_id=identity.service_id)
    if row is None:
        row = ServiceInstance(service_id=identity.service_id, desired_state=DesiredState.RUNNING,
                              restart_generation=0, created_at=now)
        session.add(row)
    row.kind, row.instance_id, row.host, row.pid = identity.kind, identity.instance_id, identity.host, identity.pid
    row.heartbeat_seconds, row.actual_state, row.details = heartbeat_seconds, actual_state, details
    row.applied_generation = row.restart_generation
    row.started_at = now if actual_state is ActualState.RUNNING else None
    row.last_heartbeat_at = now
    session.flush()
    return row


def record_heartbeat(
    session: Session, *, service_id: str, actual_state: ActualState, applied_generation: int,
    started_at: datetime | None, details: dict[str, Any] | None = None, now: datetime | None = None,
) -> ServiceInstance | None:
    """Write a process's heartbeat (its actual state, the restart generation it applied, when it last started and
    its details); None when the row does not exist (never registered, or deleted): register again."""
    row = get_service(session, service_id=service_id)
    if row is None:
        return None
    row.actual_state, row.applied_generation, row.started_at = actual_state, applied_generation, started_at
    row.details, row.last_heartbeat_at = details, now or utc_now()
    session.flush()
    return row


def set_desired_state(session: Session, *, service_id: str, state: DesiredState) -> ServiceInstance | None:
    """Set what the operator wants (`running`/`stopped`); None when there is no such service."""
    row = get_service(session, service_id=service_id)
    if row is None:
        return None
    row.desired_state = state
    session.flush()
    return row


def request_restart(session: Session, *, service_id: str) -> ServiceInstance | None:
    """Ask for a restart: bump `restart_generation` (atomically, so concurrent requests each count) and make the
    desired state `running`; None when there is no such service."""
    result = session.execute(
        update(ServiceInstance).where(ServiceInstance.service_id == service_id)
        .values(restart_generation=ServiceInstance.restart_generation + 1, desired_state=DesiredState.RUNNING)
        .execution_options(synchronize_session=False))
    if result.rowcount != 1:
        return None
    row = get_service(session, service_id=service_id)
    session.refresh(row)
    return row


def service_health(row: ServiceInstance, *, now: datetime | None = None) -> str:
    """The row's health (see the module doc)."""
    age = seconds_since_heartbeat(row, now=now)
    if age is None or age > STALE_AFTER_INTERVALS * row.heartbeat_seconds:
        return STALE
    if row.actual_state is ActualState.FAILED:
        return FAILED
    if row.desired_state is DesiredState.STOPPED and row.actual_state is ActualState.STOPPED:
        return STOPPED
    if row.desired_state.value != row.actual_state.value or row.applied_generation < row.restart_generation:
        return RECONCILING
    return HEALTHY


def seconds_since_heartbeat(row: ServiceInstance, *, now: datetime | None = None) -> float | None:
    """Seconds since the last heartbeat (never negative), or None when there was none."""
    if row.last_heartbeat_at is None:
        return None
    return max(0.0, ((now or utc_now()) - row.last_heartbeat_at).total_seconds())


def list_services(session: Session, *, kind: ServiceKind | None = None) -> list[ServiceInstance]:
    """Every registered service (optionally of one kind), by kind then service id."""
    query = select(ServiceInstance).order_by(ServiceInstance.kind, ServiceInstance.service_id)
    if kind is not None:
        query = query.where(ServiceInstance.kind == kind)
    return list(session.scalars(query))


def describe_service(row: ServiceInstance, *, now: datetime | None = None) -> dict[str, Any]:
    """The row as plain data with its computed health and heartbeat age (the API's status view)."""
    now = now or utc_now()
    return {
        "service_id": row.service_id, "kind": row.kind.value, "instance_id": row.instance_id, "host": row.host,
        "pid": row.pid, "desired_state": row.desired_state.value, "actual_state": row.actual_state.value,
        "health": service_health(row, now=now), "restart_generation": row.restart_generation,
        "applied_generation": row.applied_generation, "started_at": row.started_at,
        "last_heartbeat_at": row.last_heartbeat_at, "seconds_since_heartbeat": seconds_since_heartbeat(row, now=now),
        "heartbeat_seconds": row.heartbeat_seconds, "details": row.details or {},
    }
