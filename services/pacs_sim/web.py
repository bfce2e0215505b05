"""The simulator's DICOMweb side on the stdlib ThreadingHTTPServer: QIDO-RS search and WADO-RS retrieve.

QIDO-RS (PS3.18 10.6): GET {root}/studies, /series, /instances, /studies/{study}/series,
/studies/{study}/instances, /studies/{study}/series/{series}/instances. Query parameters: attribute keywords or
8-hex-digit tags ("00100020=123"), includefield (repeatable or comma-separated, "all"), limit, offset;
fuzzymatching is accepted and ignored. Matching is shared.dicom.matching (PS3.4 C.2.2.2, as PS3.18 10.6.1.2.1
asks); a comma-separated UID list is List of UID matching. An unknown parameter or a bad value is 400.
No match: 200 with an empty JSON array (PS3.18 10.6.3.3 allows 200 with an empty payload; clients parse it like any
other answer, and Orthanc answers the same); `empty_status=204` makes the server answer 204 No Content instead.

WADO-RS (PS3.18 10.4): GET {root}/studies/{study}[/series/{series}[/instances/{instance}]] as
multipart/related; type="application/dicom" (one Part 10 file per part) and .../metadata as DICOM JSON.
Faults (faults.py) apply to every request.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydicom import Dataset

from services.pacs_sim.catalog import Catalog
from services.pacs_sim.faults import QIDO_TRUNCATION_WARNING, FaultInjector
from shared.dicom.dicom_json import dataset_to_json
from shared.dicom.levels import QueryLevel
from shared.dicom.matching import matches, project
from shared.dicom.query_keys import DEFAULT_RETURN_KEYS, QueryKeyError, build_identifier

CONTROL_PARAMS = {"includefield", "limit", "offset", "fuzzymatching"}
DICOM_JSON = "application/dicom+json"


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DicomWebService:
    """Route table and answers; independent of the HTTP plumbing, so tests can call `qido()` directly."""

    def __init__(self, catalog: Catalog, injector: FaultInjector, *, root: str = "/dicom-web",
                 empty_status: int = 200) -> None:
        self.catalog = catalog
        self.injector = injector
        self.root = root.rstrip("/")
        self.empty_status = empty_status

    def qido(self, segments: list[str], params: list[tuple[str, str]]) -> tuple[list[dict], bool]:
        """Matches as DICOM JSON, and whether result_cap cut the list."""
        level, fixed = _qido_target(segments)
        keys: dict[str, str | None] = dict(fixed)
        include: list[str] = []
        limit, offset = None, 0
        for name, value in params:
            lowered = name.lower()
            if lowered == "includefield":
                include += [v.strip() for v in value.split(",") if v.strip()]
            elif lowered == "limit":
                limit = _non_negative(name, value)
            elif lowered == "offset":
                offset = _non_negative(name, value)
            elif lowered not in CONTROL_PARAMS:
                keys[name] = value.replace(",", "\\") if _is_uid_key(name) else value
        try:
            identifier = build_identifier(keys, level, default_return_keys=False)
            for keyword in _return_keys(level, segments, include):
                for element in build_identifier([keyword], level, default_return_keys=False):
                    if element.tag not in identifier:
                        identifier.add(element)
        except QueryKeyError as exc:
            raise HttpError(400, str(exc)) from None
        found = [r for r in self.catalog.records(level) if matches(identifier, r)]
        found = found[offset:] if limit is None else found[offset : offset + limit]
        count, capped = self.injector.cap(len(found))
        answers = [r if "all" in include else project(identifier, r, level=level) for r in found[:count]]
        return [_to_json(a) for a in answers], capped

    def instances_for(self, segments: list[str]) -> list[Dataset]:
        """WADO-RS: the instances under /studies/{s}[/series/{r}[/instances/{i}]] (404 when none)."""
        keys = dict(zip(("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"), segments[1::2]))
        query = Dataset()
        for keyword, value in keys.items():
            setattr(query, keyword, value)
        uids = [r.SOPInstanceUID for r in self.catalog.records(QueryLevel.IMAGE) if matches(query, r)]
        if not uids:
            raise HttpError(404, "no such study/series/instance")
        return [self.catalog.dataset(uid) for uid in uids]


def _qido_target(segments: list[str]) -> tuple[QueryLevel, dict[str, str]]:
    shapes = {
        ("studies",): QueryLevel.STUDY, ("series",): QueryLevel.SERIES, ("instances",): QueryLevel.IMAGE,
        ("studies", "*", "series"): QueryLevel.SERIES, ("studies", "*", "instances"): QueryLevel.IMAGE,
        ("studies", "*", "series", "*", "instances"): QueryLevel.IMAGE,
    }
    shape = tuple("*" if i % 2 else s for i, s in enumerate(segments))
    if shape not in shapes:
        raise HttpError(404, f"no QIDO-RS resource /{'/'.join(segments)}")
    fixed = dict(zip(("StudyInstanceUID", "SeriesInstanceUID"), segments[1::2]))
    return shapes[shape], fixed


def _return_keys(level: QueryLevel, segments: list[str], include: list[str]) -> list[str]:
    """PS3.18 Tables 10.6.3-3..5 defaults, plus the parent UIDs a flat /series or /instances search needs."""
    keys = list(DEFAULT_RETURN_KEYS[level])
    if level is not QueryLevel.STUDY:
        keys.append("StudyInstanceUID")
    if level is QueryLevel.IMAGE:
        keys.append("SeriesInstanceUID")
    return keys + [k for k in include if k != "all"]


def _is_uid_key(name: str) -> bool:
    return name.endswith("UID") or name.upper() in {"0020000D", "0020000E", "00080018", "00080016"}


def _non_negative(name: str, value: str) -> int:
    if not value.isdigit():
        raise HttpError(400, f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _to_json(ds: Dataset) -> dict:
    ds = Dataset(ds)
    for keyword in ("QueryRetrieveLevel", "PixelData"):
        if keyword in ds:
            del ds[keyword]
    return dataset_to_json(ds)


class PacsSimHandler(BaseHTTPRequestHandler):
    """QIDO-RS / WADO-RS / metadata over the stdlib HTTP server, for the `service` bound by make_handler()."""

    service: DicomWebService
    protocol_version = "HTTP/1.1"
    server_version = "AxiomPacsSim/1.0"
    # Headers and body go out as two writes; without TCP_NODELAY the body waits for the client's delayed ACK
    # (~40 ms on Linux) on every keep-alive request, as with DIMSE (shared/adapters/dimse_network.py).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests and benchmarks
        return

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if not url.path.startswith(self.service.root + "/"):
            return self._send(404, b"not found", "text/plain")
        segments = [s for s in url.path[len(self.service.root):].split("/") if s]
        if not self._pass_faults():
            return
        try:
            if segments and segments[-1] == "metadata":
                self._metadata(segments[:-1])
            elif _is_wado(segments):
                self._wado(segments)
            else:
                self._qido(segments, parse_qsl(url.query, keep_blank_values=True))
        except HttpError as exc:
            self._send(exc.status, json.dumps({"error": str(exc)}).encode(), "application/json")
        except Exception as exc:  # a simulator bug must still answer, not drop the connection
            self._send(500, json.dumps({"error": repr(exc)}).encode(), "application/json")

    def _pass_faults(self) -> bool:
        injector = self.service.injector
        decision = injector.decide()
        if not injector.delay(self._client_gone):
            return self._drop()
        if decision.abort:
            return self._drop()
        if decision.fail:
            self._send(500, b'{"error": "simulated failure"}', "application/json")
            return False
        if injector.faults.hang:
            injector.hang(self._client_gone)
            return self._drop()
        return True

    def _qido(self, segments: list[str], params: list[tuple[str, str]]) -> None:
        answers, capped = self.service.qido(segments, params)
        headers = {}
        if capped:
            headers["Warning"] = QIDO_TRUNCATION_WARNING.format(host=self.headers.get("Host", "pacs-sim"))
        if self.service.injector.faults.malformed:
            return self._send(200, json.dumps(answers or [{}])[:-7].encode(), DICOM_JSON, headers)
        if not answers and self.service.empty_status == 204:
            return self._send(204, b"", None, headers)
        self._send(200, json.dumps(answers).encode(), DICOM_JSON, headers)

    def _metadata(self, segments: list[str]) -> None:
        body = json.dumps([_to_json(ds) for ds in self.service.instances_for(segments)]).encode()
        if self.service.injector.faults.malformed:
            body = body[: len(body) // 2]
        self._send(200, body, DICOM_JSON)

    def _wado(self, segments: list[str]) -> None:
        boundary = uuid.uuid4().hex
        parts = []
        for ds in self.service.instances_for(segments):
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            parts.append(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                         + buffer.getvalue() + b"\r\n")
        body = b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"
        self._send(200, body, f'multipart/related; type="application/dicom"; boundary={boundary}')

    def _send(self, status: int, body: bytes, content_type: str | None, headers: dict | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drop(self) -> bool:
        """Close the connection without any response (the 'abort' failure mode, or after a hang)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return False

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


def make_handler(service: DicomWebService) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to `service` (the stdlib server builds one handler per request)."""
    return type("BoundPacsSimHandler", (PacsSimHandler,), {"service": service})


def _is_wado(segments: list[str]) -> bool:
    shape = tuple("*" if i % 2 else s for i, s in enumerate(segments))
    return shape in {("studies", "*"), ("studies", "*", "series", "*"),
                     ("studies", "*", "series", "*", "instances", "*")}


class DicomWebServer:
    """ThreadingHTTPServer in a daemon thread; port 0 picks a free one."""

    def __init__(self, service: DicomWebService, bind: str, port: int) -> None:
        self.service = service
        self._server = ThreadingHTTPServer((bind, port), make_handler(service))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="pacs-sim-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
