"""`spanner_query_logs`: one row per spanned query, written when it starts and completed when it ends."""

from __future__ import annotations

from datetime import datetime
from enum import Enum as PyEnum
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.base import Base, JsonType, UtcDateTime, utc_now
from shared.db.models.spanner import value_enum


class QueryType(str, PyEnum):
    """The protocol operation that was spanned (PS3.4 C.4 for DIMSE, PS3.18 10.6 / 10.4 for QIDO / WADO)."""

    C_FIND = "C-FIND"
    C_MOVE = "C-MOVE"
    C_GET = "C-GET"
    QIDO = "QIDO"
    WADO = "WADO"


class QueryLogStatus(str, PyEnum):
    """`accepted` (queued by the coordinator, not yet planned), `running` until finished; then the span's own
    status (shared.spanning.model.SpanStatus values)."""

    ACCEPTED = "accepted"
    RUNNING = "running"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"


class SpannerQueryLog(Base):
    """The record of one spanned query: who asked what, how each source did, counts and timings."""

    __tablename__ = "spanner_query_logs"
    __table_args__ = (Index("ix_spanner_query_logs_started_at", "started_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    query_id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    spanner_config_id: Mapped[int | None] = mapped_column(
        ForeignKey("spanner_configs.id", ondelete="SET NULL"), index=True)
    query_type: Mapped[QueryType] = mapped_column(value_enum(QueryType, "query_type"))
    query_level: Mapped[str] = mapped_column(String(16))
    query_filters: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    requester_ae_title: Mapped[str | None] = mapped_column(String(16))
    requester_user: Mapped[str | None] = mapped_column(String(128))
    client_address: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[QueryLogStatus] = mapped_column(
        value_enum(QueryLogStatus, "query_status"), default=QueryLogStatus.RUNNING)
    source_outcomes: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonType)
    raw_result_count: Mapped[int | None] = mapped_column(Integer)
    deduplicated_result_count: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    error_message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    deadline_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # distributed spans: finalised by then

    @property
    def is_open(self) -> bool:
        """Not finished yet (accepted or running)."""
        return self.status in (QueryLogStatus.ACCEPTED, QueryLogStatus.RUNNING)

    def __repr__(self) -> str:
        return f"SpannerQueryLog(query_id={self.query_id!r}, status={self.status!r})"


class SpannerQueryResult(Base):
    """A finished distributed span's full result (shared.spanning.codec data), kept until `expires_at` so the
    coordinator still answers after a Redis flush or a restart; the query log row itself is kept for audit."""

    __tablename__ = "spanner_query_results"

    query_id: Mapped[str] = mapped_column(
        ForeignKey("spanner_query_logs.query_id", ondelete="CASCADE"), primary_key=True)
    result: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
