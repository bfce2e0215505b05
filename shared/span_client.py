"""SpanClient: how callers (CLI, SCP, APIs) run a span without knowing where it executes.

`InProcessSpanClient` is the embedded mode: the engine runs here on a thread executor. The client keeps one set of
query ports for its life, so DIMSE associations and HTTP connections are reused from span to span. The distributed
mode swaps in a client that goes through the coordinator; callers don't change. When given a session factory, every
span is written to `spanner_query_logs`. With `cache_ttl_seconds` (a spanner config's setting) a completed span's
result is kept in the client's cache and an identical query within the TTL is answered from it (partial or failed
spans are never cached: a fresh query may do better). Each source's health is kept in the same cache: an archive that
failed `failure_threshold` spans in a row is skipped (reported `skipped`) for the cool-down (shared.spanning.health).

Query log writes: the row is inserted (status `running`) and committed before any source is asked, so a crash at
any later point leaves the accepted query on record. Its completion (status, per-source outcomes, counts) is an
UPDATE, written before `run`/`stream` hand back the SpanResult, unless the caller passes `defer`: a scheduler that
runs the write later, e.g. after the HTTP answer has been sent (the QIDO-RS route hands it Starlette's background
tasks, so the answer does not wait for a commit). A process that dies between the answer and that write leaves the
row `running` with no outcomes: the span's existence is never lost, only its completion. A span that raises or is
abandoned is always closed inline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterator, Sequence

from shared.adapters.cache import Cache, MemoryCache
from shared.adapters.executor import ThreadExecutor
from shared.adapters.query_ports import QueryPorts, build_query_ports
from shared.db.repo.query_logs import finish_query_log, start_query_log
from shared.dicom.dicom_json import dataset_to_json
from shared.logging import log_event
from shared.metrics import record_span
from shared.spanning.codec import result_from_dict, result_to_dict
from shared.spanning.engine import stream_span
from shared.spanning.health import BreakerPolicy, SourceHealth, record_outcome, skip_reason
from shared.spanning.model import SourceSpec, SourceStatus, SpanPolicy, SpanRequest, SpanResult, SpanStatus
from shared.spanning.ports import CancelToken

logger = logging.getLogger(__name__)
CACHE_RETRY_SECONDS = 5.0
# Runs fn(*args) later (e.g. Starlette's BackgroundTasks.add_task: after the answer is sent).
Deferral = Callable[..., None]


class InProcessSpanClient:
    """Runs spans in this process. Thread-safe: one client serves many concurrent spans."""

    def __init__(
        self,
        *,
        executor: ThreadExecutor | None = None,
        ports_factory: Callable[[], QueryPorts] = build_query_ports,
        session_factory: Callable | None = None,
        cache: Cache | None = None,
        breaker: BreakerPolicy = BreakerPolicy(),
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._executor = executor or ThreadExecutor()
        self._cache = cache if cache is not None else MemoryCache()
        self._breaker, self._wall_clock = breaker, wall_clock
        self._cache_down_until = 0.0  # after a cache failure, spans leave the cache alone for a while
        self._ports = ports_factory()
        self._session_factory = session_factory

    def run(
        self,
        request: SpanRequest,
        sources: Sequence[SourceSpec],
        policy: SpanPolicy,
        *,
        cancel: CancelToken | None = None,
        config_id: int | None = None,
        requester: dict | None = None,
        cache_ttl_seconds: float = 0,
        defer: Deferral | None = None,
    ) -> SpanResult:
        """Run one span to completion and return its result (the last event of `stream`), or the cached result of
        the same query on the same sources when `cache_ttl_seconds` > 0 (stored as plain data through
        shared.spanning.codec, so the cache may be shared: Redis in the distributed mode). `defer`: see the module
        doc (query log writes)."""
        key = span_cache_key(request, sources, policy) if cache_ttl_seconds > 0 else None
        cached = self._cache_get(key) if key else None
        if cached is not None:
            result = replace(result_from_dict(cached), query_id=request.query_id, duration_ms=0.0)
            with self._logged(request, config_id, requester, defer, cache_hit=True) as finish:
                finish(result)
            return result
        for event in self.stream(request, sources, policy, cancel=cancel, config_id=config_id, requester=requester,
                                 defer=defer):
            result = event
        if key and result.status is SpanStatus.COMPLETED:
            self._cache_set(key, result_to_dict(result), cache_ttl_seconds)
        return result

    def stream(
        self,
        request: SpanRequest,
        sources: Sequence[SourceSpec],
        policy: SpanPolicy,
        *,
        cancel: CancelToken | None = None,
        config_id: int | None = None,
        requester: dict | None = None,
        defer: Deferral | None = None,
    ) -> Iterator[object]:
        """Yield the engine's events (matches as soon as final, source outcomes, then the SpanResult). `defer`: see
        the module doc (query log writes)."""
        with self._logged(request, config_id, requester, defer) as finish:
            skip = self._open_breakers(sources)
            for event in stream_span(request, sources, ports=self._ports, executor=self._executor, policy=policy,
                                     cancel=cancel, skip=skip):
                if isinstance(event, SpanResult):
                    self._record_health(sources, event)
                    finish(event)
                yield event

    def source_health(self, source: SourceSpec) -> SourceHealth:
        """What the spans so far said about `source` (consecutive failures, breaker, last latency)."""
        return SourceHealth.from_dict(self._cache_get(health_key(source)))

    def _cache_get(self, key: str) -> Any:
        """The cache is an optimisation: when it is unreachable (Redis down), spans go on without it, and for
        CACHE_RETRY_SECONDS they do not even try (a black-holed Redis would otherwise cost each span its timeouts).
        Health updates are read-modify-write: concurrent spans may lose one count, which a breaker tolerates."""
        if time.monotonic() < self._cache_down_until:
            return None
        try:
            return self._cache.get(key)
        except Exception as exc:
            self._cache_failed("get", exc)
            return None

    def _cache_set(self, key: str, value: Any, ttl_seconds: float) -> None:
        if time.monotonic() < self._cache_down_until:
            return
        try:
            self._cache.set(key, value, ttl_seconds)
        except Exception as exc:
            self._cache_failed("set", exc)

    def _cache_failed(self, operation: str, exc: Exception) -> None:
        self._cache_down_until = time.monotonic() + CACHE_RETRY_SECONDS
        log_event(logger, "cache_unavailable", logging.WARNING, operation=operation, error=str(exc),
                  retry_in_seconds=CACHE_RETRY_SECONDS)

    def _open_breakers(self, sources: Sequence[SourceSpec]) -> dict[str, str]:
        now = self._wall_clock()
        reasons = {source.name: skip_reason(self.source_health(source), now) for source in sources}
        return {name: reason for name, reason in reasons.items() if reason is not None}

    def _record_health(self, sources: Sequence[SourceSpec], result: SpanResult) -> None:
        by_name, now = {source.name: source for source in sources}, self._wall_clock()
        keep_seconds = max(3600.0, self._breaker.cooldown_seconds * 10)
        for outcome in result.outcomes:
            source = by_name[outcome.source]
            health = record_outcome(self.source_health(source), outcome, self._breaker, now)
            self._cache_set(health_key(source), health.as_dict(), keep_seconds)

    def close(self) -> None:
        """Release pooled associations and connections, and stop the executor."""
        self._ports.close()
        self._executor.shutdown()

    @contextmanager
    def _logged(self, request: SpanRequest, config_id: int | None, requester: dict | None,
                defer: Deferral | None = None, cache_hit: bool = False):
        """Log the span's start and end; the block hands its SpanResult to the yielded callback. A span that raises
        or is abandoned (the stream closed early) is still closed in the query log, as failed or cancelled."""
        log_event(logger, "spanning_query_started", query_id=request.query_id, query_level=request.level.value,
                  query_type=request.query_type, spanner_config_id=config_id, cache_hit=cache_hit)
        if self._session_factory is not None:
            self._start_log(request, config_id, requester or {})
        finished: list[SpanResult] = []
        try:
            yield finished.append
        except BaseException as exc:
            if not finished:
                abandoned = isinstance(exc, (GeneratorExit, KeyboardInterrupt))
                self._finish(SpanResult(
                    query_id=request.query_id, status=SpanStatus.CANCELLED if abandoned else SpanStatus.FAILED,
                    matches=(), outcomes=(), raw_count=0, duration_ms=0.0,
                    error="abandoned by the caller" if abandoned else f"{type(exc).__name__}: {exc}"), None, request)
            else:  # the span ended and its result was handed out; the caller stopped listening afterwards
                self._finish(finished[0], None, request, cache_hit)
            raise
        if finished:
            self._finish(finished[0], defer, request, cache_hit)

    def _finish(self, result: SpanResult, defer: Deferral | None, request: SpanRequest, cache_hit: bool = False
                ) -> None:
        log_span_result(result)
        record_span(result, request.query_type, cache_hit=cache_hit)  # shared.metrics: the in-process mode's spans
        if self._session_factory is None:
            return
        if defer is not None:
            defer(self._write_deferred_finish, result)
        else:
            self._write_finish(result)

    def _write_finish(self, result: SpanResult) -> None:
        with self._session_factory.begin() as session:
            finish_query_log(session, query_id=result.query_id, result=result)

    def _write_deferred_finish(self, result: SpanResult) -> None:
        """The completion write, run by the caller's scheduler: nobody is left to raise to, so a failure is logged."""
        try:
            self._write_finish(result)
        except Exception as exc:
            log_event(logger, "query_log_write_failed", logging.ERROR, query_id=result.query_id,
                      error=f"{type(exc).__name__}: {exc}")

    def _start_log(self, request: SpanRequest, config_id: int | None, requester: dict) -> None:
        with self._session_factory.begin() as session:
            start_query_log(
                session,
                query_id=request.query_id,
                config_id=config_id,
                query_type=request.query_type,
                level=request.level.value,
                filters=dataset_to_json(request.identifier),
                requester_ae_title=requester.get("ae_title"),
                requester_user=requester.get("user"),
                client_address=requester.get("address"),
            )


