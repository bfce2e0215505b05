"""The body of a WADO-RS retrieve response: the instances a RetrievalService.get() stream yields, each as one part
of a multipart/related body (PS3.18 8.7.3.2), written while the holders still send.

The service's generator blocks (it waits on the sources and the spool), so a thread of its own drives it and hands
the encoded parts to the response's async iterator through the event loop (no worker thread of the app's pool
waits on a stream): at most QUEUE_PARTS parts wait, plus the one being sent and the one being encoded; the rest of
the study is still at the sources or in the service's bounded spool. Each part is the holder's own bytes (never
re-encoded), written in SEND_BYTES slices of it, small enough for the socket to take each write whole as a rule:
no part is copied whole into a new object, nor into the event loop's write buffer. When the client goes away,
Starlette cancels the response: the iterator's `finally` cancels the retrieval's CancelToken (the sources get C-CANCEL /
their connections are shut) and the thread closes the service's generator, which deletes its spool.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import AsyncIterator, Generator, Iterator

from pydicom import Dataset

from shared.dicom.multipart import closing_delimiter, multipart_part_pieces
from shared.logging import log_event
from shared.retrieval.model import RetrieveOutcome
from shared.retrieval.spool import instance_bytes
from shared.spanning.ports import CancelToken

logger = logging.getLogger(__name__)
QUEUE_PARTS = 2
SEND_BYTES = 256 * 1024  # response chunks: the socket takes such a write whole (no copy into the loop's buffer)
PUT_POLL_SECONDS = 0.2
_END = object()

GetStream = Generator[int | Dataset, None, RetrieveOutcome]


def encoded_part(dataset: Dataset, boundary: str) -> tuple[bytes, bytes, bytes]:
    """One instance as a body part (delimiter and headers, payload, CRLF): its PS3.10 file (PS3.18 8.7.3.3.2) as
    its holder sent it (shared.retrieval.spool.instance_bytes: no re-encoding), Content-Type application/dicom with
    the transfer syntax it is encoded in (no transcoding)."""
    data = instance_bytes(dataset)
    syntax = str(dataset.file_meta.TransferSyntaxUID)
    return multipart_part_pieces(data, f"application/dicom; transfer-syntax={syntax}", boundary)


def body_chunks(pieces: tuple[bytes, ...], size: int = SEND_BYTES) -> Iterator[bytes | memoryview]:
    """A part's pieces as response chunks of about `size` bytes: the small head and tail joined to the payload's
    first and last slices, the rest memoryview slices of the payload (never a copy of the whole instance)."""
    head, payload, tail = pieces
    if len(payload) <= 2 * size:
        yield head + payload + tail
        return
    view = memoryview(payload)
    yield head + view[:size]
    end = len(payload) - size
    for start in range(size, end, size):
        yield view[start:min(start + size, end)]
    yield b"".join((view[end:], tail))


class InstanceStream:
    """Streams `stream` (already past its announced count; `first` is the instance read ahead) as multipart parts.
    `fields` correlate the log events (query_id, study_uid, ...)."""

    def __init__(self, stream: GetStream, first: Dataset, cancel: CancelToken, boundary: str,
                 fields: dict[str, object]) -> None:
        self._stream, self._first, self._cancel, self._boundary = stream, first, cancel, boundary
        self._fields = fields
        self._room = threading.Semaphore(QUEUE_PARTS)
        self._ready: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="wado-stream", daemon=True)
        self.parts = 0
        self.completed = False
        self.outcome: RetrieveOutcome | None = None

    async def body(self) -> AsyncIterator[bytes]:
        """The response body: each part as it is ready, then the close delimiter."""
        self._loop, self._ready = asyncio.get_running_loop(), asyncio.Queue()
        self._thread.start()
        try:
            while (item := await self._ready.get()) is not _END:
                self._room.release()
                for chunk in body_chunks(item):
                    yield chunk
        finally:
            self.stop()

    def stop(self) -> None:
        """The client is gone (or the body ended): stop the retrieval; the thread cleans up."""
        if not self._stopped.is_set():
            self._stopped.set()
            self._cancel.cancel()

    def _produce(self) -> None:
        try:
            dataset: Dataset | None = self._first
            while dataset is not None and not self._stopped.is_set():
                if not self._put(encoded_part(dataset, self._boundary)):
                    break
                self.parts += 1
                dataset = self._next()
            if not self._stopped.is_set():
                self.completed = self._put((closing_delimiter(self._boundary), b"", b""))
        except Exception:
            logger.exception("WADO-RS stream failed", extra={"event": "wado_stream_failed", **self._fields})
        finally:
            self._stream.close()  # a no-op when exhausted; else the service cancels and deletes its spool
            self._report()
            self._hand_over(_END)

    def _next(self) -> Dataset | None:
        try:
            return next(self._stream)
        except StopIteration as stop:
            self.outcome = stop.value
            return None

    def _put(self, item: tuple[bytes, bytes, bytes]) -> bool:
        """Queue `item`, waiting while QUEUE_PARTS parts wait for the client; False once stopped."""
        while not self._stopped.is_set():
            if self._room.acquire(timeout=PUT_POLL_SECONDS):
                return self._hand_over(item)
        return False

    def _hand_over(self, item: object) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._ready.put_nowait, item)
            return True
        except RuntimeError:  # the event loop is closed: nobody reads any more
            return False

    def _report(self) -> None:
        outcome = self.outcome
        if not self.completed:
            log_event(logger, "wado_retrieve_cancelled", logging.INFO, parts=self.parts, **self._fields)
        elif outcome is not None and (outcome.failed or not outcome.ok):
            log_event(logger, "wado_retrieve_incomplete", logging.WARNING, parts=self.parts, failed=outcome.failed,
                      status=f"0x{outcome.status:04X}", failed_uids=list(outcome.failed_uids[:20]),
                      error_comment=outcome.error_comment, **self._fields)
        else:
            log_event(logger, "wado_retrieve_streamed", parts=self.parts, **self._fields)
