"""One verifier for every HTTP service (the API and the spanner coordinator): a presented credential -> Principal.

Credentials, from the request headers (`presented_credential`):
- `X-API-Key: <key>` or `Authorization: Bearer <key>`: an API key (shared.security.api_keys, argon2id-verified);
- `Authorization: Bearer <JWT>`: an access token from `POST /api/v1/auth/token` (shared.security.tokens). A JWT is
  recognised by its two dots (an API key has none).

argon2 costs ~50-100 ms of CPU by design, so a verified key is remembered for VERIFIED_TTL seconds under an HMAC of
the key with SECRET_KEY (the plaintext is never kept); a revoked key therefore stops working within that time. A
token's signature and expiry are checked on every request (cheap); the user's row (exists, is_active, current role)
is remembered for the same VERIFIED_TTL, so a disabled user's tokens stop working within that time too, and a
demoted admin's tokens carry the new role. Nothing here depends on a web framework.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from typing import Callable, Mapping

from shared.db.models import Role
from shared.db.repo.users import get_user
from shared.security.api_keys import verify_api_key
from shared.security.principal import Principal, PrincipalKind
from shared.security.tokens import looks_like_jwt, verify_token

VERIFIED_TTL = 10.0
MAX_REMEMBERED = 10_000


def presented_credential(headers: Mapping[str, str]) -> str | None:
    """The credential from `X-API-Key`, or from an `Authorization: Bearer` header; None when there is neither."""
    key = headers.get("x-api-key")
    if key and key.strip():
        return key.strip()
    scheme, _, credentials = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


class _Memory:
    """A bounded map of entries that expire `ttl` seconds after they were stored (thread-safe)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock, self._entries, self._lock = clock, {}, threading.Lock()

    def get(self, key, default=None):
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
        return entry[1] if entry is not None and entry[0] > now else default

    def put(self, key, value) -> None:
        now = self._clock()
        with self._lock:
            if len(self._entries) >= MAX_REMEMBERED:
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                if len(self._entries) >= MAX_REMEMBERED:
                    self._entries.clear()
            self._entries[key] = (now + VERIFIED_TTL, value)


class Authenticator:
    """Verifies presented API keys and access tokens with sessions from `session_factory`.

    `secret_key` is SECRET_KEY: it signs and verifies tokens and keys the memory of verified API keys. `clock`
    (monotonic) times the memory; `wall_clock` (epoch seconds) is what token expiry is checked against.
    """

    def __init__(self, session_factory, secret_key: bytes | str, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._sessions = session_factory
        self._secret = secret_key.encode() if isinstance(secret_key, str) else secret_key
        self._wall_clock = wall_clock
        self._keys, self._users = _Memory(clock), _Memory(clock)

    def principal(self, credential: str) -> Principal | None:
        """The principal `credential` (an API key or an access token) authenticates, or None."""
        if looks_like_jwt(credential):
            return self._token_principal(credential)
        return self._key_principal(credential)

    def authenticate(self, headers: Mapping[str, str]) -> Principal | None:
        """The principal the request headers' credential authenticates; None when there is none or it is refused."""
        credential = presented_credential(headers)
        return self.principal(credential) if credential is not None else None

    def _key_principal(self, key: str) -> Principal | None:
        digest = hmac.new(self._secret, key.encode("utf-8", "replace"), hashlib.sha256).digest()
        remembered = self._keys.get(digest)
        if remembered is not None:
            return remembered
        with self._sessions.begin() as session:
            verified = verify_api_key(session, key)
        if verified is None:
            return None
        principal = Principal(name=verified.name, role=verified.role, kind=PrincipalKind.API_KEY)
        self._keys.put(digest, principal)
        return principal

    def _token_principal(self, token: str) -> Principal | None:
        claimed = verify_token(token, self._secret, now=self._wall_clock())
        if claimed is None:
            return None
        role = self._users.get(claimed.name, default=False)
        if role is False:
            with self._sessions() as session:
                row = get_user(session, username=claimed.name)
                role = Role(row.role) if row is not None and row.is_active else None
            self._users.put(claimed.name, role)
        return None if role is None else Principal(name=claimed.name, role=role, kind=PrincipalKind.USER)
