"""The big study of bench/qido.py's WADO-RS half and how its retrieves are measured and checked.

* `load_wado_study`: N Secondary Capture instances of random 16-bit pixel data (deterministic seed), generated one
  at a time and POSTed to each holder's REST API (`/instances`), so the bench never holds the study in memory.
* `streamed_retrieve`: one timed WADO-RS retrieve streamed to nothing; parts are counted on the fly by their
  delimiters (RFC 2046 5.1.1), the cheapest a client can be, so the client is not what is measured.
* `checked_retrieve`: one untimed retrieve read part by part (shared.dicom.multipart), each part a PS3.10 file:
  every SOP Instance UID once, every PixelData byte-identical to what was loaded.
"""

from __future__ import annotations

import hashlib
import random
import time
from io import BytesIO

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from shared.dicom.multipart import MultipartError, boundary_from_content_type, iter_multipart
from tests.peers.orthanc import OrthancPeer
from tests.peers.studies import to_part10

MULTIPART = {"Accept": 'multipart/related; type="application/dicom"'}
ENTROPY = "axiom-bench-wado-study"
COLUMNS = 1024


def load_wado_study(holders: list[OrthancPeer], instances: int, instance_mib: float) -> tuple[str, dict[str, str], int]:
    """Generate the study instance by instance and POST each to every holder; (StudyInstanceUID, SOP Instance
    UID -> sha256 of its PixelData, bytes of one copy as Part-10 files)."""
    rng = random.Random(29)
    study, series = (generate_uid(entropy_srcs=[ENTROPY, what]) for what in ("study", "series"))
    rows = max(1, round(instance_mib * 2**20 / (2 * COLUMNS)))
    digests, total = {}, 0
    clients = [httpx.Client(base_url=p.base_url, timeout=120) for p in holders]
    try:
        for number in range(1, instances + 1):
            ds = wado_instance(study, series, number, rows, rng.randbytes(rows * COLUMNS * 2))
            data = to_part10(ds)
            digests[ds.SOPInstanceUID] = hashlib.sha256(ds.PixelData).hexdigest()
            total += len(data)
            for client in clients:
                client.post("/instances", content=data, headers={"Content-Type": "application/dicom"}) \
                    .raise_for_status()
    finally:
        for client in clients:
            client.close()
    return study, digests, total


def wado_instance(study: str, series: str, number: int, rows: int, pixels: bytes) -> Dataset:
    """One 16-bit MONOCHROME2 Secondary Capture instance, COLUMNS wide, with the given pixel bytes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
        entropy_srcs=[ENTROPY, "sop", str(number)])
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime = "Bench^Wado", "WADO0001", "20240101", "120000"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.StudyID, ds.AccessionNumber = study, series, "1", "WADO1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.ConversionType = "OT", 1, number, "WSD"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", rows, COLUMNS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels
    return ds


def _boundary(answer: httpx.Response, url: str) -> bytes:
    try:
        return boundary_from_content_type(answer.headers.get("content-type"))
    except MultipartError as exc:
        raise SystemExit(f"GET {url}: {exc}") from None


def streamed_retrieve(client: httpx.Client, url: str) -> dict:
    """Stream one retrieve to nothing: seconds, time to first byte, body bytes, parts and MB/s. A delimiter
    cannot lie wholly inside the tail kept from the previous chunk, so none is counted twice; the first one may
    open the body without its CRLF, hence the CRLF the tail starts with."""
    started = time.perf_counter()
    with client.stream("GET", url, headers=MULTIPART) as answer:
        if answer.status_code != 200:
            raise SystemExit(f"GET {url}: {answer.status_code} {answer.read()[:300]!r}")
        delimiter = b"\r\n--" + _boundary(answer, url)
        tail, delimiters, size, first = b"\r\n", 0, 0, None
        for chunk in answer.iter_raw():
            first = first or time.perf_counter()
            size += len(chunk)
            window = tail + chunk
            delimiters += window.count(delimiter)
            tail = window[-(len(delimiter) - 1):]
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "ttfb": (first or time.perf_counter()) - started, "bytes": size,
            "parts": max(0, delimiters - 1), "mbps": size / 1e6 / seconds}


def checked_retrieve(client: httpx.Client, url: str, digests: dict[str, str]) -> list[str]:
    """One untimed retrieve read part by part: the problems found (a failed answer, a part that is not
    application/dicom, missing, repeated, unknown or altered instances)."""
    problems, seen = [], set()
    with client.stream("GET", url, headers=MULTIPART) as answer:
        if answer.status_code != 200:
            return [f"GET {url}: {answer.status_code} {answer.read()[:300]!r}"]
        try:
            for part in iter_multipart(answer.iter_bytes(), _boundary(answer, url)):
                if not (part.content_type or "").startswith("application/dicom"):
                    problems.append(f"a part of type {part.content_type!r}")
                    continue
                ds = dcmread(BytesIO(part.content))
                uid = str(ds.SOPInstanceUID)
                if uid in seen or digests.get(uid) != hashlib.sha256(ds.PixelData).hexdigest():
                    problems.append(f"instance {uid}: {'repeated' if uid in seen else 'unknown or altered'}")
                seen.add(uid)
        except MultipartError as exc:
            problems.append(f"malformed answer: {exc}")
    return problems + [f"instance {uid} missing" for uid in sorted(set(digests) - seen)]
