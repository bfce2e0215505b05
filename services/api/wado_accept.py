"""Accept negotiation of the WADO-RS routes (PS3.18 8.7, 8.7.3.5: acceptable media types; RFC 9110 12.5.1 Accept).

This server does not transcode: a retrieve answers with the instances in the transfer syntax their holder sent,
so it can only honour a request that leaves the syntax open. 406 Not Acceptable names what is supported.

- Instances (retrieve): no Accept, `*/*`, `multipart/*`, or `multipart/related` whose `type` is absent or
  `application/dicom` and whose `transfer-syntax` is absent or `*`. Absent transfer-syntax would ask for Explicit
  VR Little Endian by PS3.18 8.7.3.5.2; without transcoding it is served like `*` (as stored), a documented
  difference.
- Metadata: no Accept, `*/*`, `application/*`, `application/dicom+json` or `application/json`.
A media range with q=0 is "not acceptable" (RFC 9110 12.4.2) and is ignored.
"""

from __future__ import annotations

import re

from fastapi import HTTPException, status

from shared.dicom.multipart import content_type_params

BULK_SUPPORTED = 'multipart/related; type="application/dicom" (transfer-syntax absent or *, no transcoding)'
METADATA_SUPPORTED = "application/dicom+json (or application/json)"
_RANGE = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*")+')  # one media range: commas inside quotes belong to it


def media_ranges(values: list[str]) -> list[tuple[str, dict[str, str]]]:
    """The media ranges of Accept header values: (type/subtype lower-cased, parameters), q=0 ranges left out."""
    ranges = []
    for value in values:
        for text in _RANGE.findall(value):
            media_type = text.split(";", 1)[0].strip().lower()
            if not media_type:
                continue
            params = content_type_params(text)
            if params.get("q", "").strip() in ("0", "0.0", "0.00", "0.000"):
                continue
            ranges.append((media_type, params))
    return ranges


def check_bulk_accept(values: list[str]) -> None:
    """406 unless the Accept header allows multipart/related application/dicom as stored (module doc)."""
    ranges = media_ranges(values)
    if not any(value.strip() for value in values) or any(_bulk_ok(media_type, params) for media_type, params in ranges):
        return
    _refuse(values, BULK_SUPPORTED)


def check_metadata_accept(values: list[str]) -> None:
    """406 unless the Accept header allows DICOM JSON (module doc)."""
    ranges = media_ranges(values)
    allowed = {"*/*", "application/*", "application/dicom+json", "application/json"}
    if not any(value.strip() for value in values) or any(media_type in allowed for media_type, _ in ranges):
        return
    _refuse(values, METADATA_SUPPORTED)


def _bulk_ok(media_type: str, params: dict[str, str]) -> bool:
    if media_type in ("*/*", "multipart/*"):
        return True
    if media_type != "multipart/related":
        return False
    part_type = params.get("type", "application/dicom").strip().lower()
    syntax = params.get("transfer-syntax", "*").strip()
    return part_type == "application/dicom" and syntax == "*"


def _refuse(values: list[str], supported: str) -> None:
    asked = ", ".join(values)[:200]
    raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE,
                        f"Accept {asked!r} cannot be satisfied: this resource is served as {supported}")
