"""Injectable misbehaviour for the PACS simulator, the same for DIMSE and DICOMweb.

Per request (C-FIND, C-MOVE, C-GET, QIDO-RS, WADO-RS; C-ECHO and C-STORE are never faulted):

- latency: wait this many seconds before the first answer (interrupted early by C-CANCEL, abort or stop).
- failure_rate: this fraction of requests fails, drawn from a seeded RNG (reproducible for a given request order).
  failure_mode "status": DIMSE final status 0xC000 ("Unable to process", PS3.4 C.4.1.1.4) with no matches /
  HTTP 500; "abort": A-ABORT of the association / the HTTP connection closed without a response.
- hang: accept the request and never answer until the peer cancels (C-CANCEL -> final 0xFE00), aborts or
  disconnects, or the simulator stops. QIDO/WADO: the response is never started.
- result_cap: at most N matches. DIMSE: then a final status `result_cap_status`, by default 0x0000 Success
  (what real archives do silently: PS3.4 Table C.4-1 has no C-FIND warning status), or e.g. 0xB000 for an
  SCU that should see a Warning. QIDO-RS: the first N and the header
  `Warning: 299 <host> "The number of results exceeded the maximum supported by the server. Additional results
  can be requested."` (PS3.18 10.6, Search transaction response).
- malformed: every C-FIND pending response carries an Identifier that does not decode (a sequence of undefined
  length that never ends); QIDO returns a truncated JSON body with 200 and application/dicom+json.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

FAILURE_STATUS = 0xC000
CANCEL_STATUS = 0xFE00
QIDO_TRUNCATION_WARNING = (
    '299 {host} "The number of results exceeded the maximum supported by the server. '
    'Additional results can be requested."'
)


@dataclass(frozen=True)
class Faults:
    """What to do wrong; the default does everything right."""

    latency: float = 0.0
    failure_rate: float = 0.0
    failure_mode: str = "status"  # "status" | "abort"
    hang: bool = False
    result_cap: int | None = None
    result_cap_status: int = 0x0000
    malformed: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be within 0..1, got {self.failure_rate}")
        if self.failure_mode not in ("status", "abort"):
            raise ValueError(f"failure_mode must be 'status' or 'abort', got {self.failure_mode!r}")
        if self.latency < 0 or (self.result_cap is not None and self.result_cap < 0):
            raise ValueError("latency and result_cap must not be negative")


@dataclass(frozen=True)
class Decision:
    """What one request gets: drawn once when it arrives."""

    fail: bool
    abort: bool


class FaultInjector:
    """Runtime side of `Faults`: a seeded RNG behind a lock, and interruptible waiting."""

    def __init__(self, faults: Faults, stopping: threading.Event) -> None:
        self.faults = faults
        self._stopping = stopping
        self._rng = random.Random(faults.seed)
        self._lock = threading.Lock()

    def decide(self) -> Decision:
        """Draw whether this request fails, and how."""
        with self._lock:
            fail = self._rng.random() < self.faults.failure_rate
        return Decision(fail=fail, abort=fail and self.faults.failure_mode == "abort")

    def delay(self, interrupted: Callable[[], bool] = lambda: False) -> bool:
        """Sleep `latency` seconds; False if interrupted (cancel, abort, stop) before the end."""
        return self.wait(self.faults.latency, interrupted)

    def hang(self, interrupted: Callable[[], bool]) -> None:
        """Block until `interrupted()` or the simulator stops (the `hang` fault)."""
        self.wait(None, interrupted)

    def wait(self, seconds: float | None, interrupted: Callable[[], bool]) -> bool:
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            if self._stopping.is_set() or interrupted():
                return False
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return True
            self._stopping.wait(0.02 if remaining is None else min(0.02, remaining))

    def cap(self, count: int) -> tuple[int, bool]:
        """How many of `count` matches to send, and whether the cap cut some off."""
        cap = self.faults.result_cap
        if cap is None or count <= cap:
            return count, False
        return cap, True
