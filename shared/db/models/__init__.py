"""Axiom's schema: importing this package registers every table on `Base.metadata` (Alembic's target)."""

from shared.db.base import Base
from shared.db.models.api_key import ApiKey, Role
from shared.db.models.destination import DicomDestination
from shared.db.models.move_job import MoveJob, MoveJobStatus
from shared.db.models.query_log import QueryLogStatus, QueryType, SpannerQueryLog, SpannerQueryResult
from shared.db.models.service_instance import ActualState, DesiredState, ServiceInstance, ServiceKind
from shared.db.models.source import Source
from shared.db.models.spanner import CmoveStrategy, SpannerConfig, SpannerSourceMapping
from shared.db.models.user import User

__all__ = [
    "ApiKey",
    "Base",
    "CmoveStrategy",
    "DicomDestination",
    "QueryLogStatus",
    "QueryType",
    "Role",
    "Source",
    "SpannerConfig",
    "SpannerQueryLog",
    "SpannerQueryResult",
    "SpannerSourceMapping",
    "User",
]
