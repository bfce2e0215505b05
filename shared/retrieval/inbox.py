"""The spanner's own storage AE as a C-MOVE destination for its proxy jobs.

A source without C-GET is asked to C-MOVE to the spanner itself (PS3.4 C.4.2.2: the C-STORE sub-operations go to
the Move Destination). The listener's C-STORE handler hands each received instance to `Inbox.deliver`; a proxy job
has registered (`expect`) the entities it waits for, by their unique keys at the retrieve level, and receives
their instances through its sink. An instance no job waits for is refused.

Two jobs may wait for the same entity (two users moving the same study): an instance goes to the oldest waiting
job that has not received that SOP Instance yet, so each job gets its own copy from its own C-MOVE.
"""

from __future__ import annotations

import itertools
import threading
from typing import Iterable

from pydicom import Dataset

from shared.dicom.levels import UNIQUE_KEYS, QueryLevel
from shared.retrieval.model import SUCCESS
from shared.retrieval.ports import InstanceSink

# C-STORE status for an instance no proxy job waits for: "Refused: Not Authorized" (PS3.7 C.5.x general status
# 0x0124) — the spanner did not ask for it; a retry will not help.
NOT_EXPECTED = 0x0124


class Expectation:
    """One job's registration: the entities it waits for and its sink. Close it (or use `with`) when the job's
    C-MOVE is over."""

    def __init__(self, inbox: "Inbox", order: int, level: QueryLevel, uids: Iterable[str], sink: InstanceSink):
        self.order, self.level, self.sink = order, level, sink
        self.uids = frozenset(uid.strip() for uid in uids)
        self.received: set[str] = set()
        self._inbox = inbox

    def wants(self, dataset: Dataset) -> bool:
        return str(dataset.get(UNIQUE_KEYS[self.level], "")).strip() in self.uids

    def close(self) -> None:
        self._inbox._remove(self)

    def __enter__(self) -> "Expectation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Inbox:
    """Routes instances received by the spanner's storage AE to the proxy jobs waiting for them. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[Expectation] = []
        self._order = itertools.count()

    def expect(self, level: QueryLevel, uids: Iterable[str], sink: InstanceSink) -> Expectation:
        """Register a job waiting for the instances of the entities `uids` at `level` (their unique key values)."""
        expectation = Expectation(self, next(self._order), level, uids, sink)
        with self._lock:
            self._waiting.append(expectation)
        return expectation

    def waits_for(self, dataset: Dataset) -> bool:
        """Whether some job waits for this instance (the listener may route others elsewhere)."""
        with self._lock:
            return any(expectation.wants(dataset) for expectation in self._waiting)

    def deliver(self, dataset: Dataset) -> int:
        """Hand a received instance (with its file_meta) to the job waiting for it; returns the C-STORE status to
        answer with (the job's sink's status; NOT_EXPECTED when no job waits for it). May block: the job's spool
        applies backpressure to the sending source."""
        sop_uid = str(dataset.get("SOPInstanceUID", "")).strip()
        with self._lock:
            candidates = [expectation for expectation in self._waiting if expectation.wants(dataset)]
            fresh = [expectation for expectation in candidates if sop_uid not in expectation.received]
            target = (fresh or candidates or [None])[0]
            if target is not None:
                target.received.add(sop_uid)
        if target is None:
            return NOT_EXPECTED
        status = target.sink(dataset)
        if status != SUCCESS:
            with self._lock:
                target.received.discard(sop_uid)
        return status

    def _remove(self, expectation: Expectation) -> None:
        with self._lock:
            if expectation in self._waiting:
                self._waiting.remove(expectation)
