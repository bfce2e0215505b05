"""What a worker reports about itself: task counts from Celery's task signals, and its heartbeat.

`TaskCounters(app)` counts this process's tasks of `app` (task_prerun: in flight; task_postrun: processed, any
outcome; task_failure: failed; task_retry: retried). `worker_heartbeat(...)` registers `worker:<celery hostname>`
in `service_instances` (shared.service_registry) with the queues and those counts as details, and logs a
`dimse_worker_status` event with the same fields on every beat. Workers only report: they are not started or
stopped through the API (their supervisor runs them).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from celery import Celery
from celery.signals import task_failure, task_postrun, task_prerun, task_retry

from shared.config import Settings
from shared.db.models import ServiceKind
from shared.logging import log_event
from shared.service_registry import ServiceHeartbeat, process_identity

logger = logging.getLogger(__name__)


class TaskCounters:
    """In-flight, processed, failed and retried task counts of one Celery app in this process (thread-safe)."""

    def __init__(self, app: Celery) -> None:
        self._app, self._lock = app, threading.Lock()
        self._counts = {"in_flight": 0, "processed": 0, "failed": 0, "retried": 0}
        self._handlers = ((task_prerun, self._on_prerun), (task_postrun, self._on_postrun),
                          (task_failure, self._on_failure), (task_retry, self._on_retry))

    def connect(self) -> "TaskCounters":
        """Start counting (Celery's signals are process-wide: tasks of other apps are ignored)."""
        for signal, handler in self._handlers:
            signal.connect(handler, weak=False)
        return self

    def disconnect(self) -> None:
        for signal, handler in self._handlers:
            signal.disconnect(handler)

    def snapshot(self) -> dict[str, int]:
        """The counts now."""
        with self._lock:
            return dict(self._counts)

    def _ours(self, sender: Any) -> bool:
        return getattr(sender, "app", None) is self._app

    def _add(self, **deltas: int) -> None:
        with self._lock:
            for key, delta in deltas.items():
                self._counts[key] += delta

    def _on_prerun(self, sender=None, **_: Any) -> None:
        if self._ours(sender):
            self._add(in_flight=1)

    def _on_postrun(self, sender=None, **_: Any) -> None:
        if self._ours(sender):
            self._add(in_flight=-1, processed=1)

    def _on_failure(self, sender=None, **_: Any) -> None:
        if self._ours(sender):
            self._add(failed=1)

    def _on_retry(self, sender=None, **_: Any) -> None:
        if self._ours(sender):
            self._add(retried=1)


def worker_heartbeat(settings: Settings, session_factory: Callable, *, hostname: str, queues: tuple[str, ...],
                     counters: TaskCounters, interval: float | None = None) -> ServiceHeartbeat:
    """The (unstarted) heartbeat of `worker:<hostname>`: details are the worker type, queues and task counts,
    also logged as `dimse_worker_status` on every beat."""
    identity = process_identity(ServiceKind.WORKER, hostname, instance_id=settings.instance_id)

    def details() -> dict[str, Any]:
        return {"worker_type": settings.distributed.worker_type, "queues": list(queues),
                "concurrency": settings.distributed.worker_concurrency, **counters.snapshot()}

    def report(fields: dict[str, Any]) -> None:
        log_event(logger, "dimse_worker_status", service_id=identity.service_id, **fields)

    return ServiceHeartbeat(session_factory, identity, interval=interval or settings.heartbeat_seconds,
                            details=details, on_heartbeat=report)
