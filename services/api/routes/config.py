"""`/api/v1/config/destinations` (C-MOVE destinations: AE title -> host/port) and the error helpers every
configuration route module shares (config_sources.py, config_spanner.py).

Conventions of the configuration routes: reads for any authenticated caller, writes admin-only; 404 for an
unknown id; 409 for a duplicate (the detail names the conflicting value and who holds it); 422 with FastAPI's
validation shape (`detail: [{loc, msg, type}]`) naming the field, also for checks pydantic cannot do (an unknown
source id, a masked secret with nothing stored). Writes commit explicitly; a unique-constraint violation raced in
between the check and the commit is still a 409.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from fastapi import APIRouter, HTTPException, Response, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.api.config_schemas import DestinationIn, DestinationOut
from services.api.deps import AdminDep, PrincipalDep, RowId, SessionDep
from shared.db.models import DicomDestination
from shared.db.repo.destinations import delete_destination, get_destination, list_destinations, upsert_destination
from shared.db.repo.upserts import Upserted

router = APIRouter(prefix="/api/v1/config", tags=["config"])


def not_found(what: str, id: int) -> NoReturn:
    """404 naming the missing resource."""
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {what} with id {id}")


def conflict(message: str) -> NoReturn:
    """409 with `message` as the detail."""
    raise HTTPException(status.HTTP_409_CONFLICT, message)


def field_error(loc: tuple, message: str, kind: str = "value_error") -> NoReturn:
    """422 in FastAPI's validation-error shape, `loc` naming the field (e.g. ("body", "source_id"))."""
    raise HTTPException(422, [{"loc": list(loc), "msg": message, "type": kind}])


@contextmanager
def committed_or_conflict(session: Session, message: str) -> Iterator[None]:
    """Run the block's writes and commit; a unique-constraint violation at a flush or the commit (a concurrent
    write won the race after the route's own check) is rolled back and becomes 409 `message`."""
    try:
        yield
        session.commit()
    except IntegrityError:
        session.rollback()
        conflict(message)


def written_row(upserted: Upserted, target: Any | None, message: str) -> Any:
    """The row an upsert by name wrote, when it is the intended one: a new row for a create (`target` None), else
    `target` itself. Otherwise another writer took the name meanwhile: 409 `message` (nothing is committed)."""
    if (upserted.action != "created") if target is None else (upserted.row is not target):
        conflict(message)
    return upserted.row


def _destination(session: Session, id: int) -> DicomDestination:
    row = session.get(DicomDestination, id)
    if row is None:
        not_found("destination", id)
    return row


def _check_ae_title_free(session: Session, ae_title: str, id: int | None = None) -> None:
    holder = get_destination(session, ae_title=ae_title, include_disabled=True)
    if holder is not None and holder.id != id:
        conflict(f"AE title {ae_title!r} is already the destination with id {holder.id}")


@router.get("/destinations", response_model=list[DestinationOut])
def list_destination_rows(session: SessionDep, _principal: PrincipalDep) -> list[DestinationOut]:
    """All C-MOVE destinations by AE title."""
    return [DestinationOut.of(row) for row in list_destinations(session)]


@router.post("/destinations", response_model=DestinationOut, status_code=status.HTTP_201_CREATED)
def create_destination(body: DestinationIn, session: SessionDep, _admin: AdminDep) -> DestinationOut:
    """Create a C-MOVE destination; 409 when its AE title is taken."""
    _check_ae_title_free(session, body.ae_title)
    taken = f"AE title {body.ae_title!r} is already a destination"
    with committed_or_conflict(session, taken):
        row = written_row(upsert_destination(session, **body.model_dump()), None, taken)
    return DestinationOut.of(row)


@router.get("/destinations/{id}", response_model=DestinationOut)
def read_destination(id: RowId, session: SessionDep, _principal: PrincipalDep) -> DestinationOut:
    """One destination."""
    return DestinationOut.of(_destination(session, id))


@router.put("/destinations/{id}", response_model=DestinationOut)
def replace_destination(id: RowId, body: DestinationIn, session: SessionDep, _admin: AdminDep) -> DestinationOut:
    """Replace a destination wholly (its AE title may change; 409 when the new one is taken)."""
    row = _destination(session, id)
    _check_ae_title_free(session, body.ae_title, id)
    taken = f"AE title {body.ae_title!r} is already a destination"
    with committed_or_conflict(session, taken):
        row.ae_title = body.ae_title
        row = written_row(upsert_destination(session, **body.model_dump()), row, taken)
    return DestinationOut.of(row)


@router.delete("/destinations/{id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_destination_row(id: RowId, session: SessionDep, _admin: AdminDep) -> Response:
    """Delete a destination."""
    delete_destination(session, ae_title=_destination(session, id).ae_title)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
