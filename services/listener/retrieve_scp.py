"""The spanning SCP's C-MOVE and C-GET services on the wire (PS3.4 C.4.2, C.4.3; PS3.7 9.1.3, 9.1.4, 9.3.3, 9.3.4).

pynetdicom's own C-MOVE SCP always performs the C-STORE sub-operations itself, and its C-GET SCP needs the exact
number of sub-operations before the first one; the spanner instead relays what the holding archive reports (DIRECT),
forwards what it retrieves as it arrives (PROXY), and only knows the holders' instance counts as an estimate. So this
module speaks both services directly: decode the identifier, call the retrieval (`RetrieveRun`; for C-GET it
performs the C-STORE sub-operations on the caller's association itself), send a Pending response with the
sub-operation counts for every progress report (PS3.4 C.4.2.1.4, C.4.3.1.3; pending responses carry no
identifier), then the final response with the counts, Error Comment, and the Failed SOP Instance UID List when some
failed (PS3.4 C.4.2.1.6, C.4.3.3.1). A C-CANCEL for the request cancels the retrieval; its final status is then
Cancel (0xFE00).
"""

from __future__ import annotations

import logging
import threading
from io import BytesIO
from typing import Callable, Generator

from pydicom import Dataset
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import decode, encode

from services.listener.status import PENDING, UNABLE_TO_PROCESS, error_comment
from shared.retrieval.model import RetrieveOutcome, RetrieveProgress
from shared.spanning.ports import CancelToken

logger = logging.getLogger(__name__)
CANCEL_POLL_SECONDS = 0.02
Request = C_MOVE | C_GET
# (association, request, identifier, cancel) -> progress reports, returning the outcome
RetrieveRun = Callable[[Association, Request, Dataset, CancelToken],
                       Generator[RetrieveProgress, None, RetrieveOutcome]]


class RetrieveScp:
    """Serves C-MOVE (`move`) and C-GET (`get`) requests; SpanningAssociation calls `serve` for each."""

    def __init__(self, *, move: RetrieveRun, get: RetrieveRun) -> None:
        self._runs = {C_MOVE: move, C_GET: get}

    def serve(self, assoc: Association, req: Request, context) -> None:
        syntax = context.transfer_syntax[0]
        try:
            identifier = decode(req.Identifier, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
        except Exception as exc:
            _send(assoc, req, context, RetrieveOutcome(UNABLE_TO_PROCESS, error_comment=f"undecodable: {exc}"))
            return
        token, done = CancelToken(), threading.Event()
        watcher = threading.Thread(target=_watch_cancel, args=(assoc, req.MessageID, token, done), daemon=True,
                                   name="retrieve-cancel-watch")
        watcher.start()
        stream = self._runs[type(req)](assoc, req, identifier, token)
        try:
            outcome = yield_progress(stream, lambda progress: _send_pending(assoc, req, context, progress))
        except Exception as exc:  # a bug must still end the request with a status, never leave the caller hanging
            logger.exception("%s failed", req.msg_type)
            outcome = RetrieveOutcome(UNABLE_TO_PROCESS, error_comment=f"{type(exc).__name__}: {exc}")
        finally:
            stream.close()  # ended early (the caller's association is gone): the retrieval cleans up now
            done.set()
        if assoc.is_established:
            _send(assoc, req, context, outcome)


def yield_progress(stream: Generator[RetrieveProgress, None, RetrieveOutcome],
                   report: Callable[[RetrieveProgress], None]) -> RetrieveOutcome:
    """Drive a retrieval generator: `report` each progress, return its outcome."""
    while True:
        try:
            progress = next(stream)
        except StopIteration as stop:
            return stop.value
        report(progress)


def _watch_cancel(assoc: Association, msg_id: int, token: CancelToken, done: threading.Event) -> None:
    """Cancel `token` on a C-CANCEL for `msg_id` (PS3.7 9.3.4.3) or when the association ends, until `done`."""
    while not done.wait(CANCEL_POLL_SECONDS):
        if msg_id in assoc.dimse.cancel_req or not assoc.is_established:
            assoc.dimse.cancel_req.pop(msg_id, None)
            token.cancel()
            return


def _response(req: Request, status: int) -> Request:
    rsp = type(req)()
    rsp.MessageIDBeingRespondedTo = req.MessageID
    rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
    rsp.Status = status
    return rsp


def _send_pending(assoc: Association, req: Request, context, progress: RetrieveProgress) -> None:
    if not assoc.is_established:
        return
    rsp = _response(req, PENDING)
    if progress.remaining is not None:
        rsp.NumberOfRemainingSuboperations = max(0, progress.remaining)
    rsp.NumberOfCompletedSuboperations = progress.completed
    rsp.NumberOfFailedSuboperations = progress.failed
    rsp.NumberOfWarningSuboperations = progress.warning
    assoc.dimse.send_msg(rsp, context.context_id)


def _send(assoc: Association, req: Request, context, outcome: RetrieveOutcome) -> None:
    """The final response: counts (no Remaining, PS3.4 C.4.2.1.4), Error Comment, Failed SOP Instance UID List."""
    rsp = _response(req, outcome.status)
    rsp.NumberOfCompletedSuboperations = outcome.completed
    rsp.NumberOfFailedSuboperations = outcome.failed
    rsp.NumberOfWarningSuboperations = outcome.warning
    if outcome.error_comment:
        rsp.ErrorComment = error_comment(outcome.error_comment)
    if outcome.failed_uids:
        syntax = context.transfer_syntax[0]
        failed = Dataset()
        failed.FailedSOPInstanceUIDList = list(outcome.failed_uids)
        rsp.Identifier = BytesIO(encode(failed, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated))
    logger.info("%s final status 0x%04X: %d completed, %d failed, %d warning", req.msg_type, outcome.status,
                outcome.completed, outcome.failed, outcome.warning)
    assoc.dimse.send_msg(rsp, context.context_id)
