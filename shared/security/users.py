"""Users: creation, password login, password changes, enabling/disabling and listing (rules, not SQL).

The SQL lives in shared.db.repo.users, the hashing in shared.security.passwords. Functions here flush but never
commit: the caller's unit of work commits (that includes last_login_at and re-hash updates). There is no
"first login becomes admin": the first administrator is created with `axiom user create NAME --admin`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from sqlalchemy.orm import Session

from shared.choices import parse_choice
from shared.db.base import utc_now
from shared.db.models import Role, User
from shared.db.models.user import check_username
from shared.db.repo import users as repo
from shared.security.passwords import hash_password, needs_rehash, verify_password


@dataclass(frozen=True)
class UserInfo:
    """A user as listings show it: everything but the hash."""

    id: int
    username: str
    role: Role
    is_active: bool
    created_at: datetime
    last_login_at: datetime | None


def create_user(
    session: Session, *, username: str, password: str, role: Role | str = Role.USER,
    hasher: PasswordHasher | None = None,
) -> User:
    """Create an active user; ValueError for an invalid username, role or password, or a username already taken."""
    username, role = check_username(username), parse_choice(Role, role, "role")
    password_hash = hash_password(password, hasher=hasher)
    if repo.get_user(session, username=username) is not None:
        raise ValueError(f"a user named {username!r} already exists")
    return repo.add_user(session, username=username, password_hash=password_hash, role=role)


def authenticate_user(
    session: Session, *, username: object, password: object, now: datetime | None = None,
    hasher: PasswordHasher | None = None,
) -> User | None:
    """The active user these credentials log in, or None (never an exception for bad input).

    Every failure - unknown or malformed username, wrong password, disabled user - costs one argon2 verification
    (shared.security.passwords.verify_password uses a dummy hash for unknown users), so timing does not tell them
    apart. On success last_login_at is set and a hash made with older parameters is re-hashed (both flushed).
    """
    try:
        row = repo.get_user(session, username=check_username(username))
    except ValueError:
        row = None
    if not verify_password(row.password_hash if row is not None else None, password, hasher=hasher):
        return None
    if not row.is_active:
        return None
    if needs_rehash(row.password_hash, hasher=hasher):
        repo.set_user_password_hash(session, user_id=row.id, password_hash=hash_password(password, hasher=hasher))
    repo.touch_user_login(session, user_id=row.id, at=now or utc_now())
    session.refresh(row)
    return row


def _existing(session: Session, username: str) -> User:
    row = repo.get_user(session, username=username)
    if row is None:
        raise LookupError(f"no user named {username!r}")
    return row


def set_user_password(session: Session, *, username: str, password: str, hasher: PasswordHasher | None = None) -> None:
    """Replace a user's password; LookupError for no such user, ValueError for an unacceptable password."""
    password_hash = hash_password(password, hasher=hasher)
    repo.set_user_password_hash(session, user_id=_existing(session, username).id, password_hash=password_hash)


def set_user_active(session: Session, *, username: str, active: bool) -> bool:
    """Enable or disable a user; True when that changed its state, False when it already was so.

    LookupError for no such user. A disabled user cannot log in, and its tokens stop authenticating within the
    authenticator's memory TTL (shared.security.authenticator.VERIFIED_TTL).
    """
    return repo.set_user_active(session, user_id=_existing(session, username).id, is_active=active)


def list_users(session: Session) -> list[UserInfo]:
    """Every user, active and disabled, by username - without the hash."""
    return [UserInfo(id=row.id, username=row.username, role=Role(row.role), is_active=row.is_active,
                     created_at=row.created_at, last_login_at=row.last_login_at)
            for row in repo.list_users(session)]
