"""Synthetic, reproducible PACS content for the simulator: patients > studies > series > instances.

A `Catalog` holds one flat record per instance (patient + study + series + instance attributes, no pixel data);
study/series/patient records are derived from them (ModalitiesInStudy, NumberOfStudyRelated*, ...), so what a
C-FIND at any level answers is always consistent with what a C-MOVE retrieves. `instance_dataset()` renders a
record as a small valid DICOM file (16x16 MONOCHROME2, Explicit VR Little Endian).

Same seed, same arguments -> the same catalog, UIDs included (UIDs are "2.25." + a hash of the seed and the path,
PS3.5 B.2). `overlapping_catalogs()` cuts several PACS out of one master catalog so that they share studies.
"""

from __future__ import annotations

import copy
import hashlib
import random
import threading
from typing import Iterable

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from shared.dicom.levels import UNIQUE_KEYS, QueryLevel

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
}
FAMILY = ["Müller", "Smith", "García", "Dubois", "Nakamura", "Ødegård", "Rossi", "Novák", "Kowalski", "Jones",
          "Lefèvre", "Brown", "Schmidt", "Öztürk", "Andersson", "Doe"]
GIVEN = ["Jürgen", "Anna", "José", "Zoé", "Hiroshi", "Åse", "Marco", "Jana", "Piotr", "Emma", "Noël", "John"]
DESCRIPTIONS = {"CT": ["CT CHEST W CONTRAST", "CT HEAD WO", "CT ABDOMEN PELVIS"], "MR": ["MR BRAIN", "MR KNEE LEFT"],
                "CR": ["XR CHEST 2 VIEWS"], "DX": ["XR HAND RIGHT"], "US": ["US ABDOMEN"], "MG": ["MAMMO SCREENING"]}
PHYSICIANS = ["House^Gregory", "Grey^Meredith", "Weiß^Karl", "Quinn^Michaela", ""]
PATIENT_KEYS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex")
STUDY_KEYS = PATIENT_KEYS + ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                             "StudyDescription", "ReferringPhysicianName")
SERIES_KEYS = STUDY_KEYS + ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription")
LEVEL_KEYS = {QueryLevel.PATIENT: PATIENT_KEYS, QueryLevel.STUDY: STUDY_KEYS, QueryLevel.SERIES: SERIES_KEYS}
# Attributes a less complete PACS may lack for a shared study (to exercise MOST_COMPLETE / MERGE_ALL).
OPTIONAL_STUDY_KEYS = ("StudyDescription", "ReferringPhysicianName", "AccessionNumber", "PatientBirthDate")


