"""Specific Character Set decoding (PS3.5 6.1) and output normalisation."""

from __future__ import annotations

import io

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from shared.dicom.charset import decode_dataset, decode_text, normalize_output_charset, python_codecs

JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"  # PS3.5 H.3.1


def round_trip(ds: Dataset) -> Dataset:
    """Encode `ds` as a Part 10 file with its declared charset and read it back (values stay raw until used)."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False, implicit_vr=False, little_endian=True)
    buffer.seek(0)
    return dcmread(buffer, force=True)


def test_latin1_file_round_trip():
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.StudyDescription = "Thorax"
    read = round_trip(ds)
    assert b"M\xfcller" in read.get_item(0x00100010).value  # really Latin-1 on the wire
    decode_dataset(read)
    assert str(read.PatientName) == "Müller^Jürgen" and read.StudyDescription == "Thorax"


def test_japanese_iso_2022_ir_87_round_trip():
    ds = Dataset()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = JAPANESE
    read = round_trip(ds)
    raw = read.get_item(0x00100010).value
    assert b"\x1b$B" in raw  # escape sequence to JIS X 0208
    decode_dataset(read)
    assert str(read.PatientName) == JAPANESE
    assert read.PatientName.ideographic == "山田^太郎"


def test_utf8_raw_values_and_multi_values():
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Gómez^Zoë".encode()
    ds.add_new(0x00081030, "LO", "Étude\\Zweite".encode())
    decode_dataset(ds)
    assert str(ds.PatientName) == "Gómez^Zoë" and list(ds.StudyDescription) == ["Étude", "Zweite"]


def test_bad_bytes_fall_back_to_utf8_then_latin1():
    # undeclared charset (ASCII) but UTF-8 bytes: decoded as UTF-8
    ds = Dataset()
    ds.PatientName = "Müller".encode()
    decode_dataset(ds)
    assert str(ds.PatientName) == "Müller"
    # declared UTF-8 but Latin-1 bytes: Latin-1, nothing lost
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = b"M\xfcller"
    decode_dataset(ds)
    assert str(ds.PatientName) == "Müller"


def test_unknown_and_misspelled_terms():
    assert python_codecs("ISO-IR 100") == ["latin_1"]
    assert python_codecs(["", "ISO2022 IR 87"]) == ["ascii", "iso2022_jp"]
    assert python_codecs("KLINGON") == []
    assert decode_text(b"M\xfcller", python_codecs("KLINGON")) == ("Müller", True)
    assert decode_text(b"abc", ["latin_1"]) == ("abc", False)


def test_nested_items_inherit_or_declare_their_charset():
    item_inherits = Dataset()
    item_inherits.PatientName = b"M\xfcller"
    item_declares = Dataset()
    item_declares.SpecificCharacterSet = "ISO_IR 192"
    item_declares.PatientName = "Gómez".encode()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.OtherPatientIDsSequence = Sequence([item_inherits, item_declares])
    decode_dataset(ds)
    assert str(item_inherits.PatientName) == "Müller" and str(item_declares.PatientName) == "Gómez"


def test_normalize_non_ascii_becomes_utf8_and_survives_encoding():
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyInstanceUID = "1.2"
    item = Dataset()
    item.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    item.PatientName = "山田^太郎"
    ds.OtherPatientIDsSequence = Sequence([item])
    ds.PatientName = "Müller"
    normalize_output_charset(ds)
    assert ds.SpecificCharacterSet == "ISO_IR 192" and "SpecificCharacterSet" not in item
    read = round_trip(ds)
    assert "山田".encode() in read.OtherPatientIDsSequence[0].get_item(0x00100010).value
    decode_dataset(read)
    assert str(read.OtherPatientIDsSequence[0].PatientName) == "山田^太郎" and str(read.PatientName) == "Müller"


def test_normalize_ascii_removes_the_declaration():
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Smith^John"
    normalize_output_charset(ds)
    assert "SpecificCharacterSet" not in ds
    only_nested = Dataset()
    item = Dataset()
    item.PatientName = "Zoë"
    only_nested.OtherPatientIDsSequence = Sequence([item])
    assert normalize_output_charset(only_nested).SpecificCharacterSet == "ISO_IR 192"
