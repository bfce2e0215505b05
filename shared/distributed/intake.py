"""The coordinator's side of a distributed span: accept, describe, cancel, and the deadline sweep.

The coordinator keeps nothing in memory: a query is a `spanner_query_logs` row (written `accepted` before the
plan message is published), its live state in Redis, its final result in Redis and PostgreSQL. Any number of
coordinators serve the same queries.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from shared.choices import parse_choice
from shared.db.models import QueryLogStatus, QueryType
from shared.db.repo.query_logs import (
    get_query_log, get_query_result, overdue_query_ids, purge_expired_results, stale_accepted_query_ids,
    start_query_log,
)
from shared.db.repo.spanner_configs import get_spanner_config, load_span_plan
from shared.dicom.dicom_json import dataset_to_json
from shared.dicom.levels import QueryLevel, default_model
from shared.dicom.query_keys import QueryKeyError, identifier_from_mapping
from shared.distributed.plan import Plan
from shared.distributed.runtime import SpanRuntime
from shared.distributed.spans import fail_unplanned, finalize_span, merge_answers, outcome_from_data
from shared.logging import log_event
from shared.messaging.contracts import PLAN_SPAN
from shared.spanning.model import SourceStatus
from shared.spanning.policy import ok_count

logger = logging.getLogger(__name__)
# What the coordinator's HTTP callers may ask for: a span is a C-FIND across the sources.
HTTP_QUERY_TYPES = frozenset({QueryType.C_FIND})
# What the in-process distributed span client records: the spanning SCP's C-FINDs, and the locates of C-MOVE, C-GET
# and WADO-RS retrievals (PS3.4 C.4.2.2: a locate is a C-FIND; the query log names the operation it serves).
LOCATE_QUERY_TYPES = frozenset(QueryType)
QUERY_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
MAX_KEYS = 64
REPLAN_AFTER = timedelta(seconds=10)  # an `accepted` query not planned by then has its plan message sent again
FINISHED = {"completed", "partial", "failed", "cancelled"}


class SpanRequestError(Exception):
    """A request the coordinator refuses: `status_code` for HTTP, the message names the field."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class Requester:
    """Who asked: the API key's name (RBAC: non-admins see only their own queries), address, and the calling AE
    title when the query came through the spanning DIMSE SCP."""

    user: str | None = None
    address: str | None = None
    ae_title: str | None = None


def check_query_id(query_id: str) -> str:
    """A query id is 32 lowercase hex characters (uuid4().hex); anything else is a 404 without a lookup."""
    if not isinstance(query_id, str) or not QUERY_ID_PATTERN.fullmatch(query_id):
        raise SpanRequestError(404, f"no spanning query {query_id[:64]!r}")
    return query_id


def accept_span(rt: SpanRuntime, *, config_id: int | None, config_name: str | None, query_type: str,
                query_level: str, keys: Any, requester: Requester = Requester(),
                query_types: frozenset[QueryType] = HTTP_QUERY_TYPES) -> dict[str, Any]:
    """Validate and record a spanning query, then queue it (PLAN_SPAN); the 202 body. SpanRequestError (4xx) names
    the field; 503 when the broker cannot take the message (the query is then closed as failed, not lost).
    `query_types`: the query types this caller may record (see HTTP_QUERY_TYPES / LOCATE_QUERY_TYPES)."""
    kind, level, identifier = validate_span_request(config_id, config_name, query_type, query_level, keys,
                                                    query_types)
    query_id = uuid.uuid4().hex
    with rt.session_factory.begin() as session:
        config = enabled_config(session, config_id, config_name)
        accepted = datetime.fromtimestamp(rt.clock(), tz=timezone.utc)
        log = start_query_log(session, query_id=query_id, config_id=config.id, query_type=kind, level=level.value,
                        filters=dataset_to_json(identifier), requester_user=requester.user,
                        requester_ae_title=requester.ae_title,
                        client_address=requester.address, status=QueryLogStatus.ACCEPTED,
                        deadline_at=accepted + timedelta(seconds=config.query_timeout_seconds))
        config_label = config.name
    try:
        rt.publish(PLAN_SPAN, [query_id], None)
    except Exception as exc:
        log_event(logger, "spanning_query_not_queued", logging.ERROR, query_id=query_id, error=str(exc))
        fail_unplanned(rt, log, f"not queued: the message broker is unavailable ({exc})")  # not left open
        raise SpanRequestError(503, f"the message broker is unavailable, query not queued: {exc}") from None
    log_event(logger, "spanning_query_accepted", query_id=query_id, spanner_config=config_label,
              query_level=level.value, requester=requester.user)
    return {"query_id": query_id, "status": "accepted",
            "message": f"query accepted for spanner config {config_label!r}; poll the status URL for results",
            "status_url": f"/spanning-query/{query_id}"}


