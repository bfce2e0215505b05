"""DimseQueryPort against real Orthancs (C-FIND SCP) and tiny scripted pynetdicom/TCP peers."""

from __future__ import annotations

import socket
import threading
import time
from typing import Iterator

import pytest
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from services.pacs_sim import PacsSimulator
from services.pacs_sim.catalog import generate_catalog
from shared.adapters.dimse_scu import DimseQueryPort
from shared.connections import DimseConnection
from shared.dicom.levels import InformationModel, QueryLevel
from shared.spanning.model import FindSummary, SourceSpec, SpanRequest
from shared.spanning.ports import CancelToken, QueryFailedError, TransportError
from tests.peers import free_port
from tests.peers.streams import drain, ident
from tests.peers.studies import ARCHIVE_A, ARCHIVE_B, study

pytestmark = pytest.mark.integration


def source(peer, name: str = "PACS", **conn: object) -> SourceSpec:
    connection = DimseConnection(ae_title=peer.aet, host="127.0.0.1", port=peer.dicom_port, **conn)
    return SourceSpec(name, "dimse", connection)


def raw_source(port: int, ae_title: str = "ANY", **conn: object) -> SourceSpec:
    return SourceSpec("PACS0", "dimse", DimseConnection(ae_title=ae_title, host="127.0.0.1", port=port, **conn))


@pytest.fixture()
def port() -> Iterator[DimseQueryPort]:
    with DimseQueryPort(ae_title="AXIOMTEST", cancel_grace_seconds=0.3) as p:
        yield p


def test_study_level_on_both_archives(two_orthancs, port) -> None:
    request = SpanRequest(QueryLevel.STUDY, ident(StudyInstanceUID="", PatientName="", StudyDate=""))
    found_a, summary = drain(port.find(request, source(two_orthancs.a), CancelToken()))
    found_b, _ = drain(port.find(request, source(two_orthancs.b, "B"), CancelToken()))
    assert summary is None
    assert {d.StudyInstanceUID for d in found_a} == {study(n).study_uid for n in ARCHIVE_A}
    assert {d.StudyInstanceUID for d in found_b} == {study(n).study_uid for n in ARCHIVE_B}


def test_series_and_image_levels(two_orthancs, port) -> None:
    spec = study(1)
    series = SpanRequest(QueryLevel.SERIES, ident(StudyInstanceUID=spec.study_uid, SeriesInstanceUID="", Modality=""))
    found, _ = drain(port.find(series, source(two_orthancs.a), CancelToken()))
    assert {d.SeriesInstanceUID for d in found} == {spec.series_uid(1), spec.series_uid(2)}
    assert {d.Modality for d in found} == {"CT"}
    image = SpanRequest(QueryLevel.IMAGE, ident(StudyInstanceUID=spec.study_uid, SeriesInstanceUID=spec.series_uid(2),
                                                SOPInstanceUID="", InstanceNumber=""))
    found, _ = drain(port.find(image, source(two_orthancs.a), CancelToken()))
    assert {d.SOPInstanceUID for d in found} == {spec.instance_uid(2, 1), spec.instance_uid(2, 2)}


def test_patient_level_patient_root(two_orthancs, port) -> None:
    request = SpanRequest(QueryLevel.PATIENT, ident(PatientID="", PatientName=""), InformationModel.PATIENT_ROOT)
    found, _ = drain(port.find(request, source(two_orthancs.a), CancelToken()))
    assert sorted(str(d.PatientID) for d in found) == ["PAT001", "PAT002", "PAT003"]


def test_wildcard_and_non_ascii_name_decoded(two_orthancs, port) -> None:
    request = SpanRequest(QueryLevel.STUDY, ident(SpecificCharacterSet="ISO_IR 192", PatientName="mü*",
                                                  StudyInstanceUID=""))
    found, _ = drain(port.find(request, source(two_orthancs.b), CancelToken()))
    assert [str(d.PatientName) for d in found] == ["Müller^Jürgen"]
    assert found[0].SpecificCharacterSet == "ISO_IR 100"  # Orthanc answers in its default encoding, Latin-1


def test_date_range(two_orthancs, port) -> None:
    request = SpanRequest(QueryLevel.STUDY, ident(StudyDate="20200101-20201231", StudyInstanceUID=""))
    found, _ = drain(port.find(request, source(two_orthancs.a), CancelToken()))
    assert {d.StudyInstanceUID for d in found} == {study(1).study_uid, study(3).study_uid}


def test_association_is_reused_across_finds(two_orthancs, port) -> None:
    request = SpanRequest(QueryLevel.STUDY, ident(StudyInstanceUID=""))
    src = source(two_orthancs.a)
    drain(port.find(request, src, CancelToken()))
    first = set(port._pool._open)
    drain(port.find(request, src, CancelToken()))
    assert set(port._pool._open) == first and port.open_associations == 1


