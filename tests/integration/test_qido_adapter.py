"""QidoQueryPort against real Orthancs (DICOMweb plugin 1.7) plus scripted HTTP peers (httpx.MockTransport, raw TCP).

What Orthanc 1.10.1 + DICOMweb 1.7 does (asserted below, so a change shows up here):
- wildcards `*`/`?` and `^` in PN work only when sent unencoded (the plugin does not percent-decode query values);
- PN/LO matching is case-insensitive; date ranges (closed and open) work;
- a non-ASCII matching value can never match (it has to be percent-encoded, which Orthanc does not decode), but
  non-ASCII values in answers arrive intact (UTF-8 JSON).
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from shared.adapters.dicomweb import GoogleHealthcareAccess, QidoQueryPort
from shared.connections import DicomwebAuth, DicomwebConnection, GoogleHealthcareConnection
from shared.dicom.levels import InformationModel, QueryLevel
from shared.spanning.model import FindSummary, SourceSpec, SpanRequest
from shared.spanning.ports import CancelToken, QueryFailedError, TransportError
from tests.peers import free_port
from tests.peers.streams import drain, ident
from tests.peers.studies import ARCHIVE_A, ARCHIVE_B, study


def source(url: str, name: str = "WEB", max_results: int | None = None, **conn: object) -> SourceSpec:
    return SourceSpec(name, "dicomweb", DicomwebConnection(base_url=url, **conn), max_results=max_results)


def find(port, peer_or_url, level: QueryLevel, **keys: object):
    url = peer_or_url if isinstance(peer_or_url, str) else peer_or_url.dicomweb_url
    model = InformationModel.PATIENT_ROOT if level is QueryLevel.PATIENT else InformationModel.STUDY_ROOT
    return drain(port.find(SpanRequest(level, ident(**keys), model), source(url), CancelToken()))


@pytest.fixture()
def port():
    with QidoQueryPort() as p:
        yield p


@pytest.mark.integration
def test_study_level_on_both_archives(two_orthancs, port) -> None:
    found_a, summary = find(port, two_orthancs.a, QueryLevel.STUDY, StudyInstanceUID="", StudyDescription="")
    found_b, _ = find(port, two_orthancs.b, QueryLevel.STUDY, StudyInstanceUID="")
    assert summary is None
    assert {d.StudyInstanceUID for d in found_a} == {study(n).study_uid for n in ARCHIVE_A}
    assert {d.StudyInstanceUID for d in found_b} == {study(n).study_uid for n in ARCHIVE_B}
    assert all(d.StudyDescription.startswith("Synthetic study") for d in found_a)  # includefield honoured


@pytest.mark.integration
def test_series_level_with_and_without_study_path(two_orthancs, port) -> None:
    spec = study(1)
    under, _ = find(port, two_orthancs.a, QueryLevel.SERIES, StudyInstanceUID=spec.study_uid, SeriesInstanceUID="")
    assert {d.SeriesInstanceUID for d in under} == {spec.series_uid(1), spec.series_uid(2)}
    assert {d.StudyInstanceUID for d in under} == {spec.study_uid}
    everywhere, _ = find(port, two_orthancs.a, QueryLevel.SERIES, Modality="CT", SeriesInstanceUID="")
    assert {d.SeriesInstanceUID for d in everywhere} == {spec.series_uid(1), spec.series_uid(2), study(3).series_uid(1)}


@pytest.mark.integration
def test_image_level(two_orthancs, port) -> None:
    spec = study(3)
    found, _ = find(port, two_orthancs.b, QueryLevel.IMAGE, StudyInstanceUID=spec.study_uid,
                    SeriesInstanceUID=spec.series_uid(1), SOPInstanceUID="")
    assert {d.SOPInstanceUID for d in found} == {spec.instance_uid(1, 1), spec.instance_uid(1, 2)}


@pytest.mark.integration
def test_patient_level_is_projected_from_studies(two_orthancs, port) -> None:
    found, _ = find(port, two_orthancs.a, QueryLevel.PATIENT, PatientID="", PatientName="",
                    NumberOfPatientRelatedStudies="")
    by_id = {str(d.PatientID): d for d in found}
    assert sorted(by_id) == ["PAT001", "PAT002", "PAT003"]
    assert by_id["PAT001"].NumberOfPatientRelatedStudies == 2
    assert str(by_id["PAT002"].PatientName) == "Müller^Jürgen"
    assert "StudyInstanceUID" not in by_id["PAT001"]


@pytest.mark.integration
def test_wildcards_caret_and_case_insensitive_pn(two_orthancs, port) -> None:
    exact, _ = find(port, two_orthancs.a, QueryLevel.STUDY, PatientName="Doe^John", StudyInstanceUID="")
    lower, _ = find(port, two_orthancs.a, QueryLevel.STUDY, PatientName="doe*", StudyInstanceUID="")
    single, _ = find(port, two_orthancs.a, QueryLevel.STUDY, AccessionNumber="ACC00?", StudyInstanceUID="")
    assert len(exact) == len(lower) == 2
    assert len(single) == len(ARCHIVE_A)


@pytest.mark.integration
def test_non_ascii_answers_decode_but_non_ascii_matching_finds_nothing_on_orthanc(two_orthancs, port) -> None:
    found, _ = find(port, two_orthancs.b, QueryLevel.STUDY, PatientName="M*", StudyInstanceUID="")
    assert [str(d.PatientName) for d in found] == ["Müller^Jürgen"]
    not_matched, _ = find(port, two_orthancs.b, QueryLevel.STUDY, PatientName="Müller*", StudyInstanceUID="")
    assert not_matched == []  # Orthanc DICOMweb 1.7 does not percent-decode query values (module doc)


@pytest.mark.integration
def test_date_ranges(two_orthancs, port) -> None:
    closed, _ = find(port, two_orthancs.a, QueryLevel.STUDY, StudyDate="20200101-20201231", StudyInstanceUID="")
    open_end, _ = find(port, two_orthancs.a, QueryLevel.STUDY, StudyDate="20230101-", StudyInstanceUID="")
    assert {d.StudyInstanceUID for d in closed} == {study(1).study_uid, study(3).study_uid}
    assert {d.StudyInstanceUID for d in open_end} == {study(5).study_uid}


@pytest.mark.integration
def test_max_results_uses_limit_and_reports_truncation(two_orthancs, port) -> None:
    request = SpanRequest(QueryLevel.STUDY, ident(StudyInstanceUID=""))
    found, summary = drain(port.find(request, source(two_orthancs.a.dicomweb_url, max_results=2), CancelToken()))
    assert len(found) == 2 and summary.truncated


@pytest.mark.integration
def test_http_404_is_query_failed(two_orthancs, port) -> None:
    src = source(two_orthancs.a.dicomweb_url, qido_prefix="no-such-root")
    with pytest.raises(QueryFailedError, match="HTTP 404"):
        drain(port.find(SpanRequest(QueryLevel.STUDY, ident()), src, CancelToken()))


def test_unreachable_port_is_a_quick_transport_error(port) -> None:
    started = time.monotonic()
    with pytest.raises(TransportError, match="ConnectError"):
        find(port, f"http://127.0.0.1:{free_port()}/dicom-web", QueryLevel.STUDY)
    assert time.monotonic() - started < 2


def test_cancel_of_a_hung_server_returns_within_a_second(port) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    cancel = CancelToken()
    stream = port.find(SpanRequest(QueryLevel.STUDY, ident()), source(f"http://127.0.0.1:{server.getsockname()[1]}"),
                       cancel)
    threading.Timer(0.3, cancel.cancel).start()
    started = time.monotonic()
    try:
        assert drain(stream) == ([], None)
    finally:
        server.close()
    assert time.monotonic() - started < 1.0


def _mock_port(handler, **kwargs) -> QidoQueryPort:
    return QidoQueryPort(transport=httpx.MockTransport(handler), **kwargs)


STUDY_JSON = [{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Ö^Ä"}]}}]


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_are_transport_errors(status: int) -> None:
    with _mock_port(lambda request: httpx.Response(status, text="busy")) as port:
        with pytest.raises(TransportError, match=f"HTTP {status}"):
            find(port, "http://pacs.test/dicomweb", QueryLevel.STUDY)


def test_malformed_json_is_query_failed() -> None:
    with _mock_port(lambda request: httpx.Response(200, text="{not json")) as port:
        with pytest.raises(QueryFailedError, match="malformed"):
            find(port, "http://pacs.test/dicomweb", QueryLevel.STUDY)


def test_204_is_no_match_and_warning_header_is_truncation() -> None:
    with _mock_port(lambda request: httpx.Response(204)) as port:
        assert find(port, "http://pacs.test/dicomweb", QueryLevel.STUDY) == ([], None)
    warning = '299 pacs: "The fuzzymatching parameter is not supported"'
    with _mock_port(lambda r: httpx.Response(200, json=STUDY_JSON, headers={"Warning": warning})) as port:
        found, summary = find(port, "http://pacs.test/dicomweb", QueryLevel.STUDY)
    assert [str(d.PatientName) for d in found] == ["Ö^Ä"]
    assert summary == FindSummary(truncated=True, warning=warning)


def test_auth_headers_and_accept() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    auths = [DicomwebAuth(type="basic", username="u", password="p"), DicomwebAuth(type="bearer", token="t0k"),
             DicomwebAuth(type="api_key", token="k3y", header="X-Key")]
    with _mock_port(handler) as port:
        for auth in auths:
            src = SourceSpec("W", "dicomweb", DicomwebConnection(base_url="http://pacs.test/dw", auth=auth))
            drain(port.find(SpanRequest(QueryLevel.STUDY, ident(PatientName="Doe^*")), src, CancelToken()))
    assert seen[0].headers["Authorization"] == "Basic dTpw"
    assert seen[1].headers["Authorization"] == "Bearer t0k"
    assert seen[2].headers["X-Key"] == "k3y"
    assert seen[0].headers["Accept"] == "application/dicom+json"
    assert seen[0].url.raw_path == b"/dw/studies?PatientName=Doe^*"


def test_google_healthcare_needs_a_token_provider() -> None:
    conn = GoogleHealthcareConnection(project="p", location="l", dataset="d", dicom_store="s")
    src = SourceSpec("GCP", "google_healthcare", conn)
    with _mock_port(lambda r: httpx.Response(200, json=[])) as port:
        with pytest.raises(QueryFailedError, match="token provider"):
            drain(port.find(SpanRequest(QueryLevel.STUDY, ident()), src, CancelToken()))
    seen = []
    with _mock_port(lambda r: seen.append(r) or httpx.Response(200, json=STUDY_JSON),
                    google=GoogleHealthcareAccess(lambda: "g-token")) as port:
        found, _ = drain(port.find(SpanRequest(QueryLevel.STUDY, ident()), src, CancelToken()))
    assert len(found) == 1 and seen[0].headers["Authorization"] == "Bearer g-token"
    assert str(seen[0].url).startswith(conn.base_url + "/studies")