def log_span_result(result: SpanResult, **fields: Any) -> None:
    """The end of a span as log events: `source_query_failed` for each source not ok, then
    `spanning_query_completed` with the counts (and `fields`, e.g. cache_hit)."""
    for outcome in result.outcomes:
        if outcome.status is not SourceStatus.OK:
            log_event(logger, "source_query_failed", logging.WARNING, query_id=result.query_id,
                      source=outcome.source, status=outcome.status.value, error=outcome.error,
                      retries=outcome.retries, latency_ms=round(outcome.latency_ms, 1))
    log_event(logger, "spanning_query_completed", query_id=result.query_id, status=result.status.value,
              total_results=len(result.matches), raw_results=result.raw_count,
              duration_ms=round(result.duration_ms, 1), failed_sources=result.failed_sources, **fields)


def span_cache_key(request: SpanRequest, sources: Sequence[SourceSpec], policy: SpanPolicy) -> str:
    """What makes two spans the same question: level, model, keys (in canonical DICOM JSON), sources and policy,
    as a digest (no secrets: the key may end up in a shared cache)."""
    keys = json.dumps(dataset_to_json(request.identifier), sort_keys=True, ensure_ascii=False)
    where = [(s.name, s.kind, s.priority, _fingerprint(s.connection), s.retrieve_ae_title, s.max_results,
              sorted(s.additional_filters.items())) for s in sources]
    rules = (policy.failure_strategy.value, policy.dedup_strategy.value, policy.minimum_success_threshold)
    text = json.dumps([request.query_type, request.level.value, request.model.value, keys, where, rules], default=str)
    return "span:" + hashlib.sha256(text.encode()).hexdigest()


def health_key(source: SourceSpec) -> str:
    """Where a source's SourceHealth is cached (its name and a digest of its connection: no secrets)."""
    return f"health:{source.name}:{_fingerprint(source.connection)[:16]}"


def _fingerprint(connection: object) -> str:
    """A digest of a connection config: identifies it in a cache key without carrying its passwords or tokens."""
    data = connection.model_dump(mode="json") if hasattr(connection, "model_dump") else repr(connection)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
