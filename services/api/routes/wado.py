"""WADO-RS spanning retrieve (PS3.18 10.4): `GET /api/v1/spanner/wado/studies/{study}`,
`/studies/{study}/series/{series}`, `/studies/{study}/series/{series}/instances/{sop}` and their `/metadata`.

Instances (PS3.18 10.4.1.1.1) come from the config's retrieval service (shared.retrieval.service.RetrievalService
.get through services.api.retrievals): a spanning C-FIND/QIDO locates the entities, each is fetched from its
highest-priority holder (DICOMweb: WADO-RS; DIMSE: C-GET, or C-MOVE to the API's own storage AE for a source
without C-GET, see services.api.store_scp), falling back to the next holder for what one did not deliver.

- Answer: `multipart/related; type="application/dicom"; boundary=...`, one part per instance, the instance's
  PS3.10 file with `Content-Type: application/dicom; transfer-syntax=<its own>` (PS3.18 8.7.3.3.2). Streamed: each
  part is written as its holder delivers it (services.api.wado_stream); memory holds a few parts, the service's
  spool (on disk, AXIOM_SPOOL_MAX_MB over all retrievals) the rest.
- No transcoding: instances go out in the transfer syntax their holder sent. Accept (PS3.18 8.7): absent, `*/*`,
  `multipart/*`, or `multipart/related` with type `application/dicom` (or none) and transfer-syntax absent or `*`;
  anything else is 406 naming what is supported. Metadata accepts `application/dicom+json`, `application/json`,
  `application/*`, `*/*` or no Accept.
- Before the response starts, the entities are located and the first instance is fetched: nothing located is 404,
  a failed locate 502 naming the failed sources, nothing delivered by any holder 502 naming why. After that, a
  holder's failure falls back to the next holder (the service does it); instances no holder delivered are left
  out: the body ends normally with fewer parts, and `wado_retrieve_incomplete` is logged with query_id, study_uid
  and the counts. A client that disconnects cancels the retrieval (the sources are told to stop).
- Metadata (PS3.18 10.4.1.1.2): `application/dicom+json`, one object per SOP Instance UID from its first holder
  by priority, bulk data dropped (shared.retrieval.metadata); 404 when no source holds the resource; sources that
  failed on the way are named in `Warning: 299` headers.
- The config: `spanner_config_id` or the only enabled config with supports_wado; the config's client network
  allowlist applies (403) — services.api.spanning. UIDs in the path must be valid UIDs (PS3.5 9.1), else 400 naming
  the path parameter.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse, StreamingResponse
from pydicom import Dataset
from pydicom.uid import RE_VALID_UID

from services.api.deps import PrincipalDep
from services.api.retrievals import get_retrievals, retrievals_lifespan
from services.api.spanning import WADO, requester, span_client_lifespan, span_plan, warning_header
from services.api.wado_accept import check_bulk_accept, check_metadata_accept
from services.api.wado_stream import InstanceStream
from shared.db.repo.spanner_configs import SpanPlan
from shared.dicom.levels import QueryLevel
from shared.dicom.multipart import multipart_content_type, new_boundary
from shared.logging import log_event
from shared.retrieval.metadata import RoutedMetadataPort, consolidated_metadata, instances_locate_request
from shared.retrieval.model import OUT_OF_RESOURCES_SUB_OPERATIONS, Origin, RetrieveOutcome, RetrieveRequest
from shared.spanning.model import SpanRequest, SpanResult
from shared.spanning.ports import CancelToken

logger = logging.getLogger(__name__)
DICOM_JSON = "application/dicom+json"
_BULK = {200: {"description": "the instances, multipart/related (PS3.18 8.7.3.2)",
               "content": {'multipart/related; type="application/dicom"': {}}},
         400: {"description": "a bad UID or parameter, named"}, 403: {"description": "client network not allowed"},
         404: {"description": "no source holds it, or unknown spanner config"},
         406: {"description": "an Accept this server cannot satisfy"},
         502: {"description": "locate or retrieve failed"}}
_METADATA = {**_BULK, 200: {"description": "DICOM JSON (PS3.18 F.2)", "content": {DICOM_JSON: {}}}}


@asynccontextmanager
async def wado_lifespan(app: FastAPI):
    """The span client (shared with QIDO-RS) and the API's storage AE for the app's life."""
    async with span_client_lifespan(app), retrievals_lifespan(app):
        yield


router = APIRouter(prefix="/api/v1/spanner/wado", tags=["wado-rs"], lifespan=wado_lifespan)


@router.get("/studies/{study}", responses=_BULK, response_class=Response)
def retrieve_study(study: str, request: Request, principal: PrincipalDep) -> Response:
    """WADO-RS retrieve of a study's instances across the config's sources (PS3.18 10.4.1.1.1)."""
    return _retrieve(request, principal.name, {"study": study})


@router.get("/studies/{study}/series/{series}", responses=_BULK, response_class=Response)
def retrieve_series(study: str, series: str, request: Request, principal: PrincipalDep) -> Response:
    """WADO-RS retrieve of a series' instances."""
    return _retrieve(request, principal.name, {"study": study, "series": series})


