"""Consolidated WADO-RS metadata (PS3.18 10.4.1.1.2 "Metadata" resources) of a study, series or instance across a
spanner config's sources: one DICOM JSON object (PS3.18 F.2) per SOP Instance UID, from its first holder by
priority. Pure orchestration over the retrieval service and a metadata port (stdlib, pydicom, shared.*).

1. Locate the instances (an IMAGE-level spanning C-FIND/QIDO, PS3.4 C.4.2.2, logged as a WADO query): each SOP
   Instance UID with its holders, best first.
2. Instances whose best holder is a DICOMweb source: that source's WADO-RS metadata of the study (or series), one
   request per such holder; what it did not return (or all, when it failed) goes to step 3.
3. The rest: retrieved through the service (C-GET, C-MOVE-to-self, or WADO-RS — the service's holder order and
   fallback) and each instance converted to DICOM JSON.

Bulk data is dropped from every object (a choice; PS3.18 F.2.2 would allow a BulkDataURI): Pixel Data, Float and
Double Float Pixel Data wherever they occur, and any other binary value (OB, OD, OF, OL, OV, OW, UN) longer than
BULK_THRESHOLD bytes. A source's own BulkDataURIs are dropped too: they point into that source, which the caller
cannot (and should not) reach.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol

from pydicom import Dataset

from shared.dicom.dicom_json import dataset_to_json
from shared.dicom.levels import QueryLevel
from shared.logging import log_event
from shared.retrieval.locate import Entity, key_text, locate_request, located_entities
from shared.retrieval.model import CANCEL, OUT_OF_RESOURCES_MATCHES, Origin, RetrieveOutcome, RetrieveRequest
from shared.retrieval.service import Locate, RetrievalService
from shared.spanning.model import SourceSpec, SpanStatus
from shared.spanning.ports import CancelToken

logger = logging.getLogger("shared.retrieval")
DICOMWEB_KINDS = frozenset({"dicomweb", "google_healthcare"})
BULK_THRESHOLD = 1024
PIXEL_TAGS = frozenset({"7FE00010", "7FE00008", "7FE00009"})  # Pixel Data, Float / Double Float Pixel Data
SOP_INSTANCE_UID = "00080018"


class MetadataPort(Protocol):
    def metadata(self, source: SourceSpec, study_uid: str, cancel: CancelToken,
                 series_uid: str | None = None) -> list[dict]:
        """WADO-RS metadata of a study or series (PS3.18 10.4.1.1.2); raises on a source failure."""


class RoutedMetadataPort:
    """A MetadataPort over a routing retrieve port (shared.adapters.retrieve_ports.RoutingRetrievePort, public as
    RetrievalServices.retrieve_port): each source's own port answers, e.g. WADO-RS for a DICOMweb source."""

    def __init__(self, routing: Any) -> None:
        self._routing = routing

    def metadata(self, source: SourceSpec, study_uid: str, cancel: CancelToken,
                 series_uid: str | None = None) -> list[dict]:
        return self._routing.port_for(source).metadata(source, study_uid, cancel, series_uid=series_uid)


@dataclass
class MetadataResult:
    """The consolidated objects in locate order; `failure` is the locate's outcome when it failed; `problems` names
    what went wrong on the way (a holder's failure, instances no holder delivered)."""

    objects: list[dict[str, Any]] = field(default_factory=list)
    failure: RetrieveOutcome | None = None
    located: int = 0
    problems: list[str] = field(default_factory=list)


def instances_locate_request(study_uid: str, series_uid: str | None = None, sop_uids: Iterable[str] = (),
                             query_id: str | None = None, origin: Origin | None = None) -> RetrieveRequest:
    """An IMAGE-level request for the instances of a study, a series or a list of instances (PS3.4 C.4.2.2.1:
    SOP Instance UIDs as a list; SeriesInstanceUID universal when not given); `origin`: who asked."""
    identifier = Dataset()
    identifier.StudyInstanceUID = study_uid
    identifier.SeriesInstanceUID = series_uid or ""
    identifier.SOPInstanceUID = "\\".join(sop_uids)
    extra = {"query_id": query_id} if query_id else {}
    return RetrieveRequest(level=QueryLevel.IMAGE, identifier=identifier, origin=origin, **extra)


