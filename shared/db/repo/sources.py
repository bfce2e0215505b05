"""Queries on `sources`. Keyword-only; the caller owns the session and its transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.connections import parse_connection
from shared.db.models import Source
from shared.db.repo.upserts import Upserted, upsert_row


def get_source(session: Session, *, name: str) -> Source | None:
    """The source called `name`, or None."""
    return session.scalar(select(Source).where(Source.name == name))


def list_sources(session: Session, *, enabled_only: bool = False) -> list[Source]:
    """All sources by name (only enabled ones with enabled_only)."""
    query = select(Source).order_by(Source.name)
    if enabled_only:
        query = query.where(Source.is_enabled.is_(True))
    return list(session.scalars(query))


def upsert_source(
    session: Session,
    *,
    name: str,
    kind: str,
    connection: Any,
    description: str | None = None,
    is_enabled: bool = True,
) -> Upserted:
    """Create or update the source `name`; `connection` is a connection model or dict (validated, kind must match).

    Returns the row and "created", "updated" or "unchanged" (nothing is written when nothing differs).
    """
    data = connection.model_dump() if hasattr(connection, "model_dump") else dict(connection)
    data.setdefault("kind", kind)
    if data["kind"] != kind:
        raise ValueError(f"source {name!r}: kind {kind!r} does not match the connection's kind {data['kind']!r}")
    normalized = parse_connection(data).model_dump(mode="json")
    wanted = {"kind": kind, "connection_data": normalized, "description": description, "is_enabled": is_enabled}
    return upsert_row(session, model=Source, existing=get_source(session, name=name), name=name, wanted=wanted)
