"""DimseRetrievePort (C-MOVE / C-GET SCU) and DimseStorePort (C-STORE SCU sessions) against real peers: the PACS
simulator, a real Orthanc, DCMTK storescp and small pynetdicom SCPs scripted here."""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage,
)
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (
    CTImageStorage, MRImageStorage, OphthalmicPhotography8BitImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
)

from services.pacs_sim import Faults, PacsSimulator, generate_catalog
from shared.adapters.dimse_retrieve import DimseRetrievePort
from shared.adapters.dimse_store import NO_STATUS, SOP_CLASS_NOT_SUPPORTED, DimseStorePort
from shared.connections import DimseConnection
from shared.dicom.levels import QueryLevel
from shared.retrieval.model import (
    CANCEL, MOVE_DESTINATION_UNKNOWN, SUB_OPERATIONS_WITH_FAILURES, SUCCESS, Destination, RetrieveOutcome,
    RetrieveRequest,
)
from shared.spanning.model import SourceSpec
from shared.spanning.ports import CancelToken, QueryFailedError, TransportError
from tests.peers import free_port, require
from tests.peers.orthanc import OrthancPeer, orthanc_available
from tests.peers.streams import drain
from tests.peers.studies import StudySpec, build_instance, build_instances, study

pytestmark = pytest.mark.integration
UNABLE_TO_PROCESS = 0xC000
BIG = StudySpec(90, "PAT090", "Big^Study", "ISO_IR 6", "20240101", "CT", "ACC090", (12,))


# -- helpers -------------------------------------------------------------------------------------------------------


class Receiver:
    """A pynetdicom storage SCP that records what it receives (optionally slowly, or refusing with `status`)."""

    def __init__(self, ae_title: str = "DEST", contexts: list[tuple[str, list[str]]] | None = None) -> None:
        self.ae_title, self.port = ae_title, free_port()
        self.received: list[Dataset] = []
        self.connections = 0
        self.delay, self.status = 0.0, SUCCESS
        self.ae = AE(ae_title)
        for uid, syntaxes in contexts or [(cx.abstract_syntax, None) for cx in StoragePresentationContexts]:
            self.ae.add_supported_context(uid, syntaxes)
        self.server = None

    def start(self) -> "Receiver":
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, self._on_open)])
        return self

    def stop(self) -> None:
        self.server.shutdown()

    def reset(self) -> None:
        self.received.clear()
        self.connections, self.delay, self.status = 0, 0.0, SUCCESS

    def _on_open(self, event: evt.Event) -> None:
        self.connections += 1

    def _on_store(self, event: evt.Event) -> int:
        time.sleep(self.delay)
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        self.received.append(dataset)
        return self.status


