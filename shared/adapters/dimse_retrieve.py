"""RetrievePort for DIMSE sources: C-MOVE SCU (PS3.4 C.4.2) and C-GET SCU (PS3.4 C.4.3) on pynetdicom.

One association per call (no pooling: a retrieval lasts far longer than its association set-up) opened by an AE
of its own, so calls on many threads never share pynetdicom's AE-wide lock; it is released after the final
response and aborted on any other exit (error, cancel, abandoned generator).

- C-MOVE (PS3.4 C.4.2.1): the source sends the matching instances to `destination_ae` over associations of its
  own; we only see the pending responses' sub-operation counts (PS3.4 C.4.2.1.4) and the final status.
- C-GET (PS3.4 C.4.3.1): the source sends each instance back over this association as a C-STORE sub-operation, so
  the A-ASSOCIATE-RQ proposes the GET SOP class plus every storage SOP class with SCP/SCU role selection
  (PS3.7 D.3.3.4), each with uncompressed and the common compressed transfer syntaxes (PS3.5 A.4) so a compressed
  archive need not transcode. Each C-STORE goes to the caller's sink, whose status is the C-STORE response; the
  Dataset carries the peer's own encoding (PS3.10 file, shared.retrieval.spool.with_encoding): spooled as sent.

Status handling (PS3.4 C.4.2.1.5, C.4.3.1.4): Pending 0xFF00 -> a RetrieveProgress; anything else is final and
becomes the RetrieveOutcome (counts, Failed SOP Instance UID List (0008,0058) from the final identifier, Error
Comment). A failure status is an outcome, not an exception: the caller decides (e.g. 0xA801 -> HYBRID falls back
to PROXY). Refused connections, rejected/aborted associations and DIMSE timeouts -> TransportError; a source that
does not accept the MOVE/GET SOP class -> QueryFailedError.

Cancel (PS3.7 9.3.2.3 / 9.3.3.3): the token's callback sends C-CANCEL from a thread of its own and arms a timer;
if the source has not sent its final response within `cancel_grace_seconds` the association is aborted and the
outcome is 0xFE00 Cancel with the counts seen so far.

Seen with Orthanc 1.10 (tests/integration/test_dimse_retrieve.py): a C-MOVE to an AE title it does not know, or
whose C-STOREs are refused, ends 0xC000 with zero counts (not 0xA801 / 0xB000); C-GET failures show in the counts
and status (0xB000; 0xA702 when all failed) but no Failed SOP Instance UID List is sent; C-CANCEL is honoured
(0xFE00 once the sub-operation in flight ends); the last sub-operation is counted only by the final response.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable, Iterator

from pydicom import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless,
    JPEGBaseline8Bit, JPEGLosslessSV1, RLELossless,
)
from pynetdicom import AE, StoragePresentationContexts, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from shared.adapters.dimse_association import (
    AssociationCancelled, abort_and_wake, dimse_connection, level_identifier, request_association,
)
from shared.connections import DimseConnection
from shared.retrieval.model import CANCEL, PENDING, RetrieveOutcome, RetrieveProgress, RetrieveRequest
from shared.retrieval.ports import InstanceSink, RetrieveStream
from shared.retrieval.spool import with_encoding
from shared.spanning.model import SourceSpec
from shared.spanning.ports import CancelToken, QueryFailedError, TransportError

logger = logging.getLogger(__name__)

UNCOMPRESSED_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# What a C-GET offers for each storage SOP class: uncompressed first, then what archives commonly store (PS3.5 A.4).
GET_TRANSFER_SYNTAXES = (
    *UNCOMPRESSED_SYNTAXES, JPEGBaseline8Bit, JPEGLosslessSV1, JPEG2000Lossless, JPEG2000, RLELossless,
    DeflatedExplicitVRLittleEndian,
)
_STORAGE_SOP_CLASSES = tuple(cx.abstract_syntax for cx in StoragePresentationContexts)
# pynetdicom deep-copies requested contexts on each associate(), so these can be shared by all threads.
_GET_STORAGE_CONTEXTS = [build_context(uid, list(GET_TRANSFER_SYNTAXES)) for uid in _STORAGE_SOP_CLASSES]
_GET_ROLES = [build_role(uid, scp_role=True) for uid in _STORAGE_SOP_CLASSES]
_STORE_FAILED = 0xA700  # Refused: Out of resources (PS3.4 B.2.3): the sink could not keep the instance
_CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand (PS3.4 B.2.3): the data set did not decode
_MSG_ID = 1  # one request per association
_PENDING = (PENDING, 0xFF01)


class ContextsRejected(QueryFailedError):
    """The peer accepted the association request but none of its presentation contexts (PS3.8 9.3.3.2)."""


class DimseRetrievePort:
    """C-MOVE / C-GET SCU RetrievePort for sources of kind "dimse" (connection: DimseConnection).

    The calling AE title and the timeouts come from each source's DimseConnection. `cancel_grace_seconds`: how long
    a source may take to answer C-CANCEL before the association is aborted. Safe to share between threads.
    """

    def __init__(self, *, cancel_grace_seconds: float = 2.0) -> None:
        self._grace = cancel_grace_seconds

    def move(self, source: SourceSpec, request: RetrieveRequest, destination_ae: str,
             cancel: CancelToken) -> RetrieveStream:
        """C-MOVE the entities of `request` from `source` to `destination_ae` (PS3.4 C.4.2.1); yields progress,
        returns the outcome (see module doc). The source must know `destination_ae` (else a failure outcome: 0xA801,
        or 0xC000 from Orthanc)."""
        conn = dimse_connection(source)
        if not conn.supports_cmove:
            raise QueryFailedError(f"{source.name}: C-MOVE is disabled for this source (supports_cmove)")
        identifier = level_identifier(request.identifier, request.level, request.model)
        sop_class = request.model.move_sop_class
        contexts = [build_context(sop_class, list(UNCOMPRESSED_SYNTAXES))]

        def send(assoc: Association) -> Iterator:
            return assoc.send_c_move(identifier, destination_ae, sop_class, msg_id=_MSG_ID)

        return (yield from self._retrieve(source, conn, cancel, _Call("C-MOVE", sop_class, send, contexts)))

    def get(self, source: SourceSpec, request: RetrieveRequest, sink: InstanceSink,
            cancel: CancelToken) -> RetrieveStream:
        """C-GET the entities of `request` from `source` (PS3.4 C.4.3.1): each instance the source sends is passed
        to `sink` (in this generator's thread) and its return value answers the C-STORE; yields progress, returns
        the outcome (see module doc)."""
        conn = dimse_connection(source)
        if not conn.supports_cget:
            raise QueryFailedError(f"{source.name}: C-GET is disabled for this source (supports_cget)")
        identifier = level_identifier(request.identifier, request.level, request.model)
        sop_class = request.model.get_sop_class
        contexts = [build_context(sop_class, list(UNCOMPRESSED_SYNTAXES)), *_GET_STORAGE_CONTEXTS]

        def send(assoc: Association) -> Iterator:
            return assoc.send_c_get(identifier, sop_class, msg_id=_MSG_ID)

        call = _Call("C-GET", sop_class, send, contexts, _GET_ROLES, [(evt.EVT_C_STORE, _store_handler(sink))])
        return (yield from self._retrieve(source, conn, cancel, call))

    def _retrieve(self, source: SourceSpec, conn: DimseConnection, cancel: CancelToken,
                  call: "_Call") -> RetrieveStream:
        if cancel.cancelled:
            return RetrieveOutcome(CANCEL, error_comment="cancelled before the request was sent")
        ae = new_ae(conn)  # one AE per call: pynetdicom's AE-wide lock is never shared between threads
        try:
            try:
                assoc = open_association(ae, source, conn, cancel, contexts=call.contexts, ext_neg=call.ext_neg,
                                         handlers=call.handlers)
            except AssociationCancelled:
                return RetrieveOutcome(CANCEL, error_comment="cancelled before the association was established")
            except ContextsRejected as exc:
                raise QueryFailedError(f"{source.name} did not accept the {call.name} SOP class {call.sop_class} "
                                       "(no presentation context accepted)") from exc
            run = _RetrieveRun(assoc, source, conn, cancel, call, self._grace)
            try:
                return (yield from run.execute())
            finally:
                close_association(assoc, release=run.finished_cleanly)
        finally:
            ae.shutdown()


class _Call:
    """What differs between C-MOVE and C-GET: the name, SOP class, contexts, roles, handlers and the send."""

    def __init__(self, name: str, sop_class: str, send: Callable[[Association], Iterator],
                 contexts: list[PresentationContext], ext_neg: list | None = None,
                 handlers: list[tuple] | None = None) -> None:
        self.name, self.sop_class, self.send, self.contexts = name, sop_class, send, contexts
        self.ext_neg, self.handlers = ext_neg, handlers or []


class _RetrieveRun:
    """One C-MOVE/C-GET on one association: the response loop and cancel handling."""

    def __init__(self, assoc: Association, source: SourceSpec, conn: DimseConnection, cancel: CancelToken,
                 call: _Call, grace: float) -> None:
        self.assoc, self.source, self.conn, self.cancel, self.call = assoc, source, conn, cancel, call
        self.grace = grace
        self.finished_cleanly = False  # a final response arrived: release, don't abort
        self._state = threading.Lock()  # orders cancel/abort against the end of the run
        self._finished = False
        self._cancel_sent = False
        self._timer: threading.Timer | None = None

    def execute(self) -> RetrieveStream:
        if not any(cx.abstract_syntax == self.call.sop_class for cx in self.assoc.accepted_contexts):
            self.finished_cleanly = True  # nothing was sent: the association can be released
            raise QueryFailedError(f"{self.source.name} did not accept the {self.call.name} SOP class "
                                   f"{self.call.sop_class}")
        try:
            responses = self.call.send(self.assoc)
        except RuntimeError as exc:  # the association dropped right after negotiation
            raise TransportError(f"{self.source.name}: association lost before the {self.call.name}") from exc
        except ValueError as exc:
            raise QueryFailedError(f"{self.source.name}: could not encode the {self.call.name} identifier: "
                                   f"{exc}") from exc
        unregister = self.cancel.on_cancel(self._request_cancel_in_background)
        try:
            return (yield from self._consume(responses))
        finally:
            unregister()
            responses.close()
            with self._state:
                self._finished = True
                if self._timer is not None:
                    self._timer.cancel()

    def _consume(self, responses: Iterator) -> RetrieveStream:
        last = RetrieveProgress(remaining=None)
        waited_from = time.monotonic()
        for status, identifier in responses:
            if "Status" not in status:  # pynetdicom: aborted, closed or DIMSE timeout
                return self._no_final_status(last, time.monotonic() - waited_from)
            code = int(status.Status)
            if code in _PENDING:
                last = progress_from(status, last)
                yield last
                waited_from = time.monotonic()
                continue
            self.finished_cleanly = True
            return outcome_from(code, status, identifier, last)
        return self._no_final_status(last, time.monotonic() - waited_from)

    def _no_final_status(self, last: RetrieveProgress, waited: float) -> RetrieveOutcome:
        if self.cancel.cancelled:
            return RetrieveOutcome(CANCEL, last.completed, last.failed, last.warning,
                                   error_comment=f"no final response from {self.source.name} within "
                                                 f"{self.grace:g} s of C-CANCEL: association aborted")
        done = f"after {last.completed} completed sub-operations"
        if waited >= self.conn.dimse_timeout * 0.95:
            raise TransportError(f"{self.source.name}: no {self.call.name} response within "
                                 f"{self.conn.dimse_timeout:g} s ({done})")
        raise TransportError(f"{self.source.name}: association aborted during the {self.call.name} ({done})")

    # -- cancel (PS3.7 9.3.2.3, 9.3.3.3) -----------------------------------------------------------------------

    def _request_cancel_in_background(self) -> None:
        """The CancelToken hook runs in the canceller's thread, which must never wait on the source."""
        threading.Thread(target=self._request_cancel, name=f"c-cancel-{self.source.name}", daemon=True).start()

    def _request_cancel(self) -> None:
        """Send C-CANCEL once and arm the abort timer (before sending, so a hung send cannot delay it)."""
        with self._state:
            if self._finished or self._cancel_sent:
                return
            self._cancel_sent = True
            self._timer = threading.Timer(self.grace, self._abort_and_wake)
            self._timer.daemon = True
            self._timer.start()
            try:
                self.assoc.send_c_cancel(_MSG_ID, query_model=self.call.sop_class)
            except Exception as exc:  # association already gone: the timer's abort still unblocks the reader
                logger.debug("%s: C-CANCEL not sent: %s", self.source.name, exc)

    def _abort_and_wake(self) -> None:
        with self._state:
            if self._finished:
                return
        logger.info("%s: no final %s response %.1f s after C-CANCEL, aborting", self.source.name, self.call.name,
                    self.grace)
        abort_and_wake(self.assoc)


# -- association helpers (also used by dimse_store.py) ---------------------------------------------------------


def new_ae(conn: DimseConnection) -> AE:
    """A fresh requestor AE with the connection's calling AE title and timeouts (PS3.8 9.1.1: ARTIM/ACSE)."""
    ae = AE(ae_title=conn.calling_ae_title)
    ae.acse_timeout = conn.acse_timeout
    ae.dimse_timeout = conn.dimse_timeout
    ae.network_timeout = conn.network_timeout
    ae.connection_timeout = conn.connect_timeout
    return ae


def open_association(ae: AE, source: SourceSpec, conn: DimseConnection, cancel: CancelToken, *,
                     contexts: list[PresentationContext], ext_neg: list | None = None,
                     handlers: Iterable[tuple] = ()) -> Association:
    """Request an association proposing `contexts` (shared.adapters.dimse_association.request_association: cancel,
    TCP_NODELAY, TransportError); ContextsRejected when the peer accepted none of them."""

    def associate(connection_handlers: list) -> Association:
        return ae.associate(conn.host, conn.port, contexts=contexts, ae_title=conn.ae_title, max_pdu=conn.max_pdu,
                            ext_neg=ext_neg, evt_handlers=[*connection_handlers, *handlers])

    def refused(assoc: Association) -> None:
        if assoc.rejected_contexts and not assoc.accepted_contexts:  # pynetdicom then aborts (PS3.8 9.3.3.2)
            raise ContextsRejected(f"{source.name} accepted none of the {len(contexts)} proposed presentation "
                                   "contexts")

    return request_association(associate, source, conn, cancel, refused=refused)


def close_association(assoc: Association, *, release: bool) -> None:
    """A-RELEASE (PS3.8 7.2) when the association is idle, A-ABORT (PS3.8 7.3) otherwise; never raises."""
    try:
        if release and assoc.is_established:
            assoc.release()
        if assoc.is_established:
            assoc.abort()
    except Exception as exc:  # closing is best effort
        logger.debug("closing association: %s", exc)


# -- pure helpers ------------------------------------------------------------------------------------------------


def progress_from(status: Dataset, last: RetrieveProgress) -> RetrieveProgress:
    """The sub-operation counts of a pending response (PS3.4 C.4.2.1.4: Number of Remaining/Completed/Failed/
    Warning Sub-operations); counts it lacks keep their last value."""
    remaining = status.get("NumberOfRemainingSuboperations", None)
    return RetrieveProgress(
        remaining=int(remaining) if remaining not in (None, "") else last.remaining,
        completed=_count(status, "NumberOfCompletedSuboperations", last.completed),
        failed=_count(status, "NumberOfFailedSuboperations", last.failed),
        warning=_count(status, "NumberOfWarningSuboperations", last.warning),
    )


def outcome_from(code: int, status: Dataset, identifier: Dataset | None, last: RetrieveProgress) -> RetrieveOutcome:
    """The final response as a RetrieveOutcome: counts (PS3.4 C.4.2.1.4; those it lacks come from the last pending
    response), Failed SOP Instance UID List (0008,0058) from its identifier (C.4.2.1.6) and Error Comment."""
    failed_uids: tuple[str, ...] = ()
    if identifier is not None:
        value = identifier.get("FailedSOPInstanceUIDList", None)
        if value not in (None, ""):
            items = [value] if isinstance(value, str) else list(value)
            failed_uids = tuple(str(uid).strip() for uid in items if str(uid).strip())
    comment = str(status.get("ErrorComment", "") or "").strip() or None
    return RetrieveOutcome(
        status=code,
        completed=_count(status, "NumberOfCompletedSuboperations", last.completed),
        failed=_count(status, "NumberOfFailedSuboperations", last.failed),
        warning=_count(status, "NumberOfWarningSuboperations", last.warning),
        failed_uids=failed_uids,
        error_comment=comment,
    )


def _count(status: Dataset, keyword: str, default: int) -> int:
    value = status.get(keyword, None)
    return int(value) if value not in (None, "") else default


def _store_handler(sink: InstanceSink) -> Callable[[evt.Event], int]:
    """EVT_C_STORE handler of a C-GET association: the instance (with its file meta) to `sink`, whose status
    answers the C-STORE sub-operation (PS3.4 C.4.3.3, B.2.3)."""

    def on_store(event: evt.Event) -> int:
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            with_encoding(dataset, event.encoded_dataset())  # the peer's own bytes, passed on unchanged
        except Exception as exc:
            logger.warning("C-GET sub-operation: data set did not decode: %s", exc)
            return _CANNOT_UNDERSTAND
        try:
            return int(sink(dataset))
        except Exception:
            logger.exception("C-GET sub-operation: the instance sink failed for %s",
                             getattr(dataset, "SOPInstanceUID", "?"))
            return _STORE_FAILED

    return on_store
