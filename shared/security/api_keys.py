"""API keys: the key format, argon2id hashing, creation, verification, revocation and listing.

A key reads `axk_<prefix>_<secret>`:
- `prefix`: 10 lowercase hex characters (`secrets.token_hex(5)`), the key's public identifier. It is stored in
  `api_keys.prefix` (unique, indexed) to find the row in one lookup, and shown in listings and logs.
- `secret`: `secrets.token_urlsafe(32)`, 32 random bytes (256 bits of entropy), 43 URL-safe characters.
The whole key is hashed with argon2id (argon2-cffi `PasswordHasher`), so the hash also binds the prefix; only the
hash is stored. The plaintext is returned once by create_api_key and never again.

Hashing parameters: argon2-cffi's defaults, the RFC 9106 "low memory" profile (argon2id, t=3, m=64 MiB, p=4,
32-byte hash, 16-byte salt), about 50-100 ms a hash. Every function that hashes takes an optional `hasher`, so tests
can pass a cheap PasswordHasher; when the parameters change, a key is re-hashed on its next successful verify.

Split of responsibilities: this module holds the crypto and the rules; the SQL lives in shared.db.repo.api_keys.
Functions here flush but never commit: the caller's unit of work commits (that includes last_used_at updates).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.orm import Session

from shared.choices import parse_choice
from shared.db.base import utc_now
from shared.db.models import ApiKey, Role
from shared.db.repo import api_keys as repo

KEY_SCHEME = "axk"
MAX_KEY_LENGTH = 256  # anything longer is rejected before any parsing or hashing
SECRET_BYTES = 32
PREFIX_BYTES = 5  # 10 hex characters
TOUCH_INTERVAL = timedelta(seconds=60)  # last_used_at is written at most once per interval per key
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
KEY_PATTERN = re.compile(rf"{KEY_SCHEME}_(?P<prefix>[0-9a-f]{{{2 * PREFIX_BYTES}}})_(?P<secret>[A-Za-z0-9_-]{{32,128}})")
_CREATE_ATTEMPTS = 5


@dataclass(frozen=True)
class ApiKeyPrincipal:
    """Who a verified key authenticates: the key's id, name and role."""

    key_id: int
    name: str
    role: Role

    def allows(self, required: Role | str) -> bool:
        """True when this principal's role permits an action that requires `required` (admin allows all)."""
        return self.role.allows(required)


@dataclass(frozen=True)
class ApiKeyInfo:
    """A key as listings show it: everything but the hash."""

    id: int
    name: str
    prefix: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    created_by: str | None

    @property
    def is_active(self) -> bool:
        """False once revoked."""
        return self.revoked_at is None


@lru_cache(maxsize=1)
def default_hasher() -> PasswordHasher:
    """The production hasher: argon2-cffi defaults (argon2id, RFC 9106 low-memory profile; see the module doc)."""
    return PasswordHasher()


def generate_api_key() -> str:
    """A new random key `axk_<10 hex prefix>_<43-char token_urlsafe(32) secret>` (256 bits of secret entropy)."""
    return f"{KEY_SCHEME}_{secrets.token_hex(PREFIX_BYTES)}_{secrets.token_urlsafe(SECRET_BYTES)}"


def parse_api_key(key: object) -> str | None:
    """The prefix of a well-formed key, or None for anything else (wrong type, format or an oversized input)."""
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH:
        return None
    match = KEY_PATTERN.fullmatch(key)
    return match.group("prefix") if match else None


def hash_api_key(key: str, *, hasher: PasswordHasher | None = None) -> str:
    """The argon2id hash (PHC string, salted) of `key`; what api_keys.key_hash stores."""
    return (hasher or default_hasher()).hash(key)


def _role(value: Role | str) -> Role:
    return parse_choice(Role, value, "role")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"invalid API key name {name!r}: 1-64 characters, letters, digits and . _ : @ -, "
                         "starting with a letter or digit")
    return name


