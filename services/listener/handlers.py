"""The spanning SCP's handlers: each turns a pynetdicom Event into one shared/ call and the result into statuses.

* C-ECHO: Success (PS3.7 9.1.5).
* C-FIND (Patient Root and Study Root, all levels, PS3.4 C.4.1): the identifier is checked
  (shared.dicom.scp_requests: 0xA900 with an Error Comment otherwise) and spanned over the called AE title's
  config. Matches go out as Pending responses as the engine releases them: as they arrive with FIRST_WINS, after
  the merge otherwise. A C-CANCEL (or the caller dropping the association) cancels the outstanding source queries
  and the final status is Cancel (0xFE00). Final statuses: services.listener.status.find_final_status.
* C-STORE on the storage AE: instances sources send for a C-MOVE to the spanner (PROXY strategy) go to the
  retrieval inbox; C-STORE on a config's AE is refused (the spanning SCP is not a storage destination).
Every span is written to the query log by the span client, with the calling AE title and address as requester.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterator

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.tag import Tag
from pynetdicom import evt

from services.listener.gate import AssociationGate, Binding
from services.listener.status import (
    IDENTIFIER_DOES_NOT_MATCH, PENDING, SOP_CLASS_NOT_SUPPORTED, SUCCESS, UNABLE_TO_PROCESS, find_final_status,
    status_dataset,
)
from shared.db.repo.spanner_configs import SpanPlan, load_span_plan
from shared.dicom.charset import decode_dataset
from shared.dicom.scp_requests import IdentifierError, find_request
from shared.logging import log_event
from shared.retrieval.spool import with_encoding
from shared.spanning.model import Match, SpanRequest, SpanResult
from shared.spanning.ports import CancelToken

logger = logging.getLogger(__name__)
CANCEL_POLL_SECONDS = 0.02
PLAN_TTL_SECONDS = 2.0
STORE_REFUSED = 0xA700
QUERY_RETRIEVE_LEVEL, RETRIEVE_AE_TITLE = Tag(0x00080052), Tag(0x00080054)  # C-STORE: Refused, out of resources (PS3.4 B.2.3)


class CancelWatcher:
    """Cancels `token` when the peer sends C-CANCEL for this request (PS3.7 9.3.2.3) or the association ends.

    pynetdicom only records a C-CANCEL (`event.is_cancelled`, which consumes it); the handler thread is busy
    yielding responses or waiting for sources, so a small thread watches for it."""

    def __init__(self, event: evt.Event, token: CancelToken) -> None:
        self._event, self._token = event, token
        self._stop = threading.Event()
        self.cancelled_by_peer = False
        self._thread = threading.Thread(target=self._watch, name="c-cancel-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        assoc = self._event.assoc
        while not self._stop.wait(CANCEL_POLL_SECONDS):
            if self._event.is_cancelled:
                self.cancelled_by_peer = True
            elif assoc.is_established:
                continue
            self._token.cancel()
            return

    def stop(self) -> None:
        self._stop.set()


class ScpHandlers:
    """The handlers of one listener: the gate (bindings), the span client (shared.span_client.InProcessSpanClient or
    shared.distributed.client.DistributedSpanClient: the same run/stream interface) and the configs' plans."""

    def __init__(self, *, gate: AssociationGate, span_client, session_factory: Callable,
                 inbox=None, clock: Callable[[], float] = time.monotonic) -> None:
        self.gate, self.client, self.session_factory, self.inbox = gate, span_client, session_factory, inbox
        self._clock = clock
        self._plans: dict[int, tuple[float, SpanPlan]] = {}
        self._plans_lock = threading.Lock()

    def bindings(self) -> list[tuple]:
        """The (event, handler) pairs for pynetdicom. C-FIND (`on_find`) is served by services.listener.find_scp,
        C-MOVE and C-GET by services.listener.retrieve_scp."""
        return [(evt.EVT_C_ECHO, self.on_echo), (evt.EVT_C_STORE, self.on_store)]

    # -- plans -------------------------------------------------------------------------------------------------

    def plan(self, config_id: int) -> SpanPlan:
        """The config's current plan (re-read after PLAN_TTL_SECONDS). LookupError/ValueError when it is gone or
        disabled."""
        now = self._clock()
        with self._plans_lock:
            cached = self._plans.get(config_id)
            if cached is not None and now - cached[0] < PLAN_TTL_SECONDS:
                return cached[1]
        with self.session_factory() as session:
            plan = load_span_plan(session, config_id=config_id)
        with self._plans_lock:
            self._plans[config_id] = (now, plan)
        return plan

    # -- C-ECHO ------------------------------------------------------------------------------------------------

    def on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    # -- C-FIND ------------------------------------------------------------------------------------------------

    def on_find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        binding = self.gate.binding(event.assoc)
        if binding is None or binding.config_id is None:
            yield status_dataset(SOP_CLASS_NOT_SUPPORTED, "this AE title answers no queries"), None
            return
        try:
            request = find_request(decode_dataset(event.identifier), str(event.request.AffectedSOPClassUID))
        except IdentifierError as exc:
            yield status_dataset(IDENTIFIER_DOES_NOT_MATCH, str(exc)), None
            return
        except Exception as exc:  # an identifier pydicom cannot parse
            yield status_dataset(IDENTIFIER_DOES_NOT_MATCH, f"undecodable identifier: {exc}"), None
            return
        try:
            plan = self.plan(binding.config_id)
        except (LookupError, ValueError) as exc:
            yield status_dataset(UNABLE_TO_PROCESS, str(exc)), None
            return
        log_event(logger, "scp_find_received", query_id=request.query_id, calling_ae=binding.calling_ae,
                  called_ae=binding.called_ae, query_level=request.level.value, spanner_config=plan.config.name)
        yield from self._span(event, request, plan, binding)

    def _span(self, event: evt.Event, request: SpanRequest, plan: SpanPlan, binding: Binding) -> Iterator:
        token = CancelToken()
        watcher = CancelWatcher(event, token)
        requester = {"ae_title": binding.calling_ae, "address": binding.address}
        options = dict(cancel=token, config_id=plan.config.id, requester=requester)
        result: SpanResult | None = None
        keys = ResponseKeys(request, binding)
        try:
            if plan.config.cache_ttl_seconds > 0:  # the client answers repeats from its cache
                result = self.client.run(request, plan.sources, plan.policy,
                                         cache_ttl_seconds=plan.config.cache_ttl_seconds, **options)
                events: Iterator = iter([*result.matches, result])
            else:
                events = self.client.stream(request, plan.sources, plan.policy, **options)
            for item in events:
                if isinstance(item, Match):
                    if token.cancelled:  # C-CANCEL seen: no more matches, only the final Cancel (PS3.4 C.4.1.2.3)
                        continue
                    yield PENDING, keys.response(item.dataset)
                elif isinstance(item, SpanResult):
                    result = item
        finally:
            watcher.stop()
        assert result is not None
        yield find_final_status(result), None

    # -- C-STORE -----------------------------------------------------------------------------------------------

    def on_store(self, event: evt.Event) -> int:
        binding = self.gate.binding(event.assoc)
        if binding is None or binding.config_id is not None or self.inbox is None:
            return STORE_REFUSED
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        with_encoding(dataset, event.encoded_dataset())  # the source's own bytes, passed on unchanged
        return self.inbox.deliver(dataset)


class ResponseKeys:
    """What every C-FIND response identifier of one request gets besides its match: the Query/Retrieve Level
    (PS3.4 C.4.1.1.3.2) and, only when it was asked for (C.4.1.2.3), RetrieveAETitle — the spanner's own AE title,
    not the holders' (the merge lists those): the caller retrieves through the spanner. The elements are built once
    per request (pydicom's attribute assignment validates each value: ~50 us a response)."""

    def __init__(self, request: SpanRequest, binding: Binding) -> None:
        self._added = {QUERY_RETRIEVE_LEVEL: DataElement(QUERY_RETRIEVE_LEVEL, "CS", request.level.value)}
        self._retrieve_ae = RETRIEVE_AE_TITLE in request.identifier
        if self._retrieve_ae:
            self._added[RETRIEVE_AE_TITLE] = DataElement(RETRIEVE_AE_TITLE, "AE", binding.called_ae)

    def response(self, match: Dataset) -> Dataset:
        """A shallow copy of `match` with the added keys (the match's own elements are shared, never changed)."""
        response = Dataset()
        response._dict.update(match._dict)
        if not self._retrieve_ae:
            response._dict.pop(RETRIEVE_AE_TITLE, None)
        response._dict.update(self._added)
        return response
