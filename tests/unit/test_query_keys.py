"""findscu-style query keys -> C-FIND Identifier."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from shared.dicom.levels import QueryLevel
from shared.dicom.query_keys import (
    DEFAULT_RETURN_KEYS, QueryKeyError, build_identifier, identifier_from_mapping, parse_key,
)


@pytest.mark.parametrize("text", ["PatientID=X", "(0010,0020)=X", "00100020=X", "0010,0020=X", " PatientID=X"])
def test_key_forms(text):
    key = parse_key(text)
    assert key.keyword == "PatientID" and key.value == "X" and key.vr == "LO"


def test_return_key_and_empty_value():
    assert parse_key("StudyInstanceUID").value is None
    assert parse_key("StudyInstanceUID=").value == ""


@pytest.mark.parametrize("text,fragment", [
    ("PatientNmae=X", "PatientNmae"),
    ("(0009,0010)=X", "0009"),
    ("StudyDate=2024-01-01", "StudyDate"),
    ("StudyDate=20240230", "not a valid date"),
    ("StudyDate=20241231-20240101", "ends before"),
    ("StudyDate=2024*", "wild cards"),
    ("StudyInstanceUID=1.02.3", "not a UID"),
    ("StudyInstanceUID=1.2.*", "wild cards"),
    ("StudyInstanceUID=" + "1." * 40 + "1", "longer than 64"),
    ("Modality=ct", "A-Z"),
    ("Modality=ABCDEFGHIJKLMNOPQ", "longer than 16"),
    ("PatientID=" + "x" * 65, "longer than 64"),
    ("StudyTime=2500", "valid time"),
    ("NumberOfStudyRelatedSeries=abc", "not an integer"),
    ("ReferencedStudySequence=1", "sequence"),
])
def test_invalid_keys_are_named(text, fragment):
    with pytest.raises(QueryKeyError) as err:
        parse_key(text)
    assert fragment in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("text", ["StudyDate=20240101-", "StudyDate=-20241231", "StudyDate=20240101-20241231",
                                  "StudyTime=10-12", "StudyTime=101530.123456", "AcquisitionDateTime=2024-2025",
                                  "PatientName=Mü*^J?rgen", "Modality=C?", "StudyInstanceUID=1.2.3\\1.2.4",
                                  "ModalitiesInStudy=CT\\MR"])
def test_valid_values(text):
    parse_key(text)


def test_build_identifier_adds_level_unique_key_and_defaults():
    identifier = build_identifier(["PatientID=123"], QueryLevel.STUDY)
    assert identifier.QueryRetrieveLevel == "STUDY"
    assert identifier.PatientID == "123"
    for keyword in DEFAULT_RETURN_KEYS[QueryLevel.STUDY]:
        assert keyword in identifier


def test_explicit_return_keys_disable_defaults():
    identifier = build_identifier(["PatientID=123", "StudyDate"], "SERIES")
    assert set(e.keyword for e in identifier) == {"QueryRetrieveLevel", "PatientID", "StudyDate",
                                                 "SeriesInstanceUID"}


def test_build_identifier_from_mapping_and_sequence_path():
    identifier = build_identifier({"PatientName": "DOE*", "StudyInstanceUID": None,
                                   "ReferencedStudySequence[0].ReferencedSOPInstanceUID": "1.2.3"}, "STUDY")
    assert identifier.PatientName == "DOE*"
    assert identifier.ReferencedStudySequence[0].ReferencedSOPInstanceUID == "1.2.3"


def test_level_mismatch_and_study_root_patient():
    with pytest.raises(QueryKeyError):
        build_identifier(["QueryRetrieveLevel=SERIES"], "STUDY")
    with pytest.raises(QueryKeyError):
        build_identifier(["PatientID=1"], "PATIENT", model="STUDY_ROOT")
    assert build_identifier(["PatientID=1"], "PATIENT", model="P").QueryRetrieveLevel == "PATIENT"


def test_identifier_from_json_body():
    identifier = identifier_from_mapping({"QueryRetrieveLevel": "study", "00100020": "123",
                                          "ModalitiesInStudy": ["CT", "MR"], "StudyDate": "20240101-",
                                          "PatientName": {"vr": "PN", "Value": [{"Alphabetic": "Doe^J*"}]},
                                          "AccessionNumber": None})
    assert identifier.QueryRetrieveLevel == "STUDY"
    assert identifier.PatientID == "123"
    assert list(identifier.ModalitiesInStudy) == ["CT", "MR"]
    assert str(identifier.PatientName) == "Doe^J*"
    assert "AccessionNumber" in identifier and "StudyInstanceUID" in identifier
    with pytest.raises(QueryKeyError, match="level"):
        identifier_from_mapping({"PatientID": "1"})
    with pytest.raises(QueryKeyError, match="Bogus"):
        identifier_from_mapping({"Bogus": "1"}, level="STUDY")


@given(st.dates(min_value=__import__("datetime").date(1900, 1, 1)))
def test_every_real_date_is_accepted(day):
    value = day.strftime("%Y%m%d")
    assert parse_key(f"StudyDate={value}").value == value
    parse_key(f"StudyDate={value}-{value}")


def test_a_bare_return_key_keeps_an_earlier_matching_value():
    identifier = build_identifier(["PatientName=M*", "PatientName", "PatientID"], "PATIENT", model="PATIENT_ROOT")
    assert identifier.PatientName == "M*"
    assert "PatientID" in identifier and not identifier.PatientID
