"""multipart/related bodies (RFC 2387 over the RFC 2046 5.1.1 syntax), as WADO-RS answers with DICOM instances
and STOW-RS sends them (PS3.18 8.6.1.2 / 8.7.3.2 "Multipart Payload"). Pure: stdlib only.

Reading is incremental: `iter_multipart(chunks, boundary)` consumes the body chunk by chunk (e.g. httpx
`iter_bytes()`) and yields each part as soon as its closing delimiter arrived, so at most one part plus one chunk
is held in memory — a WADO-RS study may be gigabytes.

Syntax handled (RFC 2046 5.1.1): the delimiter is CRLF "--" boundary; the first one may start the body (no CRLF
before it), anything before it is the preamble and is ignored; a delimiter line may end in transport padding
(spaces/tabs) before its CRLF; each part is header lines (CRLF or bare LF), an empty line, then the content; the
close delimiter is "--" boundary "--", anything after it is the epilogue and is ignored. A body that ends before
the close delimiter (truncated), a delimiter followed by other text, or a header section without its empty line
raises MultipartError.

Writing: `multipart_part(payload, content_type, boundary)` per part and `closing_delimiter(boundary)` at the end,
with the Content-Type header value from `multipart_content_type(boundary)` (PS3.18 8.7.3.2: type="application/dicom"
and, optionally, the transfer-syntax parameter).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

_CRLF = b"\r\n"
MAX_HEADER_BYTES = 64 * 1024  # a part's header section larger than this is not a DICOMweb part
# RFC 2046 5.1.1 bchars. The RFC caps a boundary at 70 characters; longer ones are read anyway (a reader gains
# nothing by refusing them), up to a sanity limit.
_BOUNDARY_CHARS = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{1,200}$")
_PADDING = b" \t"


class MultipartError(ValueError):
    """The body is not well-formed multipart (RFC 2046 5.1.1), or the Content-Type has no usable boundary."""


@dataclass(frozen=True)
class Part:
    """One body part: its headers (names lower-cased) and its content."""

    content: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


def boundary_from_content_type(content_type: str | None) -> bytes:
    """The `boundary` parameter of a multipart Content-Type header value (RFC 2046 5.1.1), quoted or not.
    MultipartError when the type is not multipart or the boundary is missing or invalid."""
    if not content_type or not content_type.strip().lower().startswith("multipart/"):
        raise MultipartError(f"not a multipart Content-Type: {content_type!r}")
    params = content_type_params(content_type)
    boundary = params.get("boundary")
    if not boundary:
        raise MultipartError(f"multipart Content-Type without a boundary: {content_type!r}")
    if not _BOUNDARY_CHARS.match(boundary) or boundary.endswith(" "):
        raise MultipartError(f"invalid multipart boundary {boundary!r} (RFC 2046 5.1.1)")
    return boundary.encode("ascii")


def content_type_params(content_type: str) -> dict[str, str]:
    """The parameters of a Content-Type header value (RFC 2045 5.1), names lower-cased, quotes removed."""
    params: dict[str, str] = {}
    for match in re.finditer(r';\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', content_type):
        value = match.group(2).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[match.group(1).lower()] = value
    return params


def iter_parts(chunks: Iterable[bytes], boundary: bytes) -> Iterator[bytes]:
    """The content of each part of a multipart body read incrementally from `chunks` (see module doc)."""
    for part in iter_multipart(chunks, boundary):
        yield part.content


def iter_multipart(chunks: Iterable[bytes], boundary: bytes) -> Iterator[Part]:
    """Each part (headers and content) of a multipart body read incrementally from `chunks`; the epilogue is
    read and dropped. MultipartError on a malformed or truncated body (RFC 2046 5.1.1)."""
    reader = _Reader(iter(chunks), _CRLF + b"--" + boundary)
    if not reader.skip_to_delimiter():
        raise MultipartError("no multipart boundary found in the body")
    while not reader.after_delimiter_is_close():
        headers = reader.read_headers()
        content = reader.read_until_delimiter()
        if content is None:
            raise MultipartError("multipart body truncated: a part has no closing delimiter")
        yield Part(content, headers)
    reader.drain()


class _Reader:
    """A buffer over the chunks. The body is read as if it started with CRLF, so the first delimiter needs no
    special case (RFC 2046 5.1.1: the CRLF before a delimiter belongs to the delimiter)."""

    def __init__(self, chunks: Iterator[bytes], delimiter: bytes) -> None:
        self._chunks, self._delimiter = chunks, delimiter
        self._buffer = bytearray(_CRLF)
        self._ended = False

    def _next_chunk(self) -> bytes | None:
        """The next non-empty chunk; None at the end of the body."""
        for chunk in self._chunks:
            if chunk:
                return chunk if isinstance(chunk, bytes) else bytes(chunk)
        self._ended = True
        return None

    def _fill(self) -> bool:
        """Append the next non-empty chunk; False at the end of the body."""
        chunk = self._next_chunk()
        if chunk is None:
            return False
        self._buffer += chunk
        return True

    def _find(self, needle: bytes, limit: int | None = None) -> int:
        """The index of `needle` in the buffer, reading more as needed; -1 at the end of the body; MultipartError
        when `limit` bytes were buffered without it. Each chunk is searched once (plus the needle's length of
        overlap), so a long part costs linear time."""
        start = 0
        while True:
            index = self._buffer.find(needle, start)
            if index >= 0:
                return index
            if limit is not None and len(self._buffer) > limit:
                raise MultipartError(f"no line end within {limit} bytes of a part's headers")
            start = max(len(self._buffer) - len(needle) + 1, 0)
            if not self._fill():
                return -1

    def _take(self, count: int) -> bytes:
        with memoryview(self._buffer) as view:
            data = bytes(view[:count])
        del self._buffer[:count]
        return data

    def skip_to_delimiter(self) -> bool:
        """Drop the preamble and the first delimiter; False when there is none."""
        index = self._find(self._delimiter)
        if index < 0:
            return False
        del self._buffer[: index + len(self._delimiter)]
        return True

    def after_delimiter_is_close(self) -> bool:
        """Just after a delimiter: True for the close delimiter ("--"); else consume the padding and CRLF."""
        while len(self._buffer) < 2 and self._fill():
            pass
        if self._buffer[:2] == b"--":
            del self._buffer[:2]
            return True
        end = self._find(b"\n", MAX_HEADER_BYTES)
        if end < 0:
            raise MultipartError("multipart body truncated after a boundary")
        line = bytes(self._buffer[:end]).rstrip(b"\r")
        if line.strip(_PADDING):
            raise MultipartError(f"unexpected text after a multipart boundary: {line[:40]!r}")
        del self._buffer[: end + 1]
        return False

    def read_headers(self) -> dict[str, str]:
        """The part's header lines up to the empty line (no headers: the part starts with the empty line)."""
        headers: dict[str, str] = {}
        while True:
            end = self._find(b"\n", MAX_HEADER_BYTES)
            if end < 0:
                raise MultipartError("multipart body truncated in a part's headers")
            line = self._take(end + 1).rstrip(b"\r\n")
            if not line:
                return headers
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon or not name.strip():
                raise MultipartError(f"malformed part header line: {line[:60]!r}")
            headers[name.strip().lower()] = value.strip()
            if len(headers) > 100:
                raise MultipartError("too many part headers")

    def read_until_delimiter(self) -> bytes | None:
        """The part's content up to (not including) the next delimiter, which is consumed; None when the body ends
        first. Linear and with one copy of the content: each new chunk is searched once (plus the seam with the
        previous one's last len(delimiter) - 1 bytes) and kept by reference until the content is joined."""
        delimiter, keep = self._delimiter, len(self._delimiter) - 1
        index = self._buffer.find(delimiter)
        if index >= 0:
            content = self._take(index)
            del self._buffer[: len(delimiter)]
            return content
        pieces: list[bytes | memoryview] = []
        tail = bytes(self._buffer)  # no delimiter in it: all but its last `keep` bytes are content
        self._buffer.clear()
        while True:
            if len(tail) > keep:
                pieces.append(memoryview(tail)[:-keep])
                tail = tail[-keep:]
            chunk = self._next_chunk()
            if chunk is None:
                return None
            seam = tail + chunk[:keep]  # a delimiter starting in the tail ends within chunk[:keep]
            index = seam.find(delimiter)
            if index >= 0:
                pieces.append(tail[:index])
                self._buffer += memoryview(chunk)[index + len(delimiter) - len(tail):]
                return b"".join(pieces)
            index = chunk.find(delimiter)
            if index >= 0:
                pieces += (tail, memoryview(chunk)[:index])
                self._buffer += memoryview(chunk)[index + len(delimiter):]
                return b"".join(pieces)
            if len(chunk) <= keep:
                tail += chunk
                continue
            pieces += (tail, memoryview(chunk)[:-keep])
            tail = chunk[-keep:]

    def drain(self) -> None:
        """Read and drop the epilogue (so the connection ends cleanly)."""
        self._buffer.clear()
        while self._fill():
            self._buffer.clear()


