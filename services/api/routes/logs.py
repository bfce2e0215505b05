"""`GET /api/v1/spanner/services/logs`: the query log (`spanner_query_logs`), newest first.

Filters: `status`, `spanner_config_id`, `since` (ISO 8601), `limit` (1-1000, default 50). An admin sees every
query; any other caller only the queries it asked itself (requester_user = its name), as in the coordinator.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from services.api.deps import PrincipalDep, SessionDep
from services.api.schemas import QueryLogOut
from shared.db.base import MAX_INTEGER
from shared.db.models import QueryLogStatus, Role
from shared.db.repo.query_logs import list_query_logs

router = APIRouter(prefix="/api/v1/spanner/services", tags=["services"])


@router.get("/logs", response_model=list[QueryLogOut])
def query_logs(
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    status: QueryLogStatus | None = None,
    spanner_config_id: Annotated[int | None, Query(ge=1, le=MAX_INTEGER)] = None,
    since: datetime | None = None,
) -> list[QueryLogOut]:
    """The newest spanned queries (C-FIND, QIDO, C-MOVE/C-GET locates, distributed spans) with their outcomes."""
    own = None if principal.role is Role.ADMIN else principal.name
    rows = list_query_logs(session, limit=limit, status=status, config_id=spanner_config_id, since=since,
                           requester_user=own)
    return [QueryLogOut.model_validate(_plain(row)) for row in rows]


def _plain(row) -> dict:
    """The row's columns with enums as their values."""
    values = {column: getattr(row, column) for column in QueryLogOut.model_fields}
    values["query_type"], values["status"] = row.query_type.value, row.status.value
    return values
