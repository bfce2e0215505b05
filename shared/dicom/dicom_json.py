"""Dataset <-> DICOM JSON Model (PS3.18 Annex F).

Thin, strict wrappers over pydicom's implementation: malformed input raises DicomJsonError (a ValueError) with the
reason, never a bare KeyError/TypeError from deep inside, so an adapter can report the source as failed.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from pydicom import Dataset

BulkDataHandler = Callable[[str, str, str], bytes | None]


class DicomJsonError(ValueError):
    """The payload is not a valid DICOM JSON dataset or array of datasets (PS3.18 F.2)."""


def _no_bulk_data(tag: str, vr: str, uri: str) -> bytes | None:
    # Query results never need bulk data; a BulkDataURI is kept out of the dataset rather than fetched.
    return None


def dataset_from_json(obj: Any, bulk_data_handler: BulkDataHandler | None = None) -> Dataset:
    """One DICOM JSON object (PS3.18 F.2.2) -> Dataset. Raises DicomJsonError when it is malformed."""
    if not isinstance(obj, dict):
        raise DicomJsonError(f"a DICOM JSON dataset must be an object, got {type(obj).__name__}")
    for tag, element in obj.items():
        if not isinstance(tag, str) or len(tag) != 8 or not _is_hex(tag):
            raise DicomJsonError(f"invalid attribute tag {tag!r}: PS3.18 F.2.1.1 wants 8 hex digits")
        if not isinstance(element, dict) or "vr" not in element:
            raise DicomJsonError(f"attribute {tag} has no 'vr' (PS3.18 F.2.3)")
    try:
        return Dataset.from_json(obj, bulk_data_uri_handler=bulk_data_handler or _no_bulk_data)
    except Exception as exc:  # pydicom raises many kinds for bad values
        raise DicomJsonError(f"malformed DICOM JSON: {exc}") from exc


def datasets_from_json(payload: str | bytes | list[Any]) -> list[Dataset]:
    """A DICOM JSON array (e.g. a QIDO-RS response body, PS3.18 F.2) -> datasets."""
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
    return [dataset_from_json(item) for item in data]


def dataset_to_json(ds: Dataset, *, bulk_data_threshold: int = 1024, bulk_data_uri: Callable | None = None) -> dict:
    """Dataset -> DICOM JSON object (PS3.18 F.2). Binary values above the threshold need `bulk_data_uri`."""
    if bulk_data_uri is None:
        return ds.to_json_dict(bulk_data_threshold=10**9, bulk_data_element_handler=None)
    return ds.to_json_dict(bulk_data_threshold=bulk_data_threshold, bulk_data_element_handler=bulk_data_uri)



def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True
