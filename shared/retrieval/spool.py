"""Bounded temporary storage between a source that sends instances and whoever forwards them (a proxied C-MOVE's
C-STORE sub-operations, PS3.4 C.4.2.2; a C-GET SCP's own, C.4.3.2).

A `SpoolBudget` is the service's byte budget, shared by every job's `Spool`. `Spool.put` writes one instance as a
DICOM file (PS3.10) in the job's directory — or keeps it in memory when no other instance waits there (see Spool)
— and blocks while the budget is spent, until a consumer `release`s what it forwarded: a fast source is slowed to
the pace of its destination (backpressure) instead of filling memory or disk. One instance larger than the whole
budget is admitted alone, when nothing else is spooled (or it would never pass). `finish()` says no more instances
will come; `abort()` wakes every waiter (cancel); `remove()` deletes the job's directory and returns its bytes to
the budget.

An instance's own PS3.10 bytes travel with its Dataset (`read_instance` / `with_encoding` attach them where it is
read: a WADO-RS part, a C-GET C-STORE sub-operation, a spooled file): `instance_bytes` hands those on unchanged —
byte-identical to what the source sent, and without pydicom re-encoding the instance on each hop — and encodes
only a Dataset that has none (made or changed in memory). Whoever changes a Dataset that carries its bytes must
`drop_encoding` first.
"""

from __future__ import annotations

import itertools
import shutil
import threading
from collections import deque
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Callable

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian


MEMORY_INSTANCES = 1  # instances of one spool that may wait in memory (handed over, not written)
MEMORY_MAX_BYTES = 64 * 2**20  # a larger instance always waits on disk
DEFER_BYTES = 64 * 2**10  # read_instance leaves values longer than this in the file's bytes until used


@dataclass(frozen=True)
class SpooledInstance:
    """One instance waiting in a spool: its file (or, handed over in memory, its Dataset), its size and its SOP
    Instance UID."""

    path: Path
    size: int
    sop_instance_uid: str
    dataset: Dataset | None = field(default=None, compare=False, repr=False)


class SpoolBudget:
    """Bytes of temporary storage shared by all spools; `peak_bytes` is the most ever held at once."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("spool_max_bytes must be positive")
        self.max_bytes = max_bytes
        self.peak_bytes = 0
        self._used = 0
        self._cond = threading.Condition()

    @property
    def used_bytes(self) -> int:
        return self._used

    def reserve(self, size: int, stopped: Callable[[], bool]) -> bool:
        """Wait until `size` bytes fit (or nothing is held); False when `stopped()` turns true first."""
        with self._cond:
            while self._used > 0 and self._used + size > self.max_bytes and not stopped():
                self._cond.wait()
            if stopped():
                return False
            self._used += size
            self.peak_bytes = max(self.peak_bytes, self._used)
            return True

    def release(self, size: int) -> None:
        with self._cond:
            self._used -= size
            self._cond.notify_all()

    def wake(self) -> None:
        """Make waiters look at their `stopped()` again."""
        with self._cond:
            self._cond.notify_all()


class Spool:
    """One job's spool: instances consumed in arrival order, each a file in the job's directory — except that one
    instance at a time (up to MEMORY_MAX_BYTES) waits in memory instead: when the consumer keeps up with the source
    (the usual case), each instance is handed over as the Dataset the source delivered, never written nor read
    back; when it lags, the rest wait on disk. Thread-safe: producers (source C-STORE handlers) and one consumer."""

    def __init__(self, directory: Path, budget: SpoolBudget) -> None:
        directory.mkdir(parents=True, exist_ok=False)
        self.directory = directory
        self._budget = budget
        self._cond = threading.Condition()
        self._io = threading.Lock()  # file writes vs remove(): no file lands in a directory being deleted
        self._ready: deque[SpooledInstance] = deque()
        self._held: dict[Path, int] = {}
        self._in_memory = 0  # instances of `_ready` held in memory (at most MEMORY_INSTANCES)
        self._seq = itertools.count()
        self._finished = False
        self._aborted = False

    def put(self, dataset: Dataset) -> bool:
        """Spool one instance (with its file meta information, PS3.10 7.1); blocks while the budget is spent.
        False when the spool was aborted (nothing kept); OSError when the file cannot be written. The spool takes
        the dataset as it is: the caller must not change it afterwards (it may be handed over as it is)."""
        data = instance_bytes(dataset)
        if not self._budget.reserve(len(data), lambda: self._aborted):
            return False
        path = self.directory / f"{next(self._seq):08d}.dcm"
        uid = str(dataset.get("SOPInstanceUID", ""))
        with self._cond:
            if not self._aborted and self._in_memory < MEMORY_INSTANCES and len(data) <= MEMORY_MAX_BYTES:
                self._in_memory += 1
                self._add(SpooledInstance(path, len(data), uid, with_encoding(dataset, data)))
                return True
        with self._io:
            try:
                if self._aborted:
                    return self._give_back(len(data))
                path.write_bytes(data)
            except BaseException:
                self._give_back(len(data))
                raise
            with self._cond:
                self._add(SpooledInstance(path, len(data), uid))
        return True

    def _add(self, entry: SpooledInstance) -> None:
        """Queue an entry (the caller holds `_cond`)."""
        self._held[entry.path] = entry.size
        self._ready.append(entry)
        self._cond.notify_all()

    def _give_back(self, size: int) -> bool:
        self._budget.release(size)
        return False

    def take(self) -> SpooledInstance | None:
        """The next instance, waiting for one; None once finished and drained, or aborted."""
        with self._cond:
            while not self._ready and not self._finished and not self._aborted:
                self._cond.wait()
            if self._aborted or not self._ready:
                return None
            entry = self._ready.popleft()
            if entry.dataset is not None:
                self._in_memory -= 1
            return entry

    @staticmethod
    def load(entry: SpooledInstance) -> Dataset:
        """The spooled instance as a Dataset with its file_meta, carrying its PS3.10 bytes (`instance_bytes`)."""
        if entry.dataset is not None:
            return entry.dataset
        return read_instance(entry.path.read_bytes())

    def release(self, entry: SpooledInstance) -> None:
        """Delete a consumed instance's file and give its bytes back to the budget."""
        if entry.dataset is None:
            entry.path.unlink(missing_ok=True)
        with self._cond:
            size = self._held.pop(entry.path, None)
        if size is not None:
            self._budget.release(size)

    def finish(self) -> None:
        """No more instances will be put: `take` returns None once the spool is drained."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def abort(self) -> None:
        """Stop: `put` and `take` return at once (waiting ones too); what is spooled stays until `remove`."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()
        self._budget.wake()

    @property
    def aborted(self) -> bool:
        return self._aborted

    def remove(self) -> None:
        """Abort, delete the directory with whatever it holds and return the bytes to the budget."""
        self.abort()
        with self._io:
            with self._cond:
                held, self._held = self._held, {}
                self._ready.clear()
                self._in_memory = 0
            shutil.rmtree(self.directory, ignore_errors=True)
        for size in held.values():
            self._budget.release(size)


