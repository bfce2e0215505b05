"""shared.dicom.flat_encoding writes exactly what pydicom writes, or declines (PS3.5 7.1)."""

from __future__ import annotations

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import encode

from shared.dicom.flat_encoding import encode_flat


def response(**extra) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "Doe^John"
    ds.PatientID = "P1"
    ds.StudyInstanceUID = "1.2.3.4.5"  # odd length: NUL padded
    ds.StudyDate = "20200101"
    ds.ModalitiesInStudy = ["CT", "MR"]
    ds.AccessionNumber = ""
    ds.NumberOfStudyRelatedInstances = "12"
    ds.RetrieveAETitle = "SPAN"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("ds", [
    response(),
    response(SpecificCharacterSet="ISO_IR 192", PatientName="Müller^Jürgen", StudyDescription="Schädel"),
    response(StudyDescription="odd", StudyTime="101010.5"),
    Dataset(),
], ids=["ascii", "utf8", "odd", "empty"])
def test_the_bytes_are_pydicoms(ds, implicit):
    assert encode_flat(ds, implicit_vr=implicit) == encode(ds, implicit, True)


@pytest.mark.parametrize("ds", [
    response(SpecificCharacterSet="ISO_IR 100", PatientName="Müller"),
    response(SpecificCharacterSet=["", "ISO 2022 IR 87"]),
    response(ReferencedStudySequence=Sequence([Dataset()])),
    response(Rows=12),
], ids=["latin1", "iso2022", "sequence", "binary"])
def test_anything_else_is_left_to_pydicom(ds):
    assert encode_flat(ds, implicit_vr=True) is None
