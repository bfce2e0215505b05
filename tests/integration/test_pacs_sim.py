"""The PACS simulator against pynetdicom, DCMTK (findscu, movescu, storescp) and httpx, with every fault."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from pydicom import Dataset, dcmread
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage, PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from services.pacs_sim import Faults, PacsSimulator, generate_catalog, instance_dataset
from services.pacs_sim.catalog import SOP_CLASSES
from shared.dicom.dicom_json import DicomJsonError, datasets_from_json
from shared.dicom.levels import QueryLevel
from tests.peers import free_port, require

pytestmark = pytest.mark.integration
STUDY_FIND = StudyRootQueryRetrieveInformationModelFind


def fresh():
    """Every simulator gets its own catalog (C-STORE adds to it); same seed, same UIDs as CATALOG."""
    return generate_catalog(7, patients=4, studies=6, series_per_study=2, instances_per_series=2)


CATALOG = fresh()


def dcmtk(tool: str) -> str:
    """The DCMTK binary (not pynetdicom's same-named console scripts in the venv)."""
    venv_bin = os.path.dirname(sys.executable)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if os.path.realpath(p) != os.path.realpath(venv_bin))
    found = shutil.which(tool, path=path)
    require(found is not None, f"DCMTK {tool} is not installed")
    return found


@pytest.fixture
def pacs():
    with PacsSimulator("A", "PACS_A", fresh(), http_port=0) as sim:
        yield sim


