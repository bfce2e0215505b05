"""The retrieval service's ports: retrieve from a source (C-MOVE / C-GET SCU) and store to a destination (C-STORE
SCU). shared/adapters/dimse_retrieve.py implements them on pynetdicom; tests use fakes.
"""

from __future__ import annotations

from typing import Callable, Generator, Protocol

from pydicom import Dataset

from shared.retrieval.model import Destination, RetrieveOutcome, RetrieveProgress, RetrieveRequest
from shared.spanning.model import SourceSpec
from shared.spanning.ports import CancelToken

RetrieveStream = Generator[RetrieveProgress, None, RetrieveOutcome]
# Receives one instance a source sent (dataset with its file_meta); returns the C-STORE status to answer the source
# with (0x0000, or a failure such as 0xA700 when it cannot be kept). It may block: that slows the source down.
InstanceSink = Callable[[Dataset], int]


class RetrievePort(Protocol):
    """Retrieves from one source. Both calls yield a RetrieveProgress per pending response and return the
    RetrieveOutcome (the source's final status and counts). Raise shared.spanning.ports.TransportError when the
    source cannot be reached (association refused/aborted), QueryFailedError when the request cannot be made.
    Cancelling `cancel` sends C-CANCEL; the outcome is then the source's final status (normally 0xFE00)."""

    def move(self, source: SourceSpec, request: RetrieveRequest, destination_ae: str,
             cancel: CancelToken) -> RetrieveStream: ...

    def get(self, source: SourceSpec, request: RetrieveRequest, sink: InstanceSink,
            cancel: CancelToken) -> RetrieveStream: ...


class StoreSession(Protocol):
    """One association to a destination, kept open for a whole retrieval (instances are sent as they arrive)."""

    def send(self, dataset: Dataset) -> int:
        """C-STORE one instance; returns the destination's status (negative: no status, association lost)."""

    def close(self) -> None: ...


class StorePort(Protocol):
    def open(self, destination: Destination, cancel: CancelToken) -> StoreSession:
        """A session to `destination` (it may connect lazily, at the first send). TransportError when it cannot."""