@router.get("/studies/{study}/series/{series}/instances/{sop}", responses=_BULK, response_class=Response)
def retrieve_instance(study: str, series: str, sop: str, request: Request, principal: PrincipalDep) -> Response:
    """WADO-RS retrieve of one instance."""
    return _retrieve(request, principal.name, {"study": study, "series": series, "sop": sop})


@router.get("/studies/{study}/metadata", responses=_METADATA, response_class=Response)
def study_metadata(study: str, request: Request, principal: PrincipalDep) -> Response:
    """WADO-RS metadata of a study's instances, consolidated across sources (PS3.18 10.4.1.1.2)."""
    return _metadata(request, principal.name, {"study": study})


@router.get("/studies/{study}/series/{series}/metadata", responses=_METADATA, response_class=Response)
def series_metadata(study: str, series: str, request: Request, principal: PrincipalDep) -> Response:
    """WADO-RS metadata of a series' instances."""
    return _metadata(request, principal.name, {"study": study, "series": series})


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata", responses=_METADATA,
            response_class=Response)
def instance_metadata(study: str, series: str, sop: str, request: Request, principal: PrincipalDep) -> Response:
    """WADO-RS metadata of one instance."""
    return _metadata(request, principal.name, {"study": study, "series": series, "sop": sop})


# --- retrieve ------------------------------------------------------------------------------------------------------

_LEVELS = {"study": QueryLevel.STUDY, "series": QueryLevel.SERIES, "sop": QueryLevel.IMAGE}
_KEYWORDS = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID", "sop": "SOPInstanceUID"}


def _retrieve(request: Request, user: str, uids: dict[str, str]) -> Response:
    check_bulk_accept(request.headers.getlist("accept"))
    _check_uids(uids)
    plan = _wado_plan(request)
    service = get_retrievals(request).for_plan(plan)
    retrieve = RetrieveRequest(level=_LEVELS[list(uids)[-1]], identifier=_identifier(uids),
                               origin=Origin("WADO", **requester(request, user)))
    fields = {"query_id": retrieve.query_id, "study_uid": uids["study"], "user": user,
              "spanner_config": plan.config.name}
    log_event(logger, "wado_retrieve_requested", query_level=retrieve.level.value, **fields)
    cancel = CancelToken()
    stream = service.get(retrieve, cancel)
    announced = 0
    try:
        announced = next(stream)  # the locate runs here
        first = next(stream)  # the first instance delivered (StopIteration: none)
    except StopIteration as stop:  # nothing located, the locate failed, or no holder delivered anything
        _nothing(stop.value, bool(announced), fields)
    except BaseException:
        cancel.cancel()
        stream.close()
        raise
    boundary = new_boundary()
    body = InstanceStream(stream, first, cancel, boundary, fields)
    return StreamingResponse(body.body(), media_type=multipart_content_type(boundary))


