"""Google ID-token login: verify a Google-signed OpenID Connect ID token and find the Axiom user it names.

Verification follows OpenID Connect Core 1.0 section 3.1.3.7 (ID Token Validation) and Google's "Verify the
integrity of the ID token" rules (developers.google.com/identity/gsi/web/guides/verify-google-id-token):

- the JOSE header's `alg` must be RS256 (what Google signs with); `none`, HS* and every other algorithm are refused
  before any key is looked at, and the header must name a `kid`;
- the signature must verify against the key with that `kid` in Google's JWKS (AXIOM_GOOGLE_CERTS_URL). The set is
  fetched with PyJWT's PyJWKClient and cached for JWKS_LIFESPAN_SECONDS; an unknown `kid` forces one refresh (at
  most every JWKS_COOLDOWN_SECONDS), so rotated keys are picked up;
- `iss` is `accounts.google.com` or `https://accounts.google.com`; `aud` is exactly the configured client id (a list
  with other audiences is refused, OIDC 3.1.3.7 step 3); `exp` has not passed and `iat` is not in the future (both
  with LEEWAY_SECONDS of clock skew); `email` is present and `email_verified` is true; with a hosted domain
  configured, `hd` must equal it (Google Workspace accounts only).
  `azp` is not compared: with Google's cross-client identity it names the presenting (e.g. Android) client while
  `aud` names this one.

GoogleTokenError means "refuse this token" (HTTP 401); GoogleKeysUnavailable means the JWKS could not be fetched
or used (HTTP 503). Their messages never contain the token or its claims. A verified e-mail logs in only the
EXISTING active user of that username (compared ignoring case); there is no auto-provisioning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt
from jwt.exceptions import PyJWKClientConnectionError, PyJWKClientError, PyJWKSetError
from sqlalchemy.orm import Session

from shared.config import ApiSettings
from shared.db.base import utc_now
from shared.db.models import User
from shared.db.models.user import check_username
from shared.db.repo import users as repo

ALGORITHM = "RS256"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
LEEWAY_SECONDS = 30
MAX_TOKEN_LENGTH = 8192  # a Google ID token is about 1-2 KB; anything longer is refused before decoding
JWKS_LIFESPAN_SECONDS = 3600
JWKS_COOLDOWN_SECONDS = 30
JWKS_TIMEOUT_SECONDS = 5.0
_REQUIRED = ["iss", "aud", "sub", "exp", "iat"]
_REFUSALS = (  # PyJWT's exception -> the reason given (never the token's content)
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is issued in the future"),
    (jwt.InvalidAudienceError, "the token's audience is not this client id"),
    (jwt.InvalidIssuerError, "the token's issuer is not Google"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.MissingRequiredClaimError, "the token lacks a required claim"),
)


class GoogleTokenError(Exception):
    """The ID token is refused: malformed, wrong algorithm, unknown key, bad signature or claims."""


class GoogleKeysUnavailable(Exception):
    """Google's signing keys (the JWKS) could not be fetched or contain no usable key."""


@dataclass(frozen=True)
class GoogleIdentity:
    """What a verified ID token asserts: the Google account id (`sub`) and its verified e-mail address."""

    subject: str
    email: str


