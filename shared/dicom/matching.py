"""Attribute matching for C-FIND and QIDO-RS, PS3.4 C.2.2.2 (pure: pydicom only).

Which keys match: every element of the Identifier with a non-empty value is a *matching key*; an empty one is a
*return key* (universal matching, PS3.4 C.2.2.2.3). Query/Retrieve Level (0008,0052) and Specific Character Set
(0008,0005) describe the query and never match. Group-length and private elements are ignored.

The matching kind follows from the key's VR and value (PS3.4 C.2.2.2):

- UI with one or more backslash-separated values: List of UID matching (C.2.2.2.2);
- DA, TM, DT containing "-": range matching "a-b", "a-", "-b" (C.2.2.2.5); a single DA/TM/DT value is matched as
  the range [v, v] at the value's own precision, so StudyTime "10" matches 10:00:00 .. 10:59:59.999999;
- "*" and "?" in a value of a wildcard-capable VR (AE, CS, LO, LT, PN, SH, ST, UC, UR, UT): wild card matching
  (C.2.2.2.4); a value of only "*" is universal matching. In other VRs "*" and "?" are literal characters;
- SQ with one item: sequence matching (C.2.2.2.6), the item's keys matched recursively against any candidate item;
- everything else: single value matching (C.2.2.2.1), exact and case-sensitive; PN case-insensitive on request.

Multi-valued candidates (e.g. ModalitiesInStudy "CT\\MR") match when any of their values matches (PS3.4 C.2.2.2,
"matching of attributes with value multiplicity greater than one"). A query value with several values (other
than UI) is treated as "any of them" (PS3.4 C.2.2.2.8 Multiple Value Matching). Trailing spaces are never
significant (PS3.4 C.2.2.2.1). An absent or empty candidate value does not match a non-universal key.
"""

from __future__ import annotations

import copy
import re

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.datadict import dictionary_VR
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from shared.dicom.levels import UNIQUE_KEYS, QueryLevel

# VRs for which "*" and "?" are wild cards (PS3.4 C.2.2.2.4 lists the VRs where they are NOT).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
RANGE_VRS = frozenset({"DA", "TM", "DT"})
IGNORED_KEYS = frozenset({Tag(0x00080052), Tag(0x00080005)})  # QueryRetrieveLevel, SpecificCharacterSet

# DT: YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]][&ZZXX]; an offset is dropped for comparison (simulator data has none).
_DT_RE = re.compile(r"^(\d{4,14})(\.\d{1,6})?([+-]\d{4})?$")


def is_matching_key(element: DataElement) -> bool:
    """True when `element` is a matching key: it has a value and is not a query-control attribute (C.2.2.2)."""
    if element.tag in IGNORED_KEYS or element.tag.is_private or element.tag.element == 0:
        return False
    if element.VR == "SQ":
        return any(_has_matching_keys(item) for item in element.value or [])
    return not _is_empty(element)


def matches(
    identifier: Dataset,
    candidate: Dataset,
    *,
    level: QueryLevel | str | None = None,
    pn_case_insensitive: bool = False,
) -> bool:
    """True when `candidate` satisfies every matching key of `identifier` (PS3.4 C.2.2.2).

    `level` is accepted for symmetry with `project`: matching itself does not depend on it, because a candidate
    is the flat record of one entity at the query level, carrying the attributes of the levels above it too
    (PS3.4 C.4.1.2.2.1, hierarchical search). `pn_case_insensitive` relaxes PN single-value and wild-card matching, as PS3.4 C.2.2.2.1
    allows ("literal matching that is ... insensitive to ... case").
    """
    del level  # matching does not depend on the level: keys are matched against the flat candidate record
    for element in identifier:
        if not is_matching_key(element):
            continue
        if not _element_matches(element, candidate.get(element.tag), pn_case_insensitive):
            return False
    return True


