"""The spanning SCP's C-MOVE and C-GET: each request checked, then served by the config's retrieval service
(shared.retrieval_services), on the wire by services.listener.retrieve_scp.

* C-MOVE (PS3.4 C.4.2): the Move Destination must be a known, enabled `dicom_destinations` AE title, else 0xA801
  "Move destination unknown" with an Error Comment; then the config's cmove_strategy (DIRECT, PROXY, HYBRID).
* C-GET (PS3.4 C.4.3): every instance the holders deliver is sent back at once as a C-STORE sub-operation on the
  caller's own association; the counts combine the caller's C-STORE statuses with what no holder delivered.
* A config without supports_cmove / supports_cget refuses with 0x0122 (SOP class not supported, PS3.7 C.5.3);
  an identifier without the level's unique keys gets 0xA900 with an Error Comment (shared.dicom.scp_requests).
* The locate of each retrieval is written to the query log as the C-MOVE or C-GET it serves, with the calling AE
  title and address as requester (as C-FIND spans are, services.listener.handlers).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import replace
from typing import Callable, Generator

from pydicom import Dataset
from pynetdicom.association import Association

from services.listener.gate import AssociationGate
from services.listener.status import (
    IDENTIFIER_DOES_NOT_MATCH, MOVE_DESTINATION_UNKNOWN, SOP_CLASS_NOT_SUPPORTED, UNABLE_TO_PROCESS,
)
from shared.db.repo.destinations import get_destination
from shared.db.repo.spanner_configs import SpanPlan
from shared.dicom.scp_requests import IdentifierError, retrieve_request
from shared.logging import log_event
from shared.retrieval.model import CANCEL, Destination, Origin, RetrieveOutcome, RetrieveProgress, RetrieveRequest
from shared.retrieval.tally import Tally
from shared.retrieval_services import RetrievalServices
from shared.spanning.ports import CancelToken

logger = logging.getLogger(__name__)
Stream = Generator[RetrieveProgress, None, RetrieveOutcome]


class RetrieveHandlers:
    """`move` and `get` in the shape services.listener.retrieve_scp.RetrieveScp calls them."""

    def __init__(self, *, gate: AssociationGate, plans: Callable[[int], SpanPlan], services: RetrievalServices,
                 session_factory: Callable) -> None:
        self._gate, self._plans, self._services, self._sessions = gate, plans, services, session_factory
        self._sub_ids = itertools.count(1)

    def move(self, assoc: Association, req, identifier: Dataset, cancel: CancelToken) -> Stream:
        checked = self._check(assoc, req, identifier, "C-MOVE")
        if isinstance(checked, RetrieveOutcome):
            return checked
        plan, request = checked
        destination = self._destination(str(req.MoveDestination or "").strip())
        if destination is None:
            log_event(logger, "retrieve_destination_unknown", logging.WARNING, query_id=request.query_id,
                      destination=str(req.MoveDestination or "").strip())
            return RetrieveOutcome(MOVE_DESTINATION_UNKNOWN,
                                   error_comment=f"unknown move destination {str(req.MoveDestination).strip()!r}")
        service = self._services.for_plan(plan)
        return (yield from service.move(request, plan.config.cmove_strategy, destination, cancel))

    def get(self, assoc: Association, req, identifier: Dataset, cancel: CancelToken) -> Stream:
        checked = self._check(assoc, req, identifier, "C-GET")
        if isinstance(checked, RetrieveOutcome):
            return checked
        plan, request = checked
        stream = self._services.for_plan(plan).get(request, cancel)
        tally = Tally()
        try:
            expected = next(stream)
            while True:
                dataset = next(stream)
                tally.count_store(self._store(assoc, dataset), str(dataset.get("SOPInstanceUID", "")))
                yield tally.progress(expected)
        except StopIteration as stop:
            source_side: RetrieveOutcome = stop.value
        finally:
            stream.close()  # the caller went away mid-way: the service cancels and cleans its spool
        return _get_outcome(tally, source_side, cancel)

    def _store(self, assoc: Association, dataset: Dataset) -> int:
        """One C-STORE sub-operation on the caller's association (PS3.4 C.4.3.3); a failure status when it could
        not be sent (no accepted context for the SOP class: the caller did not offer it)."""
        try:
            status = assoc.send_c_store(dataset, msg_id=next(self._sub_ids) % 0x10000 or 1)
        except (ValueError, RuntimeError) as exc:
            log_event(logger, "retrieve_sub_operation_failed", logging.WARNING, error=str(exc),
                      sop_instance_uid=str(dataset.get("SOPInstanceUID", "")))
            return UNABLE_TO_PROCESS
        return int(status.Status) if "Status" in status else -1

    def _check(self, assoc: Association, req, identifier: Dataset,
               operation: str) -> tuple[SpanPlan, RetrieveRequest] | RetrieveOutcome:
        binding = self._gate.binding(assoc)
        if binding is None or binding.config_id is None:
            return RetrieveOutcome(SOP_CLASS_NOT_SUPPORTED, error_comment="this AE title serves no retrievals")
        try:
            plan = self._plans(binding.config_id)
        except (LookupError, ValueError) as exc:
            return RetrieveOutcome(UNABLE_TO_PROCESS, error_comment=str(exc))
        offered = plan.config.supports_cmove if operation == "C-MOVE" else plan.config.supports_cget
        if not offered:
            return RetrieveOutcome(SOP_CLASS_NOT_SUPPORTED,
                                   error_comment=f"{operation} is not offered by {plan.config.name}")
        try:
            request = retrieve_request(identifier, str(req.AffectedSOPClassUID))
        except IdentifierError as exc:
            return RetrieveOutcome(IDENTIFIER_DOES_NOT_MATCH, error_comment=str(exc))
        request = replace(request, origin=Origin(operation, ae_title=binding.calling_ae, address=binding.address))
        log_event(logger, "scp_retrieve_received", query_id=request.query_id, operation=operation,
                  calling_ae=binding.calling_ae, called_ae=binding.called_ae, query_level=request.level.value,
                  spanner_config=plan.config.name, destination=getattr(req, "MoveDestination", None))
        return plan, request

    def _destination(self, ae_title: str) -> Destination | None:
        if not ae_title:
            return None
        with self._sessions() as session:
            row = get_destination(session, ae_title=ae_title)
            return None if row is None else Destination(row.ae_title, row.host, row.port)


def _get_outcome(tally: Tally, source_side: RetrieveOutcome, cancel: CancelToken) -> RetrieveOutcome:
    """A C-GET's final outcome (PS3.4 C.4.3.1.4): the caller's C-STORE results plus what the holders never
    delivered (failed on the source side), or the source side's own refusal when nothing was sent."""
    if tally.done == 0 and source_side.status not in (0x0000, CANCEL) and not source_side.failed:
        return source_side  # refused before any sub-operation (locate failed, ...)
    tally.add(failed=source_side.failed, failed_uids=source_side.failed_uids)
    cancelled = cancel.cancelled or source_side.status == CANCEL
    return tally.outcome(cancelled, source_side.error_comment)
