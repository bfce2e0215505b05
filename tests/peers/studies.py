"""Synthetic, deterministic DICOM studies for real-peer tests.

Six small studies over four patients (one with a non-ASCII name in ISO_IR 100), each with 1-2 series of 1-2
Secondary Capture instances. UIDs derive from the study/series/instance numbers, so every run and every archive
agree on them: archive A holds studies 1-5, archive B studies 3, 4 (the overlap) and 6 (its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

UID_ENTROPY = "axiom-test-studies-v1"


@dataclass(frozen=True)
class StudySpec:
    """One synthetic study: who, when, what, and how many instances per series."""

    number: int
    patient_id: str
    patient_name: str
    charset: str
    study_date: str
    modality: str
    accession: str
    instances_per_series: tuple[int, ...]

    @property
    def study_uid(self) -> str:
        return study_uid(self.number)

    def series_uid(self, series: int) -> str:
        return generate_uid(entropy_srcs=[UID_ENTROPY, "series", str(self.number), str(series)])

    def instance_uid(self, series: int, instance: int) -> str:
        return generate_uid(entropy_srcs=[UID_ENTROPY, "sop", str(self.number), str(series), str(instance)])

    @property
    def instance_count(self) -> int:
        return sum(self.instances_per_series)


STUDIES: tuple[StudySpec, ...] = (
    StudySpec(1, "PAT001", "Doe^John", "ISO_IR 6", "20200115", "CT", "ACC001", (1, 2)),
    StudySpec(2, "PAT001", "Doe^John", "ISO_IR 6", "20210310", "MR", "ACC002", (1,)),
    StudySpec(3, "PAT002", "Müller^Jürgen", "ISO_IR 100", "20200620", "CT", "ACC003", (2,)),
    StudySpec(4, "PAT003", "Smith^Anna", "ISO_IR 6", "20221201", "US", "ACC004", (1, 1)),
    StudySpec(5, "PAT003", "Smith^Anna", "ISO_IR 6", "20230105", "CR", "ACC005", (1,)),
    StudySpec(6, "PAT004", "Brown^Bob", "ISO_IR 6", "20190101", "MR", "ACC006", (2,)),
)
ARCHIVE_A = (1, 2, 3, 4, 5)
ARCHIVE_B = (3, 4, 6)


def study_uid(number: int) -> str:
    """The deterministic StudyInstanceUID of study `number`."""
    return generate_uid(entropy_srcs=[UID_ENTROPY, "study", str(number)])


def study(number: int) -> StudySpec:
    """The StudySpec with that number."""
    return next(s for s in STUDIES if s.number == number)


def build_instances(numbers: tuple[int, ...] | list[int]) -> list[Dataset]:
    """Every instance of the given studies as Part-10-ready datasets (file meta included)."""
    return [
        build_instance(spec, series, instance)
        for spec in (study(n) for n in numbers)
        for series, count in enumerate(spec.instances_per_series, start=1)
        for instance in range(1, count + 1)
    ]


def build_instance(spec: StudySpec, series: int, instance: int) -> Dataset:
    """One 8x8 monochrome Secondary Capture instance of `spec`."""
    sop_uid = spec.instance_uid(series, instance)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = spec.charset
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = spec.patient_id
    ds.PatientName = spec.patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = spec.study_uid
    ds.StudyDate = spec.study_date
    ds.StudyTime = "101500"
    ds.StudyID = f"S{spec.number}"
    ds.AccessionNumber = spec.accession
    ds.StudyDescription = f"Synthetic study {spec.number}"
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = spec.series_uid(series)
    ds.SeriesNumber = series
    ds.Modality = spec.modality
    ds.SeriesDescription = f"Series {series}"
    ds.InstanceNumber = instance
    ds.ConversionType = "WSD"
    _add_pixels(ds)
    return ds


def _add_pixels(ds: Dataset) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(64))


def to_part10(ds: Dataset) -> bytes:
    """The dataset as a DICOM Part-10 file (PS3.10 7.1) in memory."""
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