def project(identifier: Dataset, candidate: Dataset, *, level: QueryLevel | str | None = None) -> Dataset:
    """The C-FIND response Identifier for one match (PS3.4 C.4.1.2.3).

    Every key of the request (matching or return) comes back with the candidate's value, or empty when the
    candidate has none; sequence keys are projected item by item. QueryRetrieveLevel is echoed, the level's
    unique key is added when the request lacked it, and SpecificCharacterSet is copied from the candidate.
    """
    response = Dataset()
    for element in identifier:
        if element.tag == Tag(0x00080005) or element.tag.is_private or element.tag.element == 0:
            continue
        if element.tag == Tag(0x00080052):
            response.add(copy.deepcopy(element))
            continue
        response.add(_project_element(element, candidate.get(element.tag)))
    level_name = level or identifier.get("QueryRetrieveLevel")
    if level_name:
        parsed = level_name if isinstance(level_name, QueryLevel) else QueryLevel.parse(str(level_name))
        unique = UNIQUE_KEYS[parsed]
        if unique not in response and unique in candidate:
            response[unique] = copy.deepcopy(candidate[unique])
    if "SpecificCharacterSet" in candidate:
        response.SpecificCharacterSet = candidate.SpecificCharacterSet
    return response


def response_tags(identifier: Dataset, level: QueryLevel) -> frozenset[int]:
    """The top-level tags a C-FIND response may carry for `identifier` (PS3.4 C.4.1.2.3): the requested keys, the
    level's unique key, Specific Character Set and Retrieve AE Title (which the spanner itself fills in)."""
    extra = (UNIQUE_KEYS[level], "SpecificCharacterSet", "RetrieveAETitle")
    return frozenset(int(element.tag) for element in identifier) | frozenset(int(Tag(k)) for k in extra)


def keep_response_keys(dataset: Dataset, allowed: frozenset[int]) -> Dataset:
    """Drop, in place, the top-level attributes of an answer that were not asked for (see `response_tags`).

    Archives return unrequested attributes (QIDO-RS servers add their default set, PS3.18 10.6.3.3.1); left in,
    they would make one archive's answer look more complete than another's that holds what was requested.
    """
    extra = [tag for tag in dataset.keys() if int(tag) not in allowed]
    for tag in extra:
        del dataset[tag]
    return dataset



def _element_matches(key: DataElement, stored: DataElement | None, pn_ci: bool) -> bool:
    if key.VR == "SQ":
        return _sequence_matches(key, stored, pn_ci)
    wanted = _values(key)
    if wanted == ["*"] and key.VR in WILDCARD_VRS:
        return True  # PS3.4 C.2.2.2.4: a value of only "*" is universal matching
    if stored is None or _is_empty(stored):
        return False
    have = _values(stored)
    return any(_value_matches(key.VR, w, h, pn_ci) for w in wanted for h in have)


def _value_matches(vr: str, wanted: str, have: str, pn_ci: bool) -> bool:
    if vr in RANGE_VRS:
        return _range_matches(vr, wanted, have)
    if vr == "PN":
        return _pn_matches(wanted, have, pn_ci)
    if vr in WILDCARD_VRS and ("*" in wanted or "?" in wanted):
        return wildcard_to_regex(wanted).fullmatch(have) is not None
    return wanted == have


def _pn_matches(wanted: str, have: str, case_insensitive: bool) -> bool:
    """PN: the whole value, or (query without "=") any of its component groups (PS3.5 6.2.1)."""
    if case_insensitive:
        wanted, have = wanted.casefold(), have.casefold()
    targets = [have] if "=" in wanted else [have, *have.split("=")]
    if "*" in wanted or "?" in wanted:
        pattern = wildcard_to_regex(wanted)
        return any(pattern.fullmatch(t) for t in targets)
    return wanted in targets


def _sequence_matches(key: DataElement, stored: DataElement | None, pn_ci: bool) -> bool:
    """PS3.4 C.2.2.2.6: the single query item matches if any stored item matches all its keys."""
    items = list(key.value or [])
    if not items or not _has_matching_keys(items[0]):
        return True
    if stored is None or stored.VR != "SQ" or not stored.value:
        return False
    return any(matches(items[0], item, pn_case_insensitive=pn_ci) for item in stored.value)


