"""`POST /api/v1/auth/token` (OAuth2 password grant -> access token), `POST /api/v1/auth/google` (a Google ID
token -> access token, when AXIOM_GOOGLE_CLIENT_ID is set) and `GET /api/v1/auth/me`.

The two login endpoints are necessarily open (they are how a user authenticates); /health is the only other open
route. Google login admits only an existing, active user whose username is the token's verified e-mail address
(shared.security.google_id); it creates no users and grants no role.
Failed logins are logged with the client address only - never the password, and not the submitted username (a
password typed into the username field must not reach the logs).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm

from services.api.deps import PrincipalDep, SessionDep
from services.api.schemas import GoogleLogin, PrincipalOut, Token
from shared.db.models import Role, User
from shared.logging import log_event
from shared.security.google_id import GoogleIdVerifier, GoogleKeysUnavailable, GoogleTokenError, google_login_user
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
    log_event(logger, "login_succeeded", user=user.username, client=client)
    return _access_token(request, user)


def _access_token(request: Request, user: User) -> Token:
    ttl = request.app.state.settings.api.token_ttl_seconds
    principal = Principal(name=user.username, role=Role(user.role), kind=PrincipalKind.USER)
    return Token(access_token=issue_token(principal, request.app.state.secret_key, ttl), expires_in=ttl)


@router.post("/google", response_model=Token, responses={
    401: {"description": "the ID token is refused, or no active user has its e-mail address"},
    404: {"description": "Google login is not configured (AXIOM_GOOGLE_CLIENT_ID unset)"},
    503: {"description": "Google's signing keys could not be fetched"}})
def google_login(body: GoogleLogin, session: SessionDep, request: Request) -> Token:
    """Exchange a Google ID token (`{"id_token": ...}`) for a bearer access token, like /auth/token.

    Only an existing, active user whose username equals the token's verified e-mail (ignoring case) logs in;
    an administrator creates it first (`axiom user create alice@hospital.org`).
    """
    verifier: GoogleIdVerifier | None = request.app.state.google_verifier
    if verifier is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Google login is not configured (AXIOM_GOOGLE_CLIENT_ID)")
    client = request.client.host if request.client else None
    try:
        identity = verifier.verify(body.id_token)
    except GoogleKeysUnavailable as exc:
        log_event(logger, "google_keys_unavailable", logging.ERROR, client=client, error=str(exc))
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "Google's signing keys cannot be fetched; "
                            "try again later") from exc
    except GoogleTokenError as exc:
        log_event(logger, "google_login_failed", logging.WARNING, client=client, reason=str(exc))
        raise _google_refused() from exc
    user = google_login_user(session, email=identity.email)
    if user is None:
        log_event(logger, "google_login_failed", logging.WARNING, client=client, reason="no active user")
        raise _google_refused()
    session.commit()  # last_login_at
    log_event(logger, "login_succeeded", user=user.username, client=client, method="google")
    return _access_token(request, user)


def _google_refused() -> HTTPException:
    """One answer for every refusal (bad token, unknown or disabled user): the caller learns nothing more."""
    return HTTPException(status.HTTP_401_UNAUTHORIZED, "Google login refused: the ID token is invalid or expired, "
                         "or no active user has its e-mail address", headers={"WWW-Authenticate": "Bearer"})


@router.get("/me", response_model=PrincipalOut)
def me(principal: PrincipalDep) -> PrincipalOut:
    """The caller: the API key's name or the username, its role, and `kind` ("api_key" or "user")."""
    return PrincipalOut(name=principal.name, role=principal.role, kind=principal.kind)
