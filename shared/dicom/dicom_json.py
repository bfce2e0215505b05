"""Dataset <-> DICOM JSON Model (PS3.18 Annex F).

Strict: malformed input raises DicomJsonError (a ValueError) with the reason, never a bare KeyError/TypeError from
deep inside, so an adapter can report the source as failed.

Both directions have a fast path for what query answers are made of, giving exactly pydicom's values and types
(tests/unit/test_dicom_json.py compares them): reading, attributes with a "Value" array (text, numbers, PN objects,
sequences), one-value attributes built directly (`_single_value_element`); writing, text, number, PN and SQ values.
The rest (InlineBinary, BulkDataURI, AT, UN, binary VRs) goes through pydicom's own DICOM JSON code. Why: pydicom's
reader inspects the bulk-data handler's signature (inspect.signature) once per attribute and dispatches each value
through generic conversion code: parsing one Orthanc QIDO-RS answer of 18 studies cost ~8 ms of CPU (now ~1.2 ms),
with four sources more CPU than the archives took to answer on a 2-core machine; its writer is ~3x slower than the
fast path. One difference: single values read by the fast path are not validated against their VR (pydicom's
default reading mode would only log a warning; the value is the same).
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from pydicom import Dataset, config
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.jsonrep import JSON_VALUE_KEYS, convert_to_python_number
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import ALLOW_BACKSLASH, DS, FLOAT_VR, INT_VR, IS, VR, PersonName

BulkDataHandler = Callable[[str, str, str], bytes | None]
# VRs whose "Value" array holds JSON strings or numbers that pydicom takes as they are (PS3.18 Table F.2.3-1).
_PLAIN_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "SH", "SL", "SS", "ST",
                        "SV", "TM", "UC", "UI", "UL", "UR", "US", "UT", "UV"})
# VRs whose values pydicom's convert_to_python_number turns into int or float (the rest it leaves alone).
_NUMBER_VRS = frozenset(str(vr) for vr in (INT_VR - {VR.AT}) | {VR.US_SS} | FLOAT_VR)
# One-value attributes read by _single_value_element: VR -> how pydicom converts the value (_TEXT: kept as str).
_TEXT = str
_KINDS: dict[str, type] = {
    **dict.fromkeys(("AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UR", "UT"), _TEXT),
    **dict.fromkeys(("SL", "SS", "SV", "UL", "US", "UV"), int), **dict.fromkeys(("FD", "FL"), float),
    "UI": UID, "PN": PersonName, "IS": IS, "DS": DS,
}
_DATE_TIME_VRS = frozenset({"DA", "DT", "TM"})  # converted by pydicom when config.datetime_conversion is on
_TAG_FORMAT = re.compile(r"[0-9A-Fa-f]{8}")


class DicomJsonError(ValueError):
    """The payload is not a valid DICOM JSON dataset or array of datasets (PS3.18 F.2)."""


def _no_bulk_data(tag: str, vr: str, uri: str) -> bytes | None:
    # Query results never need bulk data; a BulkDataURI is kept out of the dataset rather than fetched.
    return None


def dataset_from_json(obj: Any, bulk_data_handler: BulkDataHandler | None = None) -> Dataset:
    """One DICOM JSON object (PS3.18 F.2.2) -> Dataset. Raises DicomJsonError when it is malformed."""
    if not isinstance(obj, dict):
        raise DicomJsonError(f"a DICOM JSON dataset must be an object, got {type(obj).__name__}")
    handler = bulk_data_handler or _no_bulk_data
    dataset = Dataset()
    for tag, element in obj.items():
        if not isinstance(tag, str) or not _TAG_FORMAT.fullmatch(tag):
            raise DicomJsonError(f"invalid attribute tag {tag!r}: PS3.18 F.2.1.1 wants 8 hex digits")
        if not isinstance(element, dict) or "vr" not in element:
            raise DicomJsonError(f"attribute {tag} has no 'vr' (PS3.18 F.2.3)")
        try:
            data_element = _single_value_element(tag, element) or _element_from_json(tag, element, handler)
        except DicomJsonError:
            raise
        except Exception as exc:  # pydicom raises many kinds for bad values
            raise DicomJsonError(f"malformed DICOM JSON: {exc}") from exc
        if data_element.VR in _KINDS and not data_element.tag.is_private:
            dataset._dict[data_element.tag] = data_element  # all Dataset.__setitem__ would do for these
        else:
            dataset.add(data_element)  # private creators, sequences
    return dataset


def _single_value_element(tag: str, element: dict) -> DataElement | None:
    """The element pydicom builds from an attribute with one plain value (`{"vr": .., "Value": [v]}`, most of a
    QIDO-RS answer), built directly: the same value conversion (jsonrep.convert_to_python_number, then
    DataElement._convert: UID, PersonName, IS, DS; text and binary numbers as they are), without pydicom's
    generic dispatch and without validating the value against its VR (in pydicom's default reading mode that only
    logs a warning: the value is the same either way). None for anything else: the general path reads it."""
    values = element.get("Value")
    if type(values) is not list or len(values) != 1 or len(element) != 2:
        return None
    vr, value = element["vr"], values[0]
    kind = _KINDS.get(vr)
    if kind is None or value is None or value == "":
        return None
    if kind is _TEXT or kind is UID:
        if type(value) is not str or ("\\" in value and vr not in ALLOW_BACKSLASH) or (
                vr in _DATE_TIME_VRS and config.datetime_conversion):
            return None
        if kind is UID:
            value = UID(value, config.IGNORE)
    elif kind is PersonName:
        name = _person_name(value) if type(value) is dict else ""
        if not name or "\\" in name:
            return None
        value = PersonName(name, validation_mode=config.IGNORE)
    elif kind is IS:
        value = IS(int(value), config.IGNORE)
    elif kind is DS:
        value = DS(float(value), False, config.IGNORE)
    else:
        value = kind(value)  # int or float
    return DataElement(BaseTag(int(tag, 16)), vr, value, validation_mode=config.settings.reading_validation_mode,
                       already_converted=True)


def _element_from_json(tag: str, element: dict, handler: BulkDataHandler) -> DataElement:
    """One attribute (PS3.18 F.2.2-F.2.7); the fast path for "Value" arrays, pydicom's reader for the rest."""
    vr = element["vr"]
    keys = [key for key in JSON_VALUE_KEYS if key in element]
    if not keys:
        return DataElement(int(tag, 16), vr, empty_value_for_VR(vr))
    values = element.get("Value")
    if keys != ["Value"] or not isinstance(values, list) or not _fast_values(vr, values):
        key = keys[0]
        return DataElement.from_json(Dataset, tag, vr, element[key], key, handler)
    if not values:
        return DataElement(int(tag, 16), vr, empty_value_for_VR(vr))
    if vr == "SQ":
        return DataElement(int(tag, 16), vr, Sequence([_item_from_json(tag, item, handler) for item in values]))
    if vr == "PN":
        values = [_person_name(value) for value in values]
    elif None in values:
        values = [empty_value_for_VR(vr) if value is None else value for value in values]
    value = values[0] if len(values) == 1 else values
    if vr in _NUMBER_VRS:
        value = convert_to_python_number(value, vr)
    return DataElement(int(tag, 16), vr, value)