def test_reconnects_once_when_the_idle_association_was_closed(two_orthancs, port) -> None:
    request = SpanRequest(QueryLevel.STUDY, ident(StudyInstanceUID=""))
    src = source(two_orthancs.a)
    drain(port.find(request, src, CancelToken()))
    (old,) = port._pool._open
    old.abort()  # as if the peer had dropped the idle association
    found, _ = drain(port.find(request, src, CancelToken()))
    assert len(found) == len(ARCHIVE_A)
    assert old not in port._pool._open and port.open_associations == 1


def test_an_association_idle_too_long_is_released_not_reused(two_orthancs) -> None:
    request = SpanRequest(QueryLevel.STUDY, ident(StudyInstanceUID=""))
    src = source(two_orthancs.a)
    with DimseQueryPort(idle_seconds=0.2) as short_idle:
        drain(short_idle.find(request, src, CancelToken()))
        (old,) = short_idle._pool._open
        time.sleep(0.3)
        found, _ = drain(short_idle.find(request, src, CancelToken()))
        assert len(found) == len(ARCHIVE_A)
        (new,) = short_idle._pool._open
        assert new is not old
        deadline = time.monotonic() + 5
        while old.is_established and time.monotonic() < deadline:  # released in the background
            time.sleep(0.02)
        assert not old.is_established


def test_idle_associations_are_released_even_when_no_find_comes_back(two_orthancs) -> None:
    request = SpanRequest(QueryLevel.STUDY, ident(StudyInstanceUID=""))
    with DimseQueryPort(idle_seconds=0.3) as port:
        drain(port.find(request, source(two_orthancs.a), CancelToken()))
        (parked,) = port._pool._open
        deadline = time.monotonic() + 5
        while (port.open_associations or parked.is_established) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert port.open_associations == 0 and not parked.is_established


def test_the_idle_pool_keeps_at_most_max_idle_per_source(two_orthancs) -> None:
    request = SpanRequest(QueryLevel.STUDY, ident(StudyInstanceUID=""))
    src = source(two_orthancs.a)
    with DimseQueryPort(max_idle_per_source=1) as port:
        first, second = port.find(request, src, CancelToken()), port.find(request, src, CancelToken())
        next(first), next(second)  # two associations busy at once
        assert port.open_associations == 2
        drain(first), drain(second)
        deadline = time.monotonic() + 5
        while port.open_associations > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert port.open_associations == 1


class LateReactor:
    """Wraps an association's reactor checkpoint: each time pynetdicom's reactor thread passes its wait() without
    blocking, it is held for `hold` seconds before it polls the DIMSE queue, as when it loses the GIL there in a busy
    worker process (shared/adapters/dimse_reactor.py). Everything else is the real association."""

    def __init__(self, assoc, hold: float) -> None:
        self._inner, self._reactor, self._hold = assoc._reactor_checkpoint, assoc, hold

    def is_set(self) -> bool:
        return self._inner.is_set()

    def set(self) -> None:
        self._inner.set()

    def clear(self) -> None:
        self._inner.clear()

    def wait(self, timeout: float | None = None) -> bool:
        passing = self._inner.is_set()
        result = self._inner.wait(timeout)
        if passing and threading.current_thread() is self._reactor:
            time.sleep(self._hold)
        return result


def test_a_late_reactor_thread_takes_no_response_of_a_pooled_association() -> None:
    """pynetdicom's reactor, paused by send_c_find while returning from its checkpoint, took a C-FIND response off
    the queue and dropped it: an answer one match short with Success, or no final response at all."""
    catalog = generate_catalog(5, studies=10, patients=5, series_per_study=1, instances_per_series=1)
    request = SpanRequest(QueryLevel.STUDY, ident(StudyInstanceUID="", PatientID=""))
    with PacsSimulator("sim", "SIM_LATE", catalog) as sim, DimseQueryPort() as port:
        src = SourceSpec("sim", "dimse", DimseConnection(ae_title="SIM_LATE", host="127.0.0.1", port=sim.dimse_port,
                                                         dimse_timeout=2))
        drain(port.find(request, src, CancelToken()))
        (assoc,) = port._pool._open
        assoc._reactor_checkpoint = LateReactor(assoc, hold=0.03)
        for _ in range(3):
            time.sleep(0.05)  # idle in the pool: the reactor runs (and passes its checkpoint) again
            found = []
            stream = port.find(request, src, CancelToken())
            while True:
                try:
                    found.append(next(stream))
                except StopIteration as stop:
                    summary = stop.value
                    break
                time.sleep(0.01)  # a consumer busy with each match (as a worker writing answers out): responses queue
            assert (len(found), summary) == (10, None)
        assert set(port._pool._open) == {assoc}  # every find ran on the one pooled association


