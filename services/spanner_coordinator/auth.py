"""The coordinator's FastAPI dependency over the shared verifier (shared.security.authenticator.Authenticator):
an API key (`X-API-Key` or `Authorization: Bearer`) or a user's access token (`Authorization: Bearer <JWT>`)."""

from __future__ import annotations

from fastapi import HTTPException, Request

from shared.security.authenticator import presented_credential
from shared.security.principal import Principal


def require_principal(request: Request) -> Principal:
    """FastAPI dependency: the authenticated principal, or 401."""
    credential = presented_credential(request.headers)
    if credential is None:
        raise HTTPException(401, "credentials are required (X-API-Key header, or Authorization: Bearer with an API "
                                 "key or an access token)", headers={"WWW-Authenticate": "Bearer"})
    principal = request.app.state.authenticator.principal(credential)
    if principal is None:
        raise HTTPException(401, "credentials rejected (unknown, revoked, expired or malformed)",
                            headers={"WWW-Authenticate": "Bearer"})
    return principal