def _item_from_json(tag: str, item: Any, handler: BulkDataHandler) -> Dataset:
    """A sequence item (PS3.18 F.2.6): a DICOM JSON object; `null` is an empty item, as pydicom reads it."""
    if item is None:
        return Dataset()
    if not isinstance(item, dict):
        raise DicomJsonError(f"an item of sequence {tag} must be an object, got {type(item).__name__}")
    return dataset_from_json(item, handler)


def _fast_values(vr: str, values: list) -> bool:
    """Whether the fast path reads this "Value" array as pydicom would: plain VRs, sequences, and PN arrays of
    objects (pydicom tolerates, with a warning, PN values given as strings: those go through pydicom)."""
    if vr in _PLAIN_VRS or vr == "SQ":
        return True
    return vr == "PN" and all(value is None or isinstance(value, dict) for value in values)


def _person_name(value: dict | None) -> str:
    """A PN value object (PS3.18 F.2.2): its Alphabetic, Ideographic and Phonetic groups joined with "="."""
    if value is None:
        return empty_value_for_VR("PN")
    groups = [value.get("Alphabetic", ""), value.get("Ideographic", ""), value.get("Phonetic", "")]
    used = 3 if "Phonetic" in value else 2 if "Ideographic" in value else 1
    return "=".join(groups[:used])


