"""Bulk data is dropped from WADO-RS metadata (shared.retrieval.metadata) and the WADO-RS Accept rules
(services.api.wado_accept)."""

from __future__ import annotations

import pytest
from fastapi import HTTPException
from pydicom import Dataset

from services.api.wado_accept import check_bulk_accept, check_metadata_accept
from shared.retrieval.metadata import BULK_THRESHOLD, dataset_json_without_bulk_data, without_bulk_data


def test_pixel_data_and_large_binary_values_are_dropped_at_any_depth():
    icon = Dataset()
    icon.Rows = 2
    icon.PixelData = b"\x00" * 8
    ds = Dataset()
    ds.PatientID = "P1"
    ds.IconImageSequence = [icon]
    ds.PixelData = b"\x01" * 16
    ds.add_new(0x00091010, "OB", b"\x02" * (BULK_THRESHOLD + 2))  # a large private binary value
    ds.add_new(0x00091011, "OB", b"\x03\x04")  # a small one stays inline
    obj = dataset_json_without_bulk_data(ds)
    assert obj["00100020"] == {"vr": "LO", "Value": ["P1"]}
    assert "7FE00010" not in obj and "00091010" not in obj and obj["00091011"]["InlineBinary"]
    assert obj["00880200"]["Value"][0] == {"00280010": {"vr": "US", "Value": [2]}}


def test_a_sources_bulk_data_uris_and_file_meta_are_dropped():
    source = {"00020010": {"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]},
              "00100020": {"vr": "LO", "Value": ["P1"]},
              "7FE00010": {"vr": "OW", "BulkDataURI": "http://archive.internal/bulk/1"},
              "00400275": {"vr": "SQ", "Value": [{"00420011": {"vr": "OB", "BulkDataURI": "http://x/2"},
                                                 "00400007": {"vr": "LO", "Value": ["step"]}}]}}
    assert without_bulk_data(source) == {
        "00100020": {"vr": "LO", "Value": ["P1"]},
        "00400275": {"vr": "SQ", "Value": [{"00400007": {"vr": "LO", "Value": ["step"]}}]}}


@pytest.mark.parametrize("accept", [[], [""], ["*/*"], ["multipart/*"], ['multipart/related; type="application/dicom"'],
                                    ['multipart/related; type=application/dicom; transfer-syntax=*'],
                                    ["image/jpeg, multipart/related; type=\"application/dicom\"; q=0.5"]])
def test_bulk_accept_that_leaves_the_syntax_open_is_served(accept):
    check_bulk_accept(accept)


@pytest.mark.parametrize("accept", [["application/dicom+json"], ["image/jpeg"], ["multipart/related; type=image/jpeg"],
                                    ['multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'],
                                    ["*/*; q=0"]])
def test_other_bulk_accepts_are_406(accept):
    with pytest.raises(HTTPException) as refused:
        check_bulk_accept(accept)
    assert refused.value.status_code == 406 and "transfer-syntax absent or *" in refused.value.detail


def test_metadata_accept():
    for accept in ([], ["application/dicom+json"], ["application/json"], ["application/*"], ["text/html, */*"]):
        check_metadata_accept(accept)
    with pytest.raises(HTTPException) as refused:
        check_metadata_accept(['multipart/related; type="application/dicom+xml"'])
    assert refused.value.status_code == 406
