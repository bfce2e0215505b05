"""QueryPort for DICOMweb sources: QIDO-RS on httpx (PS3.18 10.6), kinds "dicomweb" and "google_healthcare".

Identifier -> QIDO-RS (`qido_query`, pure):
- matching keys (non-empty values) become `Keyword=value`; a key with no keyword (private) becomes `GGGGEEEE=value`;
- return keys (empty values) become repeated `includefield=Keyword` parameters (Orthanc's DICOMweb 1.7 ignores a
  comma-joined `includefield` list, see below);
- multi-valued matching (UID lists, PS3.4 C.2.2.2.2, backslash-separated in DICOM) become comma-separated
  (PS3.18 8.3.4.1); date/time ranges and `*`/`?` wildcards pass through unchanged;
- sequence keys: an empty sequence is a return key; for a sequence with an item, each non-empty item element
  becomes `Sequence.Item=value` (PS3.18 8.3.4.1 nested matching) and the sequence is an includefield;
- binary VRs (OB, OW, UN, ...) and SpecificCharacterSet are not sent (QIDO cannot match them; its JSON is UTF-8);
- `limit` is max_results + 1, so one extra match tells us the source had more (FindSummary truncated).

Resources (PS3.18 10.6.1): STUDY -> /studies; SERIES -> /studies/{uid}/series when one StudyInstanceUID without
wildcards is given, else /series; IMAGE -> /studies/{s}/series/{se}/instances, /studies/{s}/instances or
/instances. PATIENT: QIDO has no patient resource, so /studies is queried with the patient keys and each study is
projected down to the requested patient attributes, one match per (PatientID, IssuerOfPatientID);
NumberOfPatientRelatedStudies/Series/Instances are counted from the studies.

Query-string encoding: only characters that would break the query (`%`, `&`, `=`, `+`, `#`, space, control
and non-ASCII) are percent-encoded; everything else, including `*`, `?`, `^`, `,` and `-`, is sent as is. Orthanc
1.10.1 with DICOMweb plugin 1.7 (the peer in tests) does NOT percent-decode QIDO query values: `PatientName=Doe%5EJohn`
or `PatientID=PAT%2A` match nothing while `Doe^John` and `PAT*` work, and a percent-encoded non-ASCII value
(`M%C3%BCller*`) or a value with a space can never match there. A server that decodes properly sees the same values
either way. Orthanc's QIDO matching is case-insensitive for PN and LO; its answers are UTF-8 DICOM JSON.

Cancel: the HTTP exchange runs in a short-lived reader thread; the token's callback wakes the caller at once,
closes the response and shuts the socket down, so a hung server never holds the query thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Iterable

import httpx
from pydicom import Dataset, datadict
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue

from shared.adapters.dicomweb_http import (  # GoogleHealthcareAccess: re-exported for the port's users
    GoogleHealthcareAccess, HttpClients, auth_headers, response_socket, safe_url, service_url, shutdown_socket,
    status_error,
)
from shared.dicom.dicom_json import DicomJsonError, datasets_from_json
from shared.dicom.levels import QueryLevel
from shared.spanning.model import FindSummary, SourceSpec, SpanRequest
from shared.spanning.ports import CancelToken, FindStream, QueryFailedError, TransportError

logger = logging.getLogger(__name__)

_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_SKIPPED_KEYS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})
_PATIENT_COUNTS = {
    "NumberOfPatientRelatedStudies": None,
    "NumberOfPatientRelatedSeries": "NumberOfStudyRelatedSeries",
    "NumberOfPatientRelatedInstances": "NumberOfStudyRelatedInstances",
}
_QUERY_SAFE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$'()*,;:@/?^"
)
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class QidoQuery:
    """A QIDO-RS search: resource path (relative to the QIDO root) and ordered query parameters."""

    path: str
    params: tuple[tuple[str, str], ...] = ()
    path_uids: dict[str, str] = field(default_factory=dict)

    @property
    def query_string(self) -> str:
        return "&".join(f"{encode_query_part(k)}={encode_query_part(v)}" for k, v in self.params)


def encode_query_part(text: str) -> str:
    """Percent-encode (UTF-8) only what would break a query string; keep wildcards, `^`, `,` and `-` as is."""
    out = []
    for char in text:
        if char in _QUERY_SAFE:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


def qido_query(request: SpanRequest, *, max_results: int | None = None) -> QidoQuery:
    """The QIDO-RS search for `request` (PS3.18 10.6.1, 8.3.4); see the module doc for the mapping rules."""
    identifier = request.identifier
    study_uid = _single_uid(identifier, "StudyInstanceUID")
    series_uid = _single_uid(identifier, "SeriesInstanceUID")
    path_uids: dict[str, str] = {}
    level = request.level
    if level is QueryLevel.SERIES and study_uid:
        path_uids = {"StudyInstanceUID": study_uid}
    elif level is QueryLevel.IMAGE and study_uid:
        path_uids = {"StudyInstanceUID": study_uid}
        if series_uid:
            path_uids["SeriesInstanceUID"] = series_uid
    path = _resource_path(level, path_uids)
    skip = set(path_uids) | (set(_PATIENT_COUNTS) if level is QueryLevel.PATIENT else set())
    params = list(identifier_params(identifier, skip=skip))
    if level is QueryLevel.PATIENT:
        params += [("includefield", study_key) for key, study_key in _PATIENT_COUNTS.items()
                   if study_key and key in identifier]
    if max_results is not None and level is not QueryLevel.PATIENT:
        params.append(("limit", str(max_results + 1)))
    return QidoQuery(path, tuple(params), path_uids)


def identifier_params(identifier: Dataset, *, skip: Iterable[str] = ()) -> Iterable[tuple[str, str]]:
    """Matching keys as (attribute, value) and return keys as ("includefield", attribute), PS3.18 8.3.4."""
    skipped = set(skip) | _SKIPPED_KEYS
    for element in identifier:
        name = _attribute_name(element)
        if element.keyword in skipped or element.VR in _BINARY_VRS:
            continue
        if element.VR == "SQ":
            yield from _sequence_params(element, name)
            continue
        value = _query_value(element)
        yield (name, value) if value else ("includefield", name)


def _sequence_params(element: DataElement, name: str) -> Iterable[tuple[str, str]]:
    if element.value:
        for inner in element.value[0]:
            value = "" if inner.VR in _BINARY_VRS or inner.VR == "SQ" else _query_value(inner)
            if value:
                yield f"{name}.{_attribute_name(inner)}", value
    yield "includefield", name


def _attribute_name(element: DataElement) -> str:
    return element.keyword or f"{element.tag:08X}"


def _query_value(element: DataElement) -> str:
    value = element.value
    if value is None or value == "" or value == b"":
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return ",".join(str(v) for v in value if str(v) != "")
    return str(value).strip()


def _single_uid(identifier: Dataset, keyword: str) -> str | None:
    value = identifier.get(keyword)
    if value is None or isinstance(value, (MultiValue, list)) or not str(value).strip():
        return None
    text = str(value).strip()
    return None if any(c in text for c in "*?\\,") else text


def _resource_path(level: QueryLevel, uids: dict[str, str]) -> str:
    if level in (QueryLevel.PATIENT, QueryLevel.STUDY):
        return "studies"
    prefix = "/".join(
        part for part in (
            f"studies/{uids['StudyInstanceUID']}" if "StudyInstanceUID" in uids else "",
            f"series/{uids['SeriesInstanceUID']}" if "SeriesInstanceUID" in uids else "",
        ) if part
    )
    leaf = "series" if level is QueryLevel.SERIES else "instances"
    return f"{prefix}/{leaf}" if prefix else leaf


def project_patients(studies: Iterable[Dataset], identifier: Dataset) -> list[Dataset]:
    """Study matches -> patient matches: the identifier's keys, one per (PatientID, IssuerOfPatientID)."""
    keys = [el.keyword for el in identifier if el.keyword and el.keyword not in _SKIPPED_KEYS]
    keys += [k for k in ("PatientID", "IssuerOfPatientID") if k not in keys and (k == "PatientID" or k in identifier)]
    patients: dict[tuple[str, str], Dataset] = {}
    for study in studies:
        dedup = (str(study.get("PatientID", "")), str(study.get("IssuerOfPatientID", "")))
        patient = patients.get(dedup)
        if patient is None:
            patient = patients[dedup] = Dataset()
            for key in keys:
                if key in study and key not in _PATIENT_COUNTS:
                    patient[key] = study[key]
                elif key not in _PATIENT_COUNTS and key in identifier:
                    setattr(patient, key, None)
        _add_counts(patient, study, identifier)
    return list(patients.values())