class GoogleIdVerifier:
    """Verifies Google ID tokens for one OAuth client id (see the module doc for the rules)."""

    def __init__(self, client_id: str, *, certs_url: str, hosted_domain: str | None = None,
                 timeout: float = JWKS_TIMEOUT_SECONDS, jwks_cooldown: float = JWKS_COOLDOWN_SECONDS) -> None:
        if not client_id:
            raise ValueError("a Google client id is required")
        self.client_id = client_id
        self.hosted_domain = hosted_domain.lower() if hosted_domain else None
        self._jwks = jwt.PyJWKClient(certs_url, cache_jwk_set=True, lifespan=JWKS_LIFESPAN_SECONDS,
                                     timeout=timeout, cooldown_duration=jwks_cooldown)

    def verify(self, token: object) -> GoogleIdentity:
        """The identity a valid ID token asserts (OIDC Core 3.1.3.7); GoogleTokenError when it is refused,
        GoogleKeysUnavailable when the JWKS cannot be fetched."""
        kid = _rs256_key_id(token)
        claims = self._decode(token, self._signing_key(kid))
        return self._identity(claims)

    def _signing_key(self, kid: str) -> jwt.PyJWK:
        try:
            self._jwks.get_signing_keys()  # fetched (or cached) first: a fetch failure is ours, not the token's
        except (PyJWKClientError, PyJWKSetError) as exc:
            raise GoogleKeysUnavailable(f"Google's signing keys could not be fetched ({type(exc).__name__})") from exc
        try:
            return self._jwks.get_signing_key(kid)
        except PyJWKClientConnectionError as exc:
            raise GoogleKeysUnavailable(f"Google's signing keys could not be fetched ({type(exc).__name__})") from exc
        except (PyJWKClientError, PyJWKSetError) as exc:
            raise GoogleTokenError("the token is signed with a key Google does not publish") from exc

    def _decode(self, token: str, key: jwt.PyJWK) -> dict:
        try:
            claims = jwt.decode(token, key.key, algorithms=[ALGORITHM], audience=self.client_id,
                                issuer=GOOGLE_ISSUERS, leeway=LEEWAY_SECONDS, options={"require": _REQUIRED})
        except jwt.PyJWTError as exc:
            reason = next((text for kind, text in _REFUSALS if isinstance(exc, kind)), None)
            raise GoogleTokenError(reason or f"the token is invalid ({type(exc).__name__})") from exc
        if claims["aud"] not in (self.client_id, [self.client_id]):
            raise GoogleTokenError("the token names audiences besides this client id")
        issued = claims["iat"]
        if not isinstance(issued, (int, float)) or isinstance(issued, bool) or issued > time.time() + LEEWAY_SECONDS:
            raise GoogleTokenError("the token is issued in the future")
        return claims

    def _identity(self, claims: dict) -> GoogleIdentity:
        email, subject = claims.get("email"), claims.get("sub")
        if not isinstance(email, str) or not email or not isinstance(subject, str):
            raise GoogleTokenError("the token carries no e-mail address")
        if claims.get("email_verified") not in (True, "true"):  # older Google tokens sent the string "true"
            raise GoogleTokenError("the token's e-mail address is not verified by Google")
        if self.hosted_domain is not None:
            domain = claims.get("hd")
            if not isinstance(domain, str) or domain.lower() != self.hosted_domain:
                raise GoogleTokenError("the token's account is not in the configured hosted domain")
        return GoogleIdentity(subject=subject, email=email)


def _rs256_key_id(token: object) -> str:
    """The `kid` of a compact JWS whose header says RS256; GoogleTokenError for anything else."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
        raise GoogleTokenError("the ID token is not a compact JWT")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise GoogleTokenError("the ID token's header is malformed") from exc
    if header.get("alg") != ALGORITHM:
        raise GoogleTokenError(f"the ID token's algorithm must be {ALGORITHM}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise GoogleTokenError("the ID token's header names no key id (kid)")
    return kid


def build_google_verifier(settings: ApiSettings) -> GoogleIdVerifier | None:
    """The verifier AXIOM_GOOGLE_CLIENT_ID (and AXIOM_GOOGLE_CERTS_URL, AXIOM_GOOGLE_HOSTED_DOMAIN) configure, or
    None when no client id is set (Google login off). Nothing is fetched until the first login."""
    client_id = (settings.google_client_id or "").strip()
    if not client_id:
        return None
    domain = (settings.google_hosted_domain or "").strip() or None
    return GoogleIdVerifier(client_id, certs_url=settings.google_certs_url, hosted_domain=domain)


def google_login_user(session: Session, *, email: str) -> User | None:
    """The active user whose username is this verified e-mail address, or None; on success last_login_at is set
    (flushed, not committed).

    Usernames are case-sensitive but e-mail addresses are compared ignoring case: an exact match wins, otherwise
    exactly one case-insensitive match is needed (two users differing only in case make the login ambiguous:
    None). Unknown, ambiguous and disabled users are all None after the same single query, so neither the answer
    nor its timing tells them apart.
    """
    try:
        wanted = check_username(email)
    except ValueError:
        wanted = None
    rows = repo.find_users_by_username_ci(session, username=wanted) if wanted else []
    exact = [row for row in rows if row.username == wanted]
    chosen = exact[0] if exact else (rows[0] if len(rows) == 1 else None)
    if chosen is None or not chosen.is_active:
        return None
    repo.touch_user_login(session, user_id=chosen.id, at=utc_now())
    session.refresh(chosen)
    return chosen
