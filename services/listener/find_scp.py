"""The spanning SCP's C-FIND on the wire, with a fast path for pending responses (PS3.4 C.4.1, PS3.7 9.1.2, 9.3.2).

A spanning C-FIND may send tens of thousands of Pending responses. pynetdicom's C-FIND SCP builds, validates and
encodes a full DIMSE message for each one (about 0.3 ms of CPU besides the identifier). Every pending response of a
request has the same command set, though (Message ID Being Responded To, Affected SOP Class UID, Status 0xFF00,
a data set present: PS3.7 Table 9.3-2), so `PendingSender` encodes it once and sends each response as a single
P-DATA-TF PDU with two PDVs, command and identifier (PS3.8 9.3.5, E.2), split into fragments only when the
peer's maximum PDU length requires it; flat text identifiers are encoded by shared.dicom.flat_encoding. Final responses (with Error Comment) go through pynetdicom's own encoder.

The handler (services.listener.handlers.ScpHandlers.on_find) is the same generator of (status, identifier) pairs
a pynetdicom EVT_C_FIND handler is; `FindEvent` gives it what it reads of a pynetdicom Event.
"""

from __future__ import annotations

import logging
from io import BytesIO
from typing import Callable, Iterator

from pydicom import Dataset
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu_primitives import P_DATA

from services.listener.status import (
    PENDING,
    PENDING_OPTIONAL_KEYS_UNSUPPORTED,
    UNABLE_TO_PROCESS,
    status_dataset,
)
from shared.dicom.flat_encoding import encode_flat

logger = logging.getLogger(__name__)
COMMAND, LAST = 0x01, 0x02  # PS3.8 E.2 message control header bits
FindHandler = Callable[["FindEvent"], Iterator[tuple[int | Dataset, Dataset | None]]]


class FindEvent:
    """What the C-FIND handler reads of a pynetdicom Event: assoc, request, identifier and is_cancelled."""

    def __init__(self, assoc: Association, request: C_FIND, identifier: Dataset) -> None:
        self.assoc, self.request, self.identifier = assoc, request, identifier

    @property
    def is_cancelled(self) -> bool:
        """True once a C-CANCEL for this request has arrived (PS3.7 9.3.2.3); consumes it, as pynetdicom does."""
        return self.assoc.dimse.cancel_req.pop(self.request.MessageID, None) is not None


class PendingSender:
    """Sends the Pending responses of one C-FIND request (see the module doc)."""

    def __init__(self, assoc: Association, request: C_FIND, context) -> None:
        self._assoc, self._context_id = assoc, context.context_id
        self._syntax = context.transfer_syntax[0]
        rsp = _response(request, PENDING)
        rsp.Identifier = BytesIO(b"\x00")  # marks "data set present" in the command set
        message = C_FIND_RSP()
        message.primitive_to_message(rsp)
        self._command = encode(message.command_set, True, True)
        self._max_pdv = assoc.dimse.maximum_pdu_size - 6 if assoc.dimse.maximum_pdu_size else 0

    def send(self, identifier: Dataset) -> None:
        data = None
        if self._syntax.is_little_endian and not self._syntax.is_deflated:
            data = encode_flat(identifier, implicit_vr=self._syntax.is_implicit_VR)  # ~10x faster when it applies
        if data is None:
            data = encode(identifier, self._syntax.is_implicit_VR, self._syntax.is_little_endian,
                          self._syntax.is_deflated)
        if data is None:
            raise ValueError("the response identifier could not be encoded")
        pdvs = _pdvs(self._command, COMMAND, self._max_pdv) + _pdvs(data, 0, self._max_pdv)
        if not self._max_pdv or len(self._command) + len(data) + 12 <= self._max_pdv:
            pdata = P_DATA()
            pdata.presentation_data_value_list = [[self._context_id, pdv] for pdv in pdvs]
            self._assoc.dul.send_pdu(pdata)
            return
        for pdv in pdvs:
            pdata = P_DATA()
            pdata.presentation_data_value_list = [[self._context_id, pdv]]
            self._assoc.dul.send_pdu(pdata)


def serve_find(assoc: Association, request: C_FIND, context, handler: FindHandler) -> None:
    """Answer one C-FIND request with `handler`'s responses (called by SpanningAssociation)."""
    syntax = context.transfer_syntax[0]
    try:
        identifier = decode(request.Identifier, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    except Exception as exc:
        _send_final(assoc, request, context, status_dataset(0xA900, f"undecodable identifier: {exc}"))
        return
    sender = PendingSender(assoc, request, context)
    final = status_dataset(UNABLE_TO_PROCESS, "no final status")
    responses = handler(FindEvent(assoc, request, identifier))
    try:
        for status, dataset in responses:
            if not assoc.is_established:
                return
            if isinstance(status, int) and status in (PENDING, PENDING_OPTIONAL_KEYS_UNSUPPORTED):
                sender.send(dataset)
                continue
            final = status if isinstance(status, Dataset) else status_dataset(int(status))
            break
    except Exception as exc:  # a bug must still end the request with a status
        logger.exception("C-FIND failed")
        final = status_dataset(UNABLE_TO_PROCESS, f"{type(exc).__name__}: {exc}")
    finally:
        responses.close()
    if assoc.is_established:
        _send_final(assoc, request, context, final)


def _pdvs(data: bytes, kind: int, max_pdv: int) -> list[bytes]:
    """`data` as PDVs (control header + fragment), the last flagged LAST (PS3.8 E.2)."""
    size = max_pdv - 1 if max_pdv else len(data) or 1
    chunks = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
    return [bytes([kind | (LAST if i == len(chunks) - 1 else 0)]) + chunk for i, chunk in enumerate(chunks)]


def _response(request: C_FIND, status: int) -> C_FIND:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = request.MessageID
    rsp.AffectedSOPClassUID = request.AffectedSOPClassUID
    rsp.Status = status
    return rsp


def _send_final(assoc: Association, request: C_FIND, context, status: Dataset) -> None:
    """The final response: its status and, when given, Error Comment (PS3.4 C.4.1.1.4); no identifier."""
    rsp = _response(request, int(status.Status))
    if "ErrorComment" in status:
        rsp.ErrorComment = status.ErrorComment
    assoc.dimse.send_msg(rsp, context.context_id)
