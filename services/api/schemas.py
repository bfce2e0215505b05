"""Request and response bodies of the API (pydantic models; the OpenAPI schema is generated from them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from shared.db.models import Role
from shared.security.principal import PrincipalKind


class Token(BaseModel):
    """An access token (RFC 6749 section 5.1): send it as `Authorization: Bearer <access_token>`."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


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
