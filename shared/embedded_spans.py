"""The coordinator's spans in the embedded mode: run in this process, live progress in memory, results in the database.

The same contract as shared.distributed.intake (accept → 202 body, describe → the GET view, cancel), so the
coordinator's HTTP API is identical in both modes: the request validation, the query-log fields of the view and
the view of a finished query are intake's own functions, and a finished span is kept in `spanner_query_results`
exactly as the distributed finaliser keeps it (shared.db.repo.query_logs.close_query_log).

Each span runs on a background thread through an InProcessSpanClient (the engine, its thread executor and pooled
query ports). The coordinator writes the span's `spanner_query_logs` row itself rather than leaving it to the client:
the row must exist (`accepted`, with its deadline) before the 202 is answered, so a GET right after it never 404s,
and it is closed with a compare-and-set together with the kept result, so a cancel and the span's own end cannot
both win. One process owns its spans: after a restart, spans it left open are closed as failed (`recover`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from shared.db.models import QueryLogStatus
from shared.db.repo.query_logs import (
    close_query_log, get_query_log, get_query_result, mark_query_running, overdue_query_ids, start_query_log,
)
from shared.db.repo.spanner_configs import load_span_plan
from shared.dicom.dicom_json import dataset_to_json
from shared.dicom.levels import default_model
from shared.distributed.intake import (
    HTTP_QUERY_TYPES, Requester, SpanRequestError, check_query_id, enabled_config, finished_view, log_view,
    validate_span_request,
)
from shared.logging import log_event
from shared.span_client import InProcessSpanClient
from shared.spanning.codec import result_to_dict
from shared.spanning.model import Match, SourceOutcome, SourceStatus, SpanRequest, SpanResult, SpanStatus
from shared.spanning.policy import ok_count
from shared.spanning.ports import CancelToken

logger = logging.getLogger(__name__)
CANCEL_GRACE_SECONDS = 2.0  # how long a cancel waits for the engine to close the span itself
CALLER_CANCEL = "cancelled by the caller"


@dataclass
class _Live:
    """A span of this process, until its result is in the database."""

    sources: list[str]
    cancel: CancelToken = field(default_factory=CancelToken)
    done: threading.Event = field(default_factory=threading.Event)
    started_at: float | None = None  # time.monotonic() when the engine started
    outcomes: dict[str, SourceOutcome] = field(default_factory=dict)
    matches: list[Match] = field(default_factory=list)


class EmbeddedSpans:
    """Accept, describe and cancel spanning queries run in this process (module doc). Thread-safe."""

    def __init__(self, session_factory, *, client: InProcessSpanClient | None = None, max_concurrent: int = 8,
                 retention: timedelta = timedelta(days=7), clock: Callable[[], float] = time.time) -> None:
        self.session_factory, self._retention, self._clock = session_factory, retention, clock
        self._client = client or InProcessSpanClient()
        self._owns_client = client is None
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="embedded-span")
        self._live: dict[str, _Live] = {}
        self._lock = threading.Lock()

    def accept(self, *, config_id: int | None, config_name: str | None, query_type: str, query_level: str,
               keys: Any, requester: Requester = Requester()) -> dict[str, Any]:
        """Validate and record a spanning query (`accepted`, with its deadline), start it in the background; the
        202 body. SpanRequestError (4xx) names the field, as shared.distributed.intake.accept_span."""
        kind, level, identifier = validate_span_request(config_id, config_name, query_type, query_level, keys,
                                                        HTTP_QUERY_TYPES)
        query_id = uuid.uuid4().hex
        with self.session_factory.begin() as session:
            config = enabled_config(session, config_id, config_name)
            plan = load_span_plan(session, config_id=config.id)
            accepted = datetime.fromtimestamp(self._clock(), tz=timezone.utc)
            start_query_log(session, query_id=query_id, config_id=config.id, query_type=kind, level=level.value,
                            filters=dataset_to_json(identifier), requester_user=requester.user,
                            requester_ae_title=requester.ae_title, client_address=requester.address,
                            status=QueryLogStatus.ACCEPTED,
                            deadline_at=accepted + timedelta(seconds=config.query_timeout_seconds))
            config_label = config.name
        request = SpanRequest(level=level, identifier=identifier, model=default_model(level), query_id=query_id,
                              query_type=kind.value)
        live = _Live(sources=[source.name for source in plan.sources])
        with self._lock:
            self._live[query_id] = live
        self._pool.submit(self._run, request, plan.sources, plan.policy, live)
        log_event(logger, "spanning_query_accepted", query_id=query_id, spanner_config=config_label,
                  query_level=level.value, requester=requester.user, mode="embedded")
        return {"query_id": query_id, "status": "accepted",
                "message": f"query accepted for spanner config {config_label!r}; poll the status URL for results",
                "status_url": f"/spanning-query/{query_id}"}

    def describe(self, query_id: str, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """The query's status, every source's outcome or progress, and one page of (merged) results: the same
        view as shared.distributed.intake.describe_span. SpanRequestError(404) for an unknown id."""
        check_query_id(query_id)
        with self.session_factory() as session:
            log = get_query_log(session, query_id=query_id)
            if log is None:
                raise SpanRequestError(404, f"no spanning query {query_id!r}")
            view = log_view(session, log)
            final = None if log.is_open else get_query_result(session, query_id=query_id)
        if not log.is_open:
            return finished_view(view, log, final, offset, limit)
        with self._lock:
            live = self._live.get(query_id)
        return _live_view(view, live, offset, limit)

    def is_finished(self, query_id: str) -> bool:
        """False while this process runs the span (cheap: memory only, for long-polling)."""
        with self._lock:
            live = self._live.get(query_id)
        return live is None or live.done.is_set()

    def cancel(self, query_id: str) -> dict[str, Any]:
        """Cancel a query: its outstanding source queries stop and it ends `cancelled`. SpanRequestError 404 for an
        unknown id, 409 when it had already finished as something else."""
        check_query_id(query_id)
        with self._lock:
            live = self._live.get(query_id)
        if live is not None:
            live.cancel.cancel()
            if not live.done.wait(CANCEL_GRACE_SECONDS):  # the engine did not close it in time: close it here
                self._commit(_cancelled_result(query_id, live))
        with self.session_factory() as session:
            log = get_query_log(session, query_id=query_id)
            if log is None:
                raise SpanRequestError(404, f"no spanning query {query_id!r}")
        if log.is_open:  # left open by an earlier process: nothing runs it any more
            self._commit(_cancelled_result(query_id, _Live(sources=[])))
            log = self._reload(query_id)
        if log.status is not QueryLogStatus.CANCELLED:
            raise SpanRequestError(409, f"query {query_id} already finished ({log.status.value})")
        log_event(logger, "spanning_query_cancelled", query_id=query_id, mode="embedded")
        return {"query_id": query_id, "status": "cancelled",
                "message": "query cancelled; outstanding source queries were told to stop"}

    def recover(self) -> int:
        """Close as failed the spans an earlier process accepted and never finished, once past their deadline
        (spans without a deadline, e.g. the spanning SCP's, are not the coordinator's); how many were closed."""
        now = datetime.fromtimestamp(self._clock(), tz=timezone.utc)
        with self.session_factory() as session:
            overdue = overdue_query_ids(session, now=now)
        with self._lock:
            orphans = [query_id for query_id in overdue if query_id not in self._live]
        closed = sum(1 for query_id in orphans if self._commit(SpanResult(
            query_id=query_id, status=SpanStatus.FAILED, matches=(), outcomes=(), raw_count=0, duration_ms=0.0,
            error="the coordinator stopped before the span finished")))
        if closed:
            log_event(logger, "embedded_spans_recovered", logging.WARNING, closed=closed)
        return closed

    def close(self) -> None:
        """Cancel the running spans, wait for them to be recorded, release the client's connections."""
        with self._lock:
            running = list(self._live.values())
        for live in running:
            live.cancel.cancel()
        self._pool.shutdown(wait=True, cancel_futures=False)
        if self._owns_client:
            self._client.close()

    def _run(self, request: SpanRequest, sources, policy, live: _Live) -> None:
        """One span on a pool thread: mark it running, stream the engine's events into `live`, keep the result."""
        result: SpanResult | None = None
        try:
            if live.cancel.cancelled:
                result = _cancelled_result(request.query_id, live)
                return
            with self.session_factory.begin() as session:
                mark_query_running(session, query_id=request.query_id)
            live.started_at = time.monotonic()
            for event in self._client.stream(request, sources, policy, cancel=live.cancel):
                if isinstance(event, Match):
                    live.matches.append(event)
                elif isinstance(event, SourceOutcome):
                    live.outcomes[event.source] = event
                elif isinstance(event, SpanResult):
                    result = event
        except Exception as exc:
            log_event(logger, "embedded_span_failed", logging.ERROR, query_id=request.query_id,
                      error=f"{type(exc).__name__}: {exc}")
            result = SpanResult(query_id=request.query_id, status=SpanStatus.FAILED, matches=(), outcomes=(),
                                raw_count=0, duration_ms=0.0, error=f"{type(exc).__name__}: {exc}")
        finally:
            self._finish(request.query_id, result, live)

    def _finish(self, query_id: str, result: SpanResult | None, live: _Live) -> None:
        try:
            if result is not None:
                self._commit(result)
        except Exception as exc:
            log_event(logger, "query_log_write_failed", logging.ERROR, query_id=query_id,
                      error=f"{type(exc).__name__}: {exc}")
        finally:
            live.done.set()
            with self._lock:
                self._live.pop(query_id, None)

    def _commit(self, result: SpanResult) -> bool:
        """Close the query log and keep the result (compare-and-set: False when the span was already closed)."""
        keep_until = datetime.fromtimestamp(self._clock(), tz=timezone.utc) + self._retention
        with self.session_factory.begin() as session:
            return close_query_log(session, query_id=result.query_id, result=result,
                                   result_data=result_to_dict(result), keep_until=keep_until)

    def _reload(self, query_id: str):
        with self.session_factory() as session:
            return get_query_log(session, query_id=query_id)


