"""WadoRetrievePort (WADO-RS, PS3.18 10.4) against the PACS simulator's DICOMweb service, a real Orthanc with its
DICOMweb plugin, and scripted HTTP peers (raw sockets, httpx.MockTransport) for what neither will do on demand.

Seen with Orthanc 1.10 + DICOMweb plugin 1.7 (asserted below): `transfer-syntax=*` in Accept is honoured — an RLE
Lossless and an Implicit VR instance arrive in their stored syntax — and each part is byte for byte the file
`GET /instances/{id}/file` returns; reading it with pydicom and writing it again the way the spool does
(shared.retrieval.spool.encode_instance) gives the same bytes.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Callable, Iterator

import httpx
import pytest
from pydicom import Dataset
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from services.pacs_sim import Faults, PacsSimulator, generate_catalog
from services.pacs_sim.faults import FaultInjector
from services.pacs_sim.web import DicomWebService, PacsSimHandler
from shared.adapters.dicomweb_http import GoogleHealthcareAccess
from shared.adapters.dicomweb_retrieve import ACCEPT_DICOM, WadoRetrievePort
from shared.adapters.retrieve_ports import RoutingRetrievePort
from shared.connections import DicomwebAuth, DicomwebConnection, DimseConnection, GoogleHealthcareConnection
from shared.dicom.levels import QueryLevel
from shared.dicom.multipart import closing_delimiter, multipart_content_type, multipart_part
from shared.retrieval.model import (
    CANCEL, OUT_OF_RESOURCES_SUB_OPERATIONS, SUB_OPERATIONS_WITH_FAILURES, SUCCESS, RetrieveOutcome, RetrieveRequest,
)
from shared.retrieval.service import RetrievalService
from shared.retrieval.spool import encode_instance
from shared.spanning.model import SourceSpec
from shared.spanning.ports import CancelToken, QueryFailedError, TransportError
from tests.fakes.retrieval import FakeLocate, FakeStorePort
from tests.peers import free_port, require
from tests.peers.orthanc import OrthancPeer, orthanc_available
from tests.peers.streams import drain as run
from tests.peers.studies import build_instance, build_instances, study, to_part10

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def fresh_catalog():
    return generate_catalog(11, patients=2, studies=2, series_per_study=2, instances_per_series=2)


CATALOG = fresh_catalog()
STUDY_1, STUDY_2 = CATALOG.study_uids()


def series_of(study_uid: str) -> list[str]:
    return sorted({str(r.SeriesInstanceUID) for r in CATALOG.instances() if r.StudyInstanceUID == study_uid})


def sops_of(series_uid: str) -> list[str]:
    return sorted(str(r.SOPInstanceUID) for r in CATALOG.instances() if r.SeriesInstanceUID == series_uid)


def web(url: str, name: str = "WEB", **conn: object) -> SourceSpec:
    return SourceSpec(name, "dicomweb", DicomwebConnection(base_url=url, **conn))


def request(level: QueryLevel, **keys: str) -> RetrieveRequest:
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return RetrieveRequest(level, identifier)


class Sink:
    """Collects instances; answers 0xA700 for the SOP Instance UIDs in `refuse`; may cancel after `cancel_after`."""

    def __init__(self, refuse: frozenset[str] = frozenset(), cancel: CancelToken | None = None,
                 cancel_after: int | None = None) -> None:
        self.refuse, self.cancel, self.cancel_after = refuse, cancel, cancel_after
        self.got: list[Dataset] = []

    def __call__(self, dataset: Dataset) -> int:
        self.got.append(dataset)
        if self.cancel is not None and len(self.got) == self.cancel_after:
            self.cancel.cancel()
        return 0xA700 if dataset.SOPInstanceUID in self.refuse else SUCCESS

    @property
    def uids(self) -> list[str]:
        return sorted(str(ds.SOPInstanceUID) for ds in self.got)


@pytest.fixture(scope="module")
def pacs() -> Iterator[PacsSimulator]:
    with PacsSimulator("WEB", "PACS_WEB", fresh_catalog(), http_port=0) as sim:
        yield sim


@pytest.fixture()
def port() -> Iterator[WadoRetrievePort]:
    with WadoRetrievePort() as p:
        yield p


# -- PACS simulator --------------------------------------------------------------------------------------------------

def test_study_series_and_instance_levels(pacs, port) -> None:
    src, series = web(pacs.http_url), series_of(STUDY_1)
    sink = Sink()
    progress, outcome = run(port.get(src, request(QueryLevel.STUDY, StudyInstanceUID=STUDY_1), sink, CancelToken()))
    assert outcome == RetrieveOutcome(SUCCESS, completed=4)
    assert [p.completed for p in progress] == [1, 2, 3, 4] and all(p.remaining is None for p in progress)
    assert sink.uids == sorted(sops_of(series[0]) + sops_of(series[1]))
    assert all(ds.file_meta.TransferSyntaxUID and "PixelData" in ds for ds in sink.got)  # PS3.10 files, meta kept

    sink = Sink()
    _, outcome = run(port.get(src, request(QueryLevel.SERIES, StudyInstanceUID=STUDY_1, SeriesInstanceUID=series[1]),
                              sink, CancelToken()))
    assert outcome == RetrieveOutcome(SUCCESS, completed=2) and sink.uids == sops_of(series[1])

    sink, sop = Sink(), sops_of(series[0])[1]
    _, outcome = run(port.get(src, request(QueryLevel.IMAGE, StudyInstanceUID=STUDY_1, SeriesInstanceUID=series[0],
                                           SOPInstanceUID=sop), sink, CancelToken()))
    assert outcome == RetrieveOutcome(SUCCESS, completed=1) and sink.uids == [sop]


def test_a_uid_list_is_one_request_per_uid_and_a_missing_one_fails(pacs, port) -> None:
    sink = Sink()
    keys = {"StudyInstanceUID": f"{STUDY_1}\\{STUDY_2}"}
    _, outcome = run(port.get(web(pacs.http_url), request(QueryLevel.STUDY, **keys), sink, CancelToken()))
    assert outcome == RetrieveOutcome(SUCCESS, completed=8) and len(set(sink.uids)) == 8
    series = series_of(STUDY_2)[0]
    wanted = sops_of(series) + ["1.2.3.404"]
    _, outcome = run(port.get(web(pacs.http_url), request(
        QueryLevel.IMAGE, StudyInstanceUID=STUDY_2, SeriesInstanceUID=series, SOPInstanceUID="\\".join(wanted)),
        Sink(), CancelToken()))
    assert outcome.status == SUB_OPERATIONS_WITH_FAILURES
    assert (outcome.completed, outcome.failed, outcome.failed_uids) == (2, 1, ("1.2.3.404",))
    assert "WEB does not have 1.2.3.404" in outcome.error_comment


def test_404_is_a_failure_outcome_not_success(pacs, port) -> None:
    _, outcome = run(port.get(web(pacs.http_url), request(QueryLevel.STUDY, StudyInstanceUID="1.2.3.4"), Sink(),
                              CancelToken()))
    assert outcome.status == OUT_OF_RESOURCES_SUB_OPERATIONS and outcome.failed == 1 and outcome.completed == 0
    assert not outcome.ok


def test_a_refusing_sink_counts_failed_with_the_uid(pacs, port) -> None:
    refused = sops_of(series_of(STUDY_1)[0])[0]
    sink = Sink(refuse=frozenset({refused}))
    _, outcome = run(port.get(web(pacs.http_url), request(QueryLevel.STUDY, StudyInstanceUID=STUDY_1), sink,
                              CancelToken()))
    assert outcome.status == SUB_OPERATIONS_WITH_FAILURES
    assert (outcome.completed, outcome.failed, outcome.failed_uids) == (3, 1, (refused,))


def test_metadata_of_a_study_and_a_series(pacs, port) -> None:
    src = web(pacs.http_url)
    study_meta = port.metadata(src, STUDY_1, CancelToken())
    series_meta = port.metadata(src, STUDY_1, CancelToken(), series_uid=series_of(STUDY_1)[0])
    assert len(study_meta) == 4 and len(series_meta) == 2
    assert {m["0020000D"]["Value"][0] for m in study_meta} == {STUDY_1}
    assert sorted(m["00080018"]["Value"][0] for m in series_meta) == sops_of(series_of(STUDY_1)[0])
    assert port.metadata(src, "1.2.3.404", CancelToken()) == []


def test_a_dead_port_is_a_quick_transport_error(port) -> None:
    started = time.monotonic()
    with pytest.raises(TransportError, match="ConnectError"):
        run(port.get(web(f"http://127.0.0.1:{free_port()}/dicom-web"),
                     request(QueryLevel.STUDY, StudyInstanceUID=STUDY_1), Sink(), CancelToken()))
    with pytest.raises(TransportError):
        port.metadata(web(f"http://127.0.0.1:{free_port()}/dicom-web"), STUDY_1, CancelToken())
    assert time.monotonic() - started < 2


def test_cancel_while_the_source_has_not_answered() -> None:
    with PacsSimulator("HANG", "HANG", fresh_catalog(), http_port=0, faults=Faults(hang=True)) as sim, \
            WadoRetrievePort() as port:
        cancel = CancelToken()
        threading.Timer(0.3, cancel.cancel).start()
        started = time.monotonic()
        _, outcome = run(port.get(web(sim.http_url), request(QueryLevel.STUDY, StudyInstanceUID=STUDY_1), Sink(),
                                  cancel))
    assert outcome == RetrieveOutcome(CANCEL) and time.monotonic() - started < 1.0


def test_patient_level_and_move_are_refused(pacs, port) -> None:
    with pytest.raises(QueryFailedError, match="patient"):
        run(port.get(web(pacs.http_url), request(QueryLevel.PATIENT, PatientID="P1"), Sink(), CancelToken()))
    with pytest.raises(QueryFailedError, match="cannot C-MOVE"):
        run(port.move(web(pacs.http_url), request(QueryLevel.STUDY, StudyInstanceUID=STUDY_1), "DEST", CancelToken()))
    with pytest.raises(QueryFailedError, match="SeriesInstanceUID"):
        run(port.get(web(pacs.http_url), request(QueryLevel.IMAGE, StudyInstanceUID=STUDY_1, SOPInstanceUID="1.2"),
                     Sink(), CancelToken()))


# -- scripted peers --------------------------------------------------------------------------------------------------

def parts_body(instances: list[Dataset], boundary: str = "xyzzy") -> bytes:
    return b"".join(multipart_part(to_part10(ds), "application/dicom", boundary) for ds in instances)


class ScriptedServer:
    """A raw HTTP peer: for each connection, reads the request head and calls `respond(conn)` in a thread."""

    def __init__(self, respond: Callable[[socket.socket], None]) -> None:
        self.respond = respond
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/dicom-web"

    def _serve(self) -> None:
        try:
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self._one, args=(conn,), daemon=True).start()
        except OSError:
            return

    def _one(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            self.respond(conn)

    def close(self) -> None:
        self.listener.close()


def head(length: int, boundary: str = "xyzzy") -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {multipart_content_type(boundary)}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


INSTANCES = build_instances([1])  # three small instances
NEXT_PART_START = b"--xyzzy\r\nContent-Type: application/dicom\r\n\r\n\x00\x01"  # ends the part before it


def test_cancel_mid_stream_stops_the_download(port) -> None:
    body = parts_body(INSTANCES) + closing_delimiter("xyzzy")
    first = parts_body(INSTANCES[:1])
    gone = threading.Event()

    def respond(conn: socket.socket) -> None:
        conn.sendall(head(len(body)) + first + NEXT_PART_START)  # the first part, then silence mid-part
        conn.settimeout(5)
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass
        gone.set()

    server = ScriptedServer(respond)
    cancel = CancelToken()
    try:
        stream = port.get(web(server.url), request(QueryLevel.STUDY, StudyInstanceUID=study(1).study_uid), Sink(),
                          cancel)
        first_progress = next(stream)
        assert first_progress.completed == 1
        threading.Timer(0.2, cancel.cancel).start()
        started = time.monotonic()
        progress, outcome = run(stream)
        assert time.monotonic() - started < 1.0
        assert progress == [] and outcome == RetrieveOutcome(CANCEL, completed=1)
        assert gone.wait(1.0)  # the connection was closed: the download stopped
    finally:
        server.close()


def test_a_connection_cut_mid_body_is_a_transport_error_after_the_delivered_instances(port) -> None:
    body = parts_body(INSTANCES) + closing_delimiter("xyzzy")
    cut = parts_body(INSTANCES[:2]) + NEXT_PART_START

    def respond(conn: socket.socket) -> None:
        conn.sendall(head(len(body)) + cut)
        conn.shutdown(socket.SHUT_RDWR)

    server = ScriptedServer(respond)
    sink = Sink()
    try:
        with pytest.raises(TransportError, match="RemoteProtocolError"):
            run(port.get(web(server.url), request(QueryLevel.STUDY, StudyInstanceUID=study(1).study_uid), sink,
                         CancelToken()))
    finally:
        server.close()
    assert len(sink.got) == 2


def mock_port(handler: Callable[[httpx.Request], httpx.Response], **kwargs) -> WadoRetrievePort:
    return WadoRetrievePort(transport=httpx.MockTransport(handler), **kwargs)


def get_study(port: WadoRetrievePort, src: SourceSpec, uid: str = "1.2.3", sink: Sink | None = None):
    return run(port.get(src, request(QueryLevel.STUDY, StudyInstanceUID=uid), sink or Sink(), CancelToken()))


@pytest.mark.parametrize("status, error", [(500, TransportError), (503, TransportError), (429, TransportError),
                                           (401, QueryFailedError), (403, QueryFailedError),
                                           (302, QueryFailedError)])
def test_http_errors_name_status_and_url_never_credentials(status: int, error: type) -> None:
    src = web("http://pacs.test/dw", auth=DicomwebAuth(type="basic", username="alice", password="s3cret"))
    with mock_port(lambda r: httpx.Response(status, text="nope")) as port:
        with pytest.raises(error) as raised:
            get_study(port, src)
    message = str(raised.value)
    assert f"HTTP {status} from http://pacs.test/dw/studies/1.2.3" in message
    assert "s3cret" not in message and "alice" not in message


@pytest.mark.parametrize("response", [
    httpx.Response(200, content=b"{}", headers={"Content-Type": "application/dicom+json"}),
    httpx.Response(200, content=b"--b\r\nContent-Type: application/dicom\r\n\r\nno end",
                   headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}),
])
def test_a_body_that_is_not_well_formed_multipart_is_query_failed(response: httpx.Response) -> None:
    with mock_port(lambda r: response) as port:
        with pytest.raises(QueryFailedError, match="multipart|truncated"):
            get_study(port, web("http://pacs.test/dw"))


def test_accept_header_prefix_and_google_token() -> None:
    seen: list[httpx.Request] = []
    body = parts_body(INSTANCES[:1], "bnd") + closing_delimiter("bnd")

    def handler(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        return httpx.Response(200, content=body, headers={"Content-Type": multipart_content_type("bnd")})

    with mock_port(handler, google=GoogleHealthcareAccess(lambda: "g-token")) as port:
        _, outcome = get_study(port, web("http://pacs.test/dw", wado_prefix="wado", auth=DicomwebAuth(
            type="api_key", token="k3y", header="X-Key")))
        gcp = GoogleHealthcareConnection(project="p", location="l", dataset="d", dicom_store="s")
        get_study(port, SourceSpec("GCP", "google_healthcare", gcp))
    assert outcome == RetrieveOutcome(SUCCESS, completed=1)
    assert seen[0].headers["Accept"] == ACCEPT_DICOM and seen[0].headers["X-Key"] == "k3y"
    assert str(seen[0].url) == "http://pacs.test/dw/wado/studies/1.2.3"
    assert seen[1].headers["Authorization"] == "Bearer g-token"
    assert str(seen[1].url) == gcp.base_url + "/studies/1.2.3"


def test_a_read_timeout_is_a_transport_error() -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=r)

    with mock_port(handler) as port:
        with pytest.raises(TransportError, match="no data from http://pacs.test/dw/studies/1.2.3 within 7 s"):
            get_study(port, web("http://pacs.test/dw", timeout=7))


def test_an_unreadable_part_is_a_failed_instance() -> None:
    body = (multipart_part(b"not dicom", "application/dicom", "b") + parts_body(INSTANCES[:1], "b")
            + closing_delimiter("b"))
    with mock_port(lambda r: httpx.Response(200, content=body,
                                            headers={"Content-Type": multipart_content_type("b")})) as port:
        _, outcome = get_study(port, web("http://pacs.test/dw"))
    assert outcome.status == SUB_OPERATIONS_WITH_FAILURES and (outcome.completed, outcome.failed) == (1, 1)


def test_routing_port_dispatches_on_the_kind() -> None:
    dimse = SourceSpec("D", "dimse", DimseConnection(ae_title="D", host="127.0.0.1", port=104))
    routing = RoutingRetrievePort()
    try:
        assert type(routing.port_for(dimse)).__name__ == "DimseRetrievePort"
        assert isinstance(routing.port_for(web("http://x.test")), WadoRetrievePort)
        with pytest.raises(QueryFailedError, match="cannot C-MOVE"):
            run(routing.move(web("http://x.test"), request(QueryLevel.STUDY, StudyInstanceUID="1.2"), "D",
                             CancelToken()))
        with pytest.raises(QueryFailedError, match="kind 'fhir'"):
            routing.port_for(SourceSpec("F", "fhir"))
    finally:
        routing.close()


# -- a real Orthanc (DICOMweb plugin) --------------------------------------------------------------------------------

def stored_syntax_instances() -> list[Dataset]:
    """Study 2's instance in RLE Lossless and study 5's in Implicit VR Little Endian (PS3.5 A.4.2, A.1)."""
    rle = build_instance(study(2), 1, 1)
    rle.compress(RLELossless, generate_instance_uid=False)
    implicit = build_instance(study(5), 1, 1)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return [rle, implicit]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPeer]:
    require(orthanc_available(), "Orthanc with the DICOMweb plugin is not installed (apt-get install orthanc "
                                 "orthanc-dicomweb)")
    peer = OrthancPeer("ORTHANC_WADO", "ORTHANCW", free_port(), free_port(), tmp_path_factory.mktemp("wado"))
    try:
        peer.start()
        peer.load(build_instances([1, 3]) + stored_syntax_instances())
        yield peer
    finally:
        peer.stop()


def orthanc_files(peer: OrthancPeer) -> dict[str, bytes]:
    """SOP Instance UID -> the file Orthanc stores (GET /instances/{id}/file)."""
    files = {}
    with httpx.Client(base_url=peer.base_url, timeout=10) as client:
        for orthanc_id in client.get("/instances").json():
            tags = client.get(f"/instances/{orthanc_id}/simplified-tags").json()
            files[tags["SOPInstanceUID"]] = client.get(f"/instances/{orthanc_id}/file").content
    return files


def test_orthanc_study_bytes_survive_the_spool_encoding_unchanged(orthanc, port) -> None:
    files = orthanc_files(orthanc)
    sink = Sink()
    uids = "\\".join(study(n).study_uid for n in (1, 3, 2, 5))
    _, outcome = run(port.get(web(orthanc.dicomweb_url), request(QueryLevel.STUDY, StudyInstanceUID=uids), sink,
                              CancelToken()))
    assert outcome == RetrieveOutcome(SUCCESS, completed=len(files)) and sorted(files) == sink.uids
    syntaxes = {str(ds.SOPInstanceUID): str(ds.file_meta.TransferSyntaxUID) for ds in sink.got}
    assert syntaxes[study(2).instance_uid(1, 1)] == RLELossless  # transfer-syntax=*: no transcoding
    assert syntaxes[study(5).instance_uid(1, 1)] == ImplicitVRLittleEndian
    for ds in sink.got:
        assert encode_instance(ds) == files[str(ds.SOPInstanceUID)], ds.SOPInstanceUID


def test_orthanc_series_instance_404_and_metadata(orthanc, port) -> None:
    spec, src = study(1), web(orthanc.dicomweb_url)
    sink = Sink()
    _, outcome = run(port.get(src, request(QueryLevel.SERIES, StudyInstanceUID=spec.study_uid,
                                           SeriesInstanceUID=spec.series_uid(2)), sink, CancelToken()))
    assert outcome == RetrieveOutcome(SUCCESS, completed=2)
    assert sink.uids == sorted([spec.instance_uid(2, 1), spec.instance_uid(2, 2)])
    sink = Sink()
    _, outcome = run(port.get(src, request(QueryLevel.IMAGE, StudyInstanceUID=spec.study_uid,
                                           SeriesInstanceUID=spec.series_uid(1),
                                           SOPInstanceUID=f"{spec.instance_uid(1, 1)}\\1.2.3.404"), sink,
                              CancelToken()))
    assert outcome.status == SUB_OPERATIONS_WITH_FAILURES and outcome.failed_uids == ("1.2.3.404",)
    assert sink.uids == [spec.instance_uid(1, 1)]
    _, missing = run(port.get(src, request(QueryLevel.STUDY, StudyInstanceUID=study(6).study_uid), Sink(),
                              CancelToken()))
    assert missing.status == OUT_OF_RESOURCES_SUB_OPERATIONS and missing.completed == 0
    metadata = port.metadata(src, spec.study_uid, CancelToken())
    assert sorted(m["00080018"]["Value"][0] for m in metadata) == sorted(
        spec.instance_uid(s, i) for s, count in enumerate(spec.instances_per_series, 1) for i in range(1, count + 1))
    assert len(port.metadata(src, spec.study_uid, CancelToken(), series_uid=spec.series_uid(2))) == 2
    assert port.metadata(src, study(6).study_uid, CancelToken()) == []


# -- RetrievalService.get() over a DICOMweb holder that dies and a DIMSE one -----------------------------------------

class DyingHandler(PacsSimHandler):
    """The simulator's DICOMweb answers, except WADO-RS: the first `keep` parts, then the connection is cut."""

    keep = 2

    def _wado(self, segments: list[str]) -> None:
        datasets = self.service.instances_for(segments)
        body = parts_body(datasets) + closing_delimiter("xyzzy")
        self.wfile.write(head(len(body)) + parts_body(datasets[: self.keep]) + NEXT_PART_START)
        self.wfile.flush()
        self._drop()


