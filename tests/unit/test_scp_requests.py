"""shared.dicom.scp_requests: what the spanning SCP accepts as a C-FIND / C-MOVE / C-GET identifier (PS3.4 C.4)."""

from __future__ import annotations

import pytest
from pydicom import Dataset

from shared.dicom.levels import (
    PATIENT_ROOT_FIND, PATIENT_ROOT_MOVE, STUDY_ROOT_FIND, STUDY_ROOT_GET, InformationModel, QueryLevel,
)
from shared.dicom.scp_requests import IdentifierError, find_request, retrieve_request
from services.listener.status import error_comment, find_final_status
from shared.spanning.model import SourceOutcome, SourceStatus, SpanResult, SpanStatus


def identifier(**keys) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_a_find_identifier_becomes_a_span_request_without_the_level():
    request = find_request(identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.3", Modality="CT",
                                      SeriesInstanceUID="", SpecificCharacterSet="ISO_IR 192"), STUDY_ROOT_FIND,
                           query_id="q1")
    assert (request.level, request.model, request.query_id) == (QueryLevel.SERIES, InformationModel.STUDY_ROOT, "q1")
    assert [e.keyword for e in request.identifier] == ["Modality", "StudyInstanceUID", "SeriesInstanceUID"]


@pytest.mark.parametrize("keys, sop_class, message", [
    ({"PatientName": "A*"}, STUDY_ROOT_FIND, r"QueryRetrieveLevel \(0008,0052\) is missing"),
    ({"QueryRetrieveLevel": "SERIESX"}, STUDY_ROOT_FIND, "is not a level"),
    ({"QueryRetrieveLevel": "PATIENT"}, STUDY_ROOT_FIND, "STUDY_ROOT has no PATIENT level"),
    ({"QueryRetrieveLevel": "STUDY", "StudyDate": "2020x"}, STUDY_ROOT_FIND, "StudyDate"),
    ({"QueryRetrieveLevel": "STUDY", "StudyDate": "20200101-20191301"}, STUDY_ROOT_FIND, "StudyDate"),
    ({"QueryRetrieveLevel": "STUDY"}, "1.2.840.10008.5.1.4.1.1.2", "is not a Query/Retrieve SOP class"),
])
def test_a_bad_find_identifier_is_refused_naming_the_problem(keys, sop_class, message):
    with pytest.raises(IdentifierError, match=message):
        find_request(identifier(**keys), sop_class)


def test_patient_root_accepts_the_patient_level_and_date_ranges():
    request = find_request(identifier(QueryRetrieveLevel="PATIENT", PatientName="Nov*"), PATIENT_ROOT_FIND)
    assert request.level is QueryLevel.PATIENT and request.model is InformationModel.PATIENT_ROOT
    assert find_request(identifier(QueryRetrieveLevel="STUDY", StudyDate="20200101-"), STUDY_ROOT_FIND)


def test_a_retrieve_identifier_keeps_only_the_unique_keys_and_allows_a_uid_list_at_its_level():
    request = retrieve_request(identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.3", PatientName="X",
                                          SeriesInstanceUID="1.2.3.4\\1.2.3.5"), STUDY_ROOT_GET)
    assert request.level is QueryLevel.SERIES
    assert [e.keyword for e in request.identifier] == ["StudyInstanceUID", "SeriesInstanceUID"]
    assert list(request.identifier.SeriesInstanceUID) == ["1.2.3.4", "1.2.3.5"]


@pytest.mark.parametrize("keys, sop_class, message", [
    ({"QueryRetrieveLevel": "STUDY"}, STUDY_ROOT_GET, "StudyInstanceUID is required"),
    ({"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "1.2"}, STUDY_ROOT_GET, "StudyInstanceUID is required"),
    ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.abc"}, STUDY_ROOT_GET, "is not a valid UID"),
    ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "../../etc"}, STUDY_ROOT_GET, "is not a valid UID"),
    ({"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2\\1.3", "SeriesInstanceUID": "1.2.4"},
     STUDY_ROOT_GET, "must be a single UID"),
    ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2"}, PATIENT_ROOT_MOVE, "PatientID is required"),
])
def test_a_bad_retrieve_identifier_is_refused(keys, sop_class, message):
    with pytest.raises(IdentifierError, match=message):
        retrieve_request(identifier(**keys), sop_class)


def _result(status: SpanStatus, *outcomes: SourceOutcome, error: str | None = None) -> SpanResult:
    return SpanResult(query_id="q", status=status, matches=(), outcomes=outcomes, raw_count=0, duration_ms=1.0,
                      error=error)


def test_the_final_find_status_tells_the_span_outcome():
    ok, down = SourceOutcome("A", SourceStatus.OK), SourceOutcome("B", SourceStatus.TIMEOUT)
    assert find_final_status(_result(SpanStatus.COMPLETED, ok)).Status == 0x0000
    partial = find_final_status(_result(SpanStatus.PARTIAL, ok, down))
    assert (partial.Status, partial.ErrorComment) == (0x0000, "no answer from B")
    failed = find_final_status(_result(SpanStatus.FAILED, down, error="FAIL_FAST: B timeout"))
    assert (failed.Status, failed.ErrorComment) == (0xC000, "FAIL_FAST: B timeout")
    assert find_final_status(_result(SpanStatus.CANCELLED, ok)).Status == 0xFE00


def test_an_error_comment_fits_its_lo_value():
    assert error_comment("a\nb   c") == "a b c"
    assert len(error_comment("x" * 100)) == 64 and error_comment("x" * 100).endswith("...")
