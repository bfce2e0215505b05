"""shared.dicom.multipart: incremental multipart/related reading (RFC 2046 5.1.1) at every chunk split, and writing."""

from __future__ import annotations

import pytest

from shared.dicom.multipart import (
    MultipartError,
    boundary_from_content_type,
    closing_delimiter,
    iter_multipart,
    iter_parts,
    multipart_content_type,
    multipart_part,
    new_boundary,
)

BOUNDARY = b"b0undary"
# Contents that look like delimiters but are not: CRLF--boundary must be followed by CRLF, padding or "--".
CONTENTS = [b"\x00DICM first\r\n--b0und", b"", b"second\r\n--b0undarX\r\n\r\n\n--", b"\r\nthird\r\n"]


def body(contents=CONTENTS, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    parts = b"".join(multipart_part(c, "application/dicom", BOUNDARY) for c in contents)
    return preamble + parts + closing_delimiter(BOUNDARY) + epilogue


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 64, 10_000])
def test_every_chunk_size_gives_the_same_parts(size: int) -> None:
    data = body(preamble=b"This is the preamble.\r\n", epilogue=b"\r\nThis is the epilogue.\r\n")
    assert list(iter_parts(split(data, size), BOUNDARY)) == CONTENTS


def test_a_chunk_boundary_inside_every_delimiter() -> None:
    data = body()
    cuts = [i + offset for i in range(len(data)) if data.startswith(b"\r\n--" + BOUNDARY, i) for offset in (1, 3, 7)]
    chunks, last = [], 0
    for cut in cuts:
        chunks.append(data[last:cut])
        last = cut
    chunks.append(data[last:])
    assert list(iter_parts(chunks, BOUNDARY)) == CONTENTS


def test_headers_padding_bare_lf_and_no_headers() -> None:
    data = (b"--b0undary \t\r\nContent-Type: application/dicom\r\nContent-Location: /x\r\n\r\nA\r\n"
            b"--b0undary\r\n\r\nB\r\n"
            b"--b0undary\nContent-Type: text/plain\n\nC\r\n--b0undary--")
    parts = list(iter_multipart([data], BOUNDARY))
    assert [p.content for p in parts] == [b"A", b"B", b"C"]
    assert parts[0].headers == {"content-type": "application/dicom", "content-location": "/x"}
    assert parts[1].headers == {} and parts[2].content_type == "text/plain"


def test_only_a_close_delimiter_is_zero_parts() -> None:
    assert list(iter_parts([closing_delimiter(BOUNDARY)], BOUNDARY)) == []


@pytest.mark.parametrize("cut", [5, 30, -30, -9, -3])
def test_a_truncated_body_is_an_error(cut: int) -> None:
    data = body()[:cut]
    with pytest.raises(MultipartError, match="truncated|no multipart boundary"):
        list(iter_parts(split(data, 4), BOUNDARY))


def test_parts_before_the_truncation_are_yielded_first() -> None:
    data = body()
    reader = iter_parts(split(data[: data.index(b"third")], 8), BOUNDARY)
    assert [next(reader), next(reader), next(reader)] == CONTENTS[:3]
    with pytest.raises(MultipartError, match="truncated"):
        next(reader)


@pytest.mark.parametrize("data, message", [
    (b"no delimiter at all", "no multipart boundary"),
    (b"--b0undaryXYZ\r\n\r\nA\r\n--b0undary--", "unexpected text after"),
    (b"--b0undary\r\nnot a header\r\n\r\nA\r\n--b0undary--", "malformed part header"),
    (b"--b0undary\r\nContent-Type: x", "truncated in a part's headers"),
    (b"--b0undary\r\nX-Long: " + b"x" * 70_000, "no line end within"),
])
def test_malformed_bodies(data: bytes, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        list(iter_parts([data], BOUNDARY))


def test_the_reader_keeps_reading_lazily() -> None:
    seen: list[int] = []

    def chunks():
        for index, chunk in enumerate(split(body(), 16)):
            seen.append(index)
            yield chunk

    reader = iter_parts(chunks(), BOUNDARY)
    first = next(reader)
    assert first == CONTENTS[0]
    assert max(seen) < len(split(body(), 16)) - 2  # the rest of the body was not read for the first part


@pytest.mark.parametrize("header, expected", [
    ('multipart/related; type="application/dicom"; boundary=abc123', b"abc123"),
    ('Multipart/Related; boundary="a b:c"; type="application/dicom"', b"a b:c"),
    ("multipart/related;boundary=xyz;transfer-syntax=*", b"xyz"),
])
def test_boundary_from_content_type(header: str, expected: bytes) -> None:
    assert boundary_from_content_type(header) == expected


@pytest.mark.parametrize("header", [
    None, "application/dicom", "multipart/related; type=x", "multipart/related; boundary=",
    'multipart/related; boundary="' + "x" * 201 + '"', 'multipart/related; boundary="a\tb"',
])
def test_bad_content_types(header) -> None:
    with pytest.raises(MultipartError):
        boundary_from_content_type(header)


def test_writer_round_trip_and_content_type() -> None:
    boundary = new_boundary()
    header = multipart_content_type(boundary, transfer_syntax="1.2.840.10008.1.2.1")
    assert header == (f'multipart/related; type="application/dicom"; boundary={boundary}; '
                      "transfer-syntax=1.2.840.10008.1.2.1")
    data = multipart_part(b"one", "application/dicom", boundary, {"Content-Location": "/a"})
    data += multipart_part(b"two", "application/dicom", boundary) + closing_delimiter(boundary)
    parts = list(iter_multipart([data], boundary_from_content_type(header)))
    assert [p.content for p in parts] == [b"one", b"two"]
    assert parts[0].headers == {"content-type": "application/dicom", "content-location": "/a"}
