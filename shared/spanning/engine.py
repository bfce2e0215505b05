"""The spanning engine: one query fanned out to many sources in parallel, merged, with honest per-source status.

Pure: stdlib, pydicom and shared.* only. Sources run on the injected Executor (shared.spanning.worker); they report
through a queue.Queue to the one consuming thread, which owns all span state and wakes up at the nearest deadline.

Rules:

* **Concurrency** — at most `policy.max_concurrent_sources` sources are in flight (submitted and not finished in
  the engine's view); the engine bounds this itself. Sources start in (priority, given order). A source the engine
  gave up on (timeout/cancel) frees its slot at once even if its thread has not noticed the cancel yet.
* **Deadlines** — a source's own `timeout_seconds` counts from when its worker starts; the span deadline
  (`query_timeout_seconds`) from the call. At the span deadline, running sources and never-started ones are
  `timeout`. Given-up sources have their CancelToken cancelled; their threads are never joined.
* **Failures** — FAIL_FAST returns at the first failed/timed-out source; MINIMUM_THRESHOLD stops once the threshold
  is unreachable. The sources still running or not started are then `cancelled`. The caller's `cancel` token makes
  every outstanding source `cancelled` and the span CANCELLED, promptly (the token wakes the engine).
* **Matches** — from every source, including ones that later fail (they are valid data; the status tells the
  truth). Match events: FIRST_WINS as each new key arrives, otherwise all at the end (also for failed/cancelled
  spans; callers decide by status). An `ok` outcome with a FindSummary warning reports it in `error` as
  "warning: ...". Each answer is first cut down to the requested keys (PS3.4 C.4.1.2.3; see
  shared.dicom.matching.response_tags) by its source's worker, so an archive that returns unrequested attributes
  (QIDO-RS defaults) neither looks more complete to MOST_COMPLETE nor leaks attributes into the merged answer.
* **Identifier per source** — a copy of the request identifier with `SourceSpec.additional_filters` applied
  (DICOM keywords → values); an unknown keyword fails that source only.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from typing import Callable, Iterator, Mapping, Sequence

from pydicom.datadict import tag_for_keyword

from shared.dicom.charset import normalize_output_charset
from shared.dicom.matching import response_tags
from shared.spanning import policy as rules
from shared.spanning.merge import Merger, copy_dataset
from shared.spanning.model import (
    DedupStrategy, Match, SourceOutcome, SourceSpec, SourceStatus, SpanPolicy, SpanRequest, SpanResult,
)
from shared.spanning.ports import CancelToken, Executor, QueryPort
from shared.spanning.worker import Crashed, Event, Finished, Received, Retrying, SourceJob, Started, run_source

SpanEvent = Match | SourceOutcome | SpanResult
_WAKE = object()


class _Run:
    """A source the engine has submitted and not yet closed."""

    __slots__ = ("spec", "token", "started_at", "deadline", "retries")

    def __init__(self, spec: SourceSpec, token: CancelToken, deadline: float) -> None:
        self.spec, self.token, self.deadline = spec, token, deadline
        self.started_at: float | None = None
        self.retries = 0


def run_span(
    request: SpanRequest,
    sources: Sequence[SourceSpec],
    *,
    ports: Mapping[str, QueryPort],
    executor: Executor,
    policy: SpanPolicy,
    cancel: CancelToken | None = None,
    clock: Callable[[], float] = time.monotonic,
    skip: Mapping[str, str] | None = None,
) -> SpanResult:
    """Run a span to its end and return the SpanResult (consumes `stream_span`; see the module doc for rules)."""
    result: SpanResult | None = None
    for event in stream_span(request, sources, ports=ports, executor=executor, policy=policy, cancel=cancel,
                             clock=clock, skip=skip):
        if isinstance(event, SpanResult):
            result = event
    assert result is not None
    return result


def stream_span(
    request: SpanRequest,
    sources: Sequence[SourceSpec],
    *,
    ports: Mapping[str, QueryPort],
    executor: Executor,
    policy: SpanPolicy,
    cancel: CancelToken | None = None,
    clock: Callable[[], float] = time.monotonic,
    skip: Mapping[str, str] | None = None,
) -> Iterator[SpanEvent]:
    """Run a span, yielding Match events (when final), SourceOutcome events (as sources finish), then the SpanResult.

    Closing the iterator early cancels every outstanding source. ValueError on duplicate source names.
    `skip` names sources not to query (source -> reason, e.g. an open circuit breaker): they are reported `skipped`.
    """
    names = [spec.name for spec in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique: {names}")
    return _Span(request, sources, ports, executor, policy, cancel or CancelToken(), clock, skip or {}).run()


class _Span:
    """The consuming side of one span. Every method runs on the caller's thread."""

    def __init__(self, request, sources, ports, executor, policy, cancel, clock, skip) -> None:
        self.request, self.sources, self.ports, self.executor = request, list(sources), ports, executor
        self.policy, self.cancel, self.clock = policy, cancel, clock
        self.started = clock()
        self.deadline = rules.span_deadline(self.started, policy)
        self.events: queue.Queue = queue.Queue()
        self.merger = Merger(request.level, policy.dedup_strategy, self.sources, finalize=normalize_output_charset)
        self.response_tags = response_tags(request.identifier, request.level)
        order = sorted(range(len(self.sources)), key=lambda i: (self.sources[i].priority, i))
        self.pending: deque[SourceSpec] = deque(self.sources[i] for i in order)
        self.running: dict[str, _Run] = {}
        self.outcomes: dict[str, SourceOutcome] = {}
        self.stop_reason: str | None = None
        self.caller_cancelled = False
        self.skip: Mapping[str, str] = skip

    def run(self) -> Iterator[SpanEvent]:
        unhook = self.cancel.on_cancel(lambda: self.events.put(_WAKE))
        try:
            yield from self._skip_sources()
            yield from self._launch()
            while self._outstanding() and not self.cancel.cancelled and self.stop_reason is None:
                yield from self._step()
                yield from self._launch()
            if self._outstanding() and self.cancel.cancelled:
                self.caller_cancelled = True
                yield from self._close_all(SourceStatus.CANCELLED, "cancelled by the caller")
            elif self.stop_reason is not None:
                yield from self._close_all(SourceStatus.CANCELLED, f"cancelled: {self.stop_reason}")
            yield from self._finish()
        finally:
            unhook()
            for run in self.running.values():  # only when the consumer closed the stream early
                run.token.cancel()

    def _skip_sources(self) -> Iterator[SpanEvent]:
        """Report the sources the caller asked to skip as `skipped`, without querying them."""
        for spec in [spec for spec in self.pending if spec.name in self.skip]:
            self.pending.remove(spec)
            yield self._close(spec, SourceStatus.SKIPPED, self.skip[spec.name])

    def _outstanding(self) -> int:
        return len(self.running) + len(self.pending)

    def _step(self) -> Iterator[SpanEvent]:
        """Wait for one worker event (or the nearest deadline), handle it, then expire overdue sources."""
        try:
            event = self.events.get(timeout=self._wait_seconds())
        except queue.Empty:
            event = None
        if event is not None and event is not _WAKE:
            yield from self._handle(event)
        yield from self._expire()

    def _wait_seconds(self) -> float:
        nearest = min([run.deadline for run in self.running.values()] + [self.deadline])
        return rules.seconds_left(nearest, self.clock())

    def _launch(self) -> Iterator[SpanEvent]:
        """Start pending sources while below max_concurrent_sources."""
        while (self.pending and len(self.running) < self.policy.max_concurrent_sources
               and not self.cancel.cancelled and self.stop_reason is None):
            spec = self.pending.popleft()
            problem = self._submit(spec)
            if problem is not None:
                yield self._close(spec, SourceStatus.FAILED, problem)
                self._check_stop()

    def _submit(self, spec: SourceSpec) -> str | None:
        """Submit one source's worker; an error text when it cannot be started."""
        port = self.ports.get(spec.kind)
        if port is None:
            return f"no query port for source kind {spec.kind!r}"
        try:
            request = request_for_source(self.request, spec)
        except ValueError as exc:
            return str(exc)
        run = _Run(spec, CancelToken(), self.deadline)
        job = SourceJob(request, spec, port, run.token, self.clock, self.response_tags)
        self.running[spec.name] = run
        try:
            self.executor.submit(run_source, job, self.events.put)
        except Exception as exc:  # e.g. an executor already shut down
            del self.running[spec.name]
            return f"could not start: {type(exc).__name__}: {exc}"
        return None

    def _handle(self, event: Event) -> Iterator[SpanEvent]:
        run = self.running.get(event.source)
        if run is None:  # a source the engine already closed: ignore its late reports
            return
        if isinstance(event, Received):
            match = self.merger.add(event.source, event.dataset)
            if match is not None:
                yield match
        elif isinstance(event, Started):
            run.started_at = event.at
            run.deadline = rules.source_deadline(event.at, run.spec.timeout_seconds, self.deadline)
        elif isinstance(event, Retrying):
            run.retries = event.retry
        elif isinstance(event, Finished):
            run.retries = event.retries
            warning = f"warning: {event.warning}" if event.warning else None
            yield self._close(run.spec, SourceStatus.OK, warning, truncated=event.truncated)
        elif isinstance(event, Crashed):
            run.retries = event.retries
            yield self._close(run.spec, SourceStatus.FAILED, event.error)
            self._check_stop()

    def _expire(self) -> Iterator[SpanEvent]:
        """Time out sources past their deadline; at the span deadline, every outstanding source."""
        now = self.clock()
        for run in [run for run in self.running.values() if run.deadline <= now]:
            own = run.deadline < self.deadline and run.spec.timeout_seconds
            error = f"source timeout ({run.spec.timeout_seconds:g}s) exceeded" if own else self._deadline_text()
            yield self._close(run.spec, SourceStatus.TIMEOUT, error)
        if now >= self.deadline:
            yield from self._close_all(SourceStatus.TIMEOUT, self._deadline_text(),
                                       f"not started before the {self._deadline_text()}")
        elif self.outcomes:
            self._check_stop()

    def _deadline_text(self) -> str:
        return f"query deadline ({self.policy.query_timeout_seconds:g}s) exceeded"

    def _check_stop(self) -> None:
        """Set stop_reason when the failure strategy has already lost (policy.should_stop_early)."""
        outstanding = self._outstanding()
        if self.stop_reason is None and outstanding and rules.should_stop_early(
                self.outcomes.values(), outstanding, self.policy):
            self.stop_reason = f"span failed ({self.policy.failure_strategy.value})"

    def _close_all(self, status: SourceStatus, error: str, pending_error: str | None = None) -> Iterator[SpanEvent]:
        for run in list(self.running.values()):
            yield self._close(run.spec, status, error)
        while self.pending:
            yield self._close(self.pending.popleft(), status, pending_error or error)

    def _close(self, spec: SourceSpec, status: SourceStatus, error: str | None,
               truncated: bool = False) -> SourceOutcome:
        """Record a source's final outcome; cancels its token if it was running."""
        run = self.running.pop(spec.name, None)
        if run is not None and status is not SourceStatus.OK:
            run.token.cancel()
        started = run.started_at if run is not None and run.started_at is not None else None
        latency = (self.clock() - started) * 1000.0 if started is not None else 0.0
        outcome = SourceOutcome(source=spec.name, status=status, match_count=self.merger.contributed(spec.name),
                                latency_ms=latency, retries=run.retries if run else 0, error=error,
                                truncated=truncated)
        self.outcomes[spec.name] = outcome
        return outcome

    def _finish(self) -> Iterator[SpanEvent]:
        outcomes = tuple(self.outcomes[spec.name] for spec in self.sources)
        status = rules.span_status(outcomes, self.policy, cancelled=self.caller_cancelled)
        matches = tuple(self.merger.matches())
        if self.policy.dedup_strategy is not DedupStrategy.FIRST_WINS:
            yield from matches
        raw_count = sum(self.merger.contributed(spec.name) for spec in self.sources)  # a retry's repeats count once
        yield SpanResult(query_id=self.request.query_id, status=status, matches=matches, outcomes=outcomes,
                         raw_count=raw_count, duration_ms=(self.clock() - self.started) * 1000.0,
                         error=rules.span_error(status, outcomes, self.policy, cancelled=self.caller_cancelled))


def request_for_source(request: SpanRequest, spec: SourceSpec) -> SpanRequest:
    """The request one source is asked: its `additional_filters` (DICOM keyword -> value) set on a copy of the
    identifier. ValueError when a filter is not a DICOM keyword (that source fails, the span goes on)."""
    if not spec.additional_filters:
        return request
    identifier = copy_dataset(request.identifier)
    for keyword, value in spec.additional_filters.items():
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"additional filter {keyword!r} is not a DICOM keyword")
        setattr(identifier, keyword, value)
    return SpanRequest(level=request.level, identifier=identifier, model=request.model,
                       query_id=request.query_id, query_type=request.query_type)
