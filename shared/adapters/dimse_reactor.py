"""A real pause for pynetdicom's association reactor, so a DIMSE response always reaches the request that awaits it.

Every pynetdicom 3.0 Association runs a reactor thread that polls the DIMSE message queue for requests from the
peer, and every `send_*` (send_c_find, send_c_move, send_c_get, send_c_store, send_c_echo, release) pauses it
before sending, then reads the responses itself with `dimse.get_msg(block=True)` (association.py):

    reactor thread                                   sending thread
    self._is_paused = True                           self._reactor_checkpoint.clear()
    self._reactor_checkpoint.wait()                  while not self._is_paused: time.sleep(0.0001)
    self._is_paused = False                          self.dimse.send_msg(request)  ... get_msg(block=True)
    msg = self.dimse.get_msg(block=False)
    if msg: self._serve_request(msg)  # a response: "Received unexpected C-FIND service message", dropped

`_is_paused` is still True while the reactor is returning from `wait()` on a checkpoint that was set, so a sender
that clears the checkpoint in that instant goes ahead although the reactor is about to poll the queue. When the
reactor thread is then held off the GIL for as long as the peer takes to answer (a busy worker process: four task
threads, watchdogs, two pynetdicom threads per pooled association), its `get_msg(block=False)` takes one response:
the first pending C-FIND response, a later one, or the final one, and drops it (the WARNING is silenced by
shared.logging). The C-FIND then ends with Success 0x0000 ("matching is complete", PS3.4 C.4.1.1.4) one match
short, or waits until the DIMSE timeout for a final response that never comes. pynetdicom hands responses to the
sender in arrival order (their Message ID Being Responded To, PS3.7 9.3.2.2, is not checked), so nothing downstream
can notice the gap.

`ReactorGate` replaces the association's checkpoint (a threading.Event) with the same interface and a real
handshake: `clear()` returns only once the reactor is blocked in `wait()` (or its thread has ended), so the request
is sent when the reactor can no longer touch the queue; `set()` lets it run again, as before.
"""

from __future__ import annotations

import logging
import threading
import time

from pynetdicom.association import Association

logger = logging.getLogger(__name__)

PARK_WAIT_SECONDS = 5.0  # a reactor comes back to wait() within one loop (~1 ms); this bounds a stuck one
_POLL_SECONDS = 0.05  # how often clear() looks whether the reactor thread has ended meanwhile


class ReactorGate:
    """Drop-in for `Association._reactor_checkpoint` (set/clear/is_set/wait of a threading.Event) whose `clear()`
    waits until the reactor thread `reactor` is parked in `wait()` (module doc)."""

    def __init__(self, reactor: threading.Thread, is_set: bool = True) -> None:
        self._reactor = reactor
        self._cond = threading.Condition()
        self._open = is_set
        self._parked = False

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def clear(self) -> None:
        """Close the gate and wait until the reactor is parked at it, it has ended or someone opened it again."""
        with self._cond:
            self._open = False
            if threading.current_thread() is self._reactor:
                return  # the reactor pausing itself (pynetdicom's release at the network timeout)
            deadline = time.monotonic() + PARK_WAIT_SECONDS
            while not (self._parked or self._open) and self._reactor.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.warning("association reactor not paused after %.0f s; sending anyway", PARK_WAIT_SECONDS)
                    return
                self._cond.wait(min(left, _POLL_SECONDS))

    def wait(self, timeout: float | None = None) -> bool:
        """The reactor's checkpoint: block while the gate is closed (parked, which releases a waiting clear())."""
        with self._cond:
            if self._open:
                return True
            self._parked = True
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._open, timeout)
            finally:
                self._parked = False


def gate_reactor(assoc: Association) -> None:
    """Give `assoc` a ReactorGate in place of its reactor checkpoint. Call it before the association is used (an
    EVT_CONN_OPEN handler: the reactor starts only once the association is established)."""
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    if checkpoint is None or isinstance(checkpoint, ReactorGate):
        return
    assoc._reactor_checkpoint = ReactorGate(assoc, checkpoint.is_set())
