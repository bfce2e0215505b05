"""Queries on `users` (no crypto here: password hashing and the login rules are shared.security.users/passwords).

Like the other repo modules these functions flush, never commit: the caller's unit of work commits or rolls back.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.db.base import utc_now
from shared.db.models import Role, User


def add_user(session: Session, *, username: str, password_hash: str, role: Role, is_active: bool = True) -> User:
    """Insert a user row (the hash only, never the password); IntegrityError on a duplicate username."""
    row = User(username=username, password_hash=password_hash, role=role, is_active=is_active, created_at=utc_now())
    session.add(row)
    session.flush()
    return row


def get_user(session: Session, *, username: str | None = None, user_id: int | None = None) -> User | None:
    """The user with this username or this id (exactly one of them), active or not; None when there is none."""
    if (username is None) == (user_id is None):
        raise ValueError("give exactly one of username or user_id")
    column, value = (User.username, username) if username is not None else (User.id, user_id)
    return session.scalar(select(User).where(column == value))


def find_users_by_username_ci(session: Session, *, username: str) -> list[User]:
    """The users (active or not) whose username equals `username` ignoring ASCII case (usernames are ASCII)."""
    return list(session.scalars(select(User).where(func.lower(User.username) == username.lower()).order_by(User.id)))


def list_users(session: Session) -> list[User]:
    """Every user (active and disabled), by username."""
    return list(session.scalars(select(User).order_by(User.username)))


def set_user_password_hash(session: Session, *, user_id: int, password_hash: str) -> bool:
    """Replace a user's stored hash (a new password, or a re-hash with new parameters); False for no such user."""
    result = session.execute(update(User).where(User.id == user_id).values(password_hash=password_hash))
    session.flush()
    return result.rowcount == 1


def set_user_active(session: Session, *, user_id: int, is_active: bool) -> bool:
    """Enable or disable a user; True when the flag changed, False when it already had that value (or no user)."""
    result = session.execute(
        update(User).where(User.id == user_id, User.is_active != is_active).values(is_active=is_active))
    session.flush()
    return result.rowcount == 1


def touch_user_login(session: Session, *, user_id: int, at: datetime | None = None) -> None:
    """Set last_login_at (after a successful password login)."""
    session.execute(update(User).where(User.id == user_id).values(last_login_at=at or utc_now()))
    session.flush()