def create_api_key(
    session: Session,
    *,
    name: str,
    role: Role | str,
    created_by: str | None = None,
    hasher: PasswordHasher | None = None,
) -> tuple[ApiKey, str]:
    """Create a key named `name` with `role`; returns (the row, the plaintext key).

    The plaintext is returned this once and never stored (only its argon2id hash). ValueError for an invalid
    name or role, or when a key with this name already exists (revoked keys keep their name).
    """
    name, role = _check_name(name), _role(role)
    if created_by is not None and len(created_by) > 128:
        raise ValueError("created_by: at most 128 characters")
    if repo.get_api_key(session, name=name) is not None:
        raise ValueError(f"an API key named {name!r} already exists")
    for _ in range(_CREATE_ATTEMPTS):  # a 40-bit prefix collision is unlikely, but possible
        key = generate_api_key()
        prefix = parse_api_key(key)
        if repo.get_api_key(session, prefix=prefix) is None:
            break
    else:
        raise RuntimeError("could not draw an unused API key prefix")
    row = repo.add_api_key(session, name=name, prefix=prefix, key_hash=hash_api_key(key, hasher=hasher),
                           role=role, created_by=created_by)
    return row, key


def _hash_matches(hasher: PasswordHasher, key_hash: str, key: str) -> bool:
    try:
        return hasher.verify(key_hash, key)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def verify_api_key(
    session: Session,
    key: object,
    *,
    touch: bool = True,
    now: datetime | None = None,
    hasher: PasswordHasher | None = None,
) -> ApiKeyPrincipal | None:
    """The principal a presented key authenticates, or None (never an exception for bad input).

    None for: a non-string, a key longer than MAX_KEY_LENGTH, a wrong format, an unknown prefix, a revoked key, or
    a secret that does not match. The secret is checked by argon2's verify (constant-time comparison of the
    derived hash). The prefix is an identifier, not a secret: an unknown or revoked prefix returns without hashing,
    so garbage requests cost no argon2 work.

    With `touch`, last_used_at is set to `now` (default: the current time) - at most once per TOUCH_INTERVAL
    (60 s) per key, so a busy client does not cost a database write per request; the throttle is a conditional
    UPDATE, shared by every process. A key hashed with older parameters is re-hashed. Both are flushed, not
    committed: the caller's unit of work commits them.
    """
    prefix = parse_api_key(key)
    if prefix is None:
        return None
    row = repo.get_api_key(session, prefix=prefix)
    if row is None or row.revoked_at is not None:
        return None
    hasher = hasher or default_hasher()
    if not _hash_matches(hasher, row.key_hash, key):
        return None
    if hasher.check_needs_rehash(row.key_hash):
        repo.set_api_key_hash(session, key_id=row.id, key_hash=hasher.hash(key))
    now = now or utc_now()
    if touch and (row.last_used_at is None or row.last_used_at <= now - TOUCH_INTERVAL):
        repo.touch_api_key(session, key_id=row.id, now=now, min_interval=TOUCH_INTERVAL)
    session.flush()
    return ApiKeyPrincipal(key_id=row.id, name=row.name, role=Role(row.role))


def revoke_api_key(session: Session, *, name: str | None = None, prefix: str | None = None) -> bool:
    """Revoke the key with this name or prefix (exactly one); True when it was active and is now revoked,
    False when there is no such key or it was already revoked. Revoked keys stay listed (audit) and never verify.
    """
    row = repo.get_api_key(session, name=name, prefix=prefix)
    if row is None:
        return False
    return repo.mark_api_key_revoked(session, key_id=row.id)


def list_api_keys(session: Session) -> list[ApiKeyInfo]:
    """Every key, active and revoked, by name - without the hash."""
    return [
        ApiKeyInfo(id=row.id, name=row.name, prefix=row.prefix, role=Role(row.role), created_at=row.created_at,
                   last_used_at=row.last_used_at, revoked_at=row.revoked_at, created_by=row.created_by)
        for row in repo.list_api_keys(session)
    ]
