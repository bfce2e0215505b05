"""Password hashing: argon2id through argon2-cffi, with the same hasher conventions as API keys.

- `default_hasher()` is shared.security.api_keys.default_hasher() (argon2-cffi defaults: argon2id, RFC 9106 low-memory
  profile, t=3, m=64 MiB, p=4): one hashing policy for every secret Axiom stores, and tests that make it cheap for
  keys make it cheap for passwords too. Every function takes an optional `hasher`.
- `verify_password(None, password)` - no such user - still runs one argon2 verification, against a dummy hash made
  with the same parameters, so the time a failed login takes does not reveal whether the username exists.
- `needs_rehash(hash)` is true when the hash was made with other parameters; shared.security.users re-hashes the
  password on the next successful login.

Passwords are 8-1024 characters (`check_password_rules`); the upper bound keeps a login request from costing more
than the argon2 work itself. Nothing here logs or returns a password.
"""

from __future__ import annotations

import secrets
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from shared.security import api_keys

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
_dummy_hashes: dict[tuple, str] = {}
_dummy_lock = threading.Lock()


def default_hasher() -> PasswordHasher:
    """The production hasher, the one API keys use (shared.security.api_keys.default_hasher)."""
    return api_keys.default_hasher()


def check_password_rules(password: object) -> str:
    """`password` when it is acceptable (a string of 8-1024 characters); ValueError otherwise (never echoing it)."""
    if not isinstance(password, str) or not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise ValueError(f"a password must be {MIN_PASSWORD_LENGTH}-{MAX_PASSWORD_LENGTH} characters")
    return password


def hash_password(password: str, *, hasher: PasswordHasher | None = None) -> str:
    """The argon2id hash (PHC string, salted) of an acceptable `password`; what users.password_hash stores."""
    return (hasher or default_hasher()).hash(check_password_rules(password))


def _dummy_hash(hasher: PasswordHasher) -> str:
    """A hash of a random password with `hasher`'s parameters (made once per parameter set)."""
    params = (hasher.time_cost, hasher.memory_cost, hasher.parallelism, hasher.hash_len, hasher.salt_len, hasher.type)
    with _dummy_lock:
        if params not in _dummy_hashes:
            _dummy_hashes[params] = hasher.hash(secrets.token_urlsafe(32))
        return _dummy_hashes[params]


def verify_password(password_hash: str | None, password: object, *, hasher: PasswordHasher | None = None) -> bool:
    """True when `password` matches `password_hash` (argon2's constant-time comparison), False otherwise.

    With `password_hash` None (an unknown user) the password is checked against a dummy hash made with the same
    parameters and False is returned: the failure costs the same time as a wrong password for a real user. A
    non-string or oversized password is checked against the dummy too (no early return), then refused.
    """
    hasher = hasher or default_hasher()
    acceptable = isinstance(password, str) and len(password) <= MAX_PASSWORD_LENGTH
    candidate = password if acceptable else ""
    stored = password_hash if (password_hash is not None and acceptable) else _dummy_hash(hasher)
    try:
        matched = hasher.verify(stored, candidate)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        matched = False
    return matched and acceptable and password_hash is not None


def needs_rehash(password_hash: str, *, hasher: PasswordHasher | None = None) -> bool:
    """True when `password_hash` was made with parameters other than `hasher`'s (re-hash after a verified login)."""
    try:
        return (hasher or default_hasher()).check_needs_rehash(password_hash)
    except InvalidHashError:
        return True