def enabled_config(session, config_id: int | None, config_name: str | None):
    """The spanner config named by id or name: 404 naming the field when there is none, 409 when it is disabled."""
    config = get_spanner_config(session, id=config_id) if config_id is not None else \
        get_spanner_config(session, name=config_name)
    if config is None:
        field = "spanner_config_id" if config_id is not None else "spanner_config"
        wanted = config_id if config_id is not None else config_name
        raise SpanRequestError(404, f"{field}: no spanner config {wanted!r}")
    if not config.is_enabled:
        raise SpanRequestError(409, f"spanner config {config.name!r} is disabled")
    return config


def validate_span_request(config_id, config_name, query_type, query_level, keys,
                          query_types: frozenset[QueryType] = HTTP_QUERY_TYPES):
    """(query type, level, identifier) of a spanning query request, or SpanRequestError(422) naming the field.
    The keys become a C-FIND identifier of `query_level` (PS3.4 C.4.1.1.3: one Query/Retrieve level, the unique
    keys above it); shared by the distributed intake and the embedded coordinator (shared.embedded_spans)."""
    if (config_id is None) == (config_name is None):
        raise SpanRequestError(422, "give exactly one of spanner_config_id or spanner_config")
    try:
        kind = parse_choice(QueryType, query_type, "query_type")
    except ValueError as exc:
        raise SpanRequestError(422, str(exc)) from None
    if kind not in query_types:
        raise SpanRequestError(422, f"query_type: {kind.value} is not spanned by the coordinator; use C-FIND")
    try:
        level = QueryLevel.parse(query_level)
    except ValueError as exc:
        raise SpanRequestError(422, f"query_level: {exc}") from None
    if not isinstance(keys, Mapping):
        raise SpanRequestError(422, f"body: the query keys must be a JSON object, got {type(keys).__name__}")
    if len(keys) > MAX_KEYS:
        raise SpanRequestError(422, f"body: at most {MAX_KEYS} query keys")
    try:
        identifier = identifier_from_mapping(keys, level=level.value, model=default_model(level))
    except (QueryKeyError, ValueError) as exc:
        raise SpanRequestError(422, f"body: {exc}") from None
    return kind, level, identifier


