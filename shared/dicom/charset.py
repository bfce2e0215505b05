"""Specific Character Set (0008,0005) handling: decode what sources send, normalise what the spanner returns.

PS3.5 6.1 defines the character repertoires; PS3.3 C.12.1.1.2 the defined terms, including code extensions
(ISO 2022 escape sequences, PS3.5 6.1.2.5) and the stand-alone UTF-8 term "ISO_IR 192".

Decoding (`decode_dataset`) never raises and never silently drops bytes:

1. Each term of the dataset's own (0008,0005) is mapped to a Python codec (pydicom's table). Common misspellings
   ("ISO-IR 100", "ISO IR 100", "ISO2022 IR 87") are repaired. Unknown terms are ignored; an empty/absent value
   means the default repertoire (ISO-IR 6, i.e. ASCII).
2. A value is decoded strictly with those codecs, honouring ISO 2022 escape sequences (PS3.5 6.1.2.5.3).
3. **Fallback** when step 2 fails (bytes invalid for the declared charset, unknown escape sequence, or no usable
   term at all): strict UTF-8, else Latin-1. UTF-8 first because it is the usual truth behind a wrong or missing
   declaration and is self-validating; Latin-1 last because it maps every byte to a character, so nothing is lost
   and the original bytes can be recovered. Each fallback is logged as a warning naming the tag.

Sequence items inherit the parent's character set unless they declare their own (PS3.3 C.12.1.1.2).
Values that are already `str` (datasets built in code, DICOM JSON which is always UTF-8) are left alone.
"""

from __future__ import annotations

import logging
import re
from typing import Iterator, Sequence

from pydicom import Dataset
from pydicom.charset import CODES_TO_ENCODINGS, ESC, handled_encodings, python_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.datadict import dictionary_VR
from pydicom.multival import MultiValue
from pydicom.valuerep import PN_DELIMS, TEXT_VR_DELIMS, PersonName

logger = logging.getLogger(__name__)

UTF8_CHARSET = "ISO_IR 192"
SPECIFIC_CHARACTER_SET_TAG = 0x00080005
# VRs whose values use the Specific Character Set (PS3.5 6.1.2.3 / Table 6.2-1).
CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
# VRs where the backslash separates values (VM > 1), PS3.5 6.2.
_ESCAPED_FRAGMENT = re.compile(b"(^[^\x1b]+|[\x1b][^\x1b]*)")
FALLBACK_CODECS = ("utf-8", "latin_1")


def python_codecs(specific_character_set: str | Sequence[str] | None) -> list[str]:
    """Python codecs for a (0008,0005) value, PS3.3 C.12.1.1.2; unknown terms dropped, [] when none is usable.

    The first value may be empty (default repertoire with code extensions); an absent value means ASCII.
    """
    if specific_character_set is None or isinstance(specific_character_set, str):
        terms = [specific_character_set or ""]
    else:
        terms = list(specific_character_set) or [""]
    codecs: list[str] = []
    for index, term in enumerate(terms):
        term = (term or "").strip()
        if not term:
            if index == 0:
                codecs.append("ascii")  # empty first value: default repertoire, code extensions may follow
            continue
        codec = python_encoding.get(_repair_term(term))
        if codec is None:
            logger.warning("unknown Specific Character Set term %r ignored", term)
            continue
        codecs.append("ascii" if codec == "iso8859" else codec)
    return codecs


def _repair_term(term: str) -> str:
    """Fix the usual misspellings of defined terms (separators between ISO, IR and 2022)."""
    upper = term.upper()
    if upper in python_encoding:
        return upper
    match = re.fullmatch(r"ISO[\s_-]*(2022)?[\s_-]*IR[\s_-]*(\d+)", upper)
    if match is None:
        return upper
    return f"ISO 2022 IR {match.group(2)}" if match.group(1) else f"ISO_IR {match.group(2)}"


def decode_text(raw: bytes, codecs: Sequence[str], delimiters: set[int] = TEXT_VR_DELIMS) -> tuple[str, bool]:
    """Decode one encoded value; returns (text, used_fallback). See the module doc for the fallback order."""
    if codecs:
        try:
            return _decode_strict(raw, codecs, delimiters), False
        except (UnicodeError, LookupError, ValueError):
            pass
    for codec in FALLBACK_CODECS:
        try:
            return raw.decode(codec), True
        except UnicodeError:
            continue
    raise AssertionError("latin_1 decodes every byte string")  # pragma: no cover


def _decode_strict(raw: bytes, codecs: Sequence[str], delimiters: set[int]) -> str:
    """Decode with the declared codecs, switching at ISO 2022 escape sequences (PS3.5 6.1.2.5.3)."""
    if ESC not in raw:
        return raw.decode(codecs[0])
    return "".join(_decode_fragment(part, codecs, delimiters) for part in _ESCAPED_FRAGMENT.findall(raw))


def _decode_fragment(fragment: bytes, codecs: Sequence[str], delimiters: set[int]) -> str:
    if not fragment.startswith(ESC):
        return fragment.decode(codecs[0])
    length = 4 if fragment.startswith((b"\x1b$(", b"\x1b$)")) else 3
    codec = CODES_TO_ENCODINGS.get(fragment[:length])
    if codec is None:
        raise ValueError(f"unknown escape sequence {fragment[:length]!r}")
    codec = "ascii" if codec == "iso8859" else codec
    if codec in handled_encodings:
        return fragment.decode(codec)  # Python's ISO 2022 codecs consume the escape sequence themselves
    body = fragment[length:]
    cut = next((i for i, byte in enumerate(body) if byte in delimiters), len(body))
    return body[:cut].decode(codec) + body[cut:].decode(codecs[0])  # a delimiter resets to G0 (PS3.5 6.1.2.5.3)


