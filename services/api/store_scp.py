"""The API's own storage AE: the C-MOVE destination when WADO-RS fetches from a DIMSE source without C-GET
("C-MOVE-to-self", PS3.4 C.4.2.2: the source sends the instances to the Move Destination over associations of its
own). It accepts C-ECHO and C-STORE only, on AXIOM_API_STORE_AE_TITLE at AXIOM_API_HOST:AXIOM_API_STORE_PORT, only
from the calling AE titles of the enabled DIMSE sources of the enabled spanner configs, and hands each instance to
the retrieval Inbox (shared.retrieval.inbox): the job that asked for it gets it, anything else is refused.

Reused from the spanning SCP rather than moved to shared/: the association gate (services.listener.gate: its
storage-AE entry already admits exactly the sources' AE titles, re-read from the database), the AE server with the
gate installed on each association and TCP_NODELAY (services.listener.server.start_server) and its storage
transfer syntaxes. They are pynetdicom service plumbing, not domain logic, and the listener stays their owner;
`StorageOnlyGate` narrows the gate to the storage AE title (the spanner configs' query AE titles are the
listener's, not this port's).
"""

from __future__ import annotations

import logging
from typing import Callable

from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from services.listener.gate import CALLED_AE_NOT_RECOGNISED, AssociationGate, Binding, Rejection
from services.listener.server import STORAGE_TRANSFER_SYNTAXES, SpanningServer, start_server
from shared.logging import log_event
from shared.retrieval.inbox import Inbox
from shared.retrieval.spool import with_encoding

logger = logging.getLogger(__name__)
SUCCESS = 0x0000
STORE_REFUSED = 0xA700  # C-STORE "Refused: Out of resources" (PS3.4 B.2.3): not an association of a source


class StorageOnlyGate(AssociationGate):
    """The listener's gate, accepting only its storage AE title (from the DIMSE sources' AE titles)."""

    def decide(self, *, called: str, calling: str, address: str) -> Binding | Rejection:
        decision = super().decide(called=called, calling=calling, address=address)
        if isinstance(decision, Binding) and decision.config_id is not None:
            return CALLED_AE_NOT_RECOGNISED
        return decision


class ApiStoreScp:
    """The storage AE of the module doc; `start()` binds, `stop()` ends it. `port` is the bound port (0 in the
    settings takes a free one)."""

    def __init__(self, *, ae_title: str, host: str, port: int, session_factory: Callable, inbox: Inbox) -> None:
        self.ae_title, self.inbox = ae_title.strip(), inbox
        self._address = (host, port)
        self._gate = StorageOnlyGate(session_factory, storage_ae_title=self.ae_title)
        self._ae: AE | None = None
        self._server: SpanningServer | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the API storage AE is not started")
        return self._server.server_address[1]

    def start(self) -> "ApiStoreScp":
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = False  # the gate decides
        ae.add_supported_context(Verification)
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES)
        handlers = [(evt.EVT_C_ECHO, lambda _event: SUCCESS), (evt.EVT_C_STORE, self.on_store)]
        self._server = start_server(ae, self._address, gate=self._gate, retrieve_server=None, find_handler=None,
                                    evt_handlers=handlers)
        self._ae = ae
        log_event(logger, "api_store_scp_started", ae_title=self.ae_title, host=self._address[0], port=self.port)
        return self

    def stop(self) -> None:
        """Stop accepting and abort what is still open."""
        if self._ae is not None:
            self._ae.shutdown()
            self._ae = self._server = None
            log_event(logger, "api_store_scp_stopped", ae_title=self.ae_title)

    def on_store(self, event: evt.Event) -> int:
        """An instance a source sends for a C-MOVE to the API: to the Inbox (which answers NOT_EXPECTED, 0x0124,
        when no retrieval waits for it)."""
        binding = self._gate.binding(event.assoc)
        if binding is None or binding.config_id is not None:
            return STORE_REFUSED
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        with_encoding(dataset, event.encoded_dataset())  # the source's own bytes, passed on unchanged
        return self.inbox.deliver(dataset)
