"""QIDO-RS spanning search (PS3.18 10.6): `GET /api/v1/spanner/qido/studies`, `/series`, `/instances`,
`/studies/{study}/series`, `/studies/{study}/instances` and `/studies/{study}/series/{series}/instances`.

One search is one span over a spanner config's sources, run by the app's span client (`app.state.span_client`; this
router's lifespan creates an in-process shared.span_client.InProcessSpanClient on the app's session factory when the
app has none, and closes the one it created at shutdown). The span is written to the query log with the caller's
name and address as requester: the row before any source is asked, its completion (outcomes, counts) once the answer
has been sent (a background task of the response: the answer does not wait for that commit; see
shared.span_client).

- Parameters (shared.dicom.qido_params): attribute keywords or tags as matching keys, `includefield` (repeatable or
  comma-separated, `all` = a fixed list per level), `limit`/`offset` (applied to the merged answer, after
  deduplication), `fuzzymatching`, and `spanner_config_id`. A bad parameter is 400 naming it (PS3.18 8.3.4).
- `fuzzymatching=true` is accepted and ignored: the engine cannot ask its sources for fuzzy semantic matching (no
  DIMSE extended negotiation, no QIDO pass-through), and filtering afterwards cannot find what the sources left out.
  As PS3.18 asks of an origin server without fuzzy matching, the answer carries a Warning saying only literal
  matching was performed.
- Config: `spanner_config_id`, or else the only enabled config with supports_qido (400 naming `spanner_config_id`
  when there are none or several). Unknown id 404; a disabled config or one without supports_qido 400.
- Answer: `application/dicom+json`, one DICOM JSON object (PS3.18 F.2) per merged match, with RetrieveURL (0008,1190)
  pointing at this API's WADO-RS resource of the match; RetrieveAETitle only when asked for by includefield (it then
  lists the archives holding the match). 204 when nothing matches (after offset).
- Sources that did not answer (failed, timed out, skipped by their breaker) or cut their answer short: a
  `Warning: 299 axiom "..."` header each (PS3.18 8.6.2 style), on 200 and 204 alike. A failed span (its failure
  strategy says so) is 502 with a JSON body naming the reason and each source's outcome.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, BackgroundTasks, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from pydicom import Dataset

from services.api.deps import PrincipalDep
from services.api.spanning import CONFIG_PARAMETER, QIDO, requester, span_client_lifespan, span_plan, warning_header
from shared.dicom.dicom_json import dataset_to_json
from shared.dicom.levels import QueryLevel
from shared.dicom.qido_params import QidoParameterError, QidoSearch, parse_qido_search
from shared.logging import log_event
from shared.span_client import InProcessSpanClient
from shared.spanning.model import Match, SourceStatus, SpanRequest, SpanResult

logger = logging.getLogger(__name__)
DICOM_JSON = "application/dicom+json"
WADO_ROOT = "/api/v1/spanner/wado"
FUZZY_WARNING = "The fuzzymatching parameter is not supported. Only literal matching has been performed."
_DROPPED = ("00080052", "00080005")  # QueryRetrieveLevel, SpecificCharacterSet (DICOM JSON is UTF-8)
_RETRIEVE_AE_TITLE, _RETRIEVE_URL = "00080054", "00081190"  # DICOM JSON attribute names (PS3.18 F.2.1.1)
_ANSWERS = {200: {"description": "matches as DICOM JSON (PS3.18 F.2)", "content": {DICOM_JSON: {}}},
            204: {"description": "no match"}, 400: {"description": "a bad query parameter, named"},
            404: {"description": "unknown spanner config"}, 502: {"description": "the span failed"}}


router = APIRouter(prefix="/api/v1/spanner/qido", tags=["qido-rs"], lifespan=span_client_lifespan)


@router.get("/studies", responses=_ANSWERS)
def search_studies(request: Request, principal: PrincipalDep) -> Response:
    """QIDO-RS search for studies across the spanner config's sources (PS3.18 10.6.1)."""
    return _search(request, principal.name, QueryLevel.STUDY, {})


@router.get("/series", responses=_ANSWERS)
def search_series(request: Request, principal: PrincipalDep) -> Response:
    """QIDO-RS search for series in any study."""
    return _search(request, principal.name, QueryLevel.SERIES, {})


@router.get("/instances", responses=_ANSWERS)
def search_instances(request: Request, principal: PrincipalDep) -> Response:
    """QIDO-RS search for instances in any study."""
    return _search(request, principal.name, QueryLevel.IMAGE, {})


@router.get("/studies/{study}/series", responses=_ANSWERS)
def search_study_series(study: str, request: Request, principal: PrincipalDep) -> Response:
    """QIDO-RS search for the series of one study."""
    return _search(request, principal.name, QueryLevel.SERIES, {"StudyInstanceUID": study})


@router.get("/studies/{study}/instances", responses=_ANSWERS)
def search_study_instances(study: str, request: Request, principal: PrincipalDep) -> Response:
    """QIDO-RS search for the instances of one study."""
    return _search(request, principal.name, QueryLevel.IMAGE, {"StudyInstanceUID": study})


