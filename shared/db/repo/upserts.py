"""Create-or-update of a named row, shared by the repositories that upsert by name."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from sqlalchemy.orm import Session

Action = Literal["created", "updated", "unchanged"]


class Upserted(NamedTuple):
    """A row written by an upsert and what happened to it."""

    row: Any
    action: Action


def upsert_row(session: Session, *, model: type, existing: Any | None, name: str, wanted: dict[str, Any]) -> Upserted:
    """Insert `model(name=name, **wanted)` when `existing` is None, else set only the columns that differ.

    Nothing is written when nothing differs, so applying the same configuration twice reports "unchanged".
    """
    if existing is None:
        row = model(name=name, **wanted)
        session.add(row)
        session.flush()
        return Upserted(row, "created")
    changed = [column for column, value in wanted.items() if getattr(existing, column) != value]
    for column in changed:
        setattr(existing, column, wanted[column])
    if changed:
        session.flush()
    return Upserted(existing, "updated" if changed else "unchanged")
