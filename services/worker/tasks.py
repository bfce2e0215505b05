"""The worker's Celery tasks: thin wrappers that take ids and call shared.distributed (ARCHITECTURE.md).

Each process builds its runtime (Redis, PostgreSQL, publisher) and its query ports once, on first use, so DIMSE
associations and HTTP connections are reused across tasks. Tasks retry (with backoff) only when Redis, PostgreSQL
or the broker is unreachable; a source's own failures are outcomes, never task failures.
"""

from __future__ import annotations

import threading
from typing import Callable

import redis
from celery import Celery
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError as DatabaseError

from shared.adapters.google_auth import google_healthcare_access
from shared.adapters.query_ports import QueryPorts, build_query_ports
from shared.config import Settings
from shared.distributed.runtime import SpanRuntime, build_runtime
from shared.distributed.source_task import query_source
from shared.distributed.spans import finalize_due, plan_span, source_finished
from shared.messaging.celery_app import publish
from shared.messaging.contracts import FINALIZE_SPAN, PLAN_SPAN, QUERY_SOURCE, SOURCE_FINISHED

TRANSIENT = (redis.ConnectionError, redis.TimeoutError, DatabaseError, BrokerError)
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 1, "retry_backoff_max": 10, "retry_jitter": True,
         "max_retries": 12}


class WorkerState:
    """Per-process resources, built lazily and once (thread-safe)."""

    def __init__(self, app: Celery, settings: Settings,
                 ports_factory: Callable[[], QueryPorts] | None = None) -> None:
        self._app, self._settings, self._lock = app, settings, threading.Lock()
        self._ports_factory = ports_factory or (
            lambda: build_query_ports(calling_ae_title=settings.scp.calling_ae_title,
                                      google=google_healthcare_access(settings)))
        self._runtime: SpanRuntime | None = None
        self._ports: QueryPorts | None = None

    @property
    def runtime(self) -> SpanRuntime:
        with self._lock:
            if self._runtime is None:
                self._runtime = build_runtime(
                    self._settings, lambda name, args, countdown: publish(self._app, name, args, countdown=countdown))
            return self._runtime

    @property
    def ports(self) -> QueryPorts:
        with self._lock:
            if self._ports is None:
                self._ports = self._ports_factory()
            return self._ports

    def close(self) -> None:
        with self._lock:
            if self._ports is not None:
                self._ports.close()
            if self._runtime is not None:
                self._runtime.close()


def register_tasks(app: Celery, state: WorkerState) -> None:
    """Register the spanning tasks on `app` under their contract names."""

    @app.task(name=PLAN_SPAN, **RETRY)
    def plan(query_id: str) -> None:
        plan_span(state.runtime, query_id)

    @app.task(name=QUERY_SOURCE, **RETRY)
    def query(query_id: str, source: str) -> None:
        query_source(state.runtime, state.ports, query_id, source)

    @app.task(name=SOURCE_FINISHED, **RETRY)
    def finished(query_id: str, source: str) -> None:
        source_finished(state.runtime, query_id, source)

    @app.task(name=FINALIZE_SPAN, **RETRY)
    def finalize(query_id: str) -> None:
        finalize_due(state.runtime, query_id)
