"""What a Query/Retrieve SCP receives, checked and turned into the spanner's requests (pure: pydicom + shared).

A C-FIND identifier becomes a SpanRequest, a C-MOVE/C-GET identifier a RetrieveRequest. Anything the standard
does not allow raises IdentifierError, whose message is meant for the Error Comment (0000,0902) of a 0xA900
"Identifier does not match SOP Class" response (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4):

* Query/Retrieve Level (0008,0052) must be present and be a level of the SOP class's information model
  (PS3.4 C.6.1, C.6.2: Study Root has no PATIENT level).
* A matching key's value must be valid for its VR and for matching (PS3.4 C.2.2.2; shared.dicom.query_keys).
* A retrieve identifier must carry the unique key of its level and of the levels above it (PS3.4 C.4.2.2.1,
  C.6.1.1 / C.6.2.1: "baseline" hierarchical retrieve), as valid UIDs; at its own level a list of UIDs is allowed.
"""

from __future__ import annotations

import re

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.multival import MultiValue

from shared.dicom.levels import (
    PATIENT_ROOT_FIND, PATIENT_ROOT_GET, PATIENT_ROOT_MOVE, STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE,
    UNIQUE_KEYS, InformationModel, QueryLevel, parent_unique_keys,
)
from shared.dicom.query_keys import QueryKeyError, validate_value
from shared.retrieval.model import RetrieveRequest
from shared.spanning.model import SpanRequest

MODELS = {
    PATIENT_ROOT_FIND: InformationModel.PATIENT_ROOT, PATIENT_ROOT_MOVE: InformationModel.PATIENT_ROOT,
    PATIENT_ROOT_GET: InformationModel.PATIENT_ROOT, STUDY_ROOT_FIND: InformationModel.STUDY_ROOT,
    STUDY_ROOT_MOVE: InformationModel.STUDY_ROOT, STUDY_ROOT_GET: InformationModel.STUDY_ROOT,
}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_NOT_KEYS = {0x00080005, 0x00080052}  # Specific Character Set and the level are not matching keys


class IdentifierError(ValueError):
    """The identifier does not match the SOP class; the message names what is wrong (<= 64 chars preferred)."""


def request_level(identifier: Dataset, sop_class: str) -> tuple[QueryLevel, InformationModel]:
    """The Query/Retrieve Level of the request and the SOP class's information model (PS3.4 C.6)."""
    model = MODELS.get(str(sop_class))
    if model is None:
        raise IdentifierError(f"{sop_class} is not a Query/Retrieve SOP class")
    raw = identifier.get("QueryRetrieveLevel")
    if not raw:
        raise IdentifierError("QueryRetrieveLevel (0008,0052) is missing")
    try:
        level = QueryLevel.parse(str(raw))
    except ValueError:
        raise IdentifierError(f"QueryRetrieveLevel {str(raw)!r} is not a level") from None
    if not model.allows(level):
        raise IdentifierError(f"{model.value} has no {level.value} level")
    return level, model


def find_request(identifier: Dataset, sop_class: str, *, query_id: str | None = None) -> SpanRequest:
    """A C-FIND identifier (already decoded from its Specific Character Set) as a SpanRequest: level and model
    checked, every matching key's value validated, QueryRetrieveLevel and Specific Character Set left out."""
    level, model = request_level(identifier, sop_class)
    keys = Dataset()
    for element in identifier:
        if element.tag in _NOT_KEYS or element.tag.element == 0:
            continue
        if element.VR != "SQ" and element.value not in (None, ""):
            _validate(element.tag, element.VR, element.value)
        keys.add(element)
    extra = {"query_id": query_id} if query_id else {}
    return SpanRequest(level=level, identifier=keys, model=model, **extra)


def retrieve_request(identifier: Dataset, sop_class: str, *, query_id: str | None = None) -> RetrieveRequest:
    """A C-MOVE/C-GET identifier as a RetrieveRequest: the unique keys of the level and the levels above it,
    present and valid (a list of UIDs at the request's own level, PS3.4 C.4.2.2.1)."""
    level, model = request_level(identifier, sop_class)
    keys = Dataset()
    for keyword in parent_unique_keys(level, model) + (UNIQUE_KEYS[level],):
        value = _text(identifier.get(keyword)).strip()
        if not value:
            raise IdentifierError(f"{keyword} is required at the {level.value} level")
        if keyword == "PatientID":
            if "\\" in value and keyword != UNIQUE_KEYS[level]:
                raise IdentifierError("PatientID must be a single value above the PATIENT level")
        else:
            single = keyword != UNIQUE_KEYS[level]
            _check_uids(keyword, value, single=single)
        setattr(keys, keyword, value)
    extra = {"query_id": query_id} if query_id else {}
    return RetrieveRequest(level=level, identifier=keys, model=model, **extra)


def _validate(tag: int, vr: str, value: object) -> None:
    keyword = keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    try:
        validate_value(keyword, str(vr or _dictionary_vr(tag)), _text(value))
    except QueryKeyError as exc:
        raise IdentifierError(str(exc)) from None


def _text(value: object) -> str:
    """An element value as its DICOM string form (multiple values joined with backslash)."""
    if value is None:
        return ""
    return "\\".join(str(v) for v in value) if isinstance(value, (MultiValue, list, tuple)) else str(value)


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _check_uids(keyword: str, value: str, *, single: bool) -> None:
    parts = value.split("\\")
    if single and len(parts) > 1:
        raise IdentifierError(f"{keyword} must be a single UID above the request's level")
    for part in parts:
        if len(part) > 64 or not _UID.match(part):
            raise IdentifierError(f"{keyword} {part[:24]!r} is not a valid UID")