def _cancelled_result(query_id: str, live: _Live) -> SpanResult:
    """A span cancelled before the engine closed it: recorded outcomes, the other sources `cancelled`."""
    elapsed = (time.monotonic() - live.started_at) * 1000.0 if live.started_at else 0.0
    outcomes = tuple(live.outcomes.get(name) or SourceOutcome(source=name, status=SourceStatus.CANCELLED,
                                                              latency_ms=elapsed, error=CALLER_CANCEL)
                     for name in live.sources)
    matches = tuple(live.matches)
    return SpanResult(query_id=query_id, status=SpanStatus.CANCELLED, matches=matches, outcomes=outcomes,
                      raw_count=sum(o.match_count for o in outcomes), duration_ms=elapsed, error=CALLER_CANCEL)


def _live_view(view: dict[str, Any], live: _Live | None, offset: int, limit: int) -> dict[str, Any]:
    """A running span: the outcomes so far, the others `running` (or `pending` before the engine started), the
    matches so far (FIRST_WINS streams them; the other strategies merge at the end, shared.spanning.engine)."""
    names = live.sources if live is not None else []
    outcomes = dict(live.outcomes) if live is not None else {}
    started = live.started_at if live is not None else None
    matches = list(live.matches) if live is not None else []
    sources = []
    for name in names:
        if name in outcomes:
            sources.append(outcomes[name].as_dict())
            continue
        sources.append({"source": name, "status": "running" if started else "pending", "match_count": 0,
                        "latency_ms": round((time.monotonic() - started) * 1000.0, 1) if started else 0.0,
                        "retries": 0, "error": None, "truncated": False})
    return {**view, "total_results": len(matches), "raw_results": sum(o.match_count for o in outcomes.values()),
            "sources_queried": sum(1 for o in outcomes.values() if o.status is not SourceStatus.SKIPPED)
            + sum(1 for name in names if name not in outcomes),
            "sources_responded": ok_count(outcomes.values()), "sources": sources, "offset": offset, "limit": limit,
            "results": [dataset_to_json(match.dataset) for match in matches[offset:offset + limit]]}
