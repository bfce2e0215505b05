"""API-key authentication for the coordinator: `X-API-Key: <key>` or `Authorization: Bearer <key>`.

Keys are verified against the `api_keys` table (argon2id, shared.security.api_keys). argon2 costs ~50-100 ms of CPU
by design, so a verified key is remembered for VERIFIED_TTL seconds under an HMAC of the key with SECRET_KEY (the
plaintext is never kept); a revoked key therefore stops working within that time, in every coordinator.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from typing import Callable

from fastapi import HTTPException, Request

from shared.security.api_keys import ApiKeyPrincipal, verify_api_key

VERIFIED_TTL = 10.0
MAX_REMEMBERED = 10_000


class ApiKeyAuthenticator:
    """Verifies presented keys (with a short-lived memory of verified ones) using sessions from `session_factory`."""

    def __init__(self, session_factory, secret_key: bytes, clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions, self._secret, self._clock = session_factory, secret_key, clock
        self._verified: dict[bytes, tuple[float, ApiKeyPrincipal]] = {}
        self._lock = threading.Lock()

    def principal(self, key: str) -> ApiKeyPrincipal | None:
        """The principal `key` authenticates, or None."""
        digest = hmac.new(self._secret, key.encode("utf-8", "replace"), hashlib.sha256).digest()
        now = self._clock()
        with self._lock:
            remembered = self._verified.get(digest)
            if remembered is not None and remembered[0] > now:
                return remembered[1]
        with self._sessions.begin() as session:
            principal = verify_api_key(session, key)
        if principal is not None:
            with self._lock:
                if len(self._verified) >= MAX_REMEMBERED:
                    self._verified = {k: v for k, v in self._verified.items() if v[0] > now}
                    if len(self._verified) >= MAX_REMEMBERED:
                        self._verified.clear()
                self._verified[digest] = (now + VERIFIED_TTL, principal)
        return principal


def presented_key(request: Request) -> str | None:
    """The key from X-API-Key, or from an `Authorization: Bearer` header."""
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def require_principal(request: Request) -> ApiKeyPrincipal:
    """FastAPI dependency: the authenticated principal, or 401."""
    key = presented_key(request)
    if key is None:
        raise HTTPException(401, "an API key is required (X-API-Key header or Authorization: Bearer)",
                            headers={"WWW-Authenticate": "Bearer"})
    principal = request.app.state.authenticator.principal(key)
    if principal is None:
        raise HTTPException(401, "API key rejected (unknown, revoked or malformed)",
                            headers={"WWW-Authenticate": "Bearer"})
    return principal
