"""Incoming QIDO-RS search parameters (PS3.18 8.3.4, 10.6.1.2) -> a C-FIND Identifier plus the paging controls.

Pure: the spanning API (services.api.routes.qido) turns a request's query string into a `QidoSearch` and spans the
identifier; this module knows nothing of HTTP frameworks. Rules:

- **Matching keys** (PS3.18 8.3.4.1): `{attribute}={value}` where the attribute is a keyword (`PatientName`), a tag
  (`00100020`) or a dotted path into a sequence (`ReferencedStudySequence.ReferencedSOPInstanceUID`). Values are
  checked against the VR as a C-FIND key (shared.dicom.query_keys); a comma-separated value of a UI attribute is
  List of UID Matching (PS3.4 C.2.2.2.2). An empty value is universal matching, i.e. a return key. An attribute
  given twice, or contradicting a UID of the resource path, is an error.
- **includefield** (PS3.18 8.3.4.3), repeatable or comma-separated: attribute keywords/tags as return keys, or
  `all`. A spanning server cannot ask a DIMSE archive for "every attribute", so `all` means the fixed ALL_KEYS list
  of the level (the level's default attributes plus common optional ones); archives return what they hold of it.
- **Defaults** (PS3.18 Table 10.6.3-3..5): DEFAULT_RETURN_KEYS of the level and the unique keys of the levels above
  (so an un-nested /series or /instances answer says where each match belongs) are always requested.
- **limit / offset** (8.3.4.4): non-negative integers; `fuzzymatching` (8.3.4.2): `true` or `false`.

Every problem is a `QidoParameterError` (a ValueError) whose `parameter` names the offending query parameter, for a
400 that says what to fix (PS3.18 8.3.4, 10.6.3.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from pydicom import Dataset

from shared.dicom.levels import InformationModel, QueryLevel, parent_unique_keys
from shared.dicom.query_keys import (
    DEFAULT_RETURN_KEYS,
    QueryKey,
    QueryKeyError,
    build_identifier,
    parse_key,
)

CONTROL_PARAMETERS = frozenset({"includefield", "limit", "offset", "fuzzymatching"})
RETRIEVE_URL = "RetrieveURL"  # (0008,1190): written by the server that answers, never asked of the sources

# `includefield=all`: the level's defaults plus common optional attributes a C-FIND SCP may hold (PS3.4 C.6.2.1).
ALL_KEYS: dict[QueryLevel, tuple[str, ...]] = {
    QueryLevel.STUDY: DEFAULT_RETURN_KEYS[QueryLevel.STUDY] + (
        "OtherPatientIDs", "PatientAge", "PatientSize", "PatientWeight", "InstitutionName",
        "NameOfPhysiciansReadingStudy", "AdmittingDiagnosesDescription", "SOPClassesInStudy"),
    QueryLevel.SERIES: DEFAULT_RETURN_KEYS[QueryLevel.SERIES] + (
        "SeriesDate", "SeriesTime", "BodyPartExamined", "ProtocolName", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "Laterality"),
    QueryLevel.IMAGE: DEFAULT_RETURN_KEYS[QueryLevel.IMAGE] + (
        "ContentDate", "ContentTime", "Rows", "Columns", "NumberOfFrames", "AcquisitionNumber", "ImageType"),
}


class QidoParameterError(ValueError):
    """A QIDO-RS query parameter is unknown or its value is bad; `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class QidoSearch:
    """A parsed QIDO-RS search: the Identifier to span (no QueryRetrieveLevel) and the paging controls."""

    level: QueryLevel
    identifier: Dataset
    limit: int | None = None
    offset: int = 0
    fuzzy_matching: bool = False
    include_all: bool = False
    requested: frozenset[str] = frozenset()  # attribute keywords the caller named (matching keys and includefield)


def parse_qido_search(
    level: QueryLevel,
    params: Iterable[tuple[str, str]],
    *,
    path_uids: Mapping[str, str] | None = None,
) -> QidoSearch:
    """The search for `params` (name, value pairs in order) at `level`, scoped by the resource path's UIDs
    (e.g. {"StudyInstanceUID": ...} for /studies/{study}/series). QidoParameterError names what is wrong."""
    path_uids = dict(path_uids or {})
    for keyword, uid in path_uids.items():
        _parsed(keyword, f"{keyword}={uid}")
    matching: dict[str, str] = {}
    include: list[str] = []
    limit, offset, fuzzy = None, 0, False
    for name, value in params:
        lowered = name.lower()
        if lowered == "includefield":
            include += [part.strip() for part in value.split(",") if part.strip()]
        elif lowered == "limit":
            limit = _count(name, value)
        elif lowered == "offset":
            offset = _count(name, value)
        elif lowered == "fuzzymatching":
            fuzzy = _boolean(name, value)
        else:
            keyword, text = _matching_key(name, value)
            if keyword in matching or keyword in path_uids:
                raise QidoParameterError(name, f"{name} is given more than once (or also by the resource path)")
            matching[keyword] = text
    include_all = any(item.lower() == "all" for item in include)
    return_keys = [_return_key(item) for item in include if item.lower() != "all"]
    identifier = _identifier(level, {**path_uids, **matching}, return_keys, include_all)
    requested = frozenset(matching) | frozenset(return_keys)
    return QidoSearch(level, identifier, limit, offset, fuzzy, include_all, requested)


def _identifier(level: QueryLevel, matching: Mapping[str, str], return_keys: list[str], include_all: bool) -> Dataset:
    """Matching keys, then the default, `all` and requested return keys; a bare return key never erases a value."""
    keys: list[str] = [f"{name}={value}" if value else name for name, value in matching.items()]
    wanted = list(DEFAULT_RETURN_KEYS[level]) + list(parent_unique_keys(level, InformationModel.STUDY_ROOT))
    wanted += list(ALL_KEYS[level]) if include_all else []
    keys += [key for key in wanted + return_keys if key != RETRIEVE_URL]
    identifier = build_identifier(keys, level, default_return_keys=False)
    del identifier.QueryRetrieveLevel  # a SpanRequest's identifier carries none (the adapters add their own)
    return identifier


def _matching_key(name: str, value: str) -> tuple[str, str]:
    """(the parameter's attribute as a key name build_identifier accepts, the value as a C-FIND value)."""
    key = _parsed(name, name)
    if key.vr == "UI" and "," in value:
        value = "\\".join(part.strip() for part in value.split(","))
    if value:
        _parsed(name, f"{name}={value}")
    canonical = key.keyword if len(key.path) == 1 and not key.keyword.startswith("(") else name
    return canonical, value


def _return_key(name: str) -> str:
    key = _parsed("includefield", name)
    if key.value is not None:
        raise QidoParameterError("includefield", f"includefield takes attribute names, not {name!r}")
    return key.keyword if len(key.path) == 1 and not key.keyword.startswith("(") else name


def _parsed(parameter: str, text: str) -> QueryKey:
    try:
        return parse_key(text)
    except QueryKeyError as exc:
        raise QidoParameterError(parameter, f"query parameter {parameter!r}: {exc}") from None


def _count(name: str, value: str) -> int:
    if not value.strip().isdigit():
        raise QidoParameterError(name, f"{name} must be a non-negative integer, got {value!r}")
    return int(value.strip())


def _boolean(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise QidoParameterError(name, f"{name} must be true or false, got {value!r}")
    return lowered == "true"
