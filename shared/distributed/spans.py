"""The distributed span: the engine's rules (shared.spanning) run as idempotent steps on Celery workers.

In-process, one thread (shared.spanning.engine) owns a span from start to end. Here no process owns it: its state
lives in Redis (shared.distributed.store) and PostgreSQL, and each step may run on any worker, run twice
(redelivery) or never (a lost message), so every step is idempotent and the deadline is kept by whoever comes
first: the FINALIZE_SPAN task due at the deadline, or a coordinator's sweep (shared.distributed.intake). What is
shared with the engine is everything that decides: the per-source worker with its retries and response-key cut
(shared.spanning.worker, run by shared.distributed.source_task), the merge (Merger), the failure strategies and
statuses (shared.spanning.policy), the circuit breaker (shared.spanning.health) and the result codec.

Steps:
* `plan_span` (queue spanning_queries): the config's sources and policy, the result cache and the breakers; stores
  the plan, launches the first `max_concurrent_sources` sources, schedules the deadline, marks the log running.
* a source task per source (queue dimse_tasks, shared.distributed.source_task): records that source's outcome.
* `source_finished` (queue results_aggregation): launches the next pending source, and finalises the span once
  every source has an outcome or the failure strategy has already lost (FAIL_FAST, MINIMUM_THRESHOLD).
* `finalize_span`: merges every source's answers, gives the sources without an outcome `timeout` (deadline),
  `cancelled` (caller, or the strategy lost), writes the result once (a compare-and-set on the query log) to
  PostgreSQL (kept for the retention) and Redis, records source health, caches a completed result.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from shared.db.repo.query_logs import close_query_log, get_query_log, mark_query_running
from shared.db.repo.spanner_configs import load_span_plan
from shared.dicom.charset import normalize_output_charset
from shared.dicom.dicom_json import dataset_from_json
from shared.dicom.levels import QueryLevel, default_model
from shared.distributed.plan import Plan, planned_source
from shared.distributed.runtime import SpanRuntime
from shared.logging import log_event
from shared.messaging.contracts import FINALIZE_SPAN, QUERY_SOURCE
from shared.metrics import record_distributed_span
from shared.span_client import health_key, log_span_result, span_cache_key
from shared.spanning import policy as rules
from shared.spanning.codec import result_from_dict, result_to_dict
from shared.spanning.health import SourceHealth, record_outcome, skip_reason
from shared.spanning.merge import Merger
from shared.spanning.model import SourceOutcome, SourceStatus, SpanRequest, SpanResult, SpanStatus

logger = logging.getLogger(__name__)
CALLER_CANCEL = "cancelled by the caller"


def plan_span(rt: SpanRuntime, query_id: str) -> None:
    """Plan an accepted span and launch its first sources (idempotent: a replay re-sends the launches)."""
    with rt.session_factory() as session:
        log = get_query_log(session, query_id=query_id)
        if log is None or not log.is_open:
            return
        existing = rt.store.plan(query_id)
        if existing is not None:
            plan = Plan.from_dict(existing)
            _send_launches(rt, plan, 0, rt.store.launched(query_id))
        else:
            try:
                plan = _new_plan(rt, session, log)
            except (LookupError, ValueError) as exc:
                fail_unplanned(rt, log, str(exc))
                return
            if plan is None:  # answered from the cache
                return
            if rt.store.put_plan(query_id, plan.to_dict()):
                _start(rt, plan)
            else:  # another worker planned it meanwhile
                plan = Plan.from_dict(rt.store.plan(query_id))
                _send_launches(rt, plan, 0, rt.store.launched(query_id))
    with rt.session_factory.begin() as session:
        mark_query_running(session, query_id=query_id)
    log_event(logger, "spanning_query_planned", query_id=query_id, sources=len(plan.sources),
              skipped=sorted(plan.skipped), spanner_config_id=plan.config_id)
    if not plan.queried:
        finalize_span(rt, query_id)


def _new_plan(rt: SpanRuntime, session, log) -> Plan | None:
    """The plan from the config as it is now; None when the result cache answered (the span is then finished)."""
    span_plan = load_span_plan(session, config_id=log.spanner_config_id)
    level = QueryLevel(log.query_level)
    request = SpanRequest(level=level, identifier=dataset_from_json(log.query_filters or {}),
                          model=default_model(level), query_id=log.query_id, query_type=log.query_type.value)
    sources, ttl = span_plan.sources, float(span_plan.config.cache_ttl_seconds or 0)
    key = span_cache_key(request, sources, span_plan.policy) if ttl > 0 else None
    accepted_at = log.started_at.timestamp()
    deadline = log.deadline_at.timestamp() if log.deadline_at else accepted_at + span_plan.policy.query_timeout_seconds
    plan = Plan(query_id=log.query_id, config_id=span_plan.config.id, config_name=span_plan.config.name,
                request=request, policy=span_plan.policy, sources=tuple(planned_source(s) for s in sources),
                skipped=_open_breakers(rt, sources), accepted_at=accepted_at, deadline=deadline,
                cache_key=key, cache_ttl_seconds=ttl)
    cached = rt.cache.get(key) if key else None
    if cached is not None:
        result = result_from_dict(cached)
        result = SpanResult(query_id=log.query_id, status=result.status, matches=result.matches,
                            outcomes=result.outcomes, raw_count=result.raw_count, duration_ms=0.0, error=result.error)
        _commit(rt, plan, result, cache_hit=True)
        return None
    return plan


def _open_breakers(rt: SpanRuntime, sources) -> dict[str, str]:
    now, reasons = rt.clock(), {}
    for source in sources:
        reason = skip_reason(SourceHealth.from_dict(rt.cache.get(health_key(source))), now)
        if reason is not None:
            reasons[source.name] = reason
    return reasons


def _start(rt: SpanRuntime, plan: Plan) -> None:
    """Launch the first sources and schedule the deadline."""
    first = min(plan.policy.max_concurrent_sources, len(plan.queried))
    total = rt.store.claim_launches(plan.query_id, first) if first else 0
    _send_launches(rt, plan, total - first, total)
    rt.publish(FINALIZE_SPAN, [plan.query_id], max(0.0, plan.deadline - rt.clock()))


def _send_launches(rt: SpanRuntime, plan: Plan, start: int, stop: int) -> None:
    queried = plan.queried
    for source in queried[start:min(stop, len(queried))]:
        if not rt.store.has_outcome(plan.query_id, source.name):
            rt.publish(QUERY_SOURCE, [plan.query_id, source.name], None)


def source_finished(rt: SpanRuntime, query_id: str, source: str) -> None:
    """A source has its outcome: launch the next pending source; finalise when the span is decided."""
    if rt.store.has_result(query_id):
        return
    raw = rt.store.plan(query_id)
    if raw is None:
        return  # the live state is gone (Redis flushed): the deadline sweep finalises from PostgreSQL
    plan = Plan.from_dict(raw)
    if rt.store.release_once(query_id, source):
        total = rt.store.claim_launches(query_id, 1)
        _send_launches(rt, plan, total - 1, total)
    names = [s.name for s in plan.queried]
    recorded = rt.store.outcomes(query_id, names)
    outstanding = len(names) - len(recorded)
    finished = [outcome_from_data(name, data) for name, data in recorded.items()]
    if outstanding == 0 or rules.should_stop_early(finished, outstanding, plan.policy):
        finalize_span(rt, query_id)


def finalize_due(rt: SpanRuntime, query_id: str) -> None:
    """The deadline task: finalise the span (if still open); early by clock skew, wait the rest first."""
    raw = rt.store.plan(query_id)
    if raw is not None:
        left = Plan.from_dict(raw).deadline - rt.clock()
        if left > 0.05:
            rt.publish(FINALIZE_SPAN, [query_id], left)
            return
    finalize_span(rt, query_id)


def finalize_span(rt: SpanRuntime, query_id: str, *, cancelled: bool = False) -> SpanResult | None:
    """Finish the span now from whatever its sources recorded (module doc); the result, or None when the span was
    already finished (by another process, or never accepted)."""
    if cancelled:
        rt.store.request_stop(query_id, CALLER_CANCEL)
    with rt.session_factory() as session:
        log = get_query_log(session, query_id=query_id)
        if log is None or not log.is_open:
            return None
        raw = rt.store.plan(query_id)
        plan = Plan.from_dict(raw) if raw is not None else _rebuilt_plan(rt, session, log)
    if plan is None:
        return fail_unplanned(rt, log, "the span's live state was lost (Redis) before it was planned",
                               cancelled=cancelled)
    result = _assemble(rt, plan, cancelled=cancelled or rt.store.stop_reason(query_id) == CALLER_CANCEL)
    return result if _commit(rt, plan, result) else None


def _rebuilt_plan(rt: SpanRuntime, session, log) -> Plan | None:
    """A plan from PostgreSQL when Redis lost it (flushed mid-span); None when the config is gone too."""
    try:
        span_plan = load_span_plan(session, config_id=log.spanner_config_id)
    except (LookupError, ValueError):
        return None
    level = QueryLevel(log.query_level)
    accepted_at = log.started_at.timestamp()
    return Plan(query_id=log.query_id, config_id=span_plan.config.id, config_name=span_plan.config.name,
                request=SpanRequest(level=level, identifier=dataset_from_json(log.query_filters or {}),
                                    model=default_model(level), query_id=log.query_id,
                                    query_type=log.query_type.value),
                policy=span_plan.policy, sources=tuple(planned_source(s) for s in span_plan.sources), skipped={},
                accepted_at=accepted_at,
                deadline=log.deadline_at.timestamp() if log.deadline_at else accepted_at)


def _assemble(rt: SpanRuntime, plan: Plan, *, cancelled: bool) -> SpanResult:
    """The span's result from the recorded outcomes and answers (engine semantics, shared.spanning.engine)."""
    query_id, now = plan.query_id, rt.clock()
    names = [source.name for source in plan.sources]
    recorded = rt.store.outcomes(query_id, names)
    progress = rt.store.progress(query_id, names)
    merger = merge_answers(rt, plan, recorded, progress)
    open_status, open_error = _unfinished(plan, now, cancelled)
    outcomes = []
    for source in plan.sources:
        if source.name in plan.skipped:
            outcome = SourceOutcome(source=source.name, status=SourceStatus.SKIPPED, error=plan.skipped[source.name])
        elif source.name in recorded:
            outcome = outcome_from_data(source.name, recorded[source.name])
        else:
            started = progress[source.name].get("started_at")
            outcome = SourceOutcome(
                source=source.name, status=open_status,
                latency_ms=(now - float(started)) * 1000.0 if started else 0.0,
                retries=int(progress[source.name].get("retries") or 0),
                error=open_error if started or open_status is not SourceStatus.TIMEOUT
                else f"not started before the {_deadline_text(plan)}")
        outcomes.append(_counted(outcome, merger.contributed(source.name)))
    status = rules.span_status(outcomes, plan.policy, cancelled=cancelled)
    raw_count = sum(merger.contributed(name) for name in names)
    return SpanResult(query_id=query_id, status=status, matches=tuple(merger.matches()), outcomes=tuple(outcomes),
                      raw_count=raw_count, duration_ms=max(0.0, now - plan.accepted_at) * 1000.0,
                      error=rules.span_error(status, outcomes, plan.policy, cancelled=cancelled))


