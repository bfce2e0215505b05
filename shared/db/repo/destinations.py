"""Queries on `dicom_destinations` (C-MOVE destinations by AE title). Keyword-only; the caller owns the session.

AE titles are compared exactly after stripping leading and trailing spaces, which are not significant (PS3.5 6.2).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.connections import check_ae_title
from shared.db.models import DicomDestination
from shared.db.repo.upserts import Upserted, upsert_row


def get_destination(session: Session, *, ae_title: str, include_disabled: bool = False) -> DicomDestination | None:
    """The destination with this AE title (stripped, exact match), or None; disabled ones only with include_disabled."""
    query = select(DicomDestination).where(DicomDestination.ae_title == ae_title.strip())
    if not include_disabled:
        query = query.where(DicomDestination.is_enabled.is_(True))
    return session.scalar(query)


def list_destinations(session: Session, *, enabled_only: bool = False) -> list[DicomDestination]:
    """All destinations by AE title (only enabled ones with enabled_only)."""
    query = select(DicomDestination).order_by(DicomDestination.ae_title)
    if enabled_only:
        query = query.where(DicomDestination.is_enabled.is_(True))
    return list(session.scalars(query))


def _new_destination(*, name: str, **values: Any) -> DicomDestination:
    """upsert_row creates rows as `model(name=..., **wanted)`; a destination's key is its AE title."""
    return DicomDestination(ae_title=name, **values)


def upsert_destination(
    session: Session,
    *,
    ae_title: str,
    host: str,
    port: int,
    description: str | None = None,
    is_enabled: bool = True,
) -> Upserted:
    """Create or update the destination `ae_title` (validated, stored stripped); the call states the whole row.

    ValueError for a bad AE title, an empty host or a port outside 1-65535. Returns the row and "created",
    "updated" or "unchanged" (nothing is written when nothing differs).
    """
    title = check_ae_title(ae_title)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"destination {title!r}: port must be an integer from 1 to 65535, not {port!r}")
    if not host or not host.strip():
        raise ValueError(f"destination {title!r}: host must not be empty")
    wanted = {"host": host.strip(), "port": port, "description": description, "is_enabled": is_enabled}
    existing = get_destination(session, ae_title=title, include_disabled=True)
    return upsert_row(session, model=_new_destination, existing=existing, name=title, wanted=wanted)


def delete_destination(session: Session, *, ae_title: str) -> bool:
    """Delete the destination with this AE title (enabled or not); True if there was one."""
    destination = get_destination(session, ae_title=ae_title, include_disabled=True)
    if destination is None:
        return False
    session.delete(destination)
    session.flush()
    return True
