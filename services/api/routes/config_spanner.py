"""`/api/v1/config/spanner` (spanner configs, CRUD by id), `/api/v1/config/spanner/{id}/sources` (the config's source
mappings: POST add, GET list, DELETE `/{source_id}`) and `POST /api/v1/config/spanner/{id}/test` (probe every mapped
source: C-ECHO or QIDO-RS, in parallel, by shared.adapters.probe).

Writes go through shared.db.repo.spanner_configs (upsert_spanner_config: a PUT states the whole config, omitted fields
take their defaults; replace_mappings for the mappings). 409 for a duplicate name, an SCP AE title another config
answers on, or a source already mapped. The test is admin-only: it makes this server open connections.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from sqlalchemy.orm import Session

from services.api.config_schemas import (
    MappingIn,
    MappingOut,
    ProbeOut,
    SpannerConfigIn,
    SpannerConfigOut,
    SpannerTestOut,
)
from services.api.deps import AdminDep, PrincipalDep, RowId, SessionDep
from services.api.routes.config import committed_or_conflict, conflict, field_error, not_found, written_row
from shared.adapters.google_auth import google_healthcare_access
from shared.adapters.probe import probe_sources
from shared.db.models import Source, SpannerConfig, SpannerSourceMapping
from shared.db.repo.spanner_configs import (
    MappingSpec,
    get_spanner_config,
    list_spanner_configs,
    replace_mappings,
    source_spec,
    upsert_spanner_config,
)

router = APIRouter(prefix="/api/v1/config/spanner", tags=["config"])
_DUPLICATE = "a spanner config with this name or SCP AE title already exists"


def _config(session: Session, id: int) -> SpannerConfig:
    config = get_spanner_config(session, id=id)
    if config is None:
        not_found("spanner config", id)
    return config


def _check_unique(session: Session, body: SpannerConfigIn, id: int | None = None) -> None:
    """409 when another config has this name or answers on this SCP AE title."""
    for other in list_spanner_configs(session):
        if other.id == id:
            continue
        if other.name == body.name:
            conflict(f"a spanner config named {body.name!r} already exists (id {other.id})")
        if body.scp_ae_title is not None and other.scp_ae_title == body.scp_ae_title:
            conflict(f"SCP AE title {body.scp_ae_title!r} is already used by spanner config {other.name!r} "
                     f"(id {other.id})")


def _write(session: Session, body: SpannerConfigIn, target: SpannerConfig | None = None) -> SpannerConfigOut:
    """Create (`target` None) or replace `target` (renamed first) by upsert_spanner_config, and commit; 409 when the
    name or SCP AE title turns out to be taken by another config (a concurrent write)."""
    with committed_or_conflict(session, _DUPLICATE):
        if target is not None:
            target.name = body.name
        config = written_row(upsert_spanner_config(session, name=body.name, **body.columns()), target, _DUPLICATE)
    session.refresh(config)
    return SpannerConfigOut.of(config)


@router.get("", response_model=list[SpannerConfigOut])
def list_configs(session: SessionDep, _principal: PrincipalDep) -> list[SpannerConfigOut]:
    """All spanner configs by name, each with its sources."""
    return [SpannerConfigOut.of(config) for config in list_spanner_configs(session)]


@router.post("", response_model=SpannerConfigOut, status_code=status.HTTP_201_CREATED)
def create_config(body: SpannerConfigIn, session: SessionDep, _admin: AdminDep) -> SpannerConfigOut:
    """Create a spanner config (add its sources with POST /{id}/sources); 409 for a duplicate name or SCP AE title."""
    _check_unique(session, body)
    return _write(session, body)


@router.get("/{id}", response_model=SpannerConfigOut)
def read_config(id: RowId, session: SessionDep, _principal: PrincipalDep) -> SpannerConfigOut:
    """One spanner config with its sources."""
    return SpannerConfigOut.of(_config(session, id))


@router.put("/{id}", response_model=SpannerConfigOut)
def replace_config(id: RowId, body: SpannerConfigIn, session: SessionDep, _admin: AdminDep) -> SpannerConfigOut:
    """Replace a spanner config wholly (omitted fields take their defaults; its sources are kept). It may be
    renamed; 409 when the new name or SCP AE title is taken."""
    config = _config(session, id)
    _check_unique(session, body, id)
    return _write(session, body, target=config)


@router.delete("/{id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_config(id: RowId, session: SessionDep, _admin: AdminDep) -> Response:
    """Delete a spanner config and its source mappings (the sources stay)."""
    session.delete(_config(session, id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- mappings ------------------------------------------------------------------------------------------------------


def _spec(mapping: SpannerSourceMapping) -> MappingSpec:
    return MappingSpec(source=mapping.source.name, priority=mapping.priority, timeout_seconds=mapping.timeout_seconds,
                       max_retries=mapping.max_retries, is_enabled=mapping.is_enabled,
                       additional_query_filters=mapping.additional_query_filters)


@router.get("/{id}/sources", response_model=list[MappingOut])
def list_mappings(id: RowId, session: SessionDep, _principal: PrincipalDep) -> list[MappingOut]:
    """The config's sources, by priority (lower = preferred)."""
    return [MappingOut.of(m) for m in _config(session, id).mappings]