def merge_answers(rt: SpanRuntime, plan: Plan, recorded: dict[str, dict], progress: dict[str, dict]) -> Merger:
    """Every source's answers so far through the plan's Merger: finished sources in the order they finished
    (FIRST_WINS depends on it), then the others' current attempts (answers of sources that later fail or time
    out count too, as in the engine)."""
    names = [source.name for source in plan.sources]
    merger = Merger(plan.request.level, plan.policy.dedup_strategy, [s.spec() for s in plan.sources],
                    finalize=normalize_output_charset)
    order = [n for n in rt.store.finish_order(plan.query_id) if n in recorded] + [n for n in names
                                                                                if n not in recorded]
    for name in dict.fromkeys(order):
        attempt = recorded[name]["attempt"] if name in recorded else int(progress[name].get("attempt") or 0)
        if attempt:
            for answer in rt.store.answers(plan.query_id, name, attempt):
                merger.add(name, dataset_from_json(answer))
    return merger


def _unfinished(plan: Plan, now: float, cancelled: bool) -> tuple[SourceStatus, str]:
    """What a source without an outcome is reported as when the span is finalised now."""
    if cancelled:
        return SourceStatus.CANCELLED, CALLER_CANCEL
    if now >= plan.deadline - 0.001:
        return SourceStatus.TIMEOUT, _deadline_text(plan)
    return SourceStatus.CANCELLED, f"cancelled: span failed ({plan.policy.failure_strategy.value})"


