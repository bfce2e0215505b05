"""Request and response bodies of the API (pydantic models; the OpenAPI schema is generated from them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.db.models import Role
from shared.security.principal import PrincipalKind


class Token(BaseModel):
    """An access token (RFC 6749 section 5.1): send it as `Authorization: Bearer <access_token>`."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class GoogleLogin(BaseModel):
    """A Google ID token (OpenID Connect) to exchange for an Axiom access token at POST /api/v1/auth/google."""

    id_token: str = Field(min_length=1, max_length=8192)


class PrincipalOut(BaseModel):
    """Who the caller is: an API key's name or a username, its role and the credential kind."""

    name: str
    role: Role
    kind: PrincipalKind


class Health(BaseModel):
    """`status` healthy/unhealthy, and each check's outcome ("ok" or why not)."""

    status: Literal["healthy", "unhealthy"]
    service: Literal["api"] = "api"
    checks: dict[str, str]


class QueryLogOut(BaseModel):
    """One spanned query from `spanner_query_logs`: who asked what, how each source did, counts and timings."""

    model_config = ConfigDict(from_attributes=True)

    query_id: str
    spanner_config_id: int | None
    query_type: str
    query_level: str
    status: str
    requester_user: str | None
    requester_ae_title: str | None
    client_address: str | None
    started_at: datetime
    completed_at: datetime | None
    duration_ms: float | None
    raw_result_count: int | None
    deduplicated_result_count: int | None
    source_outcomes: list[dict[str, Any]] | None
    error_message: str | None