def make_uid(seed: int, *path: object) -> str:
    """A deterministic UID under the 2.25 arc (PS3.5 B.2): '2.25.' + a 128-bit integer from seed and path."""
    digest = hashlib.sha256(repr((seed, *path)).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big') or 1}"


class Catalog:
    """What one simulated PACS holds. Thread-safe: C-STORE adds while C-FINDs read."""

    def __init__(self, records: Iterable[Dataset] = ()) -> None:
        self._lock = threading.Lock()
        self._instances: dict[str, Dataset] = {}
        self._stored: dict[str, Dataset] = {}  # SOPInstanceUID -> full dataset received by C-STORE
        self._cache: dict[QueryLevel, list[Dataset]] = {}
        for record in records:
            self._instances[record.SOPInstanceUID] = record

    def __len__(self) -> int:
        return len(self._instances)

    def add(self, dataset: Dataset) -> None:
        """Add (or replace) an instance, e.g. one received by C-STORE; the full dataset is kept for retrieval."""
        record = Dataset()
        for element in dataset:
            if element.tag.group not in (0x0002, 0x7FE0) and not element.tag.is_private:
                record.add(copy.deepcopy(element))
        with self._lock:
            self._instances[record.SOPInstanceUID] = record
            self._stored[record.SOPInstanceUID] = dataset
            self._cache.clear()

    def records(self, level: QueryLevel) -> list[Dataset]:
        """Flat records at `level` (an instance record carries every level's attributes)."""
        with self._lock:
            if level not in self._cache:
                self._cache[level] = _aggregate(list(self._instances.values()), level)
            return self._cache[level]

    def instances(self) -> list[Dataset]:
        with self._lock:
            return list(self._instances.values())

    def study_uids(self) -> list[str]:
        return [r.StudyInstanceUID for r in self.records(QueryLevel.STUDY)]

    def dataset(self, sop_instance_uid: str) -> Dataset:
        """The instance as a DICOM file dataset: the C-STOREd original, or a rendering of the record."""
        with self._lock:
            stored = self._stored.get(sop_instance_uid)
            record = self._instances[sop_instance_uid]
        return stored if stored is not None else instance_dataset(record)

    def subset(self, study_uids: Iterable[str], *, drop: Iterable[str] = ()) -> "Catalog":
        """A new catalog with only these studies, without the attributes in `drop` (less complete data)."""
        wanted, dropped = set(study_uids), tuple(drop)
        records = []
        for record in self.instances():
            if record.StudyInstanceUID in wanted:
                clone = copy.deepcopy(record)
                for keyword in dropped:
                    if keyword in clone:
                        del clone[keyword]
                records.append(clone)
        return Catalog(records)


def generate_catalog(
    seed: int,
    *,
    patients: int = 10,
    studies: int = 20,
    series_per_study: int | tuple[int, int] = (1, 3),
    instances_per_series: int | tuple[int, int] = (1, 3),
    issuer: str = "AXIOM-SIM",
    start_year: int = 2015,
) -> Catalog:
    """A reproducible catalog: `studies` studies spread over `patients` patients (some names non-ASCII)."""
    rng = random.Random(seed)
    people = [_patient(rng, seed, index, issuer) for index in range(max(1, patients))]
    records: list[Dataset] = []
    for study_index in range(studies):
        patient = people[study_index % len(people)]
        study = _study(rng, seed, study_index, patient, start_year)
        for series_index in range(_count(rng, series_per_study)):
            series = _series(rng, seed, study_index, series_index, study)
            for instance_index in range(_count(rng, instances_per_series)):
                records.append(_instance(seed, study_index, series_index, instance_index, series))
    return Catalog(records)


def overlapping_catalogs(
    seed: int,
    names: Iterable[str],
    *,
    studies: int = 20,
    shared_fraction: float = 0.5,
    sparse: bool = True,
    **shape: object,
) -> dict[str, Catalog]:
    """Several PACS cut from one master catalog: a `shared_fraction` of the studies is held by all of them, the
    rest is dealt out round-robin. With `sparse`, every PACS but the first lacks OPTIONAL_STUDY_KEYS on the
    shared studies, so the first one has the most complete records."""
    names = list(names)
    master = generate_catalog(seed, studies=studies, **shape)  # type: ignore[arg-type]
    uids = master.study_uids()
    shared_count = round(len(uids) * shared_fraction)
    shared, rest = uids[:shared_count], uids[shared_count:]
    result: dict[str, Catalog] = {}
    for position, name in enumerate(names):
        own = rest[position :: len(names)]
        full = master.subset(own)
        sparse_part = master.subset(shared, drop=OPTIONAL_STUDY_KEYS if sparse and position else ())
        result[name] = Catalog(full.instances() + sparse_part.instances())
    return result


def instance_dataset(record: Dataset, *, size: int = 16) -> Dataset:
    """A record as a small valid DICOM instance with file meta (PS3.10) and size x size MONOCHROME2 pixels."""
    ds = copy.deepcopy(record)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    offset = int(ds.InstanceNumber) * 7
    ds.PixelData = b"".join(((offset + x * y) % 4096).to_bytes(2, "little") for y in range(size) for x in range(size))
    ds.set_original_encoding(False, True)
    return ds


# --- generation --------------------------------------------------------------------------------------------------


def _count(rng: random.Random, spec: int | tuple[int, int]) -> int:
    return spec if isinstance(spec, int) else rng.randint(spec[0], spec[1])


def _patient(rng: random.Random, seed: int, index: int, issuer: str) -> dict:
    year = rng.randint(1935, 2015)
    return {
        "PatientName": f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}",
        "PatientID": f"P{seed % 1000:03d}{index:05d}",
        "IssuerOfPatientID": issuer,
        "PatientBirthDate": f"{year:04d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
        "PatientSex": rng.choice(["F", "M", "O"]),
    }


