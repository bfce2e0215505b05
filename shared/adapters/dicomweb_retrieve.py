"""RetrievePort for DICOMweb sources ("dicomweb", "google_healthcare"): WADO-RS on httpx (PS3.18 10.4).

`get` retrieves the entities of a RetrieveRequest (PS3.18 10.4.1 resources): STUDY -> {wado}/studies/{uid};
SERIES -> /studies/{study}/series/{uid}; IMAGE -> /studies/{study}/series/{series}/instances/{uid}. A list of UIDs
at the request's level (backslash-separated, PS3.4 C.4.2.2.1, as shared.retrieval.locate.batch_request builds it)
is one HTTP request per UID, in order. PATIENT level cannot be retrieved without first querying the patient's
studies (WADO-RS has no patient resource): QueryFailedError.

Accept: multipart/related; type="application/dicom"; transfer-syntax=* (PS3.18 8.7.3.5.2, 8.7.3.3.2): the
instances in the syntax the source stores them in, no transcoding. The body is read incrementally
(shared.dicom.multipart over `iter_bytes()`): one part in memory at a time, each read with pydicom.dcmread (file
meta kept) carrying the part's own bytes (shared.retrieval.spool.read_instance: passed on unchanged, never
re-encoded) and passed to the sink, whose answer counts the instance as completed (0x0000), warning (PS3.4 B.2.3
warnings) or failed; a RetrieveProgress (remaining unknown) follows each instance.

The outcome's status is shared.retrieval.tally's (PS3.4 C.4.3.1.4): 0x0000 when every instance was kept; 0xB000
when some failed; 0xA702 when none was kept; 0xFE00 when cancelled. A resource the source does not have (HTTP 404,
or a 2xx without any instance) is NOT success: it counts as one failed sub-operation (its SOP Instance UID listed at
IMAGE level), so the outcome carries failed > 0 and the retrieval service's `_clean` (proxy.py) rejects it and
asks the entity's next holder; entities fully delivered by then are `_complete` and not asked again.

Errors: unreachable, connection reset, a response cut off mid-body, a timeout (connect, or no data for
`timeout` seconds), HTTP 408/429/5xx -> TransportError (raised mid-stream too: what the sink got stays delivered);
other HTTP errors, a body that is not multipart or is malformed -> QueryFailedError naming the status and URL
(never credentials: base URLs cannot carry any, auth travels in headers). A part that pydicom cannot read is a
failed instance, not an error. `move` always raises QueryFailedError: a DICOMweb source cannot C-MOVE.

`metadata` is WADO-RS /studies/{uid}/metadata or /studies/{uid}/series/{uid}/metadata (PS3.18 10.4.1.1.2): the
DICOM JSON objects (PS3.18 F.2); 404 -> [].

Cancel: every request opens its own connection (no keep-alive), whose socket is known from the moment it is
connected (httpx trace extension), so cancel shuts it down whether the source is still silent or streaming: the
blocked read wakes at once and the outcome is 0xFE00 with the counts so far.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Iterator
from urllib.parse import quote

import httpx
from pydicom import Dataset

from shared.adapters.dicomweb_http import (
    DicomwebConnections, GoogleHealthcareAccess, HttpClients, auth_headers, dicomweb_connection, response_socket,
    safe_url, service_url, shutdown_socket, status_error,
)
from shared.dicom.dicom_json import DicomJsonError, json_objects
from shared.dicom.levels import QueryLevel
from shared.dicom.multipart import MultipartError, boundary_from_content_type, iter_multipart
from shared.logging import log_event
from shared.retrieval.locate import key_text
from shared.retrieval.model import RetrieveRequest
from shared.retrieval.ports import InstanceSink, RetrieveStream
from shared.retrieval.spool import read_instance
from shared.retrieval.tally import Tally
from shared.spanning.model import SourceSpec
from shared.spanning.ports import CancelToken, QueryFailedError, TransportError

logger = logging.getLogger(__name__)

ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_JSON = "application/dicom+json"
NOT_FOUND = 404
READ_BYTES = 256 * 1024  # the most one read of a response body takes (see _widen_reads)
_ERROR_BODY_BYTES = 300
_CANNOT_UNDERSTAND = 0xC000  # C-STORE "Error: Cannot understand" (PS3.4 B.2.3): the part did not decode


@dataclass(frozen=True)
class WadoResource:
    """One WADO-RS retrieve: the resource path (relative to the WADO root), its UID and level."""

    path: str
    uid: str
    level: QueryLevel


def wado_resources(request: RetrieveRequest) -> list[WadoResource]:
    """The WADO-RS resources (PS3.18 10.4.1) of `request`: one per UID at its level. QueryFailedError for PATIENT
    level, a missing parent UID, or a value that is not a UID (PS3.5 9.1: digits and dots)."""
    level = request.level
    if level is QueryLevel.PATIENT:
        raise QueryFailedError("WADO-RS cannot retrieve a patient: it has no patient resource, the patient's "
                               "studies must be queried first (retrieve at STUDY level)")
    chain = [QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE]
    keys = {QueryLevel.STUDY: "StudyInstanceUID", QueryLevel.SERIES: "SeriesInstanceUID",
            QueryLevel.IMAGE: "SOPInstanceUID"}
    segments = {QueryLevel.STUDY: "studies", QueryLevel.SERIES: "series", QueryLevel.IMAGE: "instances"}
    prefix = ""
    for parent in chain[: chain.index(level)]:
        uid = key_text(request.identifier.get(keys[parent]))
        if not uid or "\\" in uid:
            raise QueryFailedError(f"WADO-RS {level.value} retrieve needs exactly one {keys[parent]}, got {uid!r}")
        prefix += f"{segments[parent]}/{_uid_segment(keys[parent], uid)}/"
    uids = [uid for uid in key_text(request.identifier.get(keys[level])).split("\\") if uid]
    if not uids:
        raise QueryFailedError(f"WADO-RS {level.value} retrieve needs {keys[level]}")
    return [WadoResource(f"{prefix}{segments[level]}/{_uid_segment(keys[level], uid)}", uid, level) for uid in uids]


def _uid_segment(keyword: str, uid: str) -> str:
    if not all(c.isdigit() or c == "." for c in uid) or len(uid) > 64:
        raise QueryFailedError(f"{keyword} {uid[:70]!r} is not a UID (PS3.5 9.1)")
    return quote(uid, safe=".")


class _Cancelled(Exception):
    """The caller cancelled while a request was under way."""


class _SocketGuard:
    """Holds the request's socket from the moment it is connected; cancel shuts it down (now, or as soon as the
    connection exists)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socket: object = None
        self._fired = False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx/httpcore trace extension hook."""
        if event == "connection.connect_tcp.complete":
            stream = info.get("return_value")
            self.attach(stream.get_extra_info("socket") if stream is not None else None)
            _widen_reads(stream)

    def attach(self, sock: object) -> None:
        with self._lock:
            if sock is not None:
                self._socket = sock
            fired = self._fired
        if fired:
            shutdown_socket(sock)

    def fire(self) -> None:
        with self._lock:
            self._fired = True
            sock = self._socket
        shutdown_socket(sock)


def _widen_reads(stream: object) -> None:
    """Let the connection's reads take up to READ_BYTES: httpcore asks for 64 KiB at a time
    (HTTP11Connection.READ_NUM_BYTES), and a WADO-RS study is hundreds of megabytes, whose every read goes through
    httpcore, h11 and httpx. A read still returns whatever has arrived (one recv), so nothing waits for more
    data. Only this port's own connections (one per request, no keep-alive) are widened."""
    read = getattr(stream, "read", None)
    if read is None:
        return

    def wide_read(max_bytes: int, timeout: float | None = None) -> bytes:
        return read(max(max_bytes, READ_BYTES), timeout)

    stream.read = wide_read  # type: ignore[attr-defined]


