"""Axiom's schema: importing this package registers every table on `Base.metadata` (Alembic's target)."""

from shared.db.base import Base
from shared.db.models.query_log import QueryLogStatus, QueryType, SpannerQueryLog
from shared.db.models.source import Source
from shared.db.models.spanner import CmoveStrategy, SpannerConfig, SpannerSourceMapping

__all__ = [
    "Base",
    "CmoveStrategy",
    "QueryLogStatus",
    "QueryType",
    "Source",
    "SpannerConfig",
    "SpannerQueryLog",
    "SpannerSourceMapping",
]
