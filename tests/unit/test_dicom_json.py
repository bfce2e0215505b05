"""shared.dicom.dicom_json: the fast paths give exactly what pydicom's own DICOM JSON reader and writer give."""

from __future__ import annotations

import json

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.valuerep import DSfloat, IS, PersonName

from shared.dicom.dicom_json import DicomJsonError, dataset_from_json, dataset_to_json, datasets_from_json

# A QIDO-RS answer as archives write them (Orthanc's shape), plus the rarer attribute kinds.
ANSWER = {
    "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
    "00080020": {"vr": "DA", "Value": ["20210121"]},
    "00080030": {"vr": "TM", "Value": ["073422.5"]},
    "00080050": {"vr": "SH"},
    "00080052": {"vr": "CS", "Value": ["STUDY"]},
    "00080061": {"vr": "CS", "Value": ["CR", "MR"]},
    "00080090": {"vr": "PN", "Value": [{"Alphabetic": "Quinn^Michaela"}]},
    "00081030": {"vr": "LO", "Value": ["XR CHEST 2 VIEWS"]},
    "00081190": {"vr": "UR", "Value": ["http://archive/dicom-web/studies/1.2.3"]},
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎",
                                        "Phonetic": "やまだ^たろう"}]},
    "00100020": {"vr": "LO", "Value": ["VP0000056"]},
    "00100040": {"vr": "CS", "Value": [None, "F"]},
    "00101010": {"vr": "AS", "Value": []},
    "00101020": {"vr": "DS", "Value": [1.75]},
    "00101030": {"vr": "DS", "Value": [72, 72.5]},
    "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
    "00201206": {"vr": "IS", "Value": [3]},
    "00201208": {"vr": "IS", "Value": [12, None]},
    "00280010": {"vr": "US", "Value": [512]},
    "00181310": {"vr": "US", "Value": [0, 256, 256, 0]},
    "00209161": {"vr": "UI", "Value": ["1.2", "1.3"]},
    "00081250": {"vr": "SQ", "Value": [None, {"0020000D": {"vr": "UI", "Value": ["9.8"]},
                                               "00080090": {"vr": "PN", "Value": [{"Alphabetic": "A^B"}]}}]},
    "00081110": {"vr": "SQ", "Value": []},
    "00081120": {"vr": "SQ"},
    "00209165": {"vr": "AT", "Value": ["00100010", "0020000D"]},
    "00200013": {"vr": "IS", "Value": ["7"]},  # numbers as strings: read as pydicom reads them
    "00181050": {"vr": "DS", "Value": ["1.5"]},
    "00280030": {"vr": "DS", "Value": ["0.5", "0.25"]},
    "00080070": {"vr": "LO", "Value": ["ACME\\Imaging"]},  # a backslash splits a value of most VRs...
    "00324000": {"vr": "LT", "Value": ["a\\b"]},  # ...but not text
    "00101001": {"vr": "PN", "Value": [{"Alphabetic": "A^B\\C^D"}]},
    "00101002": {"vr": "PN", "Value": [{"Alphabetic": ""}]},
    "0018602C": {"vr": "FD", "Value": [0.125]},
    "00186020": {"vr": "SL", "Value": [-3]},
    "00280106": {"vr": "US", "Value": [0]},
    "00080081": {"vr": "ST", "Value": [""]},
    "00091010": {"vr": "LO", "Value": ["private"]},
    "00090010": {"vr": "LO", "Value": ["ACME"]},
    "00191002": {"vr": "OB", "InlineBinary": "AAECAw=="},
    "00191003": {"vr": "UN", "InlineBinary": "AAECAw=="},
    "7FE00010": {"vr": "OW", "BulkDataURI": "http://archive/bulk/1"},
}


def _pydicom_read(obj: dict) -> Dataset:
    return Dataset.from_json(obj, bulk_data_uri_handler=lambda tag, vr, uri: None)


def _shape(ds: Dataset) -> list:
    """Every element's tag, VR, Python type and value (sequences recursively): what "the same dataset" means."""
    shape = []
    for element in ds:
        value = element.value
        if element.VR == "SQ":
            value = [_shape(item) for item in value]
        elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = [(type(v).__name__, str(v)) for v in value]
        else:
            value = (type(value).__name__, str(value) if not isinstance(value, bytes) else value)
        shape.append((int(element.tag), element.VR, type(element.value).__name__, value))
    return shape