def describe_span(rt: SpanRuntime, query_id: str, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
    """The query's status, every source's outcome or progress, and one page of (merged) results.

    Final results come from Redis, else PostgreSQL (after a flush or restart, within the retention); a running
    query is described from its live state. SpanRequestError(404) for an unknown id.
    """
    check_query_id(query_id)
    with rt.session_factory() as session:
        log = get_query_log(session, query_id=query_id)
        if log is None:
            raise SpanRequestError(404, f"no spanning query {query_id!r}")
        view = log_view(session, log)
        final = None if log.is_open else (rt.store.result(query_id) or get_query_result(session, query_id=query_id))
        raw_plan = rt.store.plan(query_id) if log.is_open else None
        pending = _configured_sources(session, log) if log.is_open and raw_plan is None else []
    if not log.is_open:
        return finished_view(view, log, final, offset, limit)
    if raw_plan is None:
        return {**view, "sources": [{"source": name, "status": "pending", "match_count": 0, "latency_ms": 0.0,
                                     "retries": 0, "error": None, "truncated": False} for name in pending],
                "results": [], "offset": offset, "limit": limit}
    return _live_view(rt, view, Plan.from_dict(raw_plan), offset, limit)


def log_view(session, log) -> dict[str, Any]:
    """The fields of a query's GET view that its `spanner_query_logs` row holds (both modes use it)."""
    config = get_spanner_config(session, id=log.spanner_config_id) if log.spanner_config_id else None
    execution = log.duration_ms
    if execution is None:
        execution = max(0.0, (datetime.now(timezone.utc) - log.started_at).total_seconds() * 1000.0)
    return {
        "query_id": log.query_id, "status": log.status.value, "spanner_config_id": log.spanner_config_id,
        "spanner_config": config.name if config is not None else None, "query_type": log.query_type.value,
        "query_level": log.query_level,
        "total_results": log.deduplicated_result_count or 0, "raw_results": log.raw_result_count or 0,
        "sources_queried": 0, "sources_responded": 0, "execution_time_ms": round(execution, 1),
        "accepted_at": _iso(log.started_at), "completed_at": _iso(log.completed_at),
        "deadline_at": _iso(log.deadline_at), "error": log.error_message, "requested_by": log.requester_user,
    }


def _configured_sources(session, log) -> list[str]:
    try:
        return [s.name for s in load_span_plan(session, config_id=log.spanner_config_id).sources]
    except (LookupError, ValueError):
        return []


def finished_view(view: dict[str, Any], log, data: dict[str, Any] | None, offset: int, limit: int
                  ) -> dict[str, Any]:
    """The GET view of a finished query from its kept result `data` (shared.spanning.codec), or, past the
    retention (`data` None), the log's summary with `results_expired`."""
    if data is None:
        return {**view, "sources": log.source_outcomes or [], "results": [], "offset": offset, "limit": limit,
                "results_expired": True}
    sources = data["sources"]
    return {**view, "status": data["status"], "total_results": data["deduplicated_count"],
            "raw_results": data["raw_count"], "execution_time_ms": data["duration_ms"], "error": data["error"],
            "sources_queried": sum(1 for s in sources if s["status"] != SourceStatus.SKIPPED.value),
            "sources_responded": sum(1 for s in sources if s["status"] == SourceStatus.OK.value),
            "sources": sources, "offset": offset, "limit": limit,
            "results": data["matches"][offset:offset + limit]}


def _live_view(rt: SpanRuntime, view: dict[str, Any], plan: Plan, offset: int, limit: int) -> dict[str, Any]:
    """A running span: recorded outcomes, live progress of the others, the merge of what arrived so far."""
    names = [source.name for source in plan.sources]
    recorded = rt.store.outcomes(plan.query_id, names)
    progress = rt.store.progress(plan.query_id, names)
    merger = merge_answers(rt, plan, recorded, progress)
    sources, outcomes = [], []
    for name in names:
        if name in plan.skipped:
            entry = {"source": name, "status": SourceStatus.SKIPPED.value, "match_count": 0, "latency_ms": 0.0,
                     "retries": 0, "error": plan.skipped[name], "truncated": False}
        elif name in recorded:
            outcome = outcome_from_data(name, recorded[name])
            outcomes.append(outcome)
            entry = {**outcome.as_dict(), "match_count": merger.contributed(name)}
        else:
            state = progress[name]
            started = float(state["started_at"]) if state.get("started_at") else None
            entry = {"source": name, "status": "running" if started else "pending",
                     "match_count": int(state.get("count") or 0),
                     "latency_ms": round((rt.clock() - started) * 1000.0, 1) if started else 0.0,
                     "retries": int(state.get("retries") or 0), "error": None, "truncated": False}
        sources.append(entry)
    matches = merger.matches()
    return {**view, "spanner_config": plan.config_name, "total_results": len(matches),
            "raw_results": sum(merger.contributed(name) for name in names),
            "sources_queried": len(plan.queried), "sources_responded": ok_count(outcomes),
            "sources": sources, "offset": offset, "limit": limit,
            "results": [dataset_to_json(match.dataset) for match in matches[offset:offset + limit]]}


def is_finished(rt: SpanRuntime, query_id: str) -> bool:
    """Cheap check for long-polling: the final result is in Redis (or the log is closed)."""
    if rt.store.has_result(query_id):
        return True
    with rt.session_factory() as session:
        log = get_query_log(session, query_id=query_id)
        return log is None or not log.is_open


def cancel_span(rt: SpanRuntime, query_id: str) -> dict[str, Any]:
    """Cancel a query: its outstanding source queries are told to stop, and it is finalised `cancelled` now.

    SpanRequestError 404 for an unknown id, 409 when it had already finished (as something else than cancelled).
    """
    check_query_id(query_id)
    with rt.session_factory() as session:
        log = get_query_log(session, query_id=query_id)
        if log is None:
            raise SpanRequestError(404, f"no spanning query {query_id!r}")
    result = finalize_span(rt, query_id, cancelled=True) if log.is_open else None
    if result is None:
        with rt.session_factory() as session:
            status = get_query_log(session, query_id=query_id).status.value
        if status != "cancelled":
            raise SpanRequestError(409, f"query {query_id} already finished ({status})")
    log_event(logger, "spanning_query_cancelled", query_id=query_id)
    return {"query_id": query_id, "status": "cancelled",
            "message": "query cancelled; outstanding source queries were told to stop"}


def sweep(rt: SpanRuntime, *, purge: bool = False) -> dict[str, int]:
    """Keep every deadline whatever happened to workers and messages: finalise open queries past their deadline,
    send the plan message again (at most once per REPLAN_AFTER) for queries accepted but never planned, and (with
    `purge`) delete results past their retention and give Redis span keys that outlived their span a TTL
    (SpanStore.expire_leftovers). Safe in any number of coordinators at once (finalisation is a compare-and-set)."""
    now = datetime.fromtimestamp(rt.clock(), tz=timezone.utc)
    with rt.session_factory() as session:
        overdue = overdue_query_ids(session, now=now)
        stale = stale_accepted_query_ids(session, accepted_before=now - REPLAN_AFTER)
    finalised = sum(1 for query_id in overdue if finalize_span(rt, query_id) is not None)
    stale = [query_id for query_id in stale if rt.store.claim_replan(query_id, REPLAN_AFTER.total_seconds())]
    for query_id in stale:
        rt.publish(PLAN_SPAN, [query_id], None)
    purged = expired = 0
    if purge:
        with rt.session_factory.begin() as session:
            purged = purge_expired_results(session, now=now)
        expired = rt.store.expire_leftovers(rt.clock())
    if finalised or stale or purged or expired:
        log_event(logger, "spanning_sweep", finalised=finalised, replanned=len(stale), purged=purged,
                  expired_live_keys=expired)
    return {"finalised": finalised, "replanned": len(stale), "purged": purged, "expired_live_keys": expired}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