def encode_instance(dataset: Dataset) -> bytes:
    """The instance as a DICOM file (PS3.10 7.1). File meta information the source did not give is made from the
    dataset (SOP Class/Instance UID) and Explicit VR Little Endian, the encoding pydicom then writes."""
    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        meta = dataset.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if "MediaStorageSOPClassUID" not in meta and "SOPClassUID" in dataset:
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    if "MediaStorageSOPInstanceUID" not in meta and "SOPInstanceUID" in dataset:
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


_UNDEFINED_LENGTH = 0xFFFFFFFF  # PS3.5 7.1.1: a sequence or encapsulated value delimited by items, not a length
_ENCODING = "_axiom_part10"  # the attribute of a Dataset that holds its PS3.10 file (see the module doc)
# The Type 1 File Meta Information elements (PS3.10 7.1, Table 7.1-1) a file must have to be passed on as it is.
_REQUIRED_META = ("FileMetaInformationGroupLength", "FileMetaInformationVersion", "MediaStorageSOPClassUID",
                  "MediaStorageSOPInstanceUID", "TransferSyntaxUID", "ImplementationClassUID")


def read_instance(data: bytes) -> Dataset:
    """A PS3.10 file (PS3.10 7.1: preamble, "DICM", file meta) read as a Dataset that carries `data` as its
    encoding when its file meta information is complete (else `instance_bytes` re-encodes it). Values longer than
    DEFER_BYTES (pixel data) are read from `data` only when used: no copy for an instance passed on as bytes.
    Raises what pydicom raises for something that is not a DICOM file, EOFError when an element runs past the
    end (PS3.5 7.1: a value is as long as its Value Length says)."""
    dataset = dcmread(BytesIO(data), defer_size=DEFER_BYTES)  # BytesIO shares `data`: no copy
    for tag in dataset.keys():
        element = dataset.get_item(tag, keep_deferred=True)  # as read: it knows where its value is
        length, start = getattr(element, "length", None), getattr(element, "value_tell", None)
        if start is not None and length is not None and length != _UNDEFINED_LENGTH and start + length > len(data):
            raise EOFError(f"truncated DICOM file: {len(data)} bytes, element {element.tag} ends at "
                           f"{start + length}")
    return with_encoding(dataset, data)


def with_encoding(dataset: Dataset, data: bytes) -> Dataset:
    """Attach `data`, the PS3.10 file `dataset` was read from, so `instance_bytes` passes it on unchanged. Not
    attached when the file meta lacks a Type 1 element (PS3.10 7.1, Table 7.1-1): `encode_instance` then writes a
    conformant file instead."""
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and all(keyword in meta for keyword in _REQUIRED_META):
        object.__setattr__(dataset, _ENCODING, data)
    return dataset


def drop_encoding(dataset: Dataset) -> None:
    """Forget the attached PS3.10 bytes (call it before changing a Dataset that carries them)."""
    dataset.__dict__.pop(_ENCODING, None)


def instance_bytes(dataset: Dataset) -> bytes:
    """The instance as a PS3.10 file: the bytes it was read from when it carries them (`with_encoding`), else
    `encode_instance(dataset)`."""
    data = dataset.__dict__.get(_ENCODING)
    return data if data is not None else encode_instance(dataset)