@router.get("/studies/{study}/series/{series}/instances", responses=_ANSWERS)
def search_series_instances(study: str, series: str, request: Request, principal: PrincipalDep) -> Response:
    """QIDO-RS search for the instances of one series."""
    return _search(request, principal.name, QueryLevel.IMAGE,
                   {"StudyInstanceUID": study, "SeriesInstanceUID": series})


# --- one search ----------------------------------------------------------------------------------------------------


def _search(request: Request, user: str, level: QueryLevel, path_uids: dict[str, str]) -> Response:
    params = [(k, v) for k, v in request.query_params.multi_items() if k != CONFIG_PARAMETER]
    try:
        search = parse_qido_search(level, params, path_uids=path_uids)
    except QidoParameterError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    plan = span_plan(request, QIDO)
    client = getattr(request.app.state, "span_client", None)
    if client is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the span client is not running (app not started)")
    span = SpanRequest(level=level, identifier=search.identifier, query_type="QIDO")
    after_answer = BackgroundTasks()
    deferral = {"defer": after_answer.add_task} if isinstance(client, InProcessSpanClient) else {}
    try:
        result = client.run(span, plan.sources, plan.policy, config_id=plan.config.id,
                            requester=requester(request, user), cache_ttl_seconds=plan.config.cache_ttl_seconds,
                            **deferral)
        response = _answer(request, search, result) if result.status.succeeded else _failed(result)
    except BaseException:
        _run_now(after_answer)  # no answer will be sent: complete the query log now
        raise
    response.background = after_answer  # the query log's completion, written once the answer is sent
    return response


def _run_now(tasks: BackgroundTasks) -> None:
    for task in tasks.tasks:
        task.func(*task.args, **task.kwargs)


def _answer(request: Request, search: QidoSearch, result: SpanResult) -> Response:
    matches = result.matches[search.offset:]
    if search.limit is not None:
        matches = matches[: search.limit]
    warnings = [warning_header(text) for text in _warning_texts(search, result)]
    if not matches:
        response = Response(status_code=status.HTTP_204_NO_CONTENT)
    else:
        base = str(request.base_url).rstrip("/") + WADO_ROOT
        keep_ae = search.include_all or "RetrieveAETitle" in search.requested
        body = [_match_json(m, search.level, base, keep_ae) for m in matches]
        response = JSONResponse(body, media_type=DICOM_JSON)
    for warning in warnings:
        response.headers.append("Warning", warning)
    return response


def _match_json(match: Match, level: QueryLevel, wado_base: str, keep_retrieve_ae: bool) -> dict[str, Any]:
    """The merged match as DICOM JSON, with this API's RetrieveURL; the merged dataset itself is not changed."""
    body = dataset_to_json(match.dataset)
    for tag in _DROPPED + (() if keep_retrieve_ae else (_RETRIEVE_AE_TITLE,)):
        body.pop(tag, None)
    url = _retrieve_url(match.dataset, level, wado_base)
    if url:
        body[_RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
    return body


def _retrieve_url(dataset: Dataset, level: QueryLevel, base: str) -> str | None:
    """The WADO-RS resource of the match (PS3.18 10.4.1): study, series or instance, when its UIDs are known."""
    parts = [("studies", "StudyInstanceUID")]
    if level in (QueryLevel.SERIES, QueryLevel.IMAGE):
        parts.append(("series", "SeriesInstanceUID"))
    if level is QueryLevel.IMAGE:
        parts.append(("instances", "SOPInstanceUID"))
    path = []
    for segment, keyword in parts:
        uid = str(dataset.get(keyword) or "").strip()
        if not uid or "\\" in uid:
            return None
        path += [segment, uid]
    return base + "/" + "/".join(path)


def _warning_texts(search: QidoSearch, result: SpanResult) -> list[str]:
    texts = []
    for outcome in result.outcomes:
        if outcome.status is not SourceStatus.OK:
            reason = f": {outcome.error}" if outcome.error else ""
            texts.append(f"source {outcome.source} {outcome.status.value}{reason}; its matches may be missing")
        elif outcome.truncated:
            texts.append(f"source {outcome.source} returned only its first {outcome.match_count} matches; narrow "
                         "the search")
    if search.fuzzy_matching:
        texts.append(FUZZY_WARNING)
    return texts


def _failed(result: SpanResult) -> JSONResponse:
    """502: the span's failure strategy gave up; the body names the reason and every source's outcome."""
    reason = result.error or "too few sources answered for the config's failure strategy"
    log_event(logger, "qido_search_failed", logging.WARNING, query_id=result.query_id, error=reason)
    sources = [{"source": o.source, "status": o.status.value, "error": o.error} for o in result.outcomes]
    return JSONResponse({"detail": f"the spanning search failed ({result.status.value}): {reason}",
                         "query_id": result.query_id, "sources": sources}, status_code=status.HTTP_502_BAD_GATEWAY)