def study_query(**keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientName = ""
    for key, value in keys.items():
        setattr(ds, key, value)
    return ds


def find(port: int, query: Dataset, model=STUDY_FIND, ae_title="PACS_A"):
    ae = AE("TESTSCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established
    try:
        return [(int(s.Status) if "Status" in s else None, ds) for s, ds in assoc.send_c_find(query, model)]
    finally:
        if assoc.is_established:
            assoc.release()


def test_start_stop_is_fast_and_releases_ports():
    port = free_port()
    started = time.monotonic()
    with PacsSimulator("A", "PACS_A", fresh(), dimse_port=port, http_port=0) as sim:
        assert sim.dimse_port == port and sim.http_url.startswith("http://127.0.0.1:")
    assert time.monotonic() - started < 1.5
    with PacsSimulator("A", "PACS_A", fresh(), dimse_port=port):
        pass  # the port is free again


def test_cfind_study_level_with_pynetdicom(pacs):
    results = find(pacs.dimse_port, study_query(ModalitiesInStudy="", NumberOfStudyRelatedInstances=""))
    pending = [ds for status, ds in results if status == 0xFF00]
    assert results[-1][0] == 0x0000 and len(pending) == 6
    assert all(int(ds.NumberOfStudyRelatedInstances) == 4 for ds in pending)
    non_ascii = [ds for ds in pending if not str(ds.PatientName).isascii()]
    assert all(ds.SpecificCharacterSet == "ISO_IR 192" for ds in non_ascii)
    uid = pending[0].StudyInstanceUID
    one = find(pacs.dimse_port, study_query(StudyInstanceUID=uid))
    assert [ds.StudyInstanceUID for s, ds in one if s == 0xFF00] == [uid]


def test_cfind_patient_root_and_study_root_levels(pacs):
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = ""
    query.NumberOfPatientRelatedStudies = ""
    results = find(pacs.dimse_port, query, PatientRootQueryRetrieveInformationModelFind)
    assert len([r for r in results if r[0] == 0xFF00]) == 4
    assert find(pacs.dimse_port, query, STUDY_FIND)[-1][0] == 0xA900  # no PATIENT level in Study Root


def test_findscu_study_and_image_level(pacs, tmp_path):
    findscu = dcmtk("findscu")
    base = [findscu, "-S", "-aec", "PACS_A", "127.0.0.1", str(pacs.dimse_port), "-X", "-od"]
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    subprocess.run(base + [str(study_dir), "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=*",
                           "-k", "StudyInstanceUID", "-k", "StudyDate=20000101-"], check=True, timeout=20,
                   capture_output=True)
    studies = [dcmread(p) for p in sorted(study_dir.glob("rsp*.dcm"))]
    assert len(studies) == 6
    uid = studies[0].StudyInstanceUID
    image_dir = tmp_path / "image"
    image_dir.mkdir()
    subprocess.run(base + [str(image_dir), "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={uid}",
                           "-k", "SOPInstanceUID", "-k", "InstanceNumber"], check=True, timeout=20,
                   capture_output=True)
    assert len(list(image_dir.glob("rsp*.dcm"))) == 4


def test_movescu_to_storescp(pacs, tmp_path):
    storescp, movescu = dcmtk("storescp"), dcmtk("movescu")
    port = free_port()
    receiver = subprocess.Popen([storescp, "-aet", "WS", "-od", str(tmp_path), str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pacs.move_destinations["WS"] = ("127.0.0.1", port)
        uid = CATALOG.study_uids()[0]
        time.sleep(0.2)
        done = subprocess.run([movescu, "-S", "-aec", "PACS_A", "-aem", "WS", "127.0.0.1", str(pacs.dimse_port),
                               "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}"],
                              timeout=20, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        files = [dcmread(p) for p in tmp_path.iterdir()]
        assert len(files) == 4 and {f.StudyInstanceUID for f in files} == {uid}
        assert files[0].Rows == 16 and len(files[0].PixelData) == 16 * 16 * 2
    finally:
        receiver.terminate()
        receiver.wait(timeout=5)


def test_cget_and_cstore_with_pynetdicom(pacs):
    received: list[Dataset] = []
    ae = AE("TESTSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for uid in sorted(set(SOP_CLASSES.values())):
        ae.add_requested_context(uid)
        roles.append(build_role(uid, scp_role=True))
    handlers = [(evt.EVT_C_STORE, lambda event: received.append(event.dataset) or 0x0000)]
    assoc = ae.associate("127.0.0.1", pacs.dimse_port, ae_title="PACS_A", ext_neg=roles, evt_handlers=handlers)
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    series = CATALOG.records(QueryLevel.SERIES)[0]
    query.StudyInstanceUID = series.StudyInstanceUID
    query.SeriesInstanceUID = series.SeriesInstanceUID
    statuses = [int(s.Status) for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()
    assert statuses[-1] == 0x0000 and len(received) == 2

    new = instance_dataset(CATALOG.instances()[0])
    new.SOPInstanceUID = "1.2.826.0.1.3680043.99.1"
    new.StudyInstanceUID = "1.2.826.0.1.3680043.99"
    new.SOPClassUID = CTImageStorage
    new.file_meta.MediaStorageSOPInstanceUID = new.SOPInstanceUID
    new.file_meta.MediaStorageSOPClassUID = CTImageStorage
    store = AE("TESTSCU")
    store.add_requested_context(CTImageStorage)
    assoc = store.associate("127.0.0.1", pacs.dimse_port, ae_title="PACS_A")
    assert int(assoc.send_c_store(new).Status) == 0
    assoc.release()
    found = find(pacs.dimse_port, study_query(StudyInstanceUID=new.StudyInstanceUID))
    assert [s for s, _ in found] == [0xFF00, 0x0000]


def test_qido_and_wado(pacs):
    with httpx.Client(base_url=pacs.http_url, timeout=10) as http:
        studies = datasets_from_json(http.get("/studies").content)
        assert len(studies) == 6 and all("ModalitiesInStudy" in s for s in studies)
        uid = studies[0].StudyInstanceUID
        series = http.get(f"/studies/{uid}/series", params={"includefield": "SeriesDescription"}).json()
        assert len(series) == 2 and all("0008103E" in s for s in series)
        page = http.get("/instances", params={"limit": "3", "offset": "2"}).json()
        assert len(page) == 3
        by_tag = http.get("/studies", params={"0020000D": uid}).json()
        assert len(by_tag) == 1
        assert http.get("/studies", params={"PatientName": "ZZZ*"}).json() == []  # 200 + [] (see web.py)
        assert http.get("/studies", params={"NoSuchKeyword": "1"}).status_code == 400
        assert http.get("/studies", params={"StudyDate": "2024-01"}).status_code == 400
        wado = http.get(f"/studies/{uid}")
        assert wado.status_code == 200 and 'type="application/dicom"' in wado.headers["content-type"]
        assert wado.content.count(b"Content-Type: application/dicom") == 4
        metadata = http.get(f"/studies/{uid}/metadata").json()
        assert len(metadata) == 4 and "7FE00010" not in metadata[0]
        assert http.get("/studies/1.2.3/metadata").status_code == 404


def test_fault_latency():
    with PacsSimulator("A", "PACS_A", fresh(), http_port=0, faults=Faults(latency=0.4)) as sim:
        started = time.monotonic()
        assert find(sim.dimse_port, study_query())[-1][0] == 0
        assert time.monotonic() - started >= 0.4
        started = time.monotonic()
        assert httpx.get(sim.http_url + "/studies").status_code == 200
        assert time.monotonic() - started >= 0.4


def test_fault_failure_status_and_http_500():
    with PacsSimulator("A", "PACS_A", fresh(), http_port=0, faults=Faults(failure_rate=1.0)) as sim:
        assert find(sim.dimse_port, study_query()) == [(0xC000, None)]
        assert httpx.get(sim.http_url + "/studies").status_code == 500


def test_failure_rate_is_seeded():
    def outcomes(seed: int) -> list[int]:
        with PacsSimulator("A", "PACS_A", fresh(), faults=Faults(failure_rate=0.5, seed=seed)) as sim:
            return [find(sim.dimse_port, study_query())[-1][0] for _ in range(8)]
    first = outcomes(3)
    assert first == outcomes(3) and set(first) == {0x0000, 0xC000}


def test_fault_abort():
    with PacsSimulator("A", "PACS_A", fresh(), http_port=0,
                       faults=Faults(failure_rate=1.0, failure_mode="abort")) as sim:
        ae = AE("TESTSCU")
        ae.add_requested_context(STUDY_FIND)
        assoc = ae.associate("127.0.0.1", sim.dimse_port, ae_title="PACS_A")
        responses = list(assoc.send_c_find(study_query(), STUDY_FIND))
        assert all(ds is None for _, ds in responses)
        deadline = time.monotonic() + 2
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not assoc.is_established
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(sim.http_url + "/studies")


def test_fault_hang_until_cancel():
    with PacsSimulator("A", "PACS_A", fresh(), http_port=0, faults=Faults(hang=True)) as sim:
        ae = AE("TESTSCU")
        ae.add_requested_context(STUDY_FIND)
        assoc = ae.associate("127.0.0.1", sim.dimse_port, ae_title="PACS_A")
        context_id = assoc.accepted_contexts[0].context_id
        threading.Timer(0.3, lambda: assoc.send_c_cancel(1, context_id)).start()
        started = time.monotonic()
        statuses = [int(s.Status) for s, _ in assoc.send_c_find(study_query(), STUDY_FIND, msg_id=1)]
        assert statuses == [0xFE00] and time.monotonic() - started >= 0.3
        assoc.release()
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(sim.http_url + "/studies", timeout=0.3)
    # stop() returned although a QIDO request was hanging: the hang ends with the simulator


def test_fault_result_cap():
    with PacsSimulator("A", "PACS_A", fresh(), http_port=0, faults=Faults(result_cap=2)) as sim:
        assert [s for s, _ in find(sim.dimse_port, study_query())] == [0xFF00, 0xFF00, 0x0000]
        response = httpx.get(sim.http_url + "/studies")
        assert len(response.json()) == 2
        assert response.headers["Warning"].startswith("299 ") and "maximum supported" in response.headers["Warning"]
    with PacsSimulator("A", "PACS_A", fresh(), faults=Faults(result_cap=2, result_cap_status=0xB000)) as sim:
        assert find(sim.dimse_port, study_query())[-1][0] == 0xB000


def test_fault_malformed():
    with PacsSimulator("A", "PACS_A", fresh(), http_port=0, faults=Faults(malformed=True)) as sim:
        results = find(sim.dimse_port, study_query())
        # (pynetdicom 3 yields (status, None) twice per undecodable identifier, so only check the kinds)
        assert {s for s, _ in results} == {0xFF00, 0x0000} and all(ds is None for _, ds in results)
        with pytest.raises(DicomJsonError):
            datasets_from_json(httpx.get(sim.http_url + "/studies").content)


def test_cli_module_runs(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services.pacs_sim", "--port", str(port), "--studies", "2"],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert "serving" in proc.stdout.readline()
        assert find(port, study_query(), ae_title="PACS_SIM")[-1][0] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=5)
