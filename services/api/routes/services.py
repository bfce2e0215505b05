"""Service management under /api/v1/spanner/services: status for any authenticated caller, start/stop/restart for
admins. (`/logs` is routes/logs.py, `/cmove` routes/moves.py.)

- `GET /status`: every registered process (table `service_instances`, written by the processes' heartbeats,
  shared.service_registry) with kind, desired and actual state, computed health (healthy / reconciling / stopped /
  failed / stale), last heartbeat and its age, and the details it reports (listener: port and AE titles; worker:
  queues and task counts; coordinator: sweeps).
- `POST /start`, `POST /stop` (body `{"service_id": "listener:axiom-1"}`) and `POST /restart/{service_id}` record the
  desired state (a restart bumps `restart_generation`). Nothing is done synchronously: the listener process applies
  it on its next heartbeat (within AXIOM_HEARTBEAT_SECONDS); poll /status. Only listeners reconcile: for any other
  kind the answer is 409 (coordinators and workers are managed by their process supervisor, e.g. compose).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, ConfigDict, Field

from services.api.deps import AdminDep, PrincipalDep, SessionDep
from shared.db.base import utc_now
from shared.db.models import DesiredState, ServiceInstance, ServiceKind
from shared.db.repo.service_instances import (
    STALE_AFTER_INTERVALS, describe_service, get_service, list_services, request_restart, set_desired_state,
)
from shared.logging import log_event

router = APIRouter(prefix="/api/v1/spanner/services", tags=["services"])
logger = logging.getLogger(__name__)
RECONCILING_KINDS = (ServiceKind.LISTENER,)
SERVICE_ID_PATTERN = r"^[\x21-\x7e]+$"  # printable ASCII without spaces: `<kind>:<instance id or celery hostname>`


class ServiceOut(BaseModel):
    """One registered process and its computed health."""

    service_id: str
    kind: str
    instance_id: str
    host: str | None
    pid: int | None
    desired_state: str
    actual_state: str
    health: Literal["healthy", "reconciling", "stopped", "failed", "stale"]
    restart_generation: int
    applied_generation: int
    started_at: datetime | None
    last_heartbeat_at: datetime | None
    seconds_since_heartbeat: float | None
    heartbeat_seconds: float
    details: dict[str, Any]


class ServicesStatus(BaseModel):
    """Every registered process; `stale` means no heartbeat for more than `stale_after_intervals` of its interval."""

    checked_at: datetime
    stale_after_intervals: float
    services: list[ServiceOut]


class ServiceTarget(BaseModel):
    """The service to start or stop, by its id from GET /status (`listener:<AXIOM_INSTANCE_ID>`)."""

    model_config = ConfigDict(extra="forbid")

    service_id: str = Field(min_length=1, max_length=255, pattern=SERVICE_ID_PATTERN)


class ServiceChange(BaseModel):
    """The recorded wish; `reconciliation` says when the process applies it."""

    service_id: str
    desired_state: str
    restart_generation: int
    reconciliation: str


@router.get("/status", response_model=ServicesStatus)
def services_status(_principal: PrincipalDep, session: SessionDep) -> ServicesStatus:
    """Each listener, coordinator, worker (and API) process with its health and last heartbeat."""
    now = utc_now()
    return ServicesStatus(checked_at=now, stale_after_intervals=STALE_AFTER_INTERVALS,
                          services=[ServiceOut(**describe_service(row, now=now)) for row in list_services(session)])


@router.post("/start", response_model=ServiceChange)
def start_service(body: ServiceTarget, principal: AdminDep, session: SessionDep) -> ServiceChange:
    """Set the listener's desired state to `running`; it opens its port on its next heartbeat."""
    _manageable(session, body.service_id)
    row = set_desired_state(session, service_id=body.service_id, state=DesiredState.RUNNING)
    return _recorded(session, row, principal.name, "start")


@router.post("/stop", response_model=ServiceChange)
def stop_service(body: ServiceTarget, principal: AdminDep, session: SessionDep) -> ServiceChange:
    """Set the listener's desired state to `stopped`; it closes its port (the process keeps heartbeating)."""
    _manageable(session, body.service_id)
    row = set_desired_state(session, service_id=body.service_id, state=DesiredState.STOPPED)
    return _recorded(session, row, principal.name, "stop")


@router.post("/restart/{service_id}", response_model=ServiceChange)
def restart_service(service_id: Annotated[str, Path(min_length=1, max_length=255, pattern=SERVICE_ID_PATTERN)],
                    principal: AdminDep, session: SessionDep) -> ServiceChange:
    """Ask the listener to stop and start serving again (desired state becomes `running`)."""
    _manageable(session, service_id)
    row = request_restart(session, service_id=service_id)
    return _recorded(session, row, principal.name, "restart")


def _manageable(session, service_id: str) -> ServiceInstance:
    """The row, or 404 naming the id, or 409 when its kind does not reconcile."""
    row = get_service(session, service_id=service_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"service_id: no service {service_id!r} is registered "
                            "(see GET /api/v1/spanner/services/status)")
    if row.kind not in RECONCILING_KINDS:
        raise HTTPException(status.HTTP_409_CONFLICT, f"service_id: {service_id!r} is a {row.kind.value}; only "
                            "listeners start and stop on request. Coordinators, workers and the API only report "
                            "their status: restart them with their process supervisor")
    return row


def _recorded(session, row: ServiceInstance | None, admin: str, action: str) -> ServiceChange:
    if row is None:  # deleted between the check and the write
        raise HTTPException(status.HTTP_404_NOT_FOUND, "service_id: the service is no longer registered")
    session.commit()
    log_event(logger, "service_change_requested", service_id=row.service_id, action=action, by=admin,
              desired_state=row.desired_state.value, restart_generation=row.restart_generation)
    return ServiceChange(
        service_id=row.service_id, desired_state=row.desired_state.value,
        restart_generation=row.restart_generation,
        reconciliation=f"asynchronous: the process applies it on its next heartbeat (every {row.heartbeat_seconds:g} "
                       "s); follow GET /api/v1/spanner/services/status")