class WadoRetrievePort:
    """WADO-RS RetrievePort for sources of kind "dicomweb" and "google_healthcare" (see module doc).

    `google` gives Google Cloud Healthcare sources their API root and bearer tokens; `transport` is for tests
    (httpx.MockTransport). Safe to share between threads; `close()` closes its HTTP clients.
    """

    def __init__(self, *, google: GoogleHealthcareAccess | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._google = google
        self._clients = HttpClients(transport=transport, keepalive=False, name="WADO-RS retrieve port")

    def close(self) -> None:
        self._clients.close()

    def __enter__(self) -> "WadoRetrievePort":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def move(self, source: SourceSpec, request: RetrieveRequest, destination_ae: str,
             cancel: CancelToken) -> RetrieveStream:
        """Always raises QueryFailedError: DICOMweb has no C-MOVE (PS3.18 has no transaction that makes the origin
        send to a third party); Holders.can_direct keeps DICOMweb sources out of DIRECT."""
        raise QueryFailedError(f"{source.name}: a DICOMweb source cannot C-MOVE (to {destination_ae}); retrieve "
                               "with WADO-RS (C-GET / PROXY) instead")

    def get(self, source: SourceSpec, request: RetrieveRequest, sink: InstanceSink,
            cancel: CancelToken) -> RetrieveStream:
        """WADO-RS retrieve of `request`'s entities from `source` into `sink` (PS3.18 10.4): yields a
        RetrieveProgress per instance, returns the RetrieveOutcome (see module doc)."""
        conn = dicomweb_connection(source)
        resources = wado_resources(request)
        tally, missing = Tally(), []
        for resource in resources:
            if cancel.cancelled:
                break
            # Per resource: a long retrieval outlives an access token, the provider hands out a fresh one.
            headers = {"Accept": ACCEPT_DICOM, **auth_headers(source, self._google)}
            url = service_url(conn, "wado_prefix", resource.path, google=self._google)
            started = time.monotonic()
            delivered = yield from self._retrieve(source, conn, url, headers, sink, cancel, tally)
            if delivered == 0 and not cancel.cancelled:
                missing.append(resource.uid)
                tally.add(failed=1, failed_uids=(resource.uid,) if resource.level is QueryLevel.IMAGE else ())
            log_event(logger, "wado_retrieve_request", logging.DEBUG, source=source.name, url=safe_url(url),
                      query_id=request.query_id, instances=delivered, cancelled=cancel.cancelled,
                      duration_ms=round((time.monotonic() - started) * 1000, 1))
        comment = f"{source.name} does not have {', '.join(missing)}" if missing else None
        return tally.outcome(cancel.cancelled, comment)

    def metadata(self, source: SourceSpec, study_uid: str, cancel: CancelToken,
                 series_uid: str | None = None) -> list[dict]:
        """WADO-RS metadata of a study or one of its series (PS3.18 10.4.1.1.2) as DICOM JSON objects (PS3.18
        F.2). [] when the source does not have it (404) or when cancelled; errors as for `get`."""
        conn = dicomweb_connection(source)
        path = f"studies/{_uid_segment('StudyInstanceUID', study_uid)}"
        if series_uid is not None:
            path += f"/series/{_uid_segment('SeriesInstanceUID', series_uid)}"
        url = service_url(conn, "wado_prefix", path + "/metadata", google=self._google)
        headers = {"Accept": ACCEPT_JSON, **auth_headers(source, self._google)}
        try:
            with self._open(source, conn, url, headers, cancel) as response:
                if response is None:
                    return []
                body = b"".join(_chunks(response, cancel))
        except _Cancelled:
            return []
        return _json_objects(source, body, url) if not cancel.cancelled else []

    # -- one request ------------------------------------------------------------------------------------------

    def _retrieve(self, source: SourceSpec, conn: DicomwebConnections, url: httpx.URL, headers: dict[str, str],
                  sink: InstanceSink, cancel: CancelToken, tally: Tally) -> Iterator:
        """One WADO-RS GET: each instance to `sink`, counted in `tally`; returns how many instances arrived."""
        delivered = 0
        try:
            with self._open(source, conn, url, headers, cancel) as response:
                if response is None or response.status_code == 204:
                    return 0
                try:
                    boundary = boundary_from_content_type(response.headers.get("content-type"))
                except MultipartError as exc:
                    raise QueryFailedError(f"{source.name}: WADO-RS answer from {safe_url(url)} is not "
                                           f"multipart: {exc}") from exc
                for part in iter_multipart(_chunks(response, cancel), boundary):
                    if cancel.cancelled:
                        break
                    delivered += 1
                    _deliver(source, part.content, sink, tally)
                    yield tally.progress(None)
        except _Cancelled:
            pass
        return delivered

    @contextmanager
    def _open(self, source: SourceSpec, conn: DicomwebConnections, url: httpx.URL, headers: dict[str, str],
              cancel: CancelToken) -> Iterator[httpx.Response | None]:
        """The streamed 2xx response (None for a 404), with its socket shut down on cancel; httpx and multipart
        errors become TransportError / QueryFailedError, or _Cancelled once `cancel` is set."""
        if cancel.cancelled:
            raise _Cancelled()
        guard = _SocketGuard()
        unregister = cancel.on_cancel(guard.fire)
        client = self._clients.get(getattr(conn, "verify_tls", True))
        try:
            with _translated(source, url, conn.timeout, cancel):
                with client.stream("GET", url, headers=headers, timeout=conn.timeout,
                                   extensions={"trace": guard.trace}) as response:
                    guard.attach(response_socket(response))
                    if response.status_code == NOT_FOUND:
                        yield None
                        return
                    error = status_error(response.status_code, _error_body(response), url)
                    if error is not None:
                        raise type(error)(f"{source.name}: {error}")
                    yield response
        finally:
            unregister()


@contextmanager
def _translated(source: SourceSpec, url: httpx.URL, timeout: float, cancel: CancelToken) -> Iterator[None]:
    """httpx and multipart errors as the port's errors (module doc); anything once cancelled as _Cancelled."""
    try:
        yield
    except httpx.TimeoutException as exc:
        if cancel.cancelled:
            raise _Cancelled() from exc
        raise TransportError(f"{source.name}: no data from {safe_url(url)} within {timeout:g} s "
                             f"({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        if cancel.cancelled:
            raise _Cancelled() from exc
        raise TransportError(f"{source.name}: {safe_url(url)}: {type(exc).__name__}: {exc}") from exc
    except MultipartError as exc:
        if cancel.cancelled:
            raise _Cancelled() from exc
        raise QueryFailedError(f"{source.name}: malformed WADO-RS response from {safe_url(url)}: {exc}") from exc


def _chunks(response: httpx.Response, cancel: CancelToken) -> Iterator[bytes]:
    """The body as it arrives. No chunk_size: httpx would then hold data back until a whole chunk is in, and a
    part that has fully arrived would wait for the next part's bytes."""
    for chunk in response.iter_bytes():
        if cancel.cancelled:
            raise _Cancelled()
        yield chunk


def _error_body(response: httpx.Response) -> bytes:
    """The start of a non-2xx body, for the error message (never the whole of it)."""
    if 200 <= response.status_code < 300:
        return b""
    head = b""
    for chunk in response.iter_bytes():
        head += chunk
        if len(head) >= _ERROR_BODY_BYTES:
            break
    return head


def _deliver(source: SourceSpec, content: bytes, sink: InstanceSink, tally: Tally) -> None:
    """Read one part as a PS3.10 file and hand it to the sink; count the sink's answer (PS3.4 B.2.3)."""
    try:
        dataset: Dataset = read_instance(content)  # carries `content`: the spool keeps the source's own bytes
    except Exception as exc:
        log_event(logger, "wado_instance_unreadable", logging.WARNING, source=source.name, size=len(content),
                  error=f"{type(exc).__name__}: {exc}")
        tally.count_store(_CANNOT_UNDERSTAND, "")
        return
    tally.count_store(sink(dataset), str(dataset.get("SOPInstanceUID", "")))


def _json_objects(source: SourceSpec, body: bytes, url: httpx.URL) -> list[dict]:
    try:
        data = json_objects(body)
    except DicomJsonError as exc:
        raise QueryFailedError(f"{source.name}: malformed WADO-RS metadata from {safe_url(url)}: {exc}") from exc
    if not all(isinstance(item, dict) for item in data):
        raise QueryFailedError(f"{source.name}: WADO-RS metadata from {safe_url(url)} is not a JSON array of "
                               "DICOM JSON objects (PS3.18 F.2)")
    return data
