"""Query/Retrieve levels, information models and their unique keys.

PS3.4 C.6.1 (Patient Root) and C.6.2 (Study Root) define the hierarchy PATIENT > STUDY > SERIES > IMAGE and the
unique key of each level (PS3.4 C.6.1.1 / C.6.2.1, Tables C.6-1 .. C.6-8).
"""

from __future__ import annotations

from enum import Enum

from shared.choices import parse_choice

# SOP Class UIDs, PS3.4 Table B.5-1 (kept literal so the pure engine never imports pynetdicom).
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"


class QueryLevel(str, Enum):
    """Query/Retrieve Level (0008,0052) values, PS3.4 C.6."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @classmethod
    def parse(cls, value: str) -> "QueryLevel":
        """Parse a level name case-insensitively ('INSTANCE' is accepted for IMAGE); ValueError names the value."""
        text = (value or "").strip().upper()
        if text == "INSTANCE":
            text = "IMAGE"
        try:
            return cls(text)
        except ValueError:
            return parse_choice(cls, value, "query level")  # raises, naming the value as it was given

    @property
    def depth(self) -> int:
        """0 for PATIENT .. 3 for IMAGE."""
        return list(QueryLevel).index(self)


class InformationModel(str, Enum):
    """The Query/Retrieve information model (PS3.4 C.6.1 Patient Root, C.6.2 Study Root)."""

    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"

    @classmethod
    def parse(cls, value: str) -> "InformationModel":
        """Accept 'P'/'patient'/'PATIENT_ROOT' and 'S'/'study'/'STUDY_ROOT'."""
        text = (value or "").strip().upper().replace("-", "_")
        aliases = {"P": cls.PATIENT_ROOT, "PATIENT": cls.PATIENT_ROOT, "S": cls.STUDY_ROOT, "STUDY": cls.STUDY_ROOT}
        if text in aliases:
            return aliases[text]
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"invalid information model {value!r}: expected PATIENT_ROOT or STUDY_ROOT") from None

    def allows(self, level: QueryLevel) -> bool:
        """Study Root has no PATIENT level (PS3.4 C.6.2)."""
        return not (self is InformationModel.STUDY_ROOT and level is QueryLevel.PATIENT)

    @property
    def find_sop_class(self) -> str:
        return (
            PATIENT_ROOT_FIND
            if self is InformationModel.PATIENT_ROOT
            else STUDY_ROOT_FIND
        )

    @property
    def move_sop_class(self) -> str:
        return (
            PATIENT_ROOT_MOVE
            if self is InformationModel.PATIENT_ROOT
            else STUDY_ROOT_MOVE
        )

    @property
    def get_sop_class(self) -> str:
        return (
            PATIENT_ROOT_GET
            if self is InformationModel.PATIENT_ROOT
            else STUDY_ROOT_GET
        )


# The unique key of each level (PS3.4 C.6.1.1.1-C.6.1.1.5). For PATIENT the spanner also uses
# IssuerOfPatientID: the same PatientID issued by two domains is two patients (PS3.3 C.7.1.1, C.7.1.3).
UNIQUE_KEYS: dict[QueryLevel, str] = {
    QueryLevel.PATIENT: "PatientID",
    QueryLevel.STUDY: "StudyInstanceUID",
    QueryLevel.SERIES: "SeriesInstanceUID",
    QueryLevel.IMAGE: "SOPInstanceUID",
}

DEDUP_KEYS: dict[QueryLevel, tuple[str, ...]] = {
    QueryLevel.PATIENT: ("PatientID", "IssuerOfPatientID"),
    QueryLevel.STUDY: ("StudyInstanceUID",),
    QueryLevel.SERIES: ("SeriesInstanceUID",),
    QueryLevel.IMAGE: ("SOPInstanceUID",),
}


def parent_unique_keys(level: QueryLevel, model: InformationModel) -> tuple[str, ...]:
    """Unique keys of the levels above `level` that a hierarchical query must carry (PS3.4 C.4.1.2.2.2)."""
    chain = [lvl for lvl in QueryLevel if lvl.depth < level.depth and model.allows(lvl)]
    return tuple(UNIQUE_KEYS[lvl] for lvl in chain)


def default_model(level: QueryLevel) -> InformationModel:
    """The information model a query at `level` uses when none is named: Patient Root for PATIENT (the only model
    with that level), Study Root otherwise (PS3.4 C.6.1, C.6.2)."""
    return InformationModel.PATIENT_ROOT if level is QueryLevel.PATIENT else InformationModel.STUDY_ROOT