def test_max_results_caps_and_reports_truncation(two_orthancs, port) -> None:
    src = SourceSpec("A", "dimse", source(two_orthancs.a).connection, max_results=2)
    found, summary = drain(port.find(SpanRequest(QueryLevel.STUDY, ident(StudyInstanceUID="")), src, CancelToken()))
    assert len(found) == 2
    assert summary == FindSummary(truncated=True, warning="capped at 2 matches (max_results)")


def test_connection_refused_is_a_quick_transport_error(port) -> None:
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"connection refused 127\.0\.0\.1:\d+"):
        drain(port.find(SpanRequest(QueryLevel.STUDY, ident()), raw_source(free_port()), CancelToken()))
    assert time.monotonic() - started < 2


@pytest.fixture()
def scripted_scp() -> Iterator:
    """Start a pynetdicom Study Root C-FIND SCP with a given handler; yields a starter function."""
    servers = []

    def start(handler=None, require_called_aet: bool = False, ae_title: str = "SCRIPTED"):
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = require_called_aet
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        scp_port = free_port()
        handlers = [(evt.EVT_C_FIND, handler)] if handler else []
        servers.append(ae.start_server(("127.0.0.1", scp_port), block=False, evt_handlers=handlers))
        return scp_port

    yield start
    for server in servers:
        server.shutdown()


def test_association_rejected_names_the_reason(port, scripted_scp) -> None:
    scp_port = scripted_scp(require_called_aet=True)
    with pytest.raises(TransportError, match="association rejected by PACS0: called AE title not recognised"):
        drain(port.find(SpanRequest(QueryLevel.STUDY, ident()), raw_source(scp_port, "WRONG"), CancelToken()))


def test_failure_status_is_query_failed_with_comment(port, scripted_scp) -> None:
    def handler(event):
        status = Dataset()
        status.Status = 0xC001
        status.ErrorComment = "cannot do that"
        yield status, None

    scp_port = scripted_scp(handler)
    with pytest.raises(QueryFailedError, match=r"0xC001.*cannot do that"):
        drain(port.find(SpanRequest(QueryLevel.STUDY, ident()), raw_source(scp_port), CancelToken()))


def test_warning_status_is_a_truncated_summary(port, scripted_scp) -> None:
    def handler(event):
        match = Dataset()
        match.StudyInstanceUID = "1.2.3"
        match.QueryRetrieveLevel = "STUDY"
        yield 0xFF00, match
        yield 0xB000, None

    scp_port = scripted_scp(handler)
    found, summary = drain(port.find(SpanRequest(QueryLevel.STUDY, ident(StudyInstanceUID="")),
                                     raw_source(scp_port), CancelToken()))
    assert [d.StudyInstanceUID for d in found] == ["1.2.3"]
    assert summary.truncated and "0xB000" in summary.warning


def test_cancel_of_a_hung_scp_returns_within_a_second(port, scripted_scp) -> None:
    release = threading.Event()

    def handler(event):
        release.wait(10)  # hung: ignores C-CANCEL until the test ends
        yield 0x0000, None

    scp_port = scripted_scp(handler)
    cancel = CancelToken()
    stream = port.find(SpanRequest(QueryLevel.STUDY, ident()), raw_source(scp_port), cancel)
    threading.Timer(0.3, cancel.cancel).start()
    started = time.monotonic()
    try:
        found, summary = drain(stream)
    finally:
        release.set()
    elapsed = time.monotonic() - started
    assert (found, summary) == ([], None)
    assert elapsed < 1.5, elapsed
    assert port.open_associations == 0


def test_cancel_while_a_raw_tcp_peer_never_answers_the_association(port) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    cancel = CancelToken()
    stream = port.find(SpanRequest(QueryLevel.STUDY, ident()), raw_source(server.getsockname()[1]), cancel)
    threading.Timer(0.3, cancel.cancel).start()
    started = time.monotonic()
    try:
        found, summary = drain(stream)
    finally:
        server.close()
    assert (found, summary) == ([], None)
    assert time.monotonic() - started < 1.5


def test_dimse_timeout_is_a_transport_error(port, scripted_scp) -> None:
    release = threading.Event()

    def handler(event):
        release.wait(10)
        yield 0x0000, None

    scp_port = scripted_scp(handler)
    try:
        with pytest.raises(TransportError, match="no response within 1 s"):
            drain(port.find(SpanRequest(QueryLevel.STUDY, ident()), raw_source(scp_port, dimse_timeout=1),
                            CancelToken()))
    finally:
        release.set()
