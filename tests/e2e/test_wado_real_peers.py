"""WADO-RS spanning retrieve against real archives, through the real dicomweb-client library.

One stack per module: Orthanc A reached over DICOMweb only (QIDO-RS/WADO-RS), Orthanc B over DIMSE only (A holds
studies 1-5, B studies 3, 4 and 6: tests.peers.studies), and the API served by uvicorn on a migrated SQLite
database with its storage AE (AXIOM_API_STORE_PORT), which Orthanc B knows as a move destination. Two configs:
`web-get` (A first, then B with C-GET) and `web-move` (A first, then B without C-GET: C-MOVE to the API's AE).

Byte-for-byte: an instance from A (WADO-RS) is the very PS3.10 file Orthanc stores (GET /instances/{id}/file); an
instance from B (C-GET, C-MOVE) has Orthanc's dataset bytes after the file meta group — the file meta group itself
is written by the receiving side (pynetdicom's Implementation Class UID / Version Name), as for any C-STORE.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from typing import Iterator

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from services.api.app import create_app
from shared.dicom.multipart import boundary_from_content_type, iter_multipart
from tests.integration.api_fixtures import api_settings, migrated_sqlite, provision, served
from tests.peers import free_port, require
from tests.peers.orthanc import OrthancPeer, orthanc_available
from tests.peers.studies import ARCHIVE_A, ARCHIVE_B, build_instances, study

pytestmark = pytest.mark.integration

PASSWORD = "alice-password-1"
WADO, QIDO = "/api/v1/spanner/wado", "/api/v1/spanner/qido"
API_AE = "AXIOM_API"
ONLY_A, ONLY_B, ON_BOTH = 1, 6, 3


@dataclass
class Stack:
    a: OrthancPeer
    b: OrthancPeer
    base: str
    headers: dict[str, str]
    ids: dict[str, int]

    def client(self, config: str) -> tuple[DICOMwebClient, dict[str, str]]:
        """dicomweb-client with the spanning QIDO-RS and WADO-RS roots (as an OHIF data source would have them)."""
        client = DICOMwebClient(url=self.base, qido_url_prefix=QIDO.strip("/"), wado_url_prefix=WADO.strip("/"),
                                headers=self.headers)
        return client, {"spanner_config_id": str(self.ids[config])}


def _database(tmp, a: OrthancPeer, b: OrthancPeer):
    url, engine, factory = migrated_sqlite(tmp)
    b_dimse = {"ae_title": b.aet, "host": "127.0.0.1", "port": b.dicom_port}
    sources = {"orthanc-a": ("dicomweb", {"base_url": a.dicomweb_url}), "orthanc-b": ("dimse", b_dimse),
               "orthanc-b-move": ("dimse", {**b_dimse, "supports_cget": False})}
    configs = {name: ([("orthanc-a", 1), (second, 2)], {})
               for name, second in (("web-get", "orthanc-b"), ("web-move", "orthanc-b-move"))}
    return url, engine, provision(factory, sources=sources, configs=configs, users={"alice": PASSWORD})


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    require(orthanc_available(), "Orthanc with the DICOMweb plugin is not installed (apt-get install orthanc "
                                 "orthanc-dicomweb)")
    tmp = tmp_path_factory.mktemp("wado-peers")
    store_port, api_port = free_port(), free_port()
    a = OrthancPeer("ORTHANC_A", "ORTHANCA", free_port(), free_port(), tmp)
    b = OrthancPeer("ORTHANC_B", "ORTHANCB", free_port(), free_port(), tmp,
                    modalities={API_AE: (API_AE, "127.0.0.1", store_port)})
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda pair: pair[0].start().load(build_instances(pair[1])), ((a, ARCHIVE_A), (b, ARCHIVE_B))))
    url, engine, ids = _database(tmp, a, b)
    app = create_app(api_settings(url, AXIOM_API_HOST="127.0.0.1", AXIOM_API_STORE_PORT=store_port,
                                  AXIOM_API_STORE_AE_TITLE=API_AE))
    try:
        with served(app, api_port) as base:
            token = httpx.post(f"{base}/api/v1/auth/token", data={"username": "alice", "password": PASSWORD}).json()
            yield Stack(a, b, base, {"Authorization": f"Bearer {token['access_token']}"}, ids)
    finally:
        engine.dispose()
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda peer: peer.stop(), (a, b)))


def orthanc_file(peer: OrthancPeer, sop_uid: str) -> bytes:
    """The PS3.10 file the archive stores for the instance (Orthanc REST: /tools/lookup, /instances/{id}/file)."""
    found = httpx.post(f"{peer.base_url}/tools/lookup", content=sop_uid).json()
    instance = next(item["ID"] for item in found if item["Type"] == "Instance")
    return httpx.get(f"{peer.base_url}/instances/{instance}/file").content


def raw_parts(stack: Stack, config: str, path: str) -> dict[str, bytes]:
    """The instances of a WADO-RS answer as the API sent them, by SOP Instance UID."""
    answer = httpx.get(f"{stack.base}{WADO}{path}", params={"spanner_config_id": stack.ids[config]},
                       headers=stack.headers, timeout=30)
    assert answer.status_code == 200, answer.text
    boundary = boundary_from_content_type(answer.headers["content-type"])
    return {dcmread(BytesIO(p.content)).SOPInstanceUID: p.content for p in iter_multipart([answer.content], boundary)}


def dataset_bytes(part10: bytes) -> bytes:
    """The bytes after the file meta group (PS3.10 7.1: preamble, DICM, then (0002,0000) giving the group length)."""
    assert part10[128:132] == b"DICM" and part10[132:136] == b"\x02\x00\x00\x00"
    return part10[144 + int.from_bytes(part10[140:144], "little"):]


def sop_uids(number: int, series: int | None = None) -> set[str]:
    spec = study(number)
    return {spec.instance_uid(s, i) for s, count in enumerate(spec.instances_per_series, start=1)
            if series in (None, s) for i in range(1, count + 1)}


def test_dicomweb_client_searches_and_retrieves_across_both_archives(stack):
    client, extra = stack.client("web-get")
    studies = {s["0020000D"]["Value"][0] for s in client.search_for_studies(additional_params=extra)}
    assert studies == {study(n).study_uid for n in set(ARCHIVE_A) | set(ARCHIVE_B)}
    for number, holder in ((ONLY_A, stack.a), (ONLY_B, stack.b), (ON_BOTH, stack.a)):
        datasets = client.retrieve_study(study(number).study_uid, additional_params=extra)
        assert {ds.SOPInstanceUID for ds in datasets} == sop_uids(number), number
        for ds in datasets:
            assert ds == dcmread(BytesIO(orthanc_file(holder, ds.SOPInstanceUID))), (number, ds.SOPInstanceUID)
    spec = study(ON_BOTH)
    series = client.retrieve_series(spec.study_uid, spec.series_uid(1), additional_params=extra)
    assert {ds.SOPInstanceUID for ds in series} == sop_uids(ON_BOTH, 1)
    sop = spec.instance_uid(1, 2)
    one = client.retrieve_instance(spec.study_uid, spec.series_uid(1), sop, additional_params=extra)
    assert one.SOPInstanceUID == sop and one.PixelData == bytes(range(64))


def test_wado_rs_instances_are_the_archives_files_byte_for_byte(stack):
    from_a = raw_parts(stack, "web-get", f"/studies/{study(ONLY_A).study_uid}")
    assert set(from_a) == sop_uids(ONLY_A)
    for uid, data in from_a.items():
        assert data == orthanc_file(stack.a, uid), uid


@pytest.mark.parametrize("config", ["web-get", "web-move"])
def test_dimse_instances_carry_the_archives_dataset_bytes(stack, config, monkeypatch):
    """Over C-GET and over C-MOVE to the API's storage AE alike, the instances are passed on as the source sent them:
    nothing on the way encodes one again (an encode would fail the instance here)."""
    def no_re_encoding(dataset):
        raise AssertionError(f"{dataset.SOPInstanceUID} was encoded again instead of passed on")

    monkeypatch.setattr("shared.retrieval.spool.encode_instance", no_re_encoding)
    from_b = raw_parts(stack, config, f"/studies/{study(ONLY_B).study_uid}")
    assert set(from_b) == sop_uids(ONLY_B)
    for uid, data in from_b.items():
        assert dataset_bytes(data) == dataset_bytes(orthanc_file(stack.b, uid)), (config, uid)


def test_dicomweb_client_reads_consolidated_metadata(stack):
    client, extra = stack.client("web-move")
    for number in (ON_BOTH, ONLY_B):  # from A's WADO-RS metadata; from B's instances (C-MOVE to the API)
        objects = client.retrieve_study_metadata(study(number).study_uid, additional_params=extra)
        assert sorted(o["00080018"]["Value"][0] for o in objects) == sorted(sop_uids(number)), number
        assert all(o["00100020"]["Value"] == [study(number).patient_id] for o in objects)
        assert not any("7FE00010" in o for o in objects)