def _study(rng: random.Random, seed: int, index: int, patient: dict, start_year: int) -> dict:
    modality = rng.choice(list(SOP_CLASSES))
    return {
        **patient,
        "StudyInstanceUID": make_uid(seed, "study", index),
        "StudyDate": f"{rng.randint(start_year, start_year + 9):04d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
        "StudyTime": f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}",
        "AccessionNumber": f"A{seed % 100:02d}{index:06d}",
        "StudyID": str(index + 1),
        "StudyDescription": rng.choice(DESCRIPTIONS[modality]),
        "ReferringPhysicianName": rng.choice(PHYSICIANS),
        "_modality": modality,
    }


def _series(rng: random.Random, seed: int, study_index: int, index: int, study: dict) -> dict:
    # Mostly the study's modality; sometimes a second one, so ModalitiesInStudy becomes multi-valued.
    modality = study["_modality"] if index == 0 or rng.random() < 0.6 else rng.choice(list(SOP_CLASSES))
    return {
        **study,
        "SeriesInstanceUID": make_uid(seed, "series", study_index, index),
        "Modality": modality,
        "SeriesNumber": str(index + 1),
        "SeriesDescription": f"{modality} series {index + 1}",
    }


def _instance(seed: int, study_index: int, series_index: int, index: int, series: dict) -> Dataset:
    ds = Dataset()
    for keyword, value in series.items():
        if not keyword.startswith("_"):
            setattr(ds, keyword, value)
    ds.SOPClassUID = SOP_CLASSES[series["Modality"]]
    ds.SOPInstanceUID = make_uid(seed, "instance", study_index, series_index, index)
    ds.InstanceNumber = str(index + 1)
    return ds


def _aggregate(instances: list[Dataset], level: QueryLevel) -> list[Dataset]:
    """Derive level records and their computed attributes (PS3.4 C.6.1.1.2-C.6.1.1.4: Number of ..., Modalities)."""
    if level is QueryLevel.IMAGE:
        return [_with_counts(r, instances, QueryLevel.IMAGE) for r in instances]
    key = UNIQUE_KEYS[level]
    groups: dict[str, list[Dataset]] = {}
    for record in instances:
        if key in record:
            groups.setdefault(str(record[key].value), []).append(record)
    result = []
    for members in groups.values():
        ds = Dataset()
        for keyword in LEVEL_KEYS[level]:
            values = [m[keyword] for m in members if keyword in m]
            if values:
                ds.add(copy.deepcopy(values[0]))
        result.append(_with_counts(ds, members, level))
    return result


def _with_counts(ds: Dataset, members: list[Dataset], level: QueryLevel) -> Dataset:
    if level is QueryLevel.IMAGE:
        return ds
    series = {m.SeriesInstanceUID for m in members}
    if level is QueryLevel.PATIENT:
        ds.NumberOfPatientRelatedStudies = len({m.StudyInstanceUID for m in members})
        ds.NumberOfPatientRelatedSeries = len(series)
        ds.NumberOfPatientRelatedInstances = len(members)
    elif level is QueryLevel.STUDY:
        ds.ModalitiesInStudy = sorted({m.Modality for m in members})
        ds.NumberOfStudyRelatedSeries = len(series)
        ds.NumberOfStudyRelatedInstances = len(members)
    else:
        ds.NumberOfSeriesRelatedInstances = len(members)
    return ds