def json_objects(payload: str | bytes | list[Any]) -> list[Any]:
    """The items of a DICOM JSON array body (PS3.18 F.2: QIDO-RS answers, WADO-RS metadata); an empty body is [].
    DicomJsonError when it is not JSON or not an array."""
    data = payload
    if isinstance(payload, (str, bytes, bytearray)):
        if not payload.strip():
            return []
        try:
            data = json.loads(payload)
        except ValueError as exc:
            raise DicomJsonError(f"response is not JSON: {exc}") from exc
    if not isinstance(data, list):
        raise DicomJsonError(f"a DICOM JSON response must be an array, got {type(data).__name__}")
    return data


def datasets_from_json(payload: str | bytes | list[Any]) -> list[Dataset]:
    """A DICOM JSON array (e.g. a QIDO-RS response body, PS3.18 F.2) -> datasets."""
    return [dataset_from_json(item) for item in json_objects(payload)]


def dataset_to_json(ds: Dataset, *, bulk_data_threshold: int = 1024, bulk_data_uri: Callable | None = None) -> dict:
    """Dataset -> DICOM JSON object (PS3.18 F.2), attributes in the dataset's own order as pydicom writes them.
    Binary values above the threshold need `bulk_data_uri` (else they are written inline)."""
    threshold = 10**9 if bulk_data_uri is None else bulk_data_threshold
    answer = {}
    for tag, element in list(ds._dict.items()):  # Dataset.keys() order; ds[tag] only to convert a raw element
        if type(element) is not DataElement:
            element = ds[tag]
        answer[f"{tag:08X}"] = _element_to_json(element, threshold, bulk_data_uri)
    return answer


def _element_to_json(element: DataElement, threshold: int, bulk_data_uri: Callable | None) -> dict:
    """One attribute as PS3.18 F.2.2-F.2.7 writes it: the fast path for text, numbers, PN and SQ."""
    vr, value = element.VR, element.value
    if vr in _PLAIN_VRS:
        if value is None or value == "" or (isinstance(value, MultiValue | list) and not value):
            return {"vr": vr}
        values = list(value) if isinstance(value, MultiValue | list) else [value]
        return {"vr": vr, "Value": convert_to_python_number(values, vr) if vr in _NUMBER_VRS else values}
    if vr == "PN" and isinstance(value, PersonName | MultiValue | list | str):
        names = list(value) if isinstance(value, MultiValue | list) else [value] if value else []
        if not names:  # no value (VM 0)
            return {"vr": vr}
        return {"vr": vr, "Value": [_person_name_json(name) for name in names]}
    if vr == "SQ" and isinstance(value, Sequence | list):
        return {"vr": vr, "Value": [dataset_to_json(item, bulk_data_threshold=threshold, bulk_data_uri=bulk_data_uri)
                                    for item in value]}
    return element.to_json_dict(bulk_data_element_handler=bulk_data_uri, bulk_data_threshold=threshold)


def _person_name_json(name: PersonName | str) -> dict[str, str]:
    """A PN value object (PS3.18 F.2.2) with as many groups as the name has, as pydicom writes it."""
    components = name.components if isinstance(name, PersonName) else PersonName(name).components
    json_name = {"Alphabetic": components[0]}
    if len(components) > 1:
        json_name["Ideographic"] = components[1]
    if len(components) > 2:
        json_name["Phonetic"] = components[2]
    return json_name
