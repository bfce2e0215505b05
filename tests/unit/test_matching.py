"""PS3.4 C.2.2.2 attribute matching."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, strategies as st
from pydicom import Dataset
from pydicom.sequence import Sequence

from shared.dicom.matching import matches, project, wildcard_to_regex


def ds(**kwargs) -> Dataset:
    out = Dataset()
    for key, value in kwargs.items():
        setattr(out, key, value)
    return out


CANDIDATE = ds(PatientName="Müller^Jürgen", PatientID="123", StudyDate="20240315", StudyTime="101530",
               ModalitiesInStudy=["CT", "MR"], StudyInstanceUID="1.2.3.4", AccessionNumber="A1",
               StudyDescription="CT CHEST")


@pytest.mark.parametrize("key,value,expected", [
    ("PatientID", "123", True), ("PatientID", "1234", False), ("PatientID", "", True),  # single / universal
    ("PatientName", "Müller^Jürgen", True), ("PatientName", "müller^jürgen", False),  # PN case-sensitive
    ("PatientName", "Mü*", True), ("PatientName", "M?ller*", True), ("PatientName", "*", True),  # wildcards
    ("PatientName", "Mu*", False), ("StudyDescription", "CT*", True), ("StudyDescription", "*CHEST", True),
    ("StudyDate", "20240315", True), ("StudyDate", "20240101-20241231", True), ("StudyDate", "20240316-", False),
    ("StudyDate", "-20240315", True), ("StudyDate", "20240315-", True), ("StudyDate", "-20240314", False),
    ("StudyTime", "10", True), ("StudyTime", "1016-", False), ("StudyTime", "1015-1016", True),
    ("StudyTime", "-1015", True), ("StudyTime", "09-0959", False),
    ("StudyInstanceUID", "1.2.3.4", True), ("StudyInstanceUID", "9.9\\1.2.3.4", True),  # list of UID
    ("StudyInstanceUID", "1.2.3.*", False),  # no wildcards in UI
    ("ModalitiesInStudy", "MR", True), ("ModalitiesInStudy", "US", False),  # multi-valued stored
    ("ModalitiesInStudy", "US\\CT", True), ("ModalitiesInStudy", "C?", True),
    ("ReferringPhysicianName", "X*", False), ("ReferringPhysicianName", "*", True),  # absent candidate
])
def test_single_attribute(key, value, expected):
    assert matches(ds(**{key: value}), CANDIDATE) is expected


def test_query_control_keys_are_ignored():
    query = ds(QueryRetrieveLevel="STUDY", SpecificCharacterSet="ISO_IR 100", PatientID="123")
    assert matches(query, CANDIDATE)


def test_pn_case_insensitive_option():
    assert matches(ds(PatientName="müller*"), CANDIDATE, pn_case_insensitive=True)
    assert not matches(ds(PatientName="müller*"), CANDIDATE)


def test_pn_component_groups():
    candidate = ds(PatientName="Yamada^Tarou=山田^太郎")
    assert matches(ds(PatientName="Yamada^Tarou"), candidate)
    assert matches(ds(PatientName="山田*"), candidate)


def test_trailing_spaces_are_not_significant():
    assert matches(ds(AccessionNumber="A1 "), CANDIDATE)


def test_datetime_range():
    candidate = ds(AcquisitionDateTime="20240315101530.123")
    assert matches(ds(AcquisitionDateTime="2024-2025"), candidate)
    assert matches(ds(AcquisitionDateTime="20240315-"), candidate)
    assert not matches(ds(AcquisitionDateTime="-202403141200"), candidate)


def test_sequence_matching():
    item = ds(ReferencedSOPInstanceUID="1.2.9", ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1")
    candidate = ds(ReferencedStudySequence=Sequence([ds(ReferencedSOPInstanceUID="1.2.8"), item]))
    assert matches(ds(ReferencedStudySequence=Sequence([ds(ReferencedSOPInstanceUID="1.2.9")])), candidate)
    assert not matches(ds(ReferencedStudySequence=Sequence([ds(ReferencedSOPInstanceUID="7")])), candidate)
    assert matches(ds(ReferencedStudySequence=Sequence([ds(ReferencedSOPInstanceUID="")])), candidate)
    assert not matches(ds(ReferencedStudySequence=Sequence([ds(ReferencedSOPInstanceUID="1.2.9")])), CANDIDATE)


def test_project_returns_requested_keys_and_unique_key():
    query = ds(QueryRetrieveLevel="STUDY", PatientID="123", PatientName="", ReferringPhysicianName="")
    response = project(query, CANDIDATE)
    assert response.QueryRetrieveLevel == "STUDY"
    assert response.PatientName == "Müller^Jürgen" and response.PatientID == "123"
    assert "ReferringPhysicianName" in response and response.ReferringPhysicianName in (None, "")
    assert response.StudyInstanceUID == "1.2.3.4"  # unique key added (PS3.4 C.4.1.2.3)
    assert "StudyDescription" not in response


# --- properties ------------------------------------------------------------------------------------------------

text = st.text(alphabet=string.ascii_uppercase + string.digits + " ^", min_size=1, max_size=12).map(str.strip).filter(bool)
dates = st.dates(min_value=__import__("datetime").date(1900, 1, 1)).map(lambda d: d.strftime("%Y%m%d"))


@given(text)
def test_a_value_matches_itself_and_star(value):
    candidate = ds(StudyDescription=value)
    assert matches(ds(StudyDescription=value), candidate)
    assert matches(ds(StudyDescription="*"), candidate)
    assert matches(ds(StudyDescription=""), candidate)


@given(text, st.integers(min_value=0, max_value=12))
def test_prefix_wildcard(value, cut):
    assert matches(ds(StudyDescription=value[:cut] + "*"), ds(StudyDescription=value))


@given(text)
def test_question_marks_match_exact_length(value):
    assert wildcard_to_regex("?" * len(value)).fullmatch(value)
    assert not wildcard_to_regex("?" * (len(value) + 1)).fullmatch(value)


@given(dates, dates, dates)
def test_date_range_agrees_with_comparison(low, high, value):
    expected = low <= value <= high
    assert matches(ds(StudyDate=f"{low}-{high}"), ds(StudyDate=value)) is expected
    assert matches(ds(StudyDate=f"{low}-"), ds(StudyDate=value)) is (low <= value)
    assert matches(ds(StudyDate=f"-{high}"), ds(StudyDate=value)) is (value <= high)


@given(st.lists(st.sampled_from(["CT", "MR", "US", "CR", "DX"]), min_size=1, max_size=4, unique=True),
       st.sampled_from(["CT", "MR", "US", "CR", "DX"]))
def test_multivalued_stored_matches_any(stored, wanted):
    assert matches(ds(ModalitiesInStudy=wanted), ds(ModalitiesInStudy=stored)) is (wanted in stored)
