"""Queries on `spanner_query_logs`: a row when a span starts, completed with its outcome when it ends."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from shared.choices import parse_choice
from shared.db.base import utc_now
from shared.db.models import QueryLogStatus, QueryType, SpannerQueryLog, SpannerQueryResult
from shared.spanning.model import SpanResult


OPEN_STATUSES = (QueryLogStatus.ACCEPTED, QueryLogStatus.RUNNING)


def _query_type(value: str | QueryType) -> QueryType:
    return parse_choice(QueryType, value, "query type")


def start_query_log(
    session: Session,
    *,
    query_id: str,
    config_id: int | None,
    query_type: str | QueryType,
    level: str,
    filters: dict[str, Any] | None,
    requester_ae_title: str | None = None,
    requester_user: str | None = None,
    client_address: str | None = None,
    status: QueryLogStatus = QueryLogStatus.RUNNING,
    deadline_at: datetime | None = None,
) -> SpannerQueryLog:
    """Record that span `query_id` started (status "running"; the coordinator records "accepted" with the
    span's `deadline_at`); `filters` is the identifier as DICOM JSON."""
    log = SpannerQueryLog(
        query_id=query_id,
        spanner_config_id=config_id,
        query_type=_query_type(query_type),
        query_level=str(getattr(level, "value", level)),
        query_filters=filters,
        requester_ae_title=requester_ae_title,
        requester_user=requester_user,
        client_address=client_address,
        status=status,
        started_at=utc_now(),
        deadline_at=deadline_at,
    )
    session.add(log)
    session.flush()
    return log


def get_query_log(session: Session, *, query_id: str) -> SpannerQueryLog | None:
    """The log of span `query_id`, or None."""
    return session.scalar(select(SpannerQueryLog).where(SpannerQueryLog.query_id == query_id))


def mark_query_running(session: Session, *, query_id: str) -> bool:
    """accepted -> running (a worker planned the span); False when it was not `accepted` any more."""
    changed = session.execute(
        update(SpannerQueryLog)
        .where(SpannerQueryLog.query_id == query_id, SpannerQueryLog.status == QueryLogStatus.ACCEPTED)
        .values(status=QueryLogStatus.RUNNING))
    return changed.rowcount == 1


def close_query_log(session: Session, *, query_id: str, result: SpanResult, result_data: dict[str, Any],
                    keep_until: datetime) -> bool:
    """Finish an open (accepted/running) distributed span exactly once: the row takes the result's status, outcomes
    and counts, and `result_data` (shared.spanning.codec) is kept in spanner_query_results until `keep_until`.

    A compare-and-set on the status, so when two processes finalise the same span (a worker and a coordinator's
    deadline sweep) one wins and the other gets False and must not publish its result.
    """
    changed = session.execute(
        update(SpannerQueryLog)
        .where(SpannerQueryLog.query_id == query_id, SpannerQueryLog.status.in_(OPEN_STATUSES))
        .values(status=QueryLogStatus(result.status.value),
                source_outcomes=[outcome.as_dict() for outcome in result.outcomes],
                raw_result_count=result.raw_count, deduplicated_result_count=len(result.matches),
                duration_ms=round(result.duration_ms, 1), error_message=result.error, completed_at=utc_now()))
    if changed.rowcount != 1:
        return False
    session.add(SpannerQueryResult(query_id=query_id, result=result_data, created_at=utc_now(),
                                   expires_at=keep_until))
    session.flush()
    return True


def get_query_result(session: Session, *, query_id: str, now: datetime | None = None) -> dict[str, Any] | None:
    """The kept result data of a finished distributed span, or None (never kept, or past its retention)."""
    row = session.get(SpannerQueryResult, query_id)
    if row is None or row.expires_at <= (now or utc_now()):
        return None
    return row.result


def overdue_query_ids(session: Session, *, now: datetime | None = None, limit: int = 100) -> list[str]:
    """Open spans whose deadline has passed (they must be finalised whatever their workers did), oldest first."""
    query = (select(SpannerQueryLog.query_id)
             .where(SpannerQueryLog.status.in_(OPEN_STATUSES), SpannerQueryLog.deadline_at <= (now or utc_now()))
             .order_by(SpannerQueryLog.deadline_at).limit(limit))
    return list(session.scalars(query))


def stale_accepted_query_ids(session: Session, *, accepted_before: datetime, limit: int = 100) -> list[str]:
    """Spans still `accepted` (never planned) since before `accepted_before`, within their deadline."""
    query = (select(SpannerQueryLog.query_id)
             .where(SpannerQueryLog.status == QueryLogStatus.ACCEPTED,
                    SpannerQueryLog.started_at < accepted_before, SpannerQueryLog.deadline_at > utc_now())
             .order_by(SpannerQueryLog.started_at).limit(limit))
    return list(session.scalars(query))


def purge_expired_results(session: Session, *, now: datetime | None = None) -> int:
    """Delete kept results past their retention; the number deleted (the query logs stay)."""
    deleted = session.execute(delete(SpannerQueryResult).where(SpannerQueryResult.expires_at <= (now or utc_now())))
    return deleted.rowcount or 0


def finish_query_log(session: Session, *, query_id: str, result: SpanResult) -> None:
    """Complete the log of span `query_id` with its result: status, per-source outcomes, counts, duration, error.

    One UPDATE statement (no read first: this runs once per span, on the query path); a row this session already
    holds is updated too. LookupError if the span was never started with start_query_log.
    """
    changed = session.execute(
        update(SpannerQueryLog)
        .where(SpannerQueryLog.query_id == query_id)
        .values(status=QueryLogStatus(result.status.value),
                source_outcomes=[outcome.as_dict() for outcome in result.outcomes],
                raw_result_count=result.raw_count, deduplicated_result_count=len(result.matches),
                duration_ms=round(result.duration_ms, 1), error_message=result.error, completed_at=utc_now()))
    if changed.rowcount != 1:
        raise LookupError(f"no query log for query {query_id!r}")


def list_query_logs(
    session: Session,
    *,
    limit: int = 100,
    status: str | QueryLogStatus | None = None,
    config_id: int | None = None,
    since: datetime | None = None,
    requester_user: str | None = None,
) -> list[SpannerQueryLog]:
    """The newest logs first, at most `limit`, optionally of one status, one config, started at/after `since`, or
    asked by one user (`requester_user`)."""
    query = select(SpannerQueryLog).order_by(SpannerQueryLog.started_at.desc(), SpannerQueryLog.id.desc())
    if status is not None:
        query = query.where(SpannerQueryLog.status == QueryLogStatus(status))
    if config_id is not None:
        query = query.where(SpannerQueryLog.spanner_config_id == config_id)
    if since is not None:
        query = query.where(SpannerQueryLog.started_at >= since)
    if requester_user is not None:
        query = query.where(SpannerQueryLog.requester_user == requester_user)
    return list(session.scalars(query.limit(limit)))