def wildcard_to_regex(value: str) -> re.Pattern[str]:
    """PS3.4 C.2.2.2.4: "*" any sequence of characters (also none), "?" exactly one character."""
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in value)
    return re.compile("".join(parts), re.DOTALL)


# --- ranges (PS3.4 C.2.2.2.5) --------------------------------------------------------------------------------


def _range_matches(vr: str, wanted: str, have: str) -> bool:
    low, sep, high = wanted.partition("-") if vr != "DT" else _split_dt_range(wanted)
    if not sep:
        high = low
    try:
        value_low, value_high = _bounds(vr, have)
        lo = _bounds(vr, low)[0] if low else None
        hi = _bounds(vr, high)[1] if high else None
    except ValueError:
        return False
    if lo is not None and value_high < lo:
        return False
    if hi is not None and value_low > hi:
        return False
    return True


def _split_dt_range(value: str) -> tuple[str, str, str]:
    """DT may carry a "-ZZXX" offset, so split on the "-" that is not part of an offset."""
    for index, ch in enumerate(value):
        if ch == "-" and (index == 0 or len(value[:index].split(".")[0].lstrip("-+")) >= 4):
            left, right = value[:index], value[index + 1 :]
            if _valid_dt_or_empty(left) and _valid_dt_or_empty(right):
                return left, "-", right
    return value, "", ""


def _valid_dt_or_empty(text: str) -> bool:
    return text == "" or _DT_RE.match(text) is not None


def _bounds(vr: str, value: str) -> tuple[str, str]:
    """A value at its own precision as a closed [low, high] interval of full-precision comparable strings."""
    value = value.strip()
    if vr == "DA":
        if not re.fullmatch(r"\d{8}", value):
            raise ValueError(value)
        return value, value
    if vr == "TM":
        whole, _, frac = value.replace(":", "").partition(".")
        if not re.fullmatch(r"\d{2}|\d{4}|\d{6}", whole) or not re.fullmatch(r"\d{0,6}", frac):
            raise ValueError(value)
        return _pad(whole + frac, 12, "0"), _pad(whole + frac, 12, "9")
    match = _DT_RE.match(value)
    if not match:
        raise ValueError(value)
    digits = match.group(1) + (match.group(2) or "").lstrip(".")
    return _pad(digits, 20, "0"), _pad(digits, 20, "9")


def _pad(digits: str, width: int, fill: str) -> str:
    return digits + fill * (width - len(digits))


# --- values ------------------------------------------------------------------------------------------------------


def _values(element: DataElement) -> list[str]:
    """Element value(s) as strings without trailing spaces (PS3.4 C.2.2.2.1)."""
    value = element.value
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("latin-1")
    if isinstance(value, str):
        items: list = value.split("\\")
    elif isinstance(value, (list, tuple, MultiValue)):
        items = list(value)
    else:
        items = [value]
    return [str(v).rstrip(" ") for v in items if v is not None and str(v).strip() != ""]


def _is_empty(element: DataElement) -> bool:
    if element.VR == "SQ":
        return not element.value
    return not _values(element)


def _has_matching_keys(item: Dataset) -> bool:
    return any(is_matching_key(e) for e in item)


def _project_element(key: DataElement, stored: DataElement | None) -> DataElement:
    if key.VR == "SQ":
        if stored is None or stored.VR != "SQ":
            return DataElement(key.tag, "SQ", Sequence())
        template = key.value[0] if key.value else None
        items = [project(template, item) if template is not None and len(template) else copy.deepcopy(item)
                 for item in stored.value]
        return DataElement(key.tag, "SQ", Sequence(items))
    if stored is None:
        vr = key.VR if key.VR else dictionary_VR(key.tag)
        return DataElement(key.tag, vr, None)
    return copy.deepcopy(stored)
