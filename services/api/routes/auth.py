"""`POST /api/v1/auth/token` (OAuth2 password grant -> access token) and `GET /api/v1/auth/me`.

The token endpoint is necessarily open (it is how a user authenticates); /health is the only other open route.
Failed logins are logged with the client address only - never the password, and not the submitted username (a
password typed into the username field must not reach the logs).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm

from services.api.deps import PrincipalDep, SessionDep
from services.api.schemas import PrincipalOut, Token
from shared.db.models import Role
from shared.logging import log_event
from shared.security.principal import Principal, PrincipalKind
from shared.security.tokens import issue_token
from shared.security.users import authenticate_user

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


@router.post("/token", response_model=Token)
def login(form: Annotated[OAuth2PasswordRequestForm, Depends()], session: SessionDep, request: Request) -> Token:
    """Exchange a username and password (form fields, OAuth2 password grant) for a bearer access token."""
    client = request.client.host if request.client else None
    user = authenticate_user(session, username=form.username, password=form.password)
    if user is None:
        log_event(logger, "login_failed", logging.WARNING, client=client)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "incorrect username or password, or the user is disabled",
                            headers={"WWW-Authenticate": "Bearer"})
    session.commit()  # last_login_at (and a re-hash with new parameters)
    ttl = request.app.state.settings.api.token_ttl_seconds
    principal = Principal(name=user.username, role=Role(user.role), kind=PrincipalKind.USER)
    token = issue_token(principal, request.app.state.secret_key, ttl)
    log_event(logger, "login_succeeded", user=user.username, client=client)
    return Token(access_token=token, expires_in=ttl)


@router.get("/me", response_model=PrincipalOut)
def me(principal: PrincipalDep) -> PrincipalOut:
    """The caller: the API key's name or the username, its role, and `kind` ("api_key" or "user")."""
    return PrincipalOut(name=principal.name, role=principal.role, kind=principal.kind)