class CancelAfterRequest(CancelToken):
    """Cancels itself `delay` seconds after the port hooks its C-CANCEL sender, i.e. once the C-MOVE/C-GET
    request is on the wire (the first hook guards association set-up), however slow the machine."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay, self.hooks = delay, 0

    def on_cancel(self, callback):
        self.hooks += 1
        if self.hooks == 2:
            threading.Timer(self.delay, self.cancel).start()
        return super().on_cancel(callback)


def source(port: int, ae_title: str, name: str = "SRC", **conn: object) -> SourceSpec:
    return SourceSpec(name, "dimse", DimseConnection(ae_title=ae_title, host="127.0.0.1", port=port,
                                                     calling_ae_title="AXIOMTEST", **conn))


def study_request(uid: str) -> RetrieveRequest:
    identifier = Dataset()
    identifier.StudyInstanceUID = uid
    return RetrieveRequest(QueryLevel.STUDY, identifier)


def instance(spec: StudySpec, number: int, *, sop_class: str = SecondaryCaptureImageStorage,
             syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """A test instance of `spec` with another SOP class and/or transfer syntax (JPEG: a fake encapsulated frame)."""
    ds = build_instance(spec, 1, number)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax == JPEGBaseline8Bit:
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    elif syntax == ImplicitVRLittleEndian:
        ds.set_original_encoding(True, True, ds.get("SpecificCharacterSet"))
    return ds


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    peer = Receiver().start()
    yield peer
    peer.stop()


@pytest.fixture()
def dest(receiver: Receiver) -> Receiver:
    receiver.reset()
    return receiver


@pytest.fixture()
def pacs() -> Iterator[PacsSimulator]:
    catalog = generate_catalog(7, patients=2, studies=2, series_per_study=2, instances_per_series=2)
    with PacsSimulator("A", "PACS_A", catalog) as sim:
        yield sim


@pytest.fixture(scope="module")
def orthanc(receiver: Receiver) -> Iterator[OrthancPeer]:
    require(orthanc_available(), "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    peer = OrthancPeer("RETRIEVE", "ORTHANCR", free_port(), free_port(), tempfile.mkdtemp(prefix="axiom-orthanc-"),
                       modalities={"DEST": ("DEST", "127.0.0.1", receiver.port)})
    peer.start()
    try:
        peer.load(build_instances([1, 2]) + [build_instance(BIG, 1, n) for n in range(1, 13)])
        yield peer
    finally:
        peer.stop()


@pytest.fixture()
def port() -> DimseRetrievePort:
    return DimseRetrievePort(cancel_grace_seconds=0.5)


# -- the PACS simulator ------------------------------------------------------------------------------------------


def test_get_from_simulator_into_sink(pacs, port) -> None:
    uid = pacs.catalog.study_uids()[0]
    expected = {r.SOPInstanceUID for r in pacs.catalog.records(QueryLevel.IMAGE) if r.StudyInstanceUID == uid}
    received: list[Dataset] = []
    progress, outcome = drain(port.get(source(pacs.dimse_port, "PACS_A"), study_request(uid),
                                       lambda ds: received.append(ds) or SUCCESS, CancelToken()))
    assert outcome == RetrieveOutcome(SUCCESS, completed=4)
    assert {ds.SOPInstanceUID for ds in received} == expected
    assert all("TransferSyntaxUID" in ds.file_meta and ds.Rows == 16 for ds in received)
    assert [p.completed for p in progress] == [1, 2, 3, 4] and progress[-1].remaining == 0


def test_get_with_refusing_sink_reports_failed_uids(pacs, port) -> None:
    uid = pacs.catalog.study_uids()[0]
    expected = {r.SOPInstanceUID for r in pacs.catalog.records(QueryLevel.IMAGE) if r.StudyInstanceUID == uid}
    _, outcome = drain(port.get(source(pacs.dimse_port, "PACS_A"), study_request(uid), lambda ds: 0xA700,
                                CancelToken()))
    assert outcome.failed == 4 and outcome.completed == 0 and not outcome.ok
    assert set(outcome.failed_uids) == expected  # pynetdicom's SCP sends Failed SOP Instance UID List


def test_concurrent_gets_share_one_port(pacs, port) -> None:
    def get(uid: str) -> tuple[int, int]:
        received: list[Dataset] = []
        _, outcome = drain(port.get(source(pacs.dimse_port, "PACS_A"), study_request(uid),
                                    lambda ds: received.append(ds) or SUCCESS, CancelToken()))
        return outcome.completed, len({ds.StudyInstanceUID for ds in received if ds.StudyInstanceUID == uid})

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(get, pacs.catalog.study_uids() * 2)) == [(4, 1)] * 4


def test_move_from_simulator_to_receiver(pacs, port, dest) -> None:
    pacs.move_destinations["DEST"] = ("127.0.0.1", dest.port)
    uid = pacs.catalog.study_uids()[1]
    progress, outcome = drain(port.move(source(pacs.dimse_port, "PACS_A"), study_request(uid), "DEST",
                                        CancelToken()))
    assert outcome == RetrieveOutcome(SUCCESS, completed=4)
    assert len(progress) == 4 and {ds.StudyInstanceUID for ds in dest.received} == {uid}
    assert len(dest.received) == 4


def test_move_to_unknown_destination_is_an_outcome(pacs, port) -> None:
    _, outcome = drain(port.move(source(pacs.dimse_port, "PACS_A"), study_request(pacs.catalog.study_uids()[0]),
                                 "NOWHERE", CancelToken()))
    assert outcome.status == MOVE_DESTINATION_UNKNOWN and outcome.completed == 0


def test_cancel_of_a_hanging_get_sends_c_cancel() -> None:
    catalog = generate_catalog(7, patients=1, studies=1, series_per_study=1, instances_per_series=1)
    with PacsSimulator("A", "PACS_A", catalog, faults=Faults(hang=True)) as sim:
        cancel = CancelAfterRequest(0.2)
        started = time.monotonic()
        _, outcome = drain(DimseRetrievePort(cancel_grace_seconds=5).get(
            source(sim.dimse_port, "PACS_A"), study_request(catalog.study_uids()[0]), lambda ds: 0, cancel))
        assert outcome.status == CANCEL and outcome.error_comment is None  # answered, not aborted
        assert time.monotonic() - started < 0.2 + 1.0


def test_cancel_ignored_by_the_source_aborts_after_grace(port) -> None:
    release = threading.Event()

    def on_get(event: evt.Event):
        yield 1
        release.wait(5)  # never looks at event.is_cancelled
        yield SUCCESS, None

    ae = AE("DEAF")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_GET, on_get)])
    try:
        cancel = CancelAfterRequest(0.2)
        started = time.monotonic()
        _, outcome = drain(port.get(source(server.server_address[1], "DEAF"), study_request("1.2.3"),
                                    lambda ds: 0, cancel))
        assert outcome.status == CANCEL and "aborted" in outcome.error_comment
        assert time.monotonic() - started < 0.2 + 0.5 + 1.0
    finally:
        release.set()
        server.shutdown()


def test_transport_and_negotiation_errors(port, dest) -> None:
    with pytest.raises(TransportError, match="connection refused"):
        drain(port.move(source(free_port(), "NOBODY"), study_request("1.2.3"), "DEST", CancelToken()))
    strict = AE("STRICT")
    strict.require_called_aet = True
    strict.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    server = strict.start_server(("127.0.0.1", 0), block=False)
    try:
        with pytest.raises(TransportError, match="rejected.*called AE title"):
            drain(port.get(source(server.server_address[1], "WRONG"), study_request("1.2.3"), lambda ds: 0,
                           CancelToken()))
    finally:
        server.shutdown()
    with pytest.raises(QueryFailedError, match="did not accept the C-MOVE SOP class"):
        drain(port.move(source(dest.port, "DEST"), study_request("1.2.3"), "DEST", CancelToken()))
    assert dest.connections == 1  # the refused request went nowhere else


# -- a real Orthanc ------------------------------------------------------------------------------------------------


def test_get_study_from_orthanc(orthanc, port) -> None:
    spec = study(1)
    received: list[Dataset] = []
    progress, outcome = drain(port.get(source(orthanc.dicom_port, orthanc.aet), study_request(spec.study_uid),
                                       lambda ds: received.append(ds) or SUCCESS, CancelToken()))
    assert outcome == RetrieveOutcome(SUCCESS, completed=3)
    assert {ds.SOPInstanceUID for ds in received} == {d.SOPInstanceUID for d in build_instances([1])}
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in received} == {ExplicitVRLittleEndian}  # as stored
    assert progress and progress[-1].remaining == 0


def test_get_from_orthanc_with_one_refused_instance(orthanc, port) -> None:
    refused = study(1).instance_uid(2, 1)
    _, outcome = drain(port.get(source(orthanc.dicom_port, orthanc.aet), study_request(study(1).study_uid),
                                lambda ds: 0xA700 if ds.SOPInstanceUID == refused else SUCCESS, CancelToken()))
    assert (outcome.status, outcome.completed, outcome.failed) == (SUB_OPERATIONS_WITH_FAILURES, 2, 1)
    assert set(outcome.failed_uids) <= {refused}  # Orthanc 1.10 sends no Failed SOP Instance UID List


def test_move_from_orthanc_with_counts(orthanc, port, dest) -> None:
    spec = study(1)
    progress, outcome = drain(port.move(source(orthanc.dicom_port, orthanc.aet), study_request(spec.study_uid),
                                        "DEST", CancelToken()))
    assert outcome == RetrieveOutcome(SUCCESS, completed=3)
    assert [p.completed for p in progress] == [1, 2]  # the last sub-operation is reported by the final response
    assert {ds.SOPInstanceUID for ds in dest.received} == {d.SOPInstanceUID for d in build_instances([1])}


def test_move_from_orthanc_to_unknown_destination(orthanc, port) -> None:
    _, outcome = drain(port.move(source(orthanc.dicom_port, orthanc.aet), study_request(study(2).study_uid),
                                 "NOWHERE", CancelToken()))
    # PS3.4 says 0xA801; Orthanc 1.10 answers 0xC000 "Unable to process" (an unknown modality is an exception)
    assert outcome.status in (MOVE_DESTINATION_UNKNOWN, UNABLE_TO_PROCESS) and outcome.completed == 0


def test_cancel_of_a_move_from_orthanc_ends_promptly(orthanc, port, dest) -> None:
    dest.delay = 0.25
    cancel = CancelToken()
    stream = port.move(source(orthanc.dicom_port, orthanc.aet), study_request(BIG.study_uid), "DEST", cancel)
    first = next(stream)
    assert first.completed == 1 and first.remaining == 11
    cancel.cancel()
    started = time.monotonic()
    _, outcome = drain(stream)
    assert time.monotonic() - started < 1.0
    assert outcome.status == CANCEL and outcome.completed < 12 and len(dest.received) < 12


def test_store_session_to_orthanc(orthanc) -> None:
    spec = StudySpec(91, "PAT091", "Store^Test", "ISO_IR 6", "20240202", "CT", "ACC091", (3,))
    datasets = [instance(spec, 1), instance(spec, 2, sop_class=CTImageStorage), instance(spec, 3)]
    before = orthanc.statistics()["CountInstances"]
    store = DimseStorePort(ae_title="AXIOMTEST")
    with store.open(Destination(orthanc.aet, "127.0.0.1", orthanc.dicom_port), CancelToken()) as session:
        assert [session.send(ds) for ds in datasets] == [SUCCESS] * 3
        assert session.associations_opened == 1
    assert orthanc.statistics()["CountInstances"] == before + 3


# -- store sessions ----------------------------------------------------------------------------------------------


def test_store_session_when_destination_is_down() -> None:
    session = DimseStorePort().open(Destination("DOWN", "127.0.0.1", free_port()), CancelToken())
    started = time.monotonic()
    assert session.send(instance(BIG, 1)) == NO_STATUS < 0
    assert "connection refused" in session.last_error and time.monotonic() - started < 2
    session.close()
    assert session.send(instance(BIG, 2)) == NO_STATUS


def test_store_session_reencodes_and_renegotiates_per_syntax() -> None:
    peer = Receiver("PICKY", contexts=[
        (CTImageStorage, [ExplicitVRLittleEndian]),
        (SecondaryCaptureImageStorage, [ExplicitVRLittleEndian, JPEGBaseline8Bit]),
        (OphthalmicPhotography8BitImageStorage, [ExplicitVRLittleEndian]),
    ]).start()
    try:
        with DimseStorePort().open(Destination("PICKY", "127.0.0.1", peer.port), CancelToken()) as session:
            assert session.send(instance(BIG, 1, sop_class=CTImageStorage, syntax=ImplicitVRLittleEndian)) == 0
            assert session.send(instance(BIG, 2, syntax=JPEGBaseline8Bit)) == 0  # renegotiated (2nd association)
            assert session.send(instance(BIG, 3, sop_class=OphthalmicPhotography8BitImageStorage)) == 0  # 3rd
            assert session.send(instance(BIG, 4, syntax=JPEGBaseline8Bit)) == 0  # still proposed in the 3rd
            assert session.send(instance(BIG, 5, sop_class=MRImageStorage)) == SOP_CLASS_NOT_SUPPORTED  # 4th
            assert session.send(instance(BIG, 6, sop_class=MRImageStorage)) == SOP_CLASS_NOT_SUPPORTED  # known
            assert session.send(instance(BIG, 7, sop_class=CTImageStorage)) == 0
            assert session.associations_opened == 4 and "MR Image Storage" in session.last_error
        syntaxes = [str(ds.file_meta.TransferSyntaxUID) for ds in peer.received]
        assert syntaxes == [ExplicitVRLittleEndian, JPEGBaseline8Bit, ExplicitVRLittleEndian, JPEGBaseline8Bit,
                            ExplicitVRLittleEndian]  # the Implicit VR CT instance was re-encoded
        assert peer.connections == 4
    finally:
        peer.stop()


def test_store_session_reconnects_once_after_the_association_is_lost() -> None:
    peer = Receiver("FLAKY").start()
    cancel = CancelToken()
    try:
        session = DimseStorePort().open(Destination("FLAKY", "127.0.0.1", peer.port), cancel)
        assert session.send(instance(BIG, 1)) == SUCCESS
        for assoc in list(peer.server.active_associations):
            assoc.abort()
        time.sleep(0.1)
        assert session.send(instance(BIG, 2)) == SUCCESS and peer.connections == 2
        peer.status = 0xA700
        assert session.send(instance(BIG, 3)) == 0xA700  # a refusal is a status, not a lost association
        cancel.cancel()
        assert session.send(instance(BIG, 4)) == NO_STATUS and session.last_error == "cancelled"
        session.close()
    finally:
        peer.stop()


def test_store_session_to_dcmtk_storescp(tmp_path: Path) -> None:
    storescp = "/usr/bin/storescp"
    require(Path(storescp).exists(), "DCMTK storescp is not installed (apt-get install dcmtk)")
    port = free_port()
    process = subprocess.Popen([storescp, "-aet", "STORESCP", "-od", str(tmp_path), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        session = DimseStorePort().open(Destination("STORESCP", "127.0.0.1", port), CancelToken())
        deadline = time.monotonic() + 5
        status = session.send(instance(BIG, 1, sop_class=CTImageStorage))
        while status == NO_STATUS and time.monotonic() < deadline:  # storescp still starting
            time.sleep(0.05)
            status = session.send(instance(BIG, 1, sop_class=CTImageStorage))
        assert status == SUCCESS
        assert session.send(instance(BIG, 2, syntax=ImplicitVRLittleEndian)) == SUCCESS
        # storescp accepts uncompressed syntaxes only (without +xa): a JPEG instance has nowhere to go
        assert session.send(instance(BIG, 3, syntax=JPEGBaseline8Bit)) == SOP_CLASS_NOT_SUPPORTED
        assert session.send(instance(BIG, 4)) == SUCCESS  # on the renegotiated association
        assert session.associations_opened == 2
        session.close()
        assert len(list(tmp_path.iterdir())) == 3
    finally:
        process.terminate()
        process.wait(timeout=5)
