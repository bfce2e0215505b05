"""ReactorGate: the pause handshake that keeps pynetdicom's reactor thread off the DIMSE queue while a request is
answered (shared/adapters/dimse_reactor.py)."""

from __future__ import annotations

import threading
import time

from shared.adapters.dimse_reactor import ReactorGate


def test_clear_returns_only_once_the_reactor_is_parked_and_set_releases_it() -> None:
    passed = threading.Event()

    def reactor() -> None:
        time.sleep(0.1)  # busy elsewhere in its loop when the sender clears the gate
        gate.wait()
        passed.set()

    thread = threading.Thread(target=reactor)
    gate = ReactorGate(thread)
    thread.start()
    started = time.monotonic()
    gate.clear()
    assert time.monotonic() - started >= 0.09  # waited for the reactor to come round
    assert not gate.is_set() and not passed.wait(0.05)  # and it stays parked
    gate.set()
    assert passed.wait(1.0)
    thread.join(1.0)


def test_clear_does_not_wait_for_an_ended_reactor_or_from_the_reactor_itself() -> None:
    ended = threading.Thread(target=lambda: None)
    ended.start()
    ended.join()
    started = time.monotonic()
    ReactorGate(ended).clear()
    assert time.monotonic() - started < 0.5

    cleared_at: list[float] = []

    def reactor() -> None:  # pynetdicom's release at the network timeout pauses the reactor from the reactor
        started = time.monotonic()
        own.clear()
        cleared_at.append(time.monotonic() - started)

    thread = threading.Thread(target=reactor)
    own = ReactorGate(thread)
    thread.start()
    thread.join(2.0)
    assert cleared_at and cleared_at[0] < 0.5


def test_a_set_while_clear_waits_ends_the_wait() -> None:
    thread = threading.Thread(target=time.sleep, args=(2.0,), daemon=True)  # alive, never parks
    gate = ReactorGate(thread)
    thread.start()
    threading.Timer(0.1, gate.set).start()  # e.g. abort() restarting the reactor
    started = time.monotonic()
    gate.clear()
    assert time.monotonic() - started < 1.0 and gate.is_set()
