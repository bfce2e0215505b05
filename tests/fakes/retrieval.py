"""Fakes for the retrieval service: archives that hold instances (a RetrievePort), a destination (a StorePort) and
a spanning locate over the archives' catalogs.

Every wait is bounded (a second or two) or a `cancel.wait(...)`, so a broken test fails instead of hanging.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from shared.dicom.levels import UNIQUE_KEYS, QueryLevel
from shared.retrieval.inbox import Inbox
from shared.retrieval.locate import COUNT_KEYS, key_text
from shared.retrieval.model import (
    CANCEL,
    OUT_OF_RESOURCES_SUB_OPERATIONS,
    SUB_OPERATIONS_WITH_FAILURES,
    SUCCESS,
    Destination,
    RetrieveOutcome,
    RetrieveProgress,
    RetrieveRequest,
)
from shared.spanning.model import Match, SourceOutcome, SourceSpec, SourceStatus, SpanRequest, SpanResult, SpanStatus
from shared.spanning.ports import CancelToken, TransportError

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
KEYS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def instance(study: str, series: str, sop: str, size: int = 256, patient: str = "P1") -> Dataset:
    """An instance with `size` bytes of pixel data and its file meta information."""
    ds = Dataset()
    ds.PatientID = patient
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.add_new(0x7FE00010, "OB", b"\0" * size)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    return ds


def study_instances(study: str, count: int, size: int = 256) -> list[Dataset]:
    return [instance(study, f"{study}.1", f"{study}.1.{n}", size) for n in range(1, count + 1)]


def selects(identifier: Dataset, ds: Dataset) -> bool:
    """Whether `ds` is named by the identifier's non-empty unique keys (a list of UIDs matches any of them)."""
    for keyword in KEYS:
        value = key_text(identifier.get(keyword))
        if value and str(ds.get(keyword, "")) not in value.split("\\"):
            return False
    return True


@dataclass
class Holding:
    """What one archive holds and how it behaves."""

    instances: list[Dataset] = field(default_factory=list)
    transport_error: bool = False  # raise TransportError (association refused)
    move_status: int | None = None  # answer every C-MOVE with this status, sending nothing (e.g. 0xA801)
    move_fail_uids: frozenset[str] = frozenset()  # C-MOVE sub-operations that fail (listed unless list_failed False)
    list_failed: bool = True
    hold_last_until: threading.Event | None = None  # before sending the last instance, wait (<= 2 s) for this
    hang_after: int | None = None  # after this many instances, wait until cancelled
    delay: float = 0.0  # before each instance


@dataclass
class PortCall:
    kind: str
    source: str
    level: QueryLevel
    identifier: Dataset
    destination: str | None = None


class FakeRetrievePort:
    """A RetrievePort over `holdings` by source name. C-MOVE to `self_ae` delivers through `inbox` (as the
    spanner's storage listener would); to any other AE it records the SOP Instance UIDs in `moved[ae]`."""

    def __init__(self, holdings: dict[str, Holding], inbox: Inbox | None = None, self_ae: str | None = None) -> None:
        self.holdings, self.inbox, self.self_ae = holdings, inbox, self_ae
        self.calls: list[PortCall] = []
        self.moved: dict[str, list[str]] = defaultdict(list)
        self.cut_through: list[bool] = []  # per hold_last_until wait: was the event set in time
        self.cancels_seen: list[str] = []
        self._lock = threading.Lock()

    def calls_of(self, kind: str) -> list[PortCall]:
        return [call for call in self.calls if call.kind == kind]

    def move(self, source: SourceSpec, request: RetrieveRequest, destination_ae: str, cancel: CancelToken):
        holding = self._begin("move", source, request, destination_ae)
        if holding.move_status is not None:
            return RetrieveOutcome(holding.move_status)
        yield from ()

        def deliver(ds: Dataset) -> int:
            if destination_ae == self.self_ae:
                return self.inbox.deliver(ds)
            if ds.SOPInstanceUID in holding.move_fail_uids:
                return 0xA700
            with self._lock:
                self.moved[destination_ae].append(ds.SOPInstanceUID)
            return SUCCESS

        return (yield from self._send(source, holding, request, deliver, cancel))

    def get(self, source: SourceSpec, request: RetrieveRequest, sink: Callable[[Dataset], int], cancel: CancelToken):
        holding = self._begin("get", source, request, None)
        return (yield from self._send(source, holding, request, sink, cancel))

    def _begin(self, kind: str, source: SourceSpec, request: RetrieveRequest, destination: str | None) -> Holding:
        with self._lock:
            self.calls.append(PortCall(kind, source.name, request.level, request.identifier, destination))
        holding = self.holdings.get(source.name, Holding())
        if holding.transport_error:
            raise TransportError(f"{source.name}: association rejected")
        return holding

    def _send(self, source, holding: Holding, request: RetrieveRequest, deliver, cancel: CancelToken):
        chosen = [ds for ds in holding.instances if selects(request.identifier, ds)]
        completed = failed = 0
        failed_uids: list[str] = []
        for index, ds in enumerate(chosen):
            if holding.hang_after is not None and index >= holding.hang_after:
                cancel.wait(2.0)
            if cancel.cancelled or (holding.delay and cancel.wait(holding.delay)):
                self.cancels_seen.append(source.name)
                return RetrieveOutcome(CANCEL, completed, failed, 0, tuple(failed_uids))
            if holding.hold_last_until is not None and index == len(chosen) - 1:
                self.cut_through.append(holding.hold_last_until.wait(2.0))
            if deliver(copy.deepcopy(ds)) == SUCCESS:
                completed += 1
            else:
                failed += 1
                failed_uids.append(ds.SOPInstanceUID)
            yield RetrieveProgress(remaining=len(chosen) - index - 1, completed=completed, failed=failed)
        status = (SUCCESS if not failed else SUB_OPERATIONS_WITH_FAILURES if completed
                  else OUT_OF_RESOURCES_SUB_OPERATIONS)
        return RetrieveOutcome(status, completed, failed, 0, tuple(failed_uids) if holding.list_failed else ())