# -- writing ---------------------------------------------------------------------------------------------------------

def new_boundary() -> str:
    """A boundary that cannot occur in DICOM content by chance (RFC 2046 5.1.1 bchars)."""
    return f"axiom-{uuid.uuid4().hex}"


def multipart_content_type(boundary: str, part_type: str = "application/dicom",
                           transfer_syntax: str | None = None) -> str:
    """The Content-Type of a multipart/related body of `part_type` parts (RFC 2387 3.1; PS3.18 8.7.3.2)."""
    value = f'multipart/related; type="{part_type}"; boundary={boundary}'
    if transfer_syntax:
        value += f"; transfer-syntax={transfer_syntax}"
    return value


def multipart_part(payload: bytes, content_type: str, boundary: str | bytes,
                   headers: Mapping[str, str] | None = None) -> bytes:
    """One body part, delimiter first: "--boundary" CRLF, headers, CRLF, payload, CRLF (RFC 2046 5.1.1). Write
    the parts one after another, then `closing_delimiter`."""
    return b"".join(multipart_part_pieces(payload, content_type, boundary, headers))


def multipart_part_pieces(payload: bytes, content_type: str, boundary: str | bytes,
                          headers: Mapping[str, str] | None = None) -> tuple[bytes, bytes, bytes]:
    """`multipart_part` as (delimiter and headers, payload, CRLF), for a writer that sends the payload without
    copying it into a new bytes object."""
    mark = boundary.encode("ascii") if isinstance(boundary, str) else boundary
    lines = [f"Content-Type: {content_type}"] + [f"{name}: {value}" for name, value in (headers or {}).items()]
    head = b"--" + mark + _CRLF + "\r\n".join(lines).encode("latin-1") + _CRLF + _CRLF
    return head, payload, _CRLF


def closing_delimiter(boundary: str | bytes) -> bytes:
    """The close delimiter that ends a multipart body: "--boundary--" CRLF (RFC 2046 5.1.1)."""
    mark = boundary.encode("ascii") if isinstance(boundary, str) else boundary
    return b"--" + mark + b"--" + _CRLF