def _add_counts(patient: Dataset, study: Dataset, identifier: Dataset) -> None:
    for key, study_key in _PATIENT_COUNTS.items():
        if key not in identifier:
            continue
        increment = 1 if study_key is None else int(study.get(study_key) or 0)
        patient[key] = DataElement(datadict.tag_for_keyword(key), "IS", int(patient.get(key) or 0) + increment)


class QidoQueryPort:
    """QIDO-RS QueryPort for sources of kind "dicomweb" and "google_healthcare".

    `google` gives Google Cloud Healthcare sources their API root and bearer tokens (no Google libraries here);
    without it such a source fails with QueryFailedError. `transport` is for tests (httpx.MockTransport).
    """

    def __init__(self, *, google: GoogleHealthcareAccess | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._google = google
        self._clients = HttpClients(transport=transport, name="DICOMweb query port")

    def close(self) -> None:
        """Close the pooled HTTP clients."""
        self._clients.close()

    def __enter__(self) -> "QidoQueryPort":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def find(self, request: SpanRequest, source: SourceSpec, cancel: CancelToken) -> FindStream:
        """QIDO-RS search for `request` at `source`: yields matches, returns FindSummary|None (see module doc)."""
        headers = {"Accept": "application/dicom+json", **auth_headers(source, self._google)}
        conn = source.connection
        query = qido_query(request, max_results=source.max_results)
        url = service_url(conn, "qido_prefix", query.path, query.query_string if query.params else "",
                          google=self._google)
        if cancel.cancelled:
            return None
        exchange = _Exchange(self._clients.get(getattr(conn, "verify_tls", True)), url, headers, conn.timeout,
                             cancel)
        response = exchange.run()
        if response is None:  # cancelled
            return None
        status, warning, body = response
        matches = _parse(status, body, source, url)
        for match in matches:
            for keyword, uid in query.path_uids.items():
                if keyword not in match:
                    setattr(match, keyword, uid)
        if request.level is QueryLevel.PATIENT:
            matches = project_patients(matches, request.identifier)
        truncated = source.max_results is not None and len(matches) > source.max_results
        if truncated:
            matches = matches[: source.max_results]
        for match in matches:
            if cancel.cancelled:
                return None
            yield match
        if warning or truncated:
            note = warning or f"capped at {source.max_results} matches (max_results)"
            return FindSummary(truncated=True, warning=note)
        return None


def _parse(status: int, body: bytes, source: SourceSpec, url: httpx.URL) -> list[Dataset]:
    if status == 204 or not body.strip():
        return []
    try:
        return datasets_from_json(body)
    except DicomJsonError as exc:
        raise QueryFailedError(f"{source.name}: malformed QIDO-RS response from {safe_url(url)}: {exc}") from exc


class _Exchange:
    """One HTTP GET in a reader thread, so the caller can give up at once on cancel."""

    def __init__(self, client: httpx.Client, url: httpx.URL, headers: dict[str, str], timeout: float,
                 cancel: CancelToken) -> None:
        self.client, self.url, self.headers, self.timeout, self.cancel = client, url, headers, timeout, cancel
        self._results: queue.Queue = queue.Queue()
        self._response: httpx.Response | None = None

    def run(self) -> tuple[int, str | None, bytes] | None:
        """(status, Warning header, body) for a 2xx; raises QueryFailedError/TransportError; None if cancelled."""
        unregister = self.cancel.on_cancel(self._on_cancel)
        try:
            threading.Thread(target=self._read, name="qido-read", daemon=True).start()
            kind, value = self._results.get()
        finally:
            unregister()
        if kind == "cancelled":
            return None
        if kind == "error":
            raise value
        return value

    def _on_cancel(self) -> None:
        self._results.put(("cancelled", None))
        shutdown_socket(response_socket(self._response))

    def _read(self) -> None:
        try:
            self._results.put(("ok", self._exchange()))
        except (QueryFailedError, TransportError) as exc:
            self._results.put(("error", exc))
        except httpx.TimeoutException as exc:
            self._results.put(("error", TransportError(f"no response from {safe_url(self.url)} within "
                                                       f"{self.timeout:g} s ({type(exc).__name__})")))
        except httpx.TransportError as exc:
            self._results.put(("error", TransportError(f"{safe_url(self.url)}: {type(exc).__name__}: {exc}")))
        except Exception as exc:  # never leave the caller waiting
            self._results.put(("error", QueryFailedError(f"{safe_url(self.url)}: {type(exc).__name__}: {exc}")))

    def _exchange(self) -> tuple[int, str | None, bytes] | None:
        with self.client.stream("GET", self.url, headers=self.headers, timeout=self.timeout) as response:
            self._response = response
            chunks = []
            for chunk in response.iter_bytes(_CHUNK):
                if self.cancel.cancelled:
                    return None
                chunks.append(chunk)
            body = b"".join(chunks)
        return _check_status(response, body, self.url)


def _check_status(response: httpx.Response, body: bytes, url: httpx.URL) -> tuple[int, str | None, bytes]:
    error = status_error(response.status_code, body, url)
    if error is not None:
        raise error
    return response.status_code, response.headers.get("Warning"), body
