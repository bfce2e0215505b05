"""Service registration, heartbeat and reconciliation: one small background thread per Axiom process.

`ServiceHeartbeat(session_factory, identity, interval=..., details=..., target=...)` registers the process in
`service_instances` (shared.db.repo.service_instances) and, every `interval` seconds (AXIOM_HEARTBEAT_SECONDS):

1. reads the row's desired state and restart generation (what operators asked for through the API);
2. when a `target` is given (a `Reconcilable`: today the listener's AE), reconciles it: desired `stopped` → stop
   serving; desired `running` → start serving if it is not; a restart generation newer than the one applied →
   stop, then start. A start that fails (port taken) reports `failed` and is tried again on the next beat;
3. writes the heartbeat: actual state, applied generation, when it last started serving, `details()`.

Processes without a target (coordinator, workers, the API) only report; they never change what they do, which is
why the API refuses to start/stop/restart them (409). Errors (database unreachable) are logged and the loop goes
on; the thread never takes the process down.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime
from typing import Any, Callable, Protocol

from shared.db.base import utc_now
from shared.db.models import ActualState, DesiredState, ServiceKind
from shared.db.repo.service_instances import ServiceIdentity, get_service, record_heartbeat, register_service
from shared.logging import log_event

logger = logging.getLogger(__name__)


class Reconcilable(Protocol):
    """Something the loop can stop and start serving in place (the process and its heartbeat stay up)."""

    @property
    def serving(self) -> bool: ...

    def start_serving(self) -> None: ...

    def stop_serving(self) -> None: ...


def process_identity(kind: ServiceKind, name: str, *, instance_id: str) -> ServiceIdentity:
    """This process's identity as `<kind>:<name>`, with the host name and pid."""
    return ServiceIdentity(service_id=f"{kind.value}:{name}", kind=kind, instance_id=instance_id,
                           host=socket.gethostname(), pid=os.getpid())


class ServiceHeartbeat:
    """The registration + heartbeat + reconcile loop of the module doc. `start()` beats once synchronously (so the
    service is listed at once), then in a daemon thread; `stop()` ends the thread and records the last state."""

    def __init__(self, session_factory: Callable, identity: ServiceIdentity, *, interval: float,
                 details: Callable[[], dict[str, Any]] = dict, target: Reconcilable | None = None,
                 on_heartbeat: Callable[[dict[str, Any]], None] | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"interval: must be positive, got {interval!r}")
        self.identity, self.interval = identity, interval
        self._sessions, self._details, self._target, self._on_heartbeat = (
            session_factory, details, target, on_heartbeat)
        self._registered, self._applied, self._failed = False, 0, False
        self._started_at: datetime | None = utc_now() if target is None or target.serving else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{identity.service_id}", daemon=True)

    @property
    def actual_state(self) -> ActualState:
        """What the process is doing now (running / stopped / failed to start)."""
        if self._target is None or self._target.serving:
            return ActualState.RUNNING
        return ActualState.FAILED if self._failed else ActualState.STOPPED

    def start(self) -> "ServiceHeartbeat":
        self._beat_logged()
        self._thread.start()
        return self

    def stop(self, *, final_state: ActualState = ActualState.STOPPED) -> None:
        """End the loop and write one last heartbeat with `final_state` (the process is going away)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 30)
        try:
            self._write_heartbeat(final_state, self._collect_details())
        except Exception as exc:
            self._log_failure(exc)

    def beat(self) -> None:
        """One round: read the wishes, reconcile the target, write the heartbeat (exceptions propagate)."""
        desired, generation = self._read_wishes()
        if self._target is not None:
            self._reconcile(self._target, desired, generation)
        details = self._collect_details()
        self._write_heartbeat(self.actual_state, details)
        if self._on_heartbeat is not None:
            self._on_heartbeat(details)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat_logged()

    def _beat_logged(self) -> None:
        try:
            self.beat()
        except Exception as exc:  # the database may be away for a while: report, retry on the next beat
            self._log_failure(exc)

    def _log_failure(self, exc: BaseException) -> None:
        log_event(logger, "service_heartbeat_failed", logging.WARNING, service_id=self.identity.service_id,
                  error=f"{type(exc).__name__}: {exc}"[:300])

    def _read_wishes(self) -> tuple[DesiredState, int]:
        with self._sessions.begin() as session:
            row = get_service(session, service_id=self.identity.service_id) if self._registered else None
            if row is None:
                row = register_service(session, identity=self.identity, heartbeat_seconds=self.interval,
                                       actual_state=self.actual_state, details=self._collect_details())
                self._registered, self._applied = True, row.applied_generation
                log_event(logger, "service_registered", service_id=self.identity.service_id,
                          kind=self.identity.kind.value, desired_state=row.desired_state.value)
            return row.desired_state, row.restart_generation

    def _reconcile(self, target: Reconcilable, desired: DesiredState, generation: int) -> None:
        service_id = self.identity.service_id
        if desired is DesiredState.STOPPED:
            if target.serving:
                target.stop_serving()
                log_event(logger, "service_reconciled", service_id=service_id, action="stop")
            self._failed, self._applied = False, generation
            return
        restart = generation > self._applied
        if restart and target.serving:
            target.stop_serving()
        if not target.serving:
            try:
                target.start_serving()
            except Exception as exc:
                self._failed = True
                log_event(logger, "service_start_failed", logging.ERROR, service_id=service_id,
                          error=f"{type(exc).__name__}: {exc}"[:300])
                return
            self._failed, self._started_at = False, utc_now()
            log_event(logger, "service_reconciled", service_id=service_id, action="restart" if restart else "start",
                      restart_generation=generation)
        self._applied = generation

    def _write_heartbeat(self, actual: ActualState, details: dict[str, Any]) -> None:
        with self._sessions.begin() as session:
            row = record_heartbeat(session, service_id=self.identity.service_id, actual_state=actual,
                                   applied_generation=self._applied, details=details,
                                   started_at=self._started_at if actual is ActualState.RUNNING else None)
        if row is None:
            self._registered = False  # deleted meanwhile: the next beat registers again

    def _collect_details(self) -> dict[str, Any]:
        return dict(self._details())
