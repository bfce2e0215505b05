"""Log shipping to Fluentd over its forward protocol, never at the cost of the service.

`FluentForwardHandler` is a logging handler: `emit` packs the record (the same fields as the stdout JSON line) with
msgpack and puts it on a bounded queue without waiting; when the queue is full the record is dropped and counted
(`dropped`). One daemon thread sends the queue in batches as Forward-mode messages `[tag, [[time, record], ...]]`
(Fluentd forward protocol v1, time as EventTime: msgpack ext type 0, seconds and nanoseconds). A Fluentd that is
down, refuses connections or accepts but never reads costs the sender thread its timeouts, never the caller: the
batch is kept and retried after a back-off (1 s doubling to 30 s) while new records fill the queue or are dropped.

Written on msgpack directly rather than fluent-logger: its async handler drops silently (nothing to count) and its
sender keeps no batch across reconnects. A process forked after the handler started (Celery's prefork pool) gets its
own queue and sender on its first record.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import struct
import threading
from typing import Callable

import msgpack

logger = logging.getLogger(__name__)
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0


def event_time(timestamp: float) -> msgpack.ExtType:
    """Fluentd's EventTime: ext type 0 holding seconds and nanoseconds as two big-endian uint32."""
    seconds = int(timestamp)
    return msgpack.ExtType(0, struct.pack(">II", seconds, int((timestamp - seconds) * 1e9)))


def forward_message(tag: str, entries: list[bytes]) -> bytes:
    """A Forward-mode message `[tag, [entry, ...]]` from entries already packed as `[time, record]`."""
    packer = msgpack.Packer()
    return b"".join([packer.pack_array_header(2), packer.pack(tag), packer.pack_array_header(len(entries)),
                     *entries])


class FluentForwardHandler(logging.Handler):
    """Ships each record as `record_of(record)` (a dict) to Fluentd at host:port with `tag`; never blocks."""

    def __init__(self, host: str, port: int, tag: str, record_of: Callable[[logging.LogRecord], dict], *,
                 queue_size: int = 10_000, batch_size: int = 200, connect_timeout: float = 1.0,
                 send_timeout: float = 2.0) -> None:
        super().__init__()
        self.host, self.port, self.tag, self._record_of = host, port, tag, record_of
        self.queue_size, self.batch_size = queue_size, batch_size
        self.connect_timeout, self.send_timeout = connect_timeout, send_timeout
        self.dropped = self.sent = 0
        self._count_lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.Queue[bytes] = queue.Queue(queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record for the sender; a full queue drops it (counted in `dropped`)."""
        try:
            if self._pid != os.getpid():
                self._start_sender()
            entry = msgpack.packb([event_time(record.created), self._record_of(record)], default=str)
            self._queue.put_nowait(entry)
        except queue.Full:
            with self._count_lock:
                self.dropped += 1
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        """Stop the sender after at most one more batch attempt (bounded by the socket timeouts)."""
        self._stop.set()
        if self._thread is not None and self._pid == os.getpid():
            self._thread.join(timeout=self.connect_timeout + self.send_timeout + 1.0)
        self._disconnect()
        super().close()

    def _start_sender(self) -> None:
        """A fresh queue and sender thread for this process (first record, or the first after a fork)."""
        self._pid, self._sock = os.getpid(), None
        self._queue = queue.Queue(self.queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fluentd-sender", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending: list[bytes] = []
        backoff = BACKOFF_FIRST_SECONDS
        failing = False
        while not self._stop.is_set():
            if not pending:
                pending = self._next_batch()
                if not pending:
                    continue
            error = self._send(forward_message(self.tag, pending))
            if error is None:
                with self._count_lock:
                    self.sent += len(pending)
                if failing:
                    failing = False
                    logger.info("log_shipping_resumed", extra={"event": "log_shipping_resumed", "host": self.host,
                                                               "port": self.port, "dropped_total": self.dropped})
                pending, backoff = [], BACKOFF_FIRST_SECONDS
                continue
            if not failing:
                failing = True
                logger.warning("log_shipping_failed", extra={
                    "event": "log_shipping_failed", "host": self.host, "port": self.port, "error": error,
                    "retry_in_seconds": backoff})
            self._stop.wait(backoff)
            backoff = min(BACKOFF_MAX_SECONDS, backoff * 2)

    def _next_batch(self) -> list[bytes]:
        try:
            batch = [self._queue.get(timeout=0.5)]
        except queue.Empty:
            return []
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _send(self, message: bytes) -> str | None:
        """Send one message on the (re)opened connection; the error text, or None when sent."""
        try:
            if self._sock is None:
                self._sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
                self._sock.settimeout(self.send_timeout)
            self._sock.sendall(message)
            return None
        except OSError as exc:
            self._disconnect()
            return f"{type(exc).__name__}: {exc}"

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

