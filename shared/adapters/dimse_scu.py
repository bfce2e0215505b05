"""QueryPort for DIMSE sources: C-FIND SCU on pynetdicom (PS3.4 C.4.1, PS3.7 9.1.2).

One `DimseQueryPort` serves many spans (the span client keeps it for its life) and is used from several threads at
once. It owns an `AssociationPool` (dimse_association.py: one pynetdicom AE and a small pool of associations per
source): a `find` reuses an idle association or opens one; idle ones are released after `idle_seconds` (a reaper
thread) and `close()` releases them all.

Status handling (PS3.4 C.4.1.1.4, PS3.7 C): Pending 0xFF00/0xFF01 -> a match; Success -> done; Cancel 0xFE00 ->
done; Warning (0xB000-0xBFFF, 0x0001, 0x0107, ...) -> FindSummary(truncated=True); Failure (0xA700, 0xA900, 0xC000-0xCFFF,
anything else) -> QueryFailedError with the status and Error Comment. Refused connections, rejected/aborted
associations and DIMSE timeouts -> TransportError.

Cancel (PS3.7 9.3.2.3): the token's callback sends C-CANCEL at once and arms a timer; if the peer has not sent
its final response within `cancel_grace_seconds` the association is aborted, which also wakes the thread waiting
for the next response, so a hung peer never holds a query thread beyond the grace period.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from types import TracebackType
from pydicom import Dataset
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from shared.adapters.dimse_association import (
    AssociationCancelled, AssociationPool, abort_and_wake, dimse_connection, level_identifier,
)
from shared.connections import DimseConnection
from shared.dicom.charset import decode_dataset
from shared.dicom.levels import PATIENT_ROOT_FIND, STUDY_ROOT_FIND
from shared.spanning.model import FindSummary, SourceSpec, SpanRequest
from shared.spanning.ports import CancelToken, FindStream, QueryFailedError, TransportError

logger = logging.getLogger(__name__)

_PENDING = (0xFF00, 0xFF01)
_CANCEL = 0xFE00


class DimseQueryPort:
    """C-FIND SCU QueryPort for sources of kind "dimse" (connection: DimseConnection).

    `ae_title` is only the default calling AE title; each DimseConnection's `calling_ae_title` wins.
    `cancel_grace_seconds`: how long a peer may take to answer C-CANCEL before the association is aborted.
    `idle_seconds`, `max_idle_per_source`: how long and how many idle associations per source the pool keeps.
    """

    def __init__(self, *, ae_title: str = "AXIOM", cancel_grace_seconds: float = 1.0, idle_seconds: float = 10.0,
                 max_idle_per_source: int = 2) -> None:
        self._pool = AssociationPool(ae_title=ae_title, contexts=(STUDY_ROOT_FIND, PATIENT_ROOT_FIND),
                                     idle_seconds=idle_seconds, max_idle_per_source=max_idle_per_source)
        self._grace = cancel_grace_seconds
        self._msg_ids = itertools.count(1)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Release every idle association and abort any still busy. The port is unusable afterwards."""
        self._pool.close()

    def __enter__(self) -> "DimseQueryPort":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def open_associations(self) -> int:
        """How many associations this port holds open (idle or busy)."""
        return self._pool.open_count

    # -- QueryPort ---------------------------------------------------------------------------------------------

    def find(self, request: SpanRequest, source: SourceSpec, cancel: CancelToken) -> FindStream:
        """C-FIND `request` at `source`; yields decoded matches, returns FindSummary|None (see module doc).

        A cancelled find just ends (returns None): the engine knows it cancelled.
        """
        conn = dimse_connection(source)
        identifier = level_identifier(request.identifier, request.level, request.model)
        if cancel.cancelled:
            return None
        try:
            return (yield from self._find_on_pool(identifier, request.model.find_sop_class, source, conn, cancel))
        except (_CancelledDuringFind, AssociationCancelled):
            return None

    def _find_on_pool(self, identifier: Dataset, sop_class: str, source: SourceSpec, conn: DimseConnection,
                      cancel: CancelToken) -> FindStream:
        assoc, reused = self._pool.checkout(source, conn, cancel)
        while True:
            run = _FindRun(self, assoc, source, conn, cancel)
            try:
                summary = yield from run.execute(identifier, sop_class, next(self._msg_ids) % 0x10000 or 1)
            except _StaleAssociation:
                self._pool.discard(assoc)
                if not reused:
                    raise TransportError(f"{source.name}: association closed before the C-FIND was answered")
                logger.info("%s: reused association was closed by the peer, reconnecting once", source.name)
                assoc, reused = self._pool.checkout(source, conn, cancel, allow_idle=False)
                continue
            except BaseException:
                self._pool.discard(assoc)  # mid-stream (error, cancel or abandoned generator): not reusable
                raise
            if run.reusable:
                self._pool.checkin(source, assoc)
            else:
                self._pool.discard(assoc)
            return summary


class _StaleAssociation(Exception):
    """A reused association turned out to be closed before any response arrived."""


