"""Query keys as people type them (findscu's `-k`) or send them (JSON bodies) -> a C-FIND Identifier.

Accepted key forms (DCMTK findscu syntax): "Keyword=Value", "Keyword" (a return key), "(0010,0020)=X",
"0010,0020=X", "00100020=X", and a path into a sequence "ReferencedStudySequence[0].ReferencedSOPInstanceUID=1.2"
(only item 0: sequence matching uses one item, PS3.4 C.2.2.2.6).

Values are checked against their VR (PS3.5 6.2, Table 6.2-1) as a C-FIND key may carry them (PS3.4 C.2.2.2):
wild cards only in the VRs that allow them, ranges only in DA/TM/DT (and then up to twice the length), several
backslash-separated values each checked on its own. Errors are `QueryKeyError` (a ValueError) naming the key.

Default return keys: when the caller gave *no* return key at all (only matching keys), `build_identifier` adds
the level's usual columns (DEFAULT_RETURN_KEYS, the attributes PS3.18 Table 6.7.1-2 makes QIDO-RS return by
default, plus the unique keys of the levels above), so a bare "PatientID=123" gives useful rows. As soon as one
return key is given the caller is taken to know what they want and nothing is added except the level's unique key,
which is always present (PS3.4 C.4.1.2.3: it is returned in every response).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from pydicom import Dataset, config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from shared.dicom.levels import UNIQUE_KEYS, InformationModel, QueryLevel, parent_unique_keys
from shared.dicom.matching import RANGE_VRS, WILDCARD_VRS


class QueryKeyError(ValueError):
    """A query key or its value is not acceptable; the message names the key."""


# PS3.5 Table 6.2-1 maximum lengths (characters; PN per component group). None: no practical limit checked.
MAX_LENGTH: dict[str, int | None] = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "LT": 10240, "PN": 64,
    "SH": 16, "ST": 1024, "TM": 14, "UI": 64, "UC": None, "UR": None, "UT": None,
}
NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"})

DEFAULT_RETURN_KEYS: dict[QueryLevel, tuple[str, ...]] = {
    QueryLevel.PATIENT: ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                         "NumberOfPatientRelatedStudies"),
    QueryLevel.STUDY: ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                       "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
                       "ModalitiesInStudy", "ReferringPhysicianName", "NumberOfStudyRelatedSeries",
                       "NumberOfStudyRelatedInstances", "StudyInstanceUID"),
    QueryLevel.SERIES: ("Modality", "SeriesNumber", "SeriesDescription", "NumberOfSeriesRelatedInstances",
                        "SeriesInstanceUID"),
    QueryLevel.IMAGE: ("SOPClassUID", "InstanceNumber", "SOPInstanceUID"),
}

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_CS_RE = re.compile(r"^[A-Z0-9 _*?]*$")
_AS_RE = re.compile(r"^\d{3}[DWMY]$")
_TM_RE = re.compile(r"^([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?$")
_DT_RE = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")
_TAG_RE = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")
_SEGMENT_RE = re.compile(r"^(?P<name>[^\[\]]+)(\[(?P<index>\d+)\])?$")


@dataclass(frozen=True)
class QueryKey:
    """One parsed key: the path of tags (more than one for a key inside a sequence) and its value."""

    path: tuple[BaseTag, ...]
    value: str | None  # None: a return key

    @property
    def tag(self) -> BaseTag:
        return self.path[-1]

    @property
    def keyword(self) -> str:
        return keyword_for_tag(self.tag) or str(self.tag)

    @property
    def vr(self) -> str:
        return dictionary_VR(self.tag)


def parse_key(text: str) -> QueryKey:
    """Parse one findscu-style key ("Keyword=Value", "Keyword", "(gggg,eeee)=Value", "gggg,eeee=Value",
    "ggggeeee=Value", "Seq[0].Keyword=Value"); the value is validated against the VR (PS3.5 6.2)."""
    name, sep, value = text.strip().partition("=")
    if not name.strip():
        raise QueryKeyError(f"empty query key in {text!r}")
    path = tuple(_resolve_tag(segment, text) for segment in _split_path(name.strip(), text))
    key = QueryKey(path=path, value=value if sep else None)
    if key.value:
        validate_value(key.keyword, key.vr, key.value)
    return key


def validate_value(keyword: str, vr: str, value: str) -> None:
    """Check a matching-key value against the VR rules a C-FIND key may use (PS3.5 6.2, PS3.4 C.2.2.2)."""
    if vr == "SQ":
        raise QueryKeyError(f"{keyword} is a sequence: give keys inside it, e.g. {keyword}[0].Keyword=Value")
    if "\\" in value and vr != "UI" and vr not in {"CS", "LO", "SH", "AE", "PN", "DA", "TM", "DT", "IS"}:
        raise QueryKeyError(f"{keyword} ({vr}) cannot take several backslash-separated values")
    for part in value.split("\\"):
        _validate_single(keyword, vr, part)


def build_identifier(
    keys: Iterable[str] | Mapping[str, Any],
    level: QueryLevel | str,
    *,
    model: InformationModel | str = InformationModel.STUDY_ROOT,
    default_return_keys: bool = True,
) -> Dataset:
    """A C-FIND Identifier (PS3.4 C.4.1.1.3) at `level` from findscu-style strings or a {key: value} mapping.

    A mapping value of None or "" is a return key. QueryRetrieveLevel is set; the level's unique key is added as
    a return key when absent; DEFAULT_RETURN_KEYS (and the parent unique keys, PS3.4 C.4.1.2.2.1) are added when
    the caller gave only matching keys and `default_return_keys` is true. A QueryRetrieveLevel key among `keys`
    must agree with `level`.
    """
    level = QueryLevel.parse(level) if isinstance(level, str) else level
    model = InformationModel.parse(model) if isinstance(model, str) else model
    if not model.allows(level):
        raise QueryKeyError(f"the {model.value} information model has no {level.value} level (PS3.4 C.6.2)")
    parsed = _parse_all(keys)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level.value
    for key in parsed:
        if key.tag == Tag(0x00080052):
            if key.value and QueryLevel.parse(key.value) is not level:
                raise QueryKeyError(f"QueryRetrieveLevel={key.value} contradicts the requested level {level.value}")
            continue
        _apply(identifier, key)
    has_return_key = any(k.value in (None, "") for k in parsed if k.tag != Tag(0x00080052))
    extra: tuple[str, ...] = (UNIQUE_KEYS[level],)
    if default_return_keys and not has_return_key:
        extra = DEFAULT_RETURN_KEYS[level] + parent_unique_keys(level, model) + extra
    for keyword in extra:
        if keyword not in identifier:
            identifier.add(DataElement(tag_for_keyword(keyword), dictionary_VR(keyword), None))
    return identifier


def identifier_from_mapping(
    body: Mapping[str, Any],
    *,
    level: QueryLevel | str | None = None,
    model: InformationModel | str = InformationModel.STUDY_ROOT,
    default_return_keys: bool = True,
) -> Dataset:
    """An Identifier from a JSON body: {"PatientID": "123", "00100010": "DOE*", "StudyInstanceUID": null, ...}.

    Values may be strings, numbers, null/"" (return key) or lists of strings (joined with "\\"). A DICOM JSON
    element ({"vr": "LO", "Value": [...]}, PS3.18 F.2.2) is accepted as well. The level comes from `level` or
    from a "QueryRetrieveLevel" entry; one of them is required.
    """
    if not isinstance(body, Mapping):
        raise QueryKeyError(f"a query must be a JSON object, got {type(body).__name__}")
    flat: dict[str, str | None] = {}
    for name, raw in body.items():
        flat[str(name)] = _json_value(str(name), raw)
    body_level = flat.pop("QueryRetrieveLevel", None)
    chosen = level or body_level
    if not chosen:
        raise QueryKeyError("no query level: give QueryRetrieveLevel (PATIENT, STUDY, SERIES or IMAGE)")
    try:
        parsed_level = QueryLevel.parse(str(chosen))
    except ValueError as exc:
        raise QueryKeyError(str(exc)) from None
    if level and body_level and QueryLevel.parse(str(body_level)) is not parsed_level:
        raise QueryKeyError(f"QueryRetrieveLevel={body_level} contradicts the requested level {parsed_level.value}")
    return build_identifier(flat, parsed_level, model=model, default_return_keys=default_return_keys)


# --- helpers ---------------------------------------------------------------------------------------------------


def _parse_all(keys: Iterable[str] | Mapping[str, Any]) -> list[QueryKey]:
    if isinstance(keys, Mapping):
        texts = [name if value is None else f"{name}={value}" for name, value in keys.items()]
    elif isinstance(keys, str):
        raise QueryKeyError("keys must be a list of strings or a mapping, not one string")
    else:
        texts = list(keys)
    return [parse_key(text) for text in texts]


def _split_path(name: str, text: str) -> list[str]:
    segments = name.split(".")
    for segment in segments[:-1]:
        match = _SEGMENT_RE.match(segment)
        if not match or (match.group("index") not in (None, "0")):
            raise QueryKeyError(f"invalid sequence path in {text!r}: only item [0] can be queried (PS3.4 C.2.2.2.6)")
    return segments


def _resolve_tag(segment: str, text: str) -> BaseTag:
    match = _SEGMENT_RE.match(segment.strip())
    name = match.group("name").strip() if match else segment
    tag_match = _TAG_RE.match(name)
    if tag_match:
        tag = Tag(int(tag_match.group(1), 16), int(tag_match.group(2), 16))
        try:
            dictionary_VR(tag)
        except KeyError:
            raise QueryKeyError(f"unknown tag {name} in {text!r} (not in the DICOM data dictionary)") from None
        return tag
    tag_int = tag_for_keyword(name)
    if tag_int is None:
        raise QueryKeyError(f"unknown attribute keyword {name!r} in {text!r}")
    return Tag(tag_int)


def _apply(identifier: Dataset, key: QueryKey) -> None:
    target = identifier
    for tag in key.path[:-1]:
        if tag not in target or dictionary_VR(tag) != "SQ":
            if dictionary_VR(tag) != "SQ":
                raise QueryKeyError(f"{keyword_for_tag(tag)} is not a sequence")
            target.add(DataElement(tag, "SQ", Sequence([Dataset()])))
        seq = target[tag].value
        if not seq:
            seq.append(Dataset())
        target = seq[0]
    vr = key.vr
    if vr == "SQ":
        target.add(DataElement(key.tag, "SQ", Sequence()))
    elif key.value in (None, ""):
        if key.tag not in target:  # a bare return key never erases a matching value given for the same attribute
            target.add(DataElement(key.tag, vr, None))
    else:
        # wild cards and ranges are not valid stored values: skip pydicom's value validation for query keys
        target.add(DataElement(key.tag, vr, key.value, validation_mode=config.IGNORE))


def _json_value(name: str, raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise QueryKeyError(f"{name}: a boolean is not a DICOM value")
    if isinstance(raw, (int, float, str)):
        return str(raw)
    if isinstance(raw, list):
        if not all(isinstance(v, (str, int, float)) for v in raw):
            raise QueryKeyError(f"{name}: a list value must hold strings or numbers")
        return "\\".join(str(v) for v in raw) or None
    if isinstance(raw, Mapping) and "vr" in raw:
        values = raw.get("Value") or []
        if values and isinstance(values[0], Mapping):
            if "Alphabetic" in values[0]:
                return "\\".join(str(v.get("Alphabetic", "")) for v in values) or None
            raise QueryKeyError(f"{name}: sequence values are not supported in a flat query body")
        return _json_value(name, list(values))
    raise QueryKeyError(f"{name}: unsupported value {raw!r}")


def _validate_single(keyword: str, vr: str, value: str) -> None:
    wild = "*" in value or "?" in value
    if vr in RANGE_VRS:
        _validate_temporal(keyword, vr, value)
        return
    if wild and vr not in WILDCARD_VRS:
        raise QueryKeyError(f"{keyword} ({vr}) does not allow wild cards * and ? (PS3.4 C.2.2.2.4)")
    limit = MAX_LENGTH.get(vr)
    length = max((len(group) for group in value.split("=")), default=0) if vr == "PN" else len(value)
    if limit is not None and length > limit:
        raise QueryKeyError(f"{keyword} ({vr}) value {value!r} is longer than {limit} characters (PS3.5 6.2)")
    checker = _CHECKS.get(vr)
    if checker is not None:
        checker(keyword, value)


def _check_ui(keyword: str, value: str) -> None:
    if not _UID_RE.match(value):
        raise QueryKeyError(f"{keyword} (UI) value {value!r} is not a UID: digits and dots, no leading zeros (PS3.5 9.1)")


def _check_cs(keyword: str, value: str) -> None:
    if not _CS_RE.match(value):
        raise QueryKeyError(f"{keyword} (CS) value {value!r} may only hold A-Z, 0-9, space and _ (PS3.5 6.2)")


def _check_as(keyword: str, value: str) -> None:
    if not _AS_RE.match(value):
        raise QueryKeyError(f"{keyword} (AS) value {value!r} must look like 045Y (PS3.5 6.2)")


def _check_is(keyword: str, value: str) -> None:
    try:
        number = int(value.strip())
    except ValueError:
        raise QueryKeyError(f"{keyword} (IS) value {value!r} is not an integer") from None
    if not -(2**31) <= number < 2**31:
        raise QueryKeyError(f"{keyword} (IS) value {value!r} is out of range (PS3.5 6.2)")


def _check_ds(keyword: str, value: str) -> None:
    try:
        float(value.strip())
    except ValueError:
        raise QueryKeyError(f"{keyword} (DS) value {value!r} is not a decimal number") from None


def _check_text(keyword: str, value: str) -> None:
    if any(ord(ch) < 32 and ch not in "\x1b" for ch in value):
        raise QueryKeyError(f"{keyword}: control characters are not allowed in {value!r}")


_CHECKS = {"UI": _check_ui, "CS": _check_cs, "AS": _check_as, "IS": _check_is, "DS": _check_ds,
           "LO": _check_text, "SH": _check_text, "PN": _check_text, "AE": _check_text}


def _validate_temporal(keyword: str, vr: str, value: str) -> None:
    """DA/TM/DT: one value or a range "a-b", "a-", "-b" (PS3.4 C.2.2.2.5); each side a valid value."""
    if "*" in value or "?" in value:
        raise QueryKeyError(f"{keyword} ({vr}) does not allow wild cards; use a range like 20240101-20241231")
    sides = _temporal_sides(vr, value)
    if sides is None or not any(sides):
        raise QueryKeyError(f"{keyword} ({vr}) value {value!r} is not a valid {vr} value or range")
    for side in sides:
        if side and not _valid_temporal(vr, side):
            raise QueryKeyError(f"{keyword} ({vr}) value {side!r} in {value!r} is not a valid {_FORMAT[vr]}")
    low, high = sides
    if len(sides) == 2 and low and high and vr == "DA" and low > high:
        raise QueryKeyError(f"{keyword} range {value!r} ends before it starts")


_FORMAT = {"DA": "date YYYYMMDD", "TM": "time HH[MM[SS[.FFFFFF]]]", "DT": "date-time YYYY[MM[DD[HH[MM[SS]]]]]"}


def _temporal_sides(vr: str, value: str) -> tuple[str, str] | None:
    if vr != "DT":
        low, sep, high = value.partition("-")
        if "-" in high:
            return None
        return (low, high) if sep else (low, low)
    for index, ch in enumerate(value):
        if ch == "-":
            low, high = value[:index], value[index + 1 :]
            if (not low or _DT_RE.match(low)) and (not high or _DT_RE.match(high)):
                return low, high
    return value, value  # a single value (the caller validates it)


def _valid_temporal(vr: str, value: str) -> bool:
    if vr == "DA":
        if not re.fullmatch(r"\d{8}", value):
            return False
        try:
            dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
        except ValueError:
            return False
        return True
    if vr == "TM":
        return _TM_RE.match(value.replace(":", "")) is not None
    return _DT_RE.match(value) is not None and len(value) <= MAX_LENGTH["DT"]
