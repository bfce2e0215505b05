"""`spanner_configs` and `spanner_source_mappings`: how a span is run and over which sources.

Enums are stored as VARCHAR + CHECK (native_enum=False) so PostgreSQL and SQLite hold exactly the same schema and
adding a value is a plain migration, not an ALTER TYPE.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum as PyEnum
from typing import Any

from sqlalchemy import Boolean, Enum, Float, ForeignKey, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shared.db.base import Base, JsonType, UtcDateTime, utc_now
from shared.db.models.source import Source
from shared.retrieval.model import CmoveStrategy
from shared.spanning.model import DedupStrategy, FailureStrategy


def _values(enum_cls: type[PyEnum]) -> list[str]:
    return [member.value for member in enum_cls]


def value_enum(enum_cls: type[PyEnum], name: str) -> Enum:
    """A VARCHAR + CHECK enum column type storing the enum's values, identical on PostgreSQL and SQLite."""
    return Enum(enum_cls, name=name, native_enum=False, create_constraint=True, values_callable=_values,
                validate_strings=True, length=max(len(v) for v in _values(enum_cls)))


class SpannerConfig(Base):
    """A named spanning configuration: policy, capabilities, the SCP AE title it answers on, and its sources."""

    __tablename__ = "spanner_configs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    max_concurrent_sources: Mapped[int] = mapped_column(Integer, default=8, server_default="8")
    query_timeout_seconds: Mapped[float] = mapped_column(Float, default=30.0, server_default="30")
    failure_strategy: Mapped[FailureStrategy] = mapped_column(
        value_enum(FailureStrategy, "failure_strategy"), default=FailureStrategy.BEST_EFFORT,
        server_default=FailureStrategy.BEST_EFFORT.value)
    minimum_success_threshold: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    deduplication_strategy: Mapped[DedupStrategy] = mapped_column(
        value_enum(DedupStrategy, "deduplication_strategy"), default=DedupStrategy.MOST_COMPLETE,
        server_default=DedupStrategy.MOST_COMPLETE.value)
    cmove_strategy: Mapped[CmoveStrategy] = mapped_column(
        value_enum(CmoveStrategy, "cmove_strategy"), default=CmoveStrategy.PROXY,
        server_default=CmoveStrategy.PROXY.value)
    supports_dimse_scp: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    supports_qido: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    supports_wado: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    supports_cmove: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    supports_cget: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    scp_ae_title: Mapped[str | None] = mapped_column(String(16), unique=True)
    # Calling AE titles (stripped) allowed to associate with scp_ae_title; None or [] = any calling AE may.
    allowed_calling_ae_titles: Mapped[list[str] | None] = mapped_column(JsonType)
    allowed_client_networks: Mapped[list[str] | None] = mapped_column(JsonType)  # CIDR; None/[]: any client
    cache_ttl_seconds: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    is_enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        UtcDateTime, default=utc_now, onupdate=utc_now, server_default=func.now())

    mappings: Mapped[list["SpannerSourceMapping"]] = relationship(
        back_populates="spanner_config", cascade="all, delete-orphan", passive_deletes=True,
        order_by="(SpannerSourceMapping.priority, SpannerSourceMapping.id)")

    def __repr__(self) -> str:
        return f"SpannerConfig(id={self.id!r}, name={self.name!r})"


class SpannerSourceMapping(Base):
    """One source in a spanner config: its priority (lower = preferred), timeout, retries and extra filters."""

    __tablename__ = "spanner_source_mappings"
    __table_args__ = (UniqueConstraint("spanner_config_id", "source_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    spanner_config_id: Mapped[int] = mapped_column(
        ForeignKey("spanner_configs.id", ondelete="CASCADE"))
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="RESTRICT"), index=True)
    priority: Mapped[int] = mapped_column(Integer, default=100, server_default="100")
    timeout_seconds: Mapped[float | None] = mapped_column(Float)
    max_retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    is_enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    additional_query_filters: Mapped[dict[str, Any] | None] = mapped_column(JsonType)

    spanner_config: Mapped[SpannerConfig] = relationship(back_populates="mappings")
    source: Mapped[Source] = relationship(lazy="joined")

    def __repr__(self) -> str:
        return f"SpannerSourceMapping(config={self.spanner_config_id!r}, source={self.source_id!r})"
