"""Queries on `api_keys` (no crypto here: hashing, the key format and verification are shared.security.api_keys).

Like the other repo modules these functions flush, never commit: the caller's unit of work (session_scope, a
request's session) commits or rolls back.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from shared.db.base import utc_now
from shared.db.models import ApiKey, Role


def add_api_key(
    session: Session, *, name: str, prefix: str, key_hash: str, role: Role, created_by: str | None = None
) -> ApiKey:
    """Insert a key row (the hash only, never the key); IntegrityError on a duplicate name or prefix."""
    row = ApiKey(name=name, prefix=prefix, key_hash=key_hash, role=role, created_by=created_by, created_at=utc_now())
    session.add(row)
    session.flush()
    return row


def get_api_key(session: Session, *, name: str | None = None, prefix: str | None = None) -> ApiKey | None:
    """The key with this name or this prefix (exactly one of them), revoked or not; None when there is none."""
    if (name is None) == (prefix is None):
        raise ValueError("give exactly one of name or prefix")
    column, value = (ApiKey.name, name) if name is not None else (ApiKey.prefix, prefix)
    return session.scalar(select(ApiKey).where(column == value))


def list_api_keys(session: Session) -> list[ApiKey]:
    """Every key (active and revoked), by name."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.name)))


def mark_api_key_revoked(session: Session, *, key_id: int, at: datetime | None = None) -> bool:
    """Set revoked_at on an active key; False when the key does not exist or was already revoked."""
    result = session.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=at or utc_now()))
    session.flush()
    return result.rowcount == 1


def touch_api_key(session: Session, *, key_id: int, now: datetime, min_interval: timedelta) -> bool:
    """Set last_used_at = now unless it was set less than `min_interval` ago; True when a row was written.

    One conditional UPDATE, so concurrent requests in several processes write at most once per interval
    between them (the throttle lives in the database, not in process memory).
    """
    cutoff = now - min_interval
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= cutoff))
        .values(last_used_at=now))
    return result.rowcount == 1


def set_api_key_hash(session: Session, *, key_id: int, key_hash: str) -> None:
    """Replace a key's stored hash (after a successful verify when the hashing parameters have changed)."""
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(key_hash=key_hash))
