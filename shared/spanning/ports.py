"""The engine's ports: what it needs from the outside world, as Protocols.

Adapters in shared/adapters implement them (pynetdicom C-FIND SCU, httpx QIDO-RS, a thread executor); tests use
scripted fakes. The engine only ever sees these types.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable, Generator, Protocol

from pydicom import Dataset

from shared.spanning.model import FindSummary, SourceSpec, SpanRequest


class SourceError(Exception):
    """A source could not answer. Subclasses say whether retrying can help."""


class TransportError(SourceError):
    """Connection refused, association rejected/aborted, network timeout: worth a retry with backoff."""


class QueryFailedError(SourceError):
    """The source answered with a DICOM/HTTP failure or sent malformed data: never retried."""


class CancelToken:
    """A cancellation flag an adapter can poll, or hook a callback on (e.g. to send C-CANCEL or abort).

    Callbacks run once, in the thread that cancels; one registered after cancellation runs at once.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a failing hook must not stop the others
                pass

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Register `callback`; returns a function that unregisters it."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._discard(callback)
        callback()
        return lambda: None

    def wait(self, timeout: float | None) -> bool:
        """Sleep up to `timeout` seconds; True when cancelled meanwhile."""
        return self._event.wait(timeout)

    def _discard(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


FindStream = Generator[Dataset, None, FindSummary | None]


class QueryPort(Protocol):
    """Queries one source. The engine calls `find` once per attempt.

    Yields each match as a decoded pydicom Dataset (values as str, whatever the source's Specific Character Set);
    returns a FindSummary (or None) when the source's final status arrives. Raises TransportError (retryable) or
    QueryFailedError (not retryable). Must stop promptly once `cancel` is cancelled.
    """

    def find(self, request: SpanRequest, source: SourceSpec, cancel: CancelToken) -> FindStream: ...


class Executor(Protocol):
    """Runs source queries concurrently (a thread pool in-process; the distributed mode swaps it)."""

    def submit(self, fn: Callable[..., object], /, *args: object) -> Future: ...