def consolidated_metadata(service: RetrievalService, port: MetadataPort | None, sources: Mapping[str, SourceSpec],
                          request: RetrieveRequest, locate: Locate, cancel: CancelToken) -> MetadataResult:
    """The metadata of `request`'s instances (an `instances_locate_request`) as the module doc says. `locate` runs
    the spanning C-FIND/QIDO over the config's sources (bound by the caller to its span client, config and
    requester, so the query log names the caller)."""
    span = locate(locate_request(request, "WADO"))
    if span.status is SpanStatus.CANCELLED or cancel.cancelled:
        return MetadataResult(failure=RetrieveOutcome(CANCEL))
    if not span.status.succeeded:
        failed = ", ".join(span.failed_sources) or span.error or "no source answered"
        return MetadataResult(failure=RetrieveOutcome(OUT_OF_RESOURCES_MATCHES,
                                                      error_comment=f"locate failed: {failed}"))
    located = located_entities(request, span)
    result = MetadataResult(located=len(located))
    found: dict[str, dict[str, Any]] = {}
    by_holder: dict[str, list[Entity]] = {}
    for entity in located:
        holder = entity.holders[0] if entity.holders else ""
        by_holder.setdefault(holder, []).append(entity)
    rest: list[Entity] = []
    for holder, entities in by_holder.items():
        source = sources.get(holder)
        if port is None or source is None or source.kind not in DICOMWEB_KINDS:
            rest += entities
            continue
        got = _from_dicomweb(port, source, request, entities, cancel, result)
        found.update(got)
        rest += [entity for entity in entities if entity.uid not in got]
    if rest and not cancel.cancelled:
        found.update(_from_retrieval(service, request, rest, cancel, result))
    result.objects = [found[entity.uid] for entity in located if entity.uid in found]
    return result


def _from_dicomweb(port: MetadataPort, source: SourceSpec, request: RetrieveRequest, entities: list[Entity],
                   cancel: CancelToken, result: MetadataResult) -> dict[str, dict[str, Any]]:
    wanted = {entity.uid for entity in entities}
    identifier = request.identifier
    series = key_text(identifier.get("SeriesInstanceUID")) or None
    try:
        objects = port.metadata(source, key_text(identifier.get("StudyInstanceUID")), cancel, series_uid=series)
    except Exception as exc:  # a holder's failure: its instances go to the retrieval (their next holders)
        result.problems.append(f"source {source.name} metadata failed: {type(exc).__name__}: {exc}")
        log_event(logger, "wado_metadata_source_failed", logging.WARNING, query_id=request.query_id,
                  source=source.name, error=f"{type(exc).__name__}: {exc}")
        return {}
    got: dict[str, dict[str, Any]] = {}
    for obj in objects:
        uid = _sop_uid(obj)
        if uid in wanted and uid not in got:
            got[uid] = without_bulk_data(obj)
    return got


def _from_retrieval(service: RetrievalService, request: RetrieveRequest, entities: list[Entity],
                    cancel: CancelToken, result: MetadataResult) -> dict[str, dict[str, Any]]:
    identifier = request.identifier
    fetch = instances_locate_request(key_text(identifier.get("StudyInstanceUID")),
                                     key_text(identifier.get("SeriesInstanceUID")) or None,
                                     [entity.uid for entity in entities], request.query_id, request.origin)
    wanted = {entity.uid for entity in entities}
    got: dict[str, dict[str, Any]] = {}
    stream = service.get(fetch, cancel)
    try:
        next(stream)
        while True:
            dataset = next(stream)
            uid = key_text(dataset.get("SOPInstanceUID"))
            if uid in wanted and uid not in got:
                got[uid] = dataset_json_without_bulk_data(dataset)
    except StopIteration as stop:
        outcome: RetrieveOutcome = stop.value
        if not outcome.ok or len(got) < len(wanted):
            result.problems.append(f"{len(wanted) - len(got)} of {len(wanted)} instances could not be retrieved "
                                   f"for their metadata ({outcome.error_comment or f'status 0x{outcome.status:04X}'})")
    finally:
        stream.close()
    return got


def _sop_uid(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    values = (obj.get(SOP_INSTANCE_UID) or {}).get("Value") or []
    return str(values[0]).strip() if values else None


def dataset_json_without_bulk_data(dataset: Dataset) -> dict[str, Any]:
    """An instance as DICOM JSON (PS3.18 F.2) without its bulk data (see the module doc)."""
    return without_bulk_data(dataset_to_json(dataset, bulk_data_threshold=BULK_THRESHOLD,
                                             bulk_data_uri=lambda _element: ""))


def without_bulk_data(obj: dict[str, Any]) -> dict[str, Any]:
    """A DICOM JSON object (PS3.18 F.2) without pixel data and without any attribute given by BulkDataURI, nested
    sequence items included; the file meta group (0002) is not part of a dataset's metadata and is dropped too."""
    clean: dict[str, Any] = {}
    for tag, element in obj.items():
        if tag in PIXEL_TAGS or tag.startswith("0002") or (isinstance(element, dict) and "BulkDataURI" in element):
            continue
        if isinstance(element, dict) and element.get("vr") == "SQ" and isinstance(element.get("Value"), list):
            element = {**element, "Value": [without_bulk_data(item) if isinstance(item, dict) else item
                                            for item in element["Value"]]}
        clean[tag] = element
    return clean