class FakeStorePort:
    """A destination: records what it receives; `refuse` SOP Instance UIDs get 0xA700, `warn` ones 0xB000.
    `sent` counts every send, received or not."""

    def __init__(self, refuse: frozenset[str] = frozenset(), warn: frozenset[str] = frozenset(),
                 fail_open: bool = False, delay: float = 0.0, on_receive: Callable[[str], None] | None = None,
                 down: bool = False) -> None:
        self.refuse, self.warn, self.fail_open, self.delay, self.on_receive = refuse, warn, fail_open, delay, on_receive
        self.down = down  # opens (lazily, like the DIMSE session) but every send gets no status
        self.received: list[str] = []
        self.sent = 0
        self.first_received = threading.Event()
        self.opened = self.closed = 0

    def open(self, destination: Destination, cancel: CancelToken) -> "FakeSession":
        if self.fail_open:
            raise TransportError(f"{destination.ae_title}: connection refused")
        self.opened += 1
        return FakeSession(self)


class FakeSession:
    def __init__(self, port: FakeStorePort) -> None:
        self.port = port

    def send(self, dataset: Dataset) -> int:
        port = self.port
        port.sent += 1
        assert dataset.file_meta.TransferSyntaxUID  # forwarded as a file would be
        if port.delay:
            time.sleep(port.delay)
        uid = dataset.SOPInstanceUID
        if port.down:
            return -1
        port.received.append(uid)
        port.first_received.set()
        if port.on_receive is not None:
            port.on_receive(uid)
        return 0xA700 if uid in port.refuse else 0xB000 if uid in port.warn else SUCCESS

    def close(self) -> None:
        self.port.closed += 1


class FakeLocate:
    """A spanning C-FIND over each source's catalog (sources in priority order): one match per entity at the
    request's level, with its parents' keys, its instance count (SOPClassUID at IMAGE level) and its holders.
    Records each call's SpanRequest (`calls`) and the retrieval's origin it was given (`origins`)."""

    def __init__(self, catalogs: dict[str, list[Dataset]], failed_sources: tuple[str, ...] = ()) -> None:
        self.catalogs, self.failed_sources = catalogs, failed_sources
        self.calls: list[SpanRequest] = []
        self.origins: list[object] = []

    def __call__(self, request: SpanRequest, origin: object = None) -> SpanResult:
        self.calls.append(request)
        self.origins.append(origin)
        outcomes = tuple(SourceOutcome(name, SourceStatus.FAILED if name in self.failed_sources else SourceStatus.OK)
                         for name in self.catalogs)
        if self.failed_sources:
            return SpanResult(request.query_id, SpanStatus.FAILED, (), outcomes, 0, 1.0, error="sources failed")
        entries: dict[str, tuple[Dataset, list[str]]] = {}
        for name, catalog in self.catalogs.items():
            groups: dict[str, list[Dataset]] = defaultdict(list)
            for ds in catalog:
                if selects(request.identifier, ds):
                    groups[str(ds.get(UNIQUE_KEYS[request.level]))].append(ds)
            for uid, members in groups.items():
                if uid not in entries:
                    entries[uid] = (self._match(request.level, members), [])
                entries[uid][1].append(name)
        matches = tuple(Match(ds, (uid,), tuple(holders)) for uid, (ds, holders) in entries.items())
        return SpanResult(request.query_id, SpanStatus.COMPLETED, matches, outcomes, len(matches), 1.0)

    @staticmethod
    def _match(level: QueryLevel, members: list[Dataset]) -> Dataset:
        first, match = members[0], Dataset()
        for keyword in KEYS[: level.depth + 1]:
            setattr(match, keyword, first.get(keyword))
        if level in COUNT_KEYS:
            setattr(match, COUNT_KEYS[level], str(len(members)))
        else:
            match.SOPClassUID = first.SOPClassUID
        return match