def _deadline_text(plan: Plan) -> str:
    return f"query deadline ({plan.policy.query_timeout_seconds:g}s) exceeded"


def outcome_from_data(name: str, data: dict[str, Any]) -> SourceOutcome:
    """A recorded outcome (shared.distributed.store) as the engine's SourceOutcome."""
    return SourceOutcome(source=name, status=SourceStatus(data["status"]), match_count=data.get("match_count", 0),
                         latency_ms=data.get("latency_ms", 0.0), retries=data.get("retries", 0),
                         error=data.get("error"), truncated=data.get("truncated", False))


def _counted(outcome: SourceOutcome, count: int) -> SourceOutcome:
    return SourceOutcome(source=outcome.source, status=outcome.status, match_count=count,
                         latency_ms=outcome.latency_ms, retries=outcome.retries, error=outcome.error,
                         truncated=outcome.truncated)


def fail_unplanned(rt: SpanRuntime, log, error: str, *, cancelled: bool = False) -> SpanResult | None:
    """Finish a span that could not be planned (config deleted or disabled, live state lost)."""
    status = SpanStatus.CANCELLED if cancelled else SpanStatus.FAILED
    result = SpanResult(query_id=log.query_id, status=status, matches=(), outcomes=(), raw_count=0,
                        duration_ms=max(0.0, rt.clock() - log.started_at.timestamp()) * 1000.0,
                        error=CALLER_CANCEL if cancelled else error)
    return result if _commit(rt, None, result) else None


