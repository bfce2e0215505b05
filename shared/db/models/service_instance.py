"""`service_instances`: one row per running Axiom process (listener, coordinator, worker, api) and its wishes.

Each process registers itself (`service_id` such as `listener:<AXIOM_INSTANCE_ID>` or `worker:<celery hostname>`)
and heartbeats every AXIOM_HEARTBEAT_SECONDS (kept in `heartbeat_seconds`: health is judged against the
process's own interval) with its `details` (listener: port and AE titles; worker: queues and
task counts; coordinator: sweeps). Operators change `desired_state` or bump `restart_generation` through the API;
the process reconciles (shared.service_registry): `actual_state` and `applied_generation` say what it has done.
Only listeners reconcile today (stop/start serving their AE); the other kinds only report.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum as PyEnum
from typing import Any

from sqlalchemy import Float, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.base import Base, JsonType, UtcDateTime, utc_now
from shared.db.models.spanner import value_enum


class ServiceKind(str, PyEnum):
    """What kind of Axiom process a row describes."""

    LISTENER = "listener"
    COORDINATOR = "coordinator"
    WORKER = "worker"
    API = "api"


class DesiredState(str, PyEnum):
    """What an operator wants the service to do."""

    RUNNING = "running"
    STOPPED = "stopped"


class ActualState(str, PyEnum):
    """What the process reports it is doing (`failed`: it tried to start serving and could not)."""

    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"


class ServiceInstance(Base):
    """One registered service process: identity, desired and actual state, restart generations, heartbeat."""

    __tablename__ = "service_instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    service_id: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[ServiceKind] = mapped_column(value_enum(ServiceKind, "service_kind"))
    instance_id: Mapped[str] = mapped_column(String(128))
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    desired_state: Mapped[DesiredState] = mapped_column(
        value_enum(DesiredState, "desired_state"), default=DesiredState.RUNNING,
        server_default=DesiredState.RUNNING.value)
    actual_state: Mapped[ActualState] = mapped_column(
        value_enum(ActualState, "actual_state"), default=ActualState.RUNNING, server_default=ActualState.RUNNING.value)
    restart_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    applied_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    heartbeat_seconds: Mapped[float] = mapped_column(Float, default=5.0, server_default="5")
    details: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now, server_default=func.now())

    def __repr__(self) -> str:
        return (f"ServiceInstance(service_id={self.service_id!r}, desired={self.desired_state!r}, "
                f"actual={self.actual_state!r})")