def _typed(obj: object) -> object:
    """JSON data with each value's exact type (IS(3) == 3, but a JSON encoder may not write them alike)."""
    if isinstance(obj, dict):
        return {key: _typed(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_typed(value) for value in obj]
    return type(obj).__name__, obj


def test_reading_gives_what_pydicom_reads():
    ours = dataset_from_json(ANSWER)
    assert _shape(ours) == _shape(_pydicom_read(ANSWER))
    assert ours.PatientName == PersonName("Yamada^Tarou=山田^太郎=やまだ^たろう")
    assert isinstance(ours.NumberOfStudyRelatedSeries, IS) and isinstance(ours.PatientSize, DSfloat)


def test_writing_gives_what_pydicom_writes():
    ds = _pydicom_read(ANSWER)
    ds.add_new(0x00100021, "LO", None)
    ds.add_new(0x00321060, "LO", "")
    ds.add_new(0x00080080, "LO", ["A", "B"])
    ds.add_new(0x00100030, "DA", "")
    ds.add_new(0x00081060, "PN", ["A^B", "C^D=E^F"])
    ds.add_new(0x00081070, "PN", "")
    ds.add_new(0x00200013, "IS", "7")
    ds.add_new(0x00081140, "SQ", Sequence([Dataset()]))
    expected = ds.to_json_dict(bulk_data_threshold=10**9, bulk_data_element_handler=None)
    assert _typed(dataset_to_json(ds)) == _typed(expected)
    assert json.dumps(dataset_to_json(ds)) == json.dumps(expected)  # the same attribute order


def test_a_round_trip_keeps_the_dataset():
    ds = dataset_from_json(ANSWER)
    assert _shape(dataset_from_json(dataset_to_json(ds))) == _shape(ds)


def test_a_person_name_given_as_a_string_is_read_as_pydicom_reads_it():
    obj = {"00100010": {"vr": "PN", "Value": ["Doe^John"]}}  # not PS3.18, but some servers write it
    with pytest.warns(UserWarning):
        expected = _pydicom_read(obj)
    with pytest.warns(UserWarning):
        assert _shape(dataset_from_json(obj)) == _shape(expected)


@pytest.mark.parametrize("payload, reason", [
    ({"0010001": {"vr": "LO"}}, "invalid attribute tag"),
    ({"00100020": {"Value": ["1"]}}, "has no 'vr'"),
    ({"00081250": {"vr": "SQ", "Value": ["not an item"]}}, "an item of sequence 00081250 must be an object"),
    ({"00081250": {"vr": "SQ", "Value": [{"0020000D": {"Value": ["1"]}}]}}, "has no 'vr'"),
    ({"00201206": {"vr": "IS", "Value": ["twelve"]}}, "malformed DICOM JSON"),
])
def test_malformed_attributes_are_named(payload, reason):
    with pytest.raises(DicomJsonError, match=reason):
        dataset_from_json(payload)


def test_an_answer_must_be_an_array_of_objects():
    assert datasets_from_json(b"  ") == []
    assert len(datasets_from_json(json.dumps([ANSWER, ANSWER]).encode())) == 2
    with pytest.raises(DicomJsonError, match="must be an array"):
        datasets_from_json(b'{"00100020": {"vr": "LO"}}')
    with pytest.raises(DicomJsonError, match="must be an object"):
        datasets_from_json(b"[1]")


def test_values_an_archive_got_wrong_are_kept_as_pydicom_keeps_them():
    odd = {"00080060": {"vr": "CS", "Value": ["not a code string!"]},  # lower case, too long, '!'
           "00100020": {"vr": "LO", "Value": ["x" * 80]},  # over LO's 64 characters
           "0020000D": {"vr": "UI", "Value": ["1.2.abc"]},
           "00101020": {"vr": "DS", "Value": [1.23456789012345678]}}  # more than DS's 16 characters
    with pytest.warns(UserWarning):
        expected = _pydicom_read(odd)  # pydicom's default reading mode warns and keeps the value
    assert _shape(dataset_from_json(odd)) == _shape(expected)
