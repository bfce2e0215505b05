"""The declarative base every model inherits, and the column types shared by the schema.

Constraint names follow one naming convention so Alembic revisions (and SQLite batch migrations, which must name
what they drop) are deterministic across PostgreSQL and SQLite.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, MetaData
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The largest value of an `Integer` column on PostgreSQL (int4; SQLite takes 64 bits): ids and counts beyond it can
# be neither stored nor matched, so the API refuses them as input (422 naming the field) before any query.
MAX_INTEGER = 2**31 - 1


def check_storable_text(value: Any) -> Any:
    """`value` when every string in it (recursively through dicts, lists and tuples, keys included) can be stored
    by both databases Axiom runs on; ValueError otherwise. Refused: U+0000 (PostgreSQL `text` and `jsonb` cannot hold
    NUL) and lone surrogates U+D800-U+DFFF (not encodable as UTF-8). Request models validate with it, so such input
    is a 422 naming the field instead of a driver error."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("text must not contain NUL (U+0000)")
        if any("\ud800" <= char <= "\udfff" for char in value):
            raise ValueError("text must not contain lone surrogates (U+D800-U+DFFF)")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_storable_text(key), check_storable_text(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_storable_text(item)
    return value


# JSON everywhere, JSONB on PostgreSQL (indexable, compact); Alembic compares it per dialect without drift.
JsonType = JSON().with_variant(JSONB(), "postgresql")


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator):
    """A timezone-aware timestamp that always comes back aware, in UTC.

    PostgreSQL stores `timestamptz`; SQLite has no time zones, so values are stored as UTC and the zone is
    re-attached on read. Naive datetimes given to it are taken as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """The declarative base of Axiom's schema (one MetaData, one naming convention)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
