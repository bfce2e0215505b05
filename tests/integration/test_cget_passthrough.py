"""C-GET from a real Orthanc: each instance reaches the sink carrying the bytes Orthanc sent (its data set exactly as
Orthanc stores it, behind pynetdicom's file meta), and the spool passes those bytes on unchanged: nothing on the
way encodes an instance again."""

from __future__ import annotations

import tempfile
from typing import Iterator

import httpx
import pytest
from pydicom import Dataset

from shared.adapters.dimse_retrieve import DimseRetrievePort
from shared.connections import DimseConnection
from shared.dicom.levels import QueryLevel
from shared.retrieval.model import SUCCESS, RetrieveOutcome, RetrieveRequest
from shared.retrieval.spool import Spool, SpoolBudget, instance_bytes
from shared.spanning.model import SourceSpec
from shared.spanning.ports import CancelToken
from tests.peers import free_port, require
from tests.peers.orthanc import OrthancPeer, orthanc_available
from tests.peers.studies import build_instances, study

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def orthanc() -> Iterator[OrthancPeer]:
    require(orthanc_available(), "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    peer = OrthancPeer("PASSTHRU", "ORTHANCP", free_port(), free_port(), tempfile.mkdtemp(prefix="axiom-orthanc-"))
    peer.start()
    try:
        peer.load(build_instances([1]))
        yield peer
    finally:
        peer.stop()


def data_set_part(part10: bytes) -> bytes:
    """A PS3.10 file without its preamble and file meta group (PS3.10 7.1: the group length says how long)."""
    return part10[144 + int.from_bytes(part10[140:144], "little"):]


def stored_files(peer: OrthancPeer) -> dict[str, bytes]:
    files = {}
    with httpx.Client(base_url=peer.base_url, timeout=10) as client:
        for orthanc_id in client.get("/instances").json():
            uid = client.get(f"/instances/{orthanc_id}/simplified-tags").json()["SOPInstanceUID"]
            files[uid] = client.get(f"/instances/{orthanc_id}/file").content
    return files


def test_cget_instances_carry_the_bytes_orthanc_sent_through_the_spool(orthanc, tmp_path, monkeypatch) -> None:
    def no_re_encoding(dataset: Dataset) -> bytes:
        raise AssertionError(f"{dataset.SOPInstanceUID} was encoded again instead of passed on")

    monkeypatch.setattr("shared.retrieval.spool.encode_instance", no_re_encoding)
    identifier = Dataset()
    identifier.StudyInstanceUID = study(1).study_uid
    source = SourceSpec("ORTHANC", "dimse", DimseConnection(ae_title=orthanc.aet, host="127.0.0.1",
                                                            port=orthanc.dicom_port, calling_ae_title="AXIOMTEST"))
    spool = Spool(tmp_path / "job", SpoolBudget(10**8))
    received: list[Dataset] = []

    def sink(dataset: Dataset) -> int:
        received.append(dataset)
        return SUCCESS if spool.put(dataset) else 0xA700

    stream = DimseRetrievePort().get(source, RetrieveRequest(QueryLevel.STUDY, identifier), sink, CancelToken())
    try:
        while True:
            next(stream)
    except StopIteration as stop:
        outcome: RetrieveOutcome = stop.value
    files = stored_files(orthanc)
    assert outcome == RetrieveOutcome(SUCCESS, completed=len(files)) and len(files) > 1
    for dataset in received:
        sent = instance_bytes(dataset)
        assert data_set_part(sent) == data_set_part(files[str(dataset.SOPInstanceUID)])
        meta = sent[132:len(sent) - len(data_set_part(sent))]
        assert sent[128:132] == b"DICM" and str(dataset.file_meta.TransferSyntaxUID).encode() in meta
    spool.finish()
    spooled = []
    while (entry := spool.take()) is not None:  # one handed over in memory, the others read back from disk
        spooled.append(instance_bytes(spool.load(entry)))
        spool.release(entry)
    assert spooled == [instance_bytes(dataset) for dataset in received]
    spool.remove()
