"""Queries on `spanner_query_logs`: a row when a span starts, completed with its outcome when it ends."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.choices import parse_choice
from shared.db.base import utc_now
from shared.db.models import QueryLogStatus, QueryType, SpannerQueryLog
from shared.spanning.model import SpanResult


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
) -> SpannerQueryLog:
    """Record that span `query_id` started (status "running"); `filters` is the identifier as DICOM JSON."""
    log = SpannerQueryLog(
        query_id=query_id,
        spanner_config_id=config_id,
        query_type=_query_type(query_type),
        query_level=str(getattr(level, "value", level)),
        query_filters=filters,
        requester_ae_title=requester_ae_title,
        requester_user=requester_user,
        client_address=client_address,
        status=QueryLogStatus.RUNNING,
        started_at=utc_now(),
    )
    session.add(log)
    session.flush()
    return log


def get_query_log(session: Session, *, query_id: str) -> SpannerQueryLog | None:
    """The log of span `query_id`, or None."""
    return session.scalar(select(SpannerQueryLog).where(SpannerQueryLog.query_id == query_id))


def finish_query_log(session: Session, *, query_id: str, result: SpanResult) -> SpannerQueryLog:
    """Complete the log of span `query_id` with its result: status, per-source outcomes, counts, duration, error.

    LookupError if the span was never started with start_query_log.
    """
    log = get_query_log(session, query_id=query_id)
    if log is None:
        raise LookupError(f"no query log for query {query_id!r}")
    log.status = QueryLogStatus(result.status.value)
    log.source_outcomes = [outcome.as_dict() for outcome in result.outcomes]
    log.raw_result_count = result.raw_count
    log.deduplicated_result_count = len(result.matches)
    log.duration_ms = round(result.duration_ms, 1)
    log.error_message = result.error
    log.completed_at = utc_now()
    session.flush()
    return log


def list_query_logs(
    session: Session,
    *,
    limit: int = 100,
    status: str | QueryLogStatus | None = None,
    config_id: int | None = None,
    since: datetime | None = None,
) -> list[SpannerQueryLog]:
    """The newest logs first, at most `limit`, optionally of one status, one config, or started at/after `since`."""
    query = select(SpannerQueryLog).order_by(SpannerQueryLog.started_at.desc(), SpannerQueryLog.id.desc())
    if status is not None:
        query = query.where(SpannerQueryLog.status == QueryLogStatus(status))
    if config_id is not None:
        query = query.where(SpannerQueryLog.spanner_config_id == config_id)
    if since is not None:
        query = query.where(SpannerQueryLog.started_at >= since)
    return list(session.scalars(query.limit(limit)))