class _FindRun:
    """One C-FIND on one association: the response loop, cancel handling and the result cap."""

    def __init__(self, port: DimseQueryPort, assoc: Association, source: SourceSpec, conn: DimseConnection,
                 cancel: CancelToken) -> None:
        self.port, self.assoc, self.source, self.conn, self.cancel = port, assoc, source, conn, cancel
        self.reusable = False
        self._cancel_sent = threading.Event()
        self._timer: threading.Timer | None = None
        self._state = threading.Lock()  # orders cancel/abort against the end of the run
        self._finished = False  # once set, nothing may touch the association on this run's behalf
        self._sop_class = ""
        self._msg_id = 0

    def execute(self, identifier: Dataset, sop_class: str, msg_id: int) -> FindStream:
        self._sop_class, self._msg_id = sop_class, msg_id
        responses = self._send(identifier, sop_class, msg_id)
        unregister = self.cancel.on_cancel(self._request_cancel_in_background)
        try:
            return (yield from self._consume(responses))
        finally:
            unregister()
            # pynetdicom 3.0 yields an undecodable identifier from inside `with assoc.lock` (the AE-wide lock):
            # closing its generator releases that lock before anyone aborts the association, which needs it.
            responses.close()
            with self._state:
                self._finished = True
                if self._timer is not None:
                    self._timer.cancel()

    def _send(self, identifier: Dataset, sop_class: str, msg_id: int):
        if not self.assoc.is_established:
            raise _StaleAssociation()
        try:
            return self.assoc.send_c_find(identifier, sop_class, msg_id=msg_id)
        except RuntimeError as exc:  # association dropped between checkout and send
            raise _StaleAssociation() from exc
        except ValueError as exc:
            accepted = any(cx.abstract_syntax == sop_class for cx in self.assoc.accepted_contexts)
            reason = f"could not encode the identifier: {exc}" if accepted else (
                f"{self.source.name} did not accept the C-FIND SOP class {sop_class}")
            self.reusable = self.assoc.is_established
            raise QueryFailedError(reason) from exc

    def _consume(self, responses) -> FindStream:
        cap = self.source.max_results
        yielded, capped, first = 0, False, True
        waited_from = time.monotonic()
        for status, identifier in responses:
            if "Status" not in status:
                self._raise_no_response(first, time.monotonic() - waited_from)
            first = False
            code = int(status.Status)
            if code in _PENDING:
                if self._cancel_sent.is_set():
                    continue  # draining after C-CANCEL (caller's cancel or our cap)
                if cap is not None and yielded >= cap:
                    capped = True
                    self._request_cancel()
                    continue
                yield _decoded(identifier, self.source)
                yielded += 1
                waited_from = time.monotonic()
                continue
            self.reusable = True  # a final response leaves the association idle and usable
            return self._final(code, status, capped, cap)
        raise TransportError(f"{self.source.name}: C-FIND ended without a final status")

    def _final(self, code: int, status: Dataset, capped: bool, cap: int | None) -> FindSummary | None:
        comment = str(status.get("ErrorComment", "") or "").strip()
        if capped:
            return FindSummary(truncated=True, warning=f"capped at {cap} matches (max_results)")
        if code == 0x0000 or code == _CANCEL:
            return None
        category = code_to_category(code)
        if category == "Warning" or (code & 0xF000) == 0xB000:
            text = f"{self.source.name} answered with warning status 0x{code:04X}" + (f": {comment}" if comment else "")
            return FindSummary(truncated=True, warning=text)
        detail = f" ({comment})" if comment else ""
        raise QueryFailedError(f"{self.source.name}: C-FIND failed with status 0x{code:04X} [{category}]{detail}")

    def _raise_no_response(self, first: bool, waited: float) -> None:
        """pynetdicom yields an empty status when the peer aborted, closed or timed out."""
        if self.cancel.cancelled:
            raise _CancelledDuringFind()
        if first and waited < 0.5 and (self.assoc.is_aborted or not self.assoc.is_established):
            raise _StaleAssociation()
        if waited >= self.conn.dimse_timeout * 0.95:
            raise TransportError(f"{self.source.name}: no response within {self.conn.dimse_timeout:g} s")
        raise TransportError(f"{self.source.name}: association aborted by the peer during C-FIND")

    # -- cancel ----------------------------------------------------------------------------------------------

    def _request_cancel_in_background(self) -> None:
        """The CancelToken hook: runs in the canceller's thread (the engine's), which must never wait on the peer
        or on pynetdicom's locks, so C-CANCEL is sent from a thread of its own."""
        threading.Thread(target=self._request_cancel, name=f"c-cancel-{self.source.name}", daemon=True).start()

    def _request_cancel(self) -> None:
        """Send C-CANCEL (once) and abort if the peer has not finished within the grace period.

        Under `_state`, so a cancel that arrives after the run ended never reaches an association that is back in
        the pool (and perhaps serving another span); the timer is armed before the send for the same reason.
        """
        with self._state:
            if self._finished or self._cancel_sent.is_set():
                return
            self._cancel_sent.set()
            self._timer = threading.Timer(self.port._grace, self._abort_and_wake)
            self._timer.daemon = True
            self._timer.start()
            try:
                self.assoc.send_c_cancel(self._msg_id, query_model=self._sop_class)
            except Exception as exc:  # association already gone: the timer's abort still unblocks the reader
                logger.debug("%s: C-CANCEL not sent: %s", self.source.name, exc)

    def _abort_and_wake(self) -> None:
        with self._state:
            if self._finished:  # the peer answered the C-CANCEL in time
                return
            self.reusable = False
        logger.info("%s: no final response %.1f s after C-CANCEL, aborting", self.source.name, self.port._grace)
        abort_and_wake(self.assoc)


class _CancelledDuringFind(Exception):
    """The caller cancelled while we waited for a response: the stream just ends."""


# -- pure helpers ------------------------------------------------------------------------------------------------


def _decoded(identifier: Dataset | None, source: SourceSpec) -> Dataset:
    """Decode one answer with its own Specific Character Set; anything undecodable is a malformed answer."""
    if identifier is None:
        raise QueryFailedError(f"{source.name}: sent a C-FIND response identifier that could not be decoded")
    try:
        decode_dataset(identifier)
        for element in identifier.iterall():  # force pydicom to convert every remaining raw value now
            _ = element.value
    except Exception as exc:
        raise QueryFailedError(f"{source.name}: malformed C-FIND response identifier: {exc}") from exc
    return identifier
