"""Bounded temporary storage between a source that sends instances and whoever forwards them (a proxied C-MOVE's
C-STORE sub-operations, PS3.4 C.4.2.2; a C-GET SCP's own, C.4.3.2).

A `SpoolBudget` is the service's byte budget, shared by every job's `Spool`. `Spool.put` writes one instance as a
DICOM file (PS3.10) in the job's directory and blocks while the budget is spent, until a consumer `release`s what
it forwarded: a fast source is slowed to the pace of its destination (backpressure) instead of filling memory or
disk. One instance larger than the whole budget is admitted alone, when nothing else is spooled (or it would never
pass). `finish()` says no more instances will come; `abort()` wakes every waiter (cancel); `remove()` deletes the
job's directory and returns its bytes to the budget.
"""

from __future__ import annotations

import itertools
import shutil
import threading
from collections import deque
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Callable

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian


@dataclass(frozen=True)
class SpooledInstance:
    """One instance waiting in a spool: its file, its size and its SOP Instance UID."""

    path: Path
    size: int
    sop_instance_uid: str


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
    """One job's spool: a directory of instance files, consumed in arrival order. Thread-safe: producers (source
    C-STORE handlers) and one consumer."""

    def __init__(self, directory: Path, budget: SpoolBudget) -> None:
        directory.mkdir(parents=True, exist_ok=False)
        self.directory = directory
        self._budget = budget
        self._cond = threading.Condition()
        self._io = threading.Lock()  # file writes vs remove(): no file lands in a directory being deleted
        self._ready: deque[SpooledInstance] = deque()
        self._held: dict[Path, int] = {}
        self._seq = itertools.count()
        self._finished = False
        self._aborted = False

    def put(self, dataset: Dataset) -> bool:
        """Spool one instance (with its file meta information, PS3.10 7.1); blocks while the budget is spent.
        False when the spool was aborted (nothing kept); OSError when the file cannot be written."""
        data = encode_instance(dataset)
        if not self._budget.reserve(len(data), lambda: self._aborted):
            return False
        path = self.directory / f"{next(self._seq):08d}.dcm"
        with self._io:
            try:
                if self._aborted:
                    return self._give_back(len(data))
                path.write_bytes(data)
            except BaseException:
                self._give_back(len(data))
                raise
            entry = SpooledInstance(path, len(data), str(dataset.get("SOPInstanceUID", "")))
            with self._cond:
                self._held[path] = entry.size
                self._ready.append(entry)
                self._cond.notify_all()
        return True

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
            return self._ready.popleft()

    @staticmethod
    def load(entry: SpooledInstance) -> Dataset:
        """The spooled instance as a Dataset with its file_meta."""
        return dcmread(entry.path)

    def release(self, entry: SpooledInstance) -> None:
        """Delete a consumed instance's file and give its bytes back to the budget."""
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
