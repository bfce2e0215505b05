"""The WADO-RS byte path: the multipart reader at random splits, the WADO-RS port handing each part's own bytes to
its sink (a truncated part fails alone), wider reads, and the API writing a part in slices of its payload."""

from __future__ import annotations

import random
from io import BytesIO

import httpx
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from services.api.wado_stream import body_chunks
from shared.adapters.dicomweb_retrieve import READ_BYTES, WadoRetrievePort, _widen_reads
from shared.connections import DicomwebConnection
from shared.dicom.levels import QueryLevel
from shared.dicom.multipart import (
    closing_delimiter, iter_parts, multipart_content_type, multipart_part, multipart_part_pieces,
)
from shared.retrieval.model import SUCCESS, RetrieveOutcome, RetrieveRequest
from shared.retrieval.spool import encode_instance, instance_bytes
from shared.spanning.model import SourceSpec
from shared.spanning.ports import CancelToken

BOUNDARY = "a1b2c3"
STUDY = "1.2.3.4"


def test_random_splits_of_parts_full_of_near_delimiters() -> None:
    rng = random.Random(7)
    # every prefix of the delimiter CRLF "--a1b2c3" but never the whole of it (no fragment has its last "3")
    fragments = [b"\r\n--a1b2cX", b"\r\n--a1b2", b"\r\n-", b"\r", b"--a1b2c", b"\n", b"x" * 30]
    contents = [b"".join(rng.choice(fragments) for _ in range(rng.randint(0, 60))) for _ in range(12)]
    body = b"".join(multipart_part(c, "application/dicom", BOUNDARY) for c in contents)
    body += closing_delimiter(BOUNDARY)
    for _ in range(200):  # chunks of 1 byte to a few hundred: every delimiter gets split somewhere
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(len(body) // 300, len(body) // 3)))
        chunks = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
        assert list(iter_parts(chunks, BOUNDARY.encode())) == contents


def archive_file(number: int, pixels: int = 4096) -> bytes:
    """A PS3.10 file as an archive writes it (its own Implementation Class UID, no Implementation Version Name):
    pydicom would write other bytes for it, so only a pass-through keeps them."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(number)])
    ds.StudyInstanceUID, ds.Rows, ds.Columns, ds.BitsAllocated = STUDY, 2, pixels // 4, 16
    ds.PixelData = bytes([number % 256]) * pixels
    encoded = encode_instance(ds)
    meta = FileMetaDataset(ds.file_meta)
    meta.FileMetaInformationGroupLength, meta.FileMetaInformationVersion = 0, b"\x00\x01"
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.7433.1"
    meta.pop(0x00020013, None)
    head = BytesIO()
    write_file_meta_info(head, meta, enforce_standard=False)
    return b"\x00" * 128 + b"DICM" + head.getvalue() + encoded[144 + int.from_bytes(encoded[140:144], "little"):]


def wado_get(files: list[bytes]) -> tuple[list[Dataset], RetrieveOutcome]:
    body = b"".join(multipart_part(f, "application/dicom", BOUNDARY) for f in files) + closing_delimiter(BOUNDARY)
    answer = httpx.Response(200, content=body, headers={"Content-Type": multipart_content_type(BOUNDARY)})
    got: list[Dataset] = []
    identifier = Dataset()
    identifier.StudyInstanceUID = STUDY
    source = SourceSpec("WEB", "dicomweb", DicomwebConnection(base_url="http://pacs.test/dw"))
    with WadoRetrievePort(transport=httpx.MockTransport(lambda request: answer)) as port:
        stream = port.get(source, RetrieveRequest(QueryLevel.STUDY, identifier), lambda ds: got.append(ds) or SUCCESS,
                          CancelToken())
        while True:
            try:
                next(stream)
            except StopIteration as stop:
                return got, stop.value


def test_the_sink_gets_each_part_with_its_own_bytes() -> None:
    files = [archive_file(n) for n in range(3)]
    assert encode_instance(dcmread(BytesIO(files[0]))) != files[0]  # a re-encoding would alter them
    got, outcome = wado_get(files)
    assert outcome == RetrieveOutcome(SUCCESS, completed=3)
    assert [instance_bytes(ds) for ds in got] == files


def test_a_truncated_part_fails_alone() -> None:
    files = [archive_file(1), archive_file(2)[:-100], archive_file(3)]
    got, outcome = wado_get(files)
    assert [instance_bytes(ds) for ds in got] == [files[0], files[2]]
    assert outcome.completed == 2 and outcome.failed == 1


def test_reads_are_widened_to_read_bytes() -> None:
    class Stream:
        def __init__(self) -> None:
            self.asked: list[tuple[int, float | None]] = []

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            self.asked.append((max_bytes, timeout))
            return b"x"

    stream = Stream()
    _widen_reads(stream)
    assert stream.read(65536, 5.0) == b"x" and stream.read(2 * READ_BYTES) == b"x"
    assert stream.asked == [(READ_BYTES, 5.0), (2 * READ_BYTES, None)]
    _widen_reads(None)  # no stream (the trace had none): nothing to do


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 1000, 1024, 5000, 70_000])
def test_body_chunks_write_a_part_in_slices_of_its_payload(size: int) -> None:
    payload = bytes(random.Random(size).randbytes(size))
    pieces = multipart_part_pieces(payload, "application/dicom", BOUNDARY)
    chunks = list(body_chunks(pieces, size=256))
    assert b"".join(chunks) == multipart_part(payload, "application/dicom", BOUNDARY)
    middle = chunks[1:-1]
    assert all(isinstance(chunk, memoryview) and chunk.obj is payload and len(chunk) <= 256
               for chunk in middle)  # slices, never copies
    if len(chunks) == 1:  # a small part: one write
        assert len(chunks[0]) <= 512 + len(pieces[0]) + 2
    else:
        assert len(chunks[0]) == 256 + len(pieces[0]) and len(chunks[-1]) == 256 + 2
    assert len(chunks) == (1 if size <= 512 else 2 + len(middle))