@router.post("/{id}/sources", response_model=MappingOut, status_code=status.HTTP_201_CREATED)
def add_mapping(id: RowId, body: MappingIn, session: SessionDep, _admin: AdminDep) -> MappingOut:
    """Add a source to the config with its priority, timeout, retries and extra query filters; 422 for an unknown
    source id, 409 when the source is already mapped (DELETE it first to change it)."""
    config = _config(session, id)
    source = session.get(Source, body.source_id)
    if source is None:
        field_error(("body", "source_id"), f"no source with id {body.source_id}")
    if any(m.source_id == source.id for m in config.mappings):
        conflict(f"source {source.name!r} is already mapped to spanner config {config.name!r}")
    wanted = MappingSpec(source=source.name, **body.model_dump(exclude={"source_id"}))
    with committed_or_conflict(session, f"source {source.name!r} is already mapped to spanner config {config.name!r}"):
        replace_mappings(session, config=config, mappings=[*map(_spec, config.mappings), wanted])
    session.refresh(config)
    return MappingOut.of(next(m for m in config.mappings if m.source_id == source.id))


@router.delete("/{id}/sources/{source_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_mapping(id: RowId, source_id: RowId, session: SessionDep, _admin: AdminDep) -> Response:
    """Remove a source from the config (the source itself stays); 404 when it is not mapped."""
    config = _config(session, id)
    if not any(m.source_id == source_id for m in config.mappings):
        not_found(f"source mapped to spanner config {config.name!r}", source_id)
    replace_mappings(session, config=config, mappings=[_spec(m) for m in config.mappings if m.source_id != source_id])
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- test ----------------------------------------------------------------------------------------------------------


@router.post("/{id}/test", response_model=SpannerTestOut)
def test_config(id: RowId, request: Request, session: SessionDep, _admin: AdminDep) -> SpannerTestOut:
    """Probe every source mapped to the config (enabled or not) in parallel: C-ECHO to DIMSE sources with their
    calling AE title and timeouts, QIDO-RS `studies?limit=1` to DICOMweb sources (Google Cloud Healthcare ones with
    an access token from the app's credentials); per source `reachable`, `latency_ms` (round trip) and `error`. The
    answer is 200 whatever the sources say (no Google credentials is an unreachable source saying so)."""
    config = _config(session, id)
    mappings = list(config.mappings)
    specs = [source_spec(m) for m in mappings]
    deadline = max([config.query_timeout_seconds, *(s.timeout_seconds or 0 for s in specs)])
    results = probe_sources(specs, deadline_seconds=deadline,
                            google=google_healthcare_access(request.app.state.settings))
    probes = [ProbeOut(source_id=m.source_id, source=r.source, kind=r.kind, is_enabled=m.is_enabled and
                       m.source.is_enabled, reachable=r.reachable, latency_ms=r.latency_ms, error=r.error)
              for m, r in zip(mappings, results)]
    return SpannerTestOut(spanner_config_id=config.id, name=config.name, total=len(probes),
                          reachable=sum(p.reachable for p in probes), sources=probes)
