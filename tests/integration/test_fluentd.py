"""Log shipping to Fluentd (shared.fluentd via shared.logging.configure_logging) against a real forward-protocol
listener on loopback: the tag and fields arrive; a closed port or a listener that never reads does not block."""

from __future__ import annotations

import io
import json
import logging
import socket
import struct
import threading
import time
from typing import Iterator

import msgpack
import pytest

from shared.config import LoggingSettings
from shared.fluentd import FluentForwardHandler
from shared.logging import configure_logging, log_event
from tests.peers import free_port

logger = logging.getLogger("axiom.test.fluentd")


class ForwardListener:
    """A minimal Fluentd forward input: decodes Message, Forward and PackedForward modes into (tag, time, record)."""

    def __init__(self, read: bool = True, port: int = 0) -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.port = self.server.getsockname()[1]
        self.read, self.events, self.connections = read, [], []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(conn)
            if self.read:
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False, ext_hook=_ext_hook)
        while chunk := conn.recv(65536):
            unpacker.feed(chunk)
            for message in unpacker:
                self.events.extend(_decode(message))

    def wait_for(self, count: int, seconds: float = 5.0) -> list[tuple[str, float, dict]]:
        give_up = time.monotonic() + seconds
        while len(self.events) < count and time.monotonic() < give_up:
            time.sleep(0.02)
        return list(self.events)

    def close(self) -> None:
        self.server.close()
        for conn in self.connections:
            conn.close()


def _ext_hook(code: int, data: bytes) -> float:
    assert code == 0, f"unexpected ext type {code}"  # EventTime
    seconds, nanos = struct.unpack(">II", data)
    return seconds + nanos / 1e9


def _decode(message: list) -> list[tuple[str, float, dict]]:
    tag, second = message[0], message[1]
    if isinstance(second, list):  # Forward mode: [tag, [[time, record], ...], option?]
        return [(tag, time_, record) for time_, record in second]
    if isinstance(second, (bytes, bytearray)):  # PackedForward: [tag, packed entries, option?]
        entries = msgpack.Unpacker(raw=False, ext_hook=_ext_hook)
        entries.feed(second)
        return [(tag, time_, record) for time_, record in entries]
    return [(tag, second, message[2])]  # Message mode: [tag, time, record, option?]


@pytest.fixture()
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def _fluent_handler() -> FluentForwardHandler:
    return next(h for h in logging.getLogger().handlers if isinstance(h, FluentForwardHandler))


def test_records_reach_a_forward_listener_with_the_service_tag_and_json_fields(restore_root):
    listener = ForwardListener()
    stdout = io.StringIO()
    try:
        configure_logging("api", stream=stdout, shipping=LoggingSettings(FLUENTD_HOST="127.0.0.1",
                                                                         FLUENTD_PORT=listener.port))
        before = time.time()
        log_event(logger, "spanning_query_completed", query_id="q-1", source="PACS_A",
                  study_uid="1.2.3", status="completed", password="hunter2")
        events = listener.wait_for(1)
    finally:
        listener.close()
    tag, when, record = events[0]
    assert tag == "axiom.api"
    assert before - 1 <= when <= time.time() + 1
    line = json.loads(stdout.getvalue().splitlines()[0])
    assert record == line  # the same fields as the stdout JSON line
    assert (record["event"], record["service"], record["level"]) == ("spanning_query_completed", "api", "info")
    assert (record["query_id"], record["source"], record["study_uid"]) == ("q-1", "PACS_A", "1.2.3")
    assert record["password"] == "***" and "timestamp" in record


def test_a_closed_port_neither_blocks_nor_breaks_the_service(restore_root):
    port = free_port()  # nothing listens there
    configure_logging("worker", stream=io.StringIO(), shipping=LoggingSettings(
        FLUENTD_HOST="127.0.0.1", FLUENTD_PORT=port, FLUENTD_QUEUE_SIZE=100))
    started = time.monotonic()
    for index in range(1000):
        log_event(logger, "dimse_worker_status", processed=index)
    elapsed = time.monotonic() - started
    handler = _fluent_handler()
    assert elapsed < 2.0, f"1,000 events took {elapsed:.2f}s with Fluentd down"
    assert handler.dropped >= 1000 - 100 - handler.batch_size and handler.sent == 0
    log_event(logger, "still_logging")  # the service goes on


def test_a_listener_that_never_reads_does_not_block(restore_root):
    listener = ForwardListener(read=False)
    try:
        configure_logging("listener", stream=io.StringIO(), shipping=LoggingSettings(
            FLUENTD_HOST="127.0.0.1", FLUENTD_PORT=listener.port, FLUENTD_QUEUE_SIZE=50))
        started = time.monotonic()
        for index in range(3000):  # ~1 MB: more than the socket buffers take
            log_event(logger, "dimse_worker_status", processed=index, padding="x" * 300)
        elapsed = time.monotonic() - started
        assert elapsed < 3.0, f"3,000 events took {elapsed:.2f}s with a stuck Fluentd"
        assert _fluent_handler().dropped > 0
    finally:
        listener.close()


def test_sending_resumes_once_fluentd_is_back(restore_root, monkeypatch):
    monkeypatch.setattr("shared.fluentd.BACKOFF_FIRST_SECONDS", 0.05)
    port = free_port()
    configure_logging("api", stream=io.StringIO(), shipping=LoggingSettings(FLUENTD_HOST="127.0.0.1",
                                                                            FLUENTD_PORT=port))
    log_event(logger, "while_down")
    time.sleep(0.2)  # the first attempt fails: the batch is kept for the retry
    listener = ForwardListener(port=port)
    try:
        events = listener.wait_for(1, seconds=5.0)
    finally:
        listener.close()
    assert [record["event"] for _, _, record in events][:1] == ["while_down"]