def _commit(rt: SpanRuntime, plan: Plan | None, result: SpanResult, *, cache_hit: bool = False) -> bool:
    """Write the result once (PostgreSQL compare-and-set, then Redis), stop outstanding work, record health, cache
    a completed result, log. False when another process finished the span first."""
    data = result_to_dict(result)
    with rt.session_factory.begin() as session:
        won = close_query_log(session, query_id=result.query_id, result=result, result_data=data,
                              keep_until=datetime.fromtimestamp(rt.clock(), tz=timezone.utc) + rt.retention)
    if not won:
        return False
    rt.store.close(result.query_id, data, f"span {result.status.value}",
                   [source.name for source in plan.sources] if plan is not None else ())
    if plan is not None and not cache_hit:
        _record_health(rt, plan, result)
        if plan.cache_key and result.status is SpanStatus.COMPLETED:
            rt.cache.set(plan.cache_key, data, plan.cache_ttl_seconds)
    log_span_result(result, cache_hit=cache_hit)
    record_distributed_span(rt.store, result, plan.request.query_type if plan else None, cache_hit=cache_hit)
    return True


def _record_health(rt: SpanRuntime, plan: Plan, result: SpanResult) -> None:
    """Each source's health after this span (shared.spanning.health), shared through the cache."""
    now, keep = rt.clock(), max(3600.0, rt.breaker.cooldown_seconds * 10)
    for outcome in result.outcomes:
        source = plan.source(outcome.source)
        if source is None or not source.health_key or outcome.status in (SourceStatus.SKIPPED,
                                                                         SourceStatus.CANCELLED):
            continue
        key = source.health_key
        health = record_outcome(SourceHealth.from_dict(rt.cache.get(key)), outcome, rt.breaker, now)
        rt.cache.set(key, health.as_dict(), keep)
