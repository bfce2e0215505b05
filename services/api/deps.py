"""The API's dependencies as `Annotated` types (the fastapi full-stack template's style); route modules use them:

- `SessionDep`: a SQLAlchemy session for the request (closed afterwards; routes that write commit explicitly).
- `PrincipalDep`: the authenticated caller (shared.security.authenticator): `X-API-Key`, or `Authorization: Bearer`
  with an API key or an access token. 401 with `WWW-Authenticate: Bearer` when absent or refused.
- `AdminDep`: as PrincipalDep, and 403 when the caller's role is not admin.
- `RowId`: a path parameter that is a row id (1..shared.db.base.MAX_INTEGER; 422 otherwise).

The OAuth2PasswordBearer and APIKeyHeader sub-dependencies only document the two schemes in the OpenAPI schema
(Swagger UI's "Authorize"); the credential itself is read by shared.security.authenticator.presented_credential, the
same rule the coordinator applies.
"""

from __future__ import annotations

from typing import Annotated, Iterator

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from sqlalchemy.orm import Session

from shared.db.base import MAX_INTEGER
from shared.db.models import Role
from shared.security.authenticator import Authenticator, presented_credential
from shared.security.principal import Principal

TOKEN_URL = "/api/v1/auth/token"
_bearer_scheme = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False,
                                      description="an access token from POST /api/v1/auth/token, or an API key")
_api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key (`axiom apikey create`)")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def get_session(request: Request) -> Iterator[Session]:
    """A session from the app's session factory, closed (and rolled back if not committed) after the request."""
    with request.app.state.session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
# A row id in a path (`/sources/{id}`): 1..MAX_INTEGER, else 422 naming it (a larger number cannot reach the database).
RowId = Annotated[int, Path(ge=1, le=MAX_INTEGER)]


def get_principal(
    request: Request,
    _bearer: Annotated[str | None, Depends(_bearer_scheme)],
    _api_key: Annotated[str | None, Depends(_api_key_scheme)],
) -> Principal:
    """The authenticated caller, or 401 (no credential, or one that is unknown, revoked, expired or malformed)."""
    credential = presented_credential(request.headers)
    if credential is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not authenticated: send Authorization: Bearer <token or "
                            "API key>, or X-API-Key", headers=_CHALLENGE)
    authenticator: Authenticator = request.app.state.authenticator
    principal = authenticator.principal(credential)
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "credentials rejected (unknown, revoked, expired or "
                            "malformed)", headers=_CHALLENGE)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_admin(principal: PrincipalDep) -> Principal:
    """The authenticated caller when its role is admin; 403 for any other (authenticated) caller."""
    if not principal.allows(Role.ADMIN):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this action requires the admin role")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]