def decode_dataset(ds: Dataset, parent_charset: str | Sequence[str] | None = None) -> Dataset:
    """Decode every text value of `ds` (and nested sequence items) with its declared (0008,0005), in place.

    Returns `ds` for chaining. PS3.5 6.1; the tolerant fallback for bad/unknown charsets is in the module doc.
    """
    declared = ds.get_item(SPECIFIC_CHARACTER_SET_TAG)
    charset = ds.SpecificCharacterSet if declared is not None else parent_charset
    codecs = python_codecs(charset)
    for tag in list(ds.keys()):
        if tag == SPECIFIC_CHARACTER_SET_TAG:
            continue
        element = ds.get_item(tag)
        vr = _vr_of(element)
        if vr == "SQ":
            for item in ds[tag].value:
                decode_dataset(item, charset)
        elif vr in CHARSET_VRS:
            _decode_element(ds, element, vr, codecs)
    return ds


def _vr_of(element: DataElement | RawDataElement) -> str:
    if element.VR:
        return str(element.VR)
    try:
        return dictionary_VR(element.tag)
    except KeyError:
        return "UN"


def _decode_element(ds: Dataset, element: DataElement | RawDataElement, vr: str, codecs: Sequence[str]) -> None:
    value = element.value
    items = list(value) if isinstance(value, (list, MultiValue)) else [value]
    encoded = [_encoded_value(item) for item in items]
    if all(raw is None for raw in encoded):
        if isinstance(element, RawDataElement):
            ds[element.tag]  # nothing encoded to decode: let pydicom convert it
        return
    delimiters = set(PN_DELIMS) | TEXT_VR_DELIMS if vr == "PN" else TEXT_VR_DELIMS
    texts: list[str] = []
    for item, raw in zip(items, encoded):
        if raw is None:
            texts.append(str(item))
            continue
        text, fallback = decode_text(raw, codecs, delimiters)
        if fallback:
            logger.warning("(%04X,%04X) %s: not valid in the declared character set %s; decoded as %s",
                           element.tag >> 16, element.tag & 0xFFFF, vr, list(codecs) or "(none usable)",
                           "UTF-8" if _is_utf8(raw) else "Latin-1")
        texts.append(text)
    ds[element.tag] = DataElement(element.tag, vr, _split_values("\\".join(texts), vr))


def _encoded_value(value: object) -> bytes | None:
    """The still-encoded bytes of a value, or None when it is already text."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, PersonName) and isinstance(value.original_string, bytes) and value._components is None:
        return value.original_string
    return None


def _split_values(text: str, vr: str) -> str | list[str]:
    if vr in ("ST", "LT", "UT"):
        return text.rstrip("\0 ")
    values = [v.strip("\0 ") if vr != "PN" else v.rstrip("\0 ") for v in text.split("\\")]
    return values[0] if len(values) == 1 else values


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeError:
        return False


def has_non_ascii_text(ds: Dataset) -> bool:
    """True when any text value of `ds`, including PN and nested sequence items, is outside ASCII."""
    for element in ds.values():  # storage order: no per-call sort, unlike iterating the Dataset
        if not isinstance(element, DataElement):
            element = ds[element.tag]
        vr = element.VR
        if vr == "SQ":
            if any(has_non_ascii_text(item) for item in element.value):
                return True
        elif vr in CHARSET_VRS:  # (0008,0005) itself is CS: never among them
            value = element.value
            if not (value.isascii() if isinstance(value, str) else _text_of(value).isascii()):
                return True
    return False


def _elements(ds: Dataset) -> Iterator[DataElement]:
    """The elements of `ds` in storage order (no per-call sort, unlike iterating the Dataset), raw ones converted."""
    for element in ds.values():
        yield element if isinstance(element, DataElement) else ds[element.tag]


def _text_of(value: object) -> str:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(_text_of(v) for v in value)  # type: ignore[union-attr]
    return str(value) if value is not None else ""


def normalize_output_charset(ds: Dataset) -> Dataset:
    """Make a decoded dataset's (0008,0005) describe its text for re-encoding, in place; returns `ds`.

    Any non-ASCII text value (PN and nested sequences included) → "ISO_IR 192" (UTF-8 encodes every repertoire
    and is stand-alone, PS3.5 6.1.2.5.4 d), and nested items' own declarations are removed (they inherit it).
    All-ASCII → (0008,0005) is removed everywhere: the default repertoire suffices (PS3.5 6.1.2.1) and the
    merged output no longer depends on which source's declaration happened to win.
    """
    non_ascii = has_non_ascii_text(ds)
    _drop_nested_charsets(ds)
    if non_ascii:
        ds.SpecificCharacterSet = UTF8_CHARSET
    elif SPECIFIC_CHARACTER_SET_TAG in ds:
        del ds[SPECIFIC_CHARACTER_SET_TAG]
    return ds


def _drop_nested_charsets(ds: Dataset) -> None:
    for element in _elements(ds):
        if element.VR == "SQ":
            for item in element.value:
                if SPECIFIC_CHARACTER_SET_TAG in item:
                    del item[SPECIFIC_CHARACTER_SET_TAG]
                _drop_nested_charsets(item)
