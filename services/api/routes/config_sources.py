"""`/api/v1/config/sources` (CRUD by id) and its filtered views `/api/v1/config/dimse-qr-sources` (kind "dimse")
and `/api/v1/config/dicomweb-sources` (kinds "dicomweb" and "google_healthcare": both are served over DICOMweb).

Writes go through shared.db.repo.sources.upsert_source (which validates the connection again); secrets are masked in
every answer, and a masked value sent back (GET, edit, PUT) keeps the stored secret (restore_masked, as `axiom config
apply` does). A source pointing at this spanner's own SCP is refused (422), as `config apply` refuses it. A source
used by spanner configs cannot be deleted: 409 naming them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.api.config_schemas import SourceIn, SourceOut
from services.api.deps import AdminDep, PrincipalDep, RowId, SessionDep
from services.api.routes.config import committed_or_conflict, conflict, field_error, not_found, written_row
from shared.db.models import Source, SpannerConfig, SpannerSourceMapping
from shared.db.repo.sources import get_source, list_sources, upsert_source
from shared.db.repo.spanner_configs import list_spanner_configs
from shared.provisioning.secrets import restore_masked
from shared.provisioning.self_loop import own_scp_refusal

router = APIRouter(prefix="/api/v1/config", tags=["config"])
DIMSE_KINDS = ("dimse",)
DICOMWEB_KINDS = ("dicomweb", "google_healthcare")


def _source(session: Session, id: int) -> Source:
    source = session.get(Source, id)
    if source is None:
        not_found("source", id)
    return source


def _checked_connection(request: Request, session: Session, body: SourceIn, stored: Source | None) -> dict[str, Any]:
    """The connection to store: masked secrets restored from `stored`, and not this spanner's own SCP (else 422)."""
    data, missing = restore_masked(body.connection.model_dump(), stored.connection_data if stored else None)
    if missing:
        field_error(("body", "connection", *missing[0]), "is masked and no secret is stored: give the real value")
    scp = request.app.state.settings.scp
    titles = {scp.ae_title} | {c.scp_ae_title for c in list_spanner_configs(session) if c.scp_ae_title}
    refusal = own_scp_refusal(body.name, body.connection, scp_ae_titles=titles, scp_port=scp.port, scp_host=scp.host)
    if refusal:
        field_error(("body", "connection"), refusal)
    return data


def _write(session: Session, body: SourceIn, connection: dict[str, Any], target: Source | None = None) -> Source:
    """Create (`target` None) or replace `target` (renamed first) by upsert_source, and commit; 409 when the name
    turns out to be taken by another source (a concurrent write)."""
    taken = f"a source named {body.name!r} already exists"
    with committed_or_conflict(session, taken):
        if target is not None:
            target.name = body.name
        upserted = upsert_source(session, name=body.name, kind=body.connection.kind, connection=connection,
                                 description=body.description, is_enabled=body.is_enabled)
        return written_row(upserted, target, taken)


def _check_name_free(session: Session, name: str, id: int | None = None) -> None:
    holder = get_source(session, name=name)
    if holder is not None and holder.id != id:
        conflict(f"a source named {name!r} already exists (id {holder.id})")


def _listed(session: Session, kinds: tuple[str, ...] | None = None) -> list[SourceOut]:
    return [SourceOut.of(s) for s in list_sources(session) if kinds is None or s.kind in kinds]


@router.get("/sources", response_model=list[SourceOut])
def list_source_rows(session: SessionDep, _principal: PrincipalDep) -> list[SourceOut]:
    """All sources by name, secrets masked."""
    return _listed(session)


@router.get("/dimse-qr-sources", response_model=list[SourceOut])
def list_dimse_sources(session: SessionDep, _principal: PrincipalDep) -> list[SourceOut]:
    """The DIMSE Query/Retrieve sources (kind "dimse")."""
    return _listed(session, DIMSE_KINDS)


@router.get("/dicomweb-sources", response_model=list[SourceOut])
def list_dicomweb_sources(session: SessionDep, _principal: PrincipalDep) -> list[SourceOut]:
    """The DICOMweb sources (kinds "dicomweb" and "google_healthcare"), secrets masked."""
    return _listed(session, DICOMWEB_KINDS)


@router.post("/sources", response_model=SourceOut, status_code=status.HTTP_201_CREATED)
def create_source(body: SourceIn, request: Request, session: SessionDep, _admin: AdminDep) -> SourceOut:
    """Create a source; 409 when the name is taken, 422 naming the invalid field."""
    _check_name_free(session, body.name)
    return SourceOut.of(_write(session, body, _checked_connection(request, session, body, None)))


@router.get("/sources/{id}", response_model=SourceOut)
def read_source(id: RowId, session: SessionDep, _principal: PrincipalDep) -> SourceOut:
    """One source, secrets masked."""
    return SourceOut.of(_source(session, id))


@router.put("/sources/{id}", response_model=SourceOut)
def replace_source(id: RowId, body: SourceIn, request: Request, session: SessionDep, _admin: AdminDep) -> SourceOut:
    """Replace a source wholly (it may be renamed; 409 when the new name is taken). Masked secrets keep theirs."""
    source = _source(session, id)
    _check_name_free(session, body.name, id)
    connection = _checked_connection(request, session, body, source)
    return SourceOut.of(_write(session, body, connection, target=source))


@router.delete("/sources/{id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_source(id: RowId, session: SessionDep, _admin: AdminDep) -> Response:
    """Delete a source; 409 naming the spanner configs that still use it."""
    source = _source(session, id)
    users = list(session.scalars(
        select(SpannerConfig.name).join(SpannerSourceMapping, SpannerSourceMapping.spanner_config_id == SpannerConfig.id)
        .where(SpannerSourceMapping.source_id == id).order_by(SpannerConfig.name)))
    if users:
        conflict(f"source {source.name!r} is used by spanner config(s) {', '.join(users)}: remove it from them first "
                 "(DELETE /api/v1/config/spanner/{id}/sources/" + str(id) + ")")
    session.delete(source)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
