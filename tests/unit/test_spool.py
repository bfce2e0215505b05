"""shared.retrieval.spool: instances keep their own PS3.10 bytes through the spool (never re-encoded), and one
instance at a time is handed over in memory while the rest wait on disk, all within the byte budget."""

from __future__ import annotations

import threading
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from shared.retrieval.spool import (
    DEFER_BYTES,
    Spool,
    SpoolBudget,
    drop_encoding,
    encode_instance,
    instance_bytes,
    read_instance,
    with_encoding,
)


def instance(pixels: int = 2 * DEFER_BYTES) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 2, pixels // 4, 16, 1
    ds.PixelData = bytes(range(256)) * (pixels // 256)
    return ds


def archive_file(ds: Dataset) -> bytes:
    """A conformant PS3.10 file as an archive may write it: every Type 1 meta element, no Implementation Version
    Name (Type 3) — which pydicom adds when it encodes the instance again."""
    encoded = encode_instance(ds)
    dataset_start = 144 + int.from_bytes(encoded[140:144], "little")  # after (0002,0000) and its group
    meta = FileMetaDataset(ds.file_meta)
    meta.FileMetaInformationGroupLength, meta.FileMetaInformationVersion = 0, b"\x00\x01"
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.7433.1"
    meta.pop(0x00020013, None)  # no Implementation Version Name
    head = BytesIO()
    write_file_meta_info(head, meta, enforce_standard=False)
    return b"\x00" * 128 + b"DICM" + head.getvalue() + encoded[dataset_start:]


def test_read_instance_carries_the_exact_bytes_a_re_encoding_would_change() -> None:
    original = archive_file(instance())
    assert encode_instance(dcmread(BytesIO(original))) != original  # what the spool used to store
    ds = read_instance(original)
    assert instance_bytes(ds) is original
    assert ds.PixelData == instance().PixelData  # read from `original` only now (deferred), still the same
    drop_encoding(ds)
    assert instance_bytes(ds) != original  # changed in memory: encoded again


def test_incomplete_file_meta_is_re_encoded_with_the_missing_elements() -> None:
    ds = instance()
    del ds.file_meta.MediaStorageSOPInstanceUID  # a Type 1 element (PS3.10 7.1)
    assert with_encoding(ds, b"not kept") is ds
    data = instance_bytes(ds)
    assert data != b"not kept" and dcmread(BytesIO(data)).file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.parametrize("cut", [1, DEFER_BYTES])
def test_a_truncated_file_is_an_error_not_an_instance(cut: int) -> None:
    data = encode_instance(instance())
    with pytest.raises(EOFError, match="truncated"):
        read_instance(data[:-cut])


def test_one_instance_waits_in_memory_the_others_on_disk(tmp_path: Path) -> None:
    budget = SpoolBudget(10**8)
    spool = Spool(tmp_path / "job", budget)
    first, second, third = (read_instance(archive_file(instance())) for _ in range(3))
    assert spool.put(first) and spool.put(second)
    assert [p.name for p in (tmp_path / "job").iterdir()] == ["00000001.dcm"]  # only the second was written
    assert budget.used_bytes == 2 * len(instance_bytes(first))
    entry = spool.take()
    assert entry.sop_instance_uid == first.SOPInstanceUID and spool.load(entry) is first  # handed over as it is
    spool.release(entry)
    assert spool.put(third)  # nothing waits in memory any more: kept in memory again
    assert len(list((tmp_path / "job").iterdir())) == 1
    on_disk = spool.take()
    loaded = spool.load(on_disk)
    assert loaded is not second and instance_bytes(loaded) == instance_bytes(second)
    spool.release(on_disk)
    assert not list((tmp_path / "job").iterdir())
    spool.release(spool.take())
    assert budget.used_bytes == 0
    spool.remove()


def test_an_instance_in_memory_still_counts_against_the_budget(tmp_path: Path) -> None:
    first, second = (read_instance(archive_file(instance())) for _ in range(2))
    budget = SpoolBudget(int(len(instance_bytes(first)) * 1.5))
    spool = Spool(tmp_path / "job", budget)
    assert spool.put(first)
    blocked = threading.Thread(target=spool.put, args=(second,))
    blocked.start()
    blocked.join(0.05)
    assert blocked.is_alive()  # backpressure although the first one never touched the disk
    spool.remove()  # aborts: the blocked put returns, the budget is whole again
    blocked.join(1)
    assert not blocked.is_alive() and budget.used_bytes == 0