def _nothing(outcome: RetrieveOutcome, located: bool, fields: dict) -> None:
    """404 when nothing was located; 502 (naming why) when the locate failed or no holder delivered anything."""
    if outcome.ok and not located:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no source of the spanner config holds the requested "
                                                       "resource")
    reason = outcome.error_comment or f"status 0x{outcome.status:04X}"
    what = "retrieve failed: no holder delivered any instance" if located else "the spanning locate failed"
    log_event(logger, "wado_retrieve_failed", logging.WARNING, error=reason, located=located, **fields)
    raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"{what} ({reason})")


def _check_uids(uids: dict[str, str]) -> None:
    """Each path UID is a valid UID (PS3.5 9.1: digits and dots, no leading zeros, at most 64 characters)."""
    for name, value in uids.items():
        if len(value) > 64 or not RE_VALID_UID.fullmatch(value):
            shown = value if len(value) <= 70 else value[:64] + "..."
            raise HTTPException(status.HTTP_400_BAD_REQUEST,
                                f"path parameter {name} ({_KEYWORDS[name]}) {shown!r} is not a valid UID (PS3.5 9.1)")


def _identifier(uids: dict[str, str]) -> Dataset:
    identifier = Dataset()
    for name, value in uids.items():
        setattr(identifier, _KEYWORDS[name], value)
    return identifier


def _wado_plan(request: Request) -> SpanPlan:
    """The config's plan; its sources that cannot be fetched from are logged (a DIMSE source without C-GET while
    the API has no storage AE: AXIOM_API_STORE_PORT unset)."""
    plan = span_plan(request, WADO)
    if getattr(request.app.state, "store_scp", None) is None:
        skipped = [s.name for s in plan.sources if getattr(s.connection, "supports_cget", True) is False]
        if skipped:
            log_event(logger, "wado_sources_skipped", logging.WARNING, sources=skipped,
                      reason="no C-GET, and no C-MOVE-to-self without the API's storage AE (AXIOM_API_STORE_PORT)")
    return plan


# --- metadata ------------------------------------------------------------------------------------------------------

def _metadata(request: Request, user: str, uids: dict[str, str]) -> Response:
    check_metadata_accept(request.headers.getlist("accept"))
    _check_uids(uids)
    plan = _wado_plan(request)
    services = get_retrievals(request)
    service, port = services.for_plan(plan), RoutedMetadataPort(services.retrieve_port)
    client = request.app.state.span_client
    who = requester(request, user)

    def locate(span: SpanRequest) -> SpanResult:
        return client.run(span, plan.sources, plan.policy, config_id=plan.config.id, requester=who)

    wanted = instances_locate_request(uids["study"], uids.get("series"), [uids["sop"]] if "sop" in uids else (),
                                      origin=Origin("WADO", **who))
    result = consolidated_metadata(service, port, {s.name: s for s in plan.sources}, wanted, locate, CancelToken())
    fields = {"query_id": wanted.query_id, "study_uid": uids["study"], "user": user}
    if result.failure is not None:
        _nothing(result.failure, False, fields)
    if not result.objects:
        if result.located:  # located, but no holder delivered any of it
            failed = RetrieveOutcome(OUT_OF_RESOURCES_SUB_OPERATIONS, error_comment="; ".join(result.problems))
            _nothing(failed, True, fields)
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no source of the spanner config holds the requested "
                                                       "resource")
    response = JSONResponse(result.objects, media_type=DICOM_JSON)
    for problem in result.problems:
        response.headers.append("Warning", warning_header(problem))
    if result.problems:
        log_event(logger, "wado_metadata_incomplete", logging.WARNING, problems=result.problems,
                  objects=len(result.objects), located=result.located, **fields)
    return response
