"""Access tokens: JWTs (RFC 7519) signed with HMAC-SHA256 (HS256) and SECRET_KEY, issued to users.

Claims: `sub` (the username), `role` (at issue time), `typ` = "access", `iat` and `exp` (seconds since the epoch),
`iss` = "axiom". verify_token accepts only HS256 (so `alg: none` and every other algorithm are refused), checks the
signature, requires every claim, and refuses an expired token or one issued in the future (beyond LEEWAY_SECONDS of
clock skew). A token carries no secret, but anyone holding it acts as the user until `exp`: keep TTLs short.

Whether the user still exists and is active is not a token question: shared.security.authenticator checks that.
"""

from __future__ import annotations

import time
from datetime import timedelta

import jwt

from shared.db.models.api_key import Role
from shared.db.models.user import check_username
from shared.security.principal import Principal, PrincipalKind

ALGORITHM = "HS256"
TOKEN_TYPE = "access"
ISSUER = "axiom"
LEEWAY_SECONDS = 30
MAX_TOKEN_LENGTH = 4096  # anything longer is refused before decoding
_REQUIRED = ("sub", "role", "typ", "iat", "exp", "iss")


def looks_like_jwt(credential: str) -> bool:
    """True for a compact JWS (three base64url parts, two dots); API keys (`axk_<prefix>_<secret>`) have none."""
    return credential.count(".") == 2


def _seconds(ttl: timedelta | float) -> int:
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if seconds <= 0:
        raise ValueError("a token's ttl must be positive")
    return int(seconds)


def issue_token(principal: Principal, secret: str | bytes, ttl: timedelta | float, *, now: float | None = None) -> str:
    """A signed access token for a user principal, valid for `ttl` (seconds or a timedelta) from `now`.

    ValueError for an API-key principal (keys are presented as themselves, not exchanged for tokens), an empty
    secret or a non-positive ttl.
    """
    if principal.kind is not PrincipalKind.USER:
        raise ValueError("access tokens are issued to users only")
    if not secret:
        raise ValueError("a token needs a secret")
    issued = int(time.time() if now is None else now)
    claims = {"sub": principal.name, "role": Role(principal.role).value, "typ": TOKEN_TYPE, "iss": ISSUER,
              "iat": issued, "exp": issued + _seconds(ttl)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(token: object, secret: str | bytes, *, now: float | None = None) -> Principal | None:
    """The user principal a valid token names, or None (never an exception for bad input).

    None for: a non-string or oversized token, a malformed one, any algorithm but HS256 (incl. `none`), a bad
    signature (tampered, or signed with another secret), a missing claim, a `typ` other than "access", an unknown
    role or a malformed username, an expired token, or one issued more than LEEWAY_SECONDS in the future.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or not secret:
        return None
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], issuer=ISSUER,
                            options={"require": list(_REQUIRED), "verify_exp": False, "verify_iat": False})
        now = time.time() if now is None else now
        expires, issued = claims["exp"], claims["iat"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (expires, issued)):
            return None
        if claims["typ"] != TOKEN_TYPE or expires <= now or issued > now + LEEWAY_SECONDS:
            return None
        return Principal(name=check_username(claims["sub"]), role=Role(claims["role"]), kind=PrincipalKind.USER)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None
