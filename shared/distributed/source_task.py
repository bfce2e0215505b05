"""One source of a distributed span, queried on a dimse_tasks worker: the engine's per-source worker, with Redis
in place of the engine's event queue.

`query_source` runs shared.spanning.worker.run_source (retries with backoff on transport errors only, answers cut
to the requested keys, the max_results cap) against the worker process's long-lived query ports. Its events become
Redis writes: answers are appended in batches to this attempt's list, the outcome is recorded once. A watchdog
cancels the query when the source's own timeout or the span deadline passes, when the span is cancelled or
finalised, or when another attempt already recorded this source's outcome.

Idempotent: a source that already has an outcome, or a span that is finished or stopping, is not queried again. A
redelivered task (its worker was killed) starts a new attempt whose answers replace the dead attempt's.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Mapping

from shared.db.repo.spanner_configs import load_span_plan
from shared.dicom.dicom_json import dataset_to_json
from shared.dicom.matching import response_tags
from shared.distributed.plan import Plan
from shared.distributed.runtime import SpanRuntime
from shared.logging import log_event
from shared.messaging.contracts import SOURCE_FINISHED
from shared.spanning.engine import request_for_source
from shared.spanning.model import SourceSpec, SourceStatus
from shared.spanning.ports import CancelToken, QueryPort
from shared.spanning.policy import source_deadline
from shared.spanning.worker import Crashed, Event, Finished, Received, Retrying, SourceJob, run_source

logger = logging.getLogger(__name__)
FLUSH_EVERY = 100  # answers per Redis write
FLUSH_SECONDS = 0.1  # or at least this often while answers arrive
WATCH_SECONDS = 0.1  # how often the watchdog looks at the stop flag


def query_source(rt: SpanRuntime, ports: Mapping[str, QueryPort], query_id: str, source_name: str) -> None:
    """Query `source_name` for span `query_id` and record its outcome (module doc)."""
    store = rt.store
    if store.has_outcome(query_id, source_name) or store.stop_reason(query_id) is not None:
        return
    raw = store.plan(query_id)
    if raw is None:
        return  # finished and expired, or Redis lost it: the deadline sweep decides
    plan = Plan.from_dict(raw)
    planned = plan.source(source_name)
    if planned is None:
        return
    attempt = store.start_attempt(query_id, source_name, rt.clock())
    spec, problem = _load_spec(rt, plan, source_name)
    if spec is None:
        _record(rt, plan, source_name, attempt, {"status": SourceStatus.FAILED.value, "error": problem})
        return
    run = _SourceRun(rt, plan, spec, attempt)
    run.execute(ports)


def _load_spec(rt: SpanRuntime, plan: Plan, name: str) -> tuple[SourceSpec | None, str | None]:
    """The source's full spec (with its connection) from the database as configured now (remembered by this
    process for SPEC_MEMORY_SECONDS, shared.distributed.runtime)."""
    memory_key = f"config:{plan.config_id}"
    sources = rt.specs.get(memory_key)
    if sources is None:
        try:
            with rt.session_factory() as session:
                sources = {spec.name: spec for spec in load_span_plan(session, config_id=plan.config_id).sources}
        except (LookupError, ValueError) as exc:
            return None, str(exc)
        rt.specs.set(memory_key, sources)
    spec = sources.get(name)
    if spec is None:
        return None, f"source {name!r} is no longer enabled in spanner config {plan.config_name!r}"
    return spec, None


class _SourceRun:
    """One attempt: run_source on this thread, a watchdog thread, answers flushed to Redis in batches."""

    def __init__(self, rt: SpanRuntime, plan: Plan, spec: SourceSpec, attempt: int) -> None:
        self.rt, self.plan, self.spec, self.attempt = rt, plan, spec, attempt
        self.token = CancelToken()
        self.started = time.monotonic()
        wall_deadline = source_deadline(rt.clock(), spec.timeout_seconds, plan.deadline)
        self.deadline = self.started + max(0.0, wall_deadline - rt.clock())
        self.own_timeout = wall_deadline < plan.deadline
        self.timed_out = False
        self.buffer: list[dict[str, Any]] = []
        self.buffer_lock = threading.Lock()  # answers arrive on this thread; the watchdog flushes them too
        self.last_flush = self.started
        self.count = 0
        self.final: Event | None = None

    def execute(self, ports: Mapping[str, QueryPort]) -> None:
        port = ports.get(self.spec.kind)
        if port is None:
            self._finish({"status": SourceStatus.FAILED.value, "error": f"no query port for source kind "
                                                                           f"{self.spec.kind!r}"})
            return
        try:
            request = request_for_source(self.plan.request, self.spec)
        except ValueError as exc:
            self._finish({"status": SourceStatus.FAILED.value, "error": str(exc)})
            return
        done = threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(done,), daemon=True,
                                    name=f"watch-{self.plan.query_id[:8]}-{self.spec.name}")
        watchdog.start()
        job = SourceJob(request, self.spec, port, self.token, time.monotonic,
                        response_tags(self.plan.request.identifier, self.plan.request.level))
        try:
            run_source(job, self._emit)
        finally:
            done.set()
            watchdog.join()
        self._flush()
        self._finish(self._outcome())

    def _watch(self, done: threading.Event) -> None:
        """Cancel the query at its deadline, or when the span stops or another attempt finished this source; and
        flush answers that wait in the buffer (a source that stalls after a few answers still shows them live)."""
        store, query_id = self.rt.store, self.plan.query_id
        while not done.wait(min(WATCH_SECONDS, max(0.0, self.deadline - time.monotonic()))):
            if time.monotonic() - self.last_flush >= FLUSH_SECONDS:
                try:
                    self._flush()
                except Exception:  # Redis unreachable for a moment: the answers stay buffered, flushed later
                    pass
            if time.monotonic() >= self.deadline:
                self.timed_out = True
                self.token.cancel()
                return
            try:
                stop = store.stop_reason(query_id) is not None or store.has_outcome(query_id, self.spec.name)
            except Exception:  # Redis unreachable for a moment: keep the query going, the deadline still holds
                stop = False
            if stop:
                self.token.cancel()
                return

    def _emit(self, event: Event) -> None:
        if isinstance(event, Received):
            answer = dataset_to_json(event.dataset)
            with self.buffer_lock:
                self.buffer.append(answer)
                self.count += 1
                full = len(self.buffer) >= FLUSH_EVERY
            if full or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
                self._flush()
        elif isinstance(event, Retrying):
            self.rt.store.set_retries(self.plan.query_id, self.spec.name, event.retry)
            log_event(logger, "source_query_retrying", logging.WARNING, query_id=self.plan.query_id,
                      source=self.spec.name, retry=event.retry, error=event.error)
        elif isinstance(event, (Finished, Crashed)):
            self.final = event

    def _flush(self) -> None:
        """Append the buffered answers to this attempt's list in Redis (in arrival order: one flush at a time)."""
        with self.buffer_lock:
            if self.buffer:
                self.rt.store.add_answers(self.plan.query_id, self.spec.name, self.attempt, self.buffer)
                self.buffer = []
            self.last_flush = time.monotonic()

    def _outcome(self) -> dict[str, Any] | None:
        """The outcome to record, or None when the span stopped this query (the finaliser reports it)."""
        latency = (time.monotonic() - self.started) * 1000.0
        base = {"match_count": self.count, "latency_ms": round(latency, 1),
                "retries": getattr(self.final, "retries", 0)}
        if self.timed_out:
            error = (f"source timeout ({self.spec.timeout_seconds:g}s) exceeded" if self.own_timeout
                     else f"query deadline ({self.plan.policy.query_timeout_seconds:g}s) exceeded")
            return {**base, "status": SourceStatus.TIMEOUT.value, "error": error}
        if isinstance(self.final, Finished) and self.final.truncated:  # the max_results cap cancelled it
            return {**base, "status": SourceStatus.OK.value, "error": None, "truncated": True}
        if self.token.cancelled:  # the span stopped it: the finaliser reports it
            return None
        if isinstance(self.final, Finished):
            warning = f"warning: {self.final.warning}" if self.final.warning else None
            return {**base, "status": SourceStatus.OK.value, "error": warning, "truncated": self.final.truncated}
        if isinstance(self.final, Crashed):
            return {**base, "status": SourceStatus.FAILED.value, "error": self.final.error}
        return None

    def _finish(self, outcome: dict[str, Any] | None) -> None:
        if outcome is not None:
            _record(self.rt, self.plan, self.spec.name, self.attempt, outcome)


def _record(rt: SpanRuntime, plan: Plan, source: str, attempt: int, outcome: dict[str, Any]) -> None:
    """Record the outcome (first attempt to finish wins) and hand the span to the aggregation queue."""
    if rt.store.record_outcome(plan.query_id, source, outcome, attempt):
        log_event(logger, "source_query_finished", query_id=plan.query_id, source=source, attempt=attempt,
                  status=outcome["status"], matches=outcome.get("match_count", 0),
                  latency_ms=outcome.get("latency_ms"))
        rt.publish(SOURCE_FINISHED, [plan.query_id, source], None)