class CountingPorts(RoutingRetrievePort):
    """Counts the instances each source delivered to the service's sink."""

    def __init__(self) -> None:
        super().__init__()
        self.delivered: dict[str, int] = {}

    def get(self, source, request, sink, cancel):
        def counted(dataset: Dataset) -> int:
            self.delivered[source.name] = self.delivered.get(source.name, 0) + 1
            return sink(dataset)

        return super().get(source, request, counted, cancel)


def test_retrieval_service_takes_the_rest_from_the_next_holder_when_a_dicomweb_holder_dies(tmp_path, caplog) -> None:
    catalog = fresh_catalog()
    service = DicomWebService(catalog, FaultInjector(Faults(), threading.Event()))
    dying = ThreadingHTTPServer(("127.0.0.1", 0), type("Bound", (DyingHandler,), {"service": service}))
    dying.daemon_threads = True
    threading.Thread(target=dying.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    records = catalog.instances()
    try:
        with PacsSimulator("DIMSE", "PACS_D", fresh_catalog()) as backup, CountingPorts() as ports, \
                caplog.at_level(logging.WARNING, logger="shared.retrieval"):
            sources = [web(f"http://127.0.0.1:{dying.server_address[1]}/dicom-web", name="WEB"),
                       SourceSpec("DIMSE", "dimse", DimseConnection(ae_title="PACS_D", host="127.0.0.1",
                                                                     port=backup.dimse_port))]
            retrieval = RetrievalService(
                locate=FakeLocate({"WEB": records, "DIMSE": records}), sources=sources, retrieve_port=ports,
                store_port=FakeStorePort(), spool_dir=tmp_path / "spool", spool_max_bytes=10_000_000)
            items, outcome = run(retrieval.get(request(QueryLevel.STUDY, StudyInstanceUID=STUDY_1)))
    finally:
        dying.shutdown()
        dying.server_close()
    announced, instances = items[0], items[1:]
    assert announced == 4 and outcome == RetrieveOutcome(SUCCESS, completed=4)
    expected = sorted(str(r.SOPInstanceUID) for r in records if r.StudyInstanceUID == STUDY_1)
    assert sorted(str(ds.SOPInstanceUID) for ds in instances) == expected  # each once: 2 from WEB, 2 from DIMSE
    assert all(isinstance(ds, Dataset) and ds.file_meta.TransferSyntaxUID for ds in instances)
    assert ports.delivered == {"WEB": 2, "DIMSE": 4}  # the DIMSE holder resent the study; 2 were duplicates
    failed = [r for r in caplog.records if getattr(r, "event", None) == "retrieve_holder_failed"]
    assert [r.source for r in failed] == ["WEB"] and "TransportError" in failed[0].error
