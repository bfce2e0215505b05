"""Identifier -> QIDO-RS search (PS3.18 10.6.1, 8.3.4): pure, no network."""

from __future__ import annotations

import pytest
from pydicom import Dataset

from shared.adapters.dicomweb import encode_query_part, project_patients, qido_query
from shared.dicom.levels import InformationModel, QueryLevel
from shared.spanning.model import SpanRequest


def _request(level: QueryLevel, **keys: object) -> SpanRequest:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    model = InformationModel.PATIENT_ROOT if level is QueryLevel.PATIENT else InformationModel.STUDY_ROOT
    return SpanRequest(level, ds, model)


def test_study_matching_and_return_keys() -> None:
    query = qido_query(_request(QueryLevel.STUDY, PatientName="Doe^J*", StudyDate="20200101-20201231",
                                StudyInstanceUID="", AccessionNumber=""))
    assert query.path == "studies"
    assert query.params == (  # in tag order, as the Dataset iterates
        ("StudyDate", "20200101-20201231"),
        ("includefield", "AccessionNumber"),
        ("PatientName", "Doe^J*"),
        ("includefield", "StudyInstanceUID"),
    )


def test_uid_list_becomes_comma_separated() -> None:
    query = qido_query(_request(QueryLevel.STUDY, StudyInstanceUID=["1.2.3", "1.2.4"]))
    assert query.params == (("StudyInstanceUID", "1.2.3,1.2.4"),)


def test_series_under_single_study_uid_uses_the_study_path() -> None:
    query = qido_query(_request(QueryLevel.SERIES, StudyInstanceUID="1.2.3", Modality="CT", SeriesInstanceUID=""))
    assert query.path == "studies/1.2.3/series"
    assert query.params == (("Modality", "CT"), ("includefield", "SeriesInstanceUID"))
    assert query.path_uids == {"StudyInstanceUID": "1.2.3"}


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_series_without_single_study_uid_uses_series_resource() -> None:
    assert qido_query(_request(QueryLevel.SERIES, StudyInstanceUID="1.2.*"))  # wildcard UID: invalid UI, still sent.path == "series"
    multi = qido_query(_request(QueryLevel.SERIES, StudyInstanceUID=["1.2", "1.3"]))
    assert multi.path == "series" and multi.params == (("StudyInstanceUID", "1.2,1.3"),)


def test_image_paths() -> None:
    both = qido_query(_request(QueryLevel.IMAGE, StudyInstanceUID="1.2", SeriesInstanceUID="1.2.1", SOPInstanceUID=""))
    assert both.path == "studies/1.2/series/1.2.1/instances"
    assert both.params == (("includefield", "SOPInstanceUID"),)
    assert qido_query(_request(QueryLevel.IMAGE, StudyInstanceUID="1.2")).path == "studies/1.2/instances"
    assert qido_query(_request(QueryLevel.IMAGE, SOPInstanceUID="")).path == "instances"


def test_limit_asks_one_more_than_max_results() -> None:
    assert ("limit", "11") in qido_query(_request(QueryLevel.STUDY), max_results=10).params


def test_charset_level_and_binary_keys_are_not_sent() -> None:
    request = _request(QueryLevel.STUDY, SpecificCharacterSet="ISO_IR 100", QueryRetrieveLevel="STUDY",
                       PatientID="X")
    request.identifier.add_new(0x00291010, "OB", b"\x00\x01")
    assert qido_query(request).params == (("PatientID", "X"),)


def test_private_tag_uses_hex_name() -> None:
    request = _request(QueryLevel.STUDY)
    request.identifier.add_new(0x00091001, "LO", "abc")
    assert qido_query(request).params == (("00091001", "abc"),)


def test_sequence_keys() -> None:
    item = Dataset()
    item.CodeValue = "123"
    item.CodeMeaning = ""
    request = _request(QueryLevel.STUDY, ProcedureCodeSequence=[item], ReferencedStudySequence=[])
    assert qido_query(request).params == (
        ("ProcedureCodeSequence.CodeValue", "123"),
        ("includefield", "ProcedureCodeSequence"),
        ("includefield", "ReferencedStudySequence"),
    )


def test_patient_level_queries_studies_and_asks_for_counts() -> None:
    query = qido_query(_request(QueryLevel.PATIENT, PatientID="PAT*", PatientName="",
                                NumberOfPatientRelatedStudies="", NumberOfPatientRelatedInstances=""),
                       max_results=5)
    assert query.path == "studies"
    assert query.params == (
        ("includefield", "PatientName"),
        ("PatientID", "PAT*"),
        ("includefield", "NumberOfStudyRelatedInstances"),
    )


def test_query_string_keeps_wildcards_and_caret_but_encodes_the_rest() -> None:
    assert encode_query_part("Doe^J*?,-") == "Doe^J*?,-"
    assert encode_query_part("Müller a&b=c+d%") == "M%C3%BCller%20a%26b%3Dc%2Bd%25"
    query = qido_query(_request(QueryLevel.STUDY, PatientName="Müller^*", StudyDate=""))
    assert query.query_string == "includefield=StudyDate&PatientName=M%C3%BCller^*"


def test_project_patients_dedups_and_counts() -> None:
    def study(pid: str, name: str, series: int, instances: int, issuer: str | None = None) -> Dataset:
        ds = Dataset()
        ds.PatientID, ds.PatientName, ds.StudyInstanceUID = pid, name, f"1.{ord(pid)}.{series}"
        ds.NumberOfStudyRelatedSeries, ds.NumberOfStudyRelatedInstances = series, instances
        if issuer:
            ds.IssuerOfPatientID = issuer
        return ds

    identifier = _request(QueryLevel.PATIENT, PatientID="", PatientName="", PatientBirthDate="",
                          NumberOfPatientRelatedStudies="", NumberOfPatientRelatedSeries="").identifier
    patients = project_patients([study("A", "Doe", 2, 3), study("A", "Doe", 1, 1), study("B", "Roe", 1, 2)],
                                identifier)
    assert [(str(p.PatientID), str(p.PatientName)) for p in patients] == [("A", "Doe"), ("B", "Roe")]
    assert "StudyInstanceUID" not in patients[0]
    assert "PatientBirthDate" in patients[0] and not patients[0].PatientBirthDate
    assert patients[0].NumberOfPatientRelatedStudies == 2
    assert patients[0].NumberOfPatientRelatedSeries == 3
    assert patients[1].NumberOfPatientRelatedStudies == 1
